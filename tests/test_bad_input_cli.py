"""Every command refuses malformed options with exit 2 and one message naming the flag and what is valid.

A table of real command lines, run through the console entry point in this process (issue 13). Each
row: the arguments, then fragments that must appear (the flag, the bad value, the valid range or
choices). `serve.yaml` and `train.yaml` are tiny plan files in the working directory; `/proc` is a
directory in which no one, root included, can create a file; nothing here reaches the network.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from bad_input_support import assert_refused, run_cli, write_tiny_plans

FIXTURES = Path(__file__).parent / "fixtures"
M = "Qwen/Qwen2.5-0.5B"
FIT = ("fit", M, "--gpus", "a100")
SIZE = ("size", M)
SERVE_SIZE = ("size", M, "--task", "serve", "--concurrency", "4")
EST = ("estimate", M)
VLM = "Qwen/Qwen2.5-VL-7B-Instruct"
VERIFY = ("verify", M)
SERVE = ("serve", "serve.yaml", "--dry-run")
TRAIN = ("train", "train.yaml", "--dry-run")
UNWRITABLE = "/proc"

CASES = [
    # fit: list-valued pins (each value checked; a bad one never silently changes the plan)
    ("fit-rank-0", (*FIT, "--rank", "0", "--json"), ["--rank 0", "at least 1"]),
    ("fit-rank-list-negative", (*FIT, "--rank", "0,-4"), ["--rank", "at least 1"]),
    ("fit-lora-rank-0", (*FIT, "--method", "lora", "--rank", "0"), ["--rank 0", "or auto"]),
    ("fit-rank-word", (*FIT, "--rank", "big"), ["--rank", "'big'", "whole numbers"]),
    ("fit-rank-float", (*FIT, "--rank", "8.5"), ["--rank", "'8.5'"]),
    ("fit-rank-empty", (*FIT, "--rank", ","), ["--rank", "names no value"]),
    ("fit-zero-9", (*FIT, "--zero", "9"), ["--zero 9", "ZeRO stages are 0-3"]),
    ("fit-zero-negative", (*FIT, "--zero", "1,-1"), ["--zero -1", "0-3"]),
    ("fit-zero-word", (*FIT, "--zero", "three"), ["--zero", "'three'", "0-3"]),
    ("fit-tp-0", (*FIT, "--tp", "0"), ["--tp 0", "at least 1"]),
    ("fit-pp-negative", (*FIT, "--pp", "-2"), ["--pp -2", "at least 1"]),
    ("fit-dp-0", (*FIT, "--dp", "0"), ["--dp 0", "at least 1"]),
    ("fit-batch-0", (*FIT, "--batch", "0"), ["--batch 0", "micro-batch sizes are at least 1"]),
    ("fit-batch-list", (*FIT, "--batch", "1,2,x"), ["--batch", "'x'"]),
    # fit: choices
    ("fit-method", (*FIT, "--method", "lora,dora"), ["--method", "'dora'", "full, lora, qlora"]),
    ("fit-quant", (*FIT, "--quant", "gptq"), ["--quant", "'gptq'", "none, int8, nf4, nf4-dq"]),
    ("fit-serve-quant", (*FIT, "--task", "serve", "--quant", "nf4-dq"), ["--quant", "none, fp8, int8, nf4"]),
    ("fit-precision", (*FIT, "--precision", "fp8"), ["--precision", "'fp8'", "bf16, fp16, fp32"]),
    ("fit-optimizer", (*FIT, "--optimizer", "adam"), ["--optimizer", "'adam'", "adamw-8bit"]),
    ("fit-kv-dtype", (*FIT, "--task", "serve", "--kv-dtype", "int4"), ["--kv-dtype", "'int4'", "auto, fp8"]),
    ("fit-attention", (*FIT, "--attention", "bogus"), ["--attention", "'bogus'", "sdpa, flash, eager"]),
    ("fit-max-offload", (*FIT, "--max-offload", "disk"), ["--max-offload", "'disk'", "optimizer+params"]),
    ("fit-targets-empty", (*FIT, "--targets", " , "), ["--targets", "names no value"]),
    ("fit-engine", (*FIT, "--engine", "bogus"), ["'bogus'", "swiftplan"]),
    ("fit-task", (*FIT, "--task", "pretrain"), ["--task", "'pretrain'", "serve"]),
    ("fit-objective", (*FIT, "--objective", "fun"), ["--objective", "'fun'", "throughput"]),
    ("fit-gpus", ("fit", M, "--gpus", "bogus"), ["Unknown GPU 'bogus'", "swiftplan gpus"]),
    ("fit-gpus-zero-count", ("fit", M, "--gpus", "0xa100"), ["0xa100"]),
    # fit: numbers
    ("fit-epochs-negative", (*FIT, "--epochs", "-1"), ["--epochs", "-1", "positive"]),
    ("fit-epochs-inf", (*FIT, "--epochs", "inf"), ["--epochs", "finite"]),
    ("fit-epochs-word", (*FIT, "--epochs", "two"), ["--epochs", "number"]),
    ("fit-global-batch-0", (*FIT, "--global-batch", "0"), ["--global-batch", "at least 1", "got 0"]),
    ("fit-seq-0", (*FIT, "--seq", "0"), ["--seq", "at least 1", "got 0"]),
    ("fit-seq-word", (*FIT, "--seq", "long"), ["--seq", "integer"]),
    ("fit-dataset-tokens", (*FIT, "--dataset-tokens", "lots"), ["--dataset-tokens", "'lots'", "1.5B"]),
    ("fit-dataset-tokens-negative", (*FIT, "--dataset-tokens", "-5"), ["--dataset-tokens", "positive"]),
    ("fit-headroom", (*FIT, "--headroom", "2"), ["--headroom", "0.9", "got 2"]),
    ("fit-headroom-negative", (*FIT, "--headroom", "-0.1"), ["--headroom", "-0.1"]),
    ("fit-host-ram", (*FIT, "--host-ram", "-1"), ["--host-ram", "zero or more", "-1"]),
    ("fit-host-ram-nan", (*FIT, "--host-ram", "nan"), ["--host-ram", "finite"]),
    ("fit-trials-0", (*FIT, "--trials", "0"), ["--trials", "at least 1"]),
    ("fit-seed-negative", (*FIT, "--seed", "-1"), ["--seed", "between 0 and 4294967295"]),
    ("fit-seed-huge", (*FIT, "--seed", "99999999999"), ["--seed", "4294967295"]),
    # fit: serving SLOs
    ("fit-ttft-negative", (*FIT, "--task", "serve", "--ttft", "-1"), ["--ttft", "positive", "-1"]),
    ("fit-ttft-inf", (*FIT, "--task", "serve", "--ttft", "inf"), ["--ttft", "finite"]),
    ("fit-decode-tps-0", (*FIT, "--task", "serve", "--decode-tps", "0"), ["--decode-tps", "positive"]),
    ("fit-context-negative", (*FIT, "--task", "serve", "--context", "-5"), ["--context", "at least 1", "-5"]),
    ("fit-concurrency-0", (*FIT, "--task", "serve", "--concurrency", "0"), ["--concurrency", "at least 1"]),
    (
        "fit-gpu-mem-util",
        (*FIT, "--task", "serve", "--gpu-memory-utilization", "3"),
        ["--gpu-memory-utilization", "between 0.05 and 1"],
    ),  # fmt: skip
    ("fit-eager-training", (*FIT, "--enforce-eager"), ["--enforce-eager", "serving option"]),
    # fit: measuring, storage, the plan file
    (
        "fit-measure-top-0",
        (*FIT, "--measure", "--measure-device", "cpu", "--measure-top", "0"),
        ["--measure-top", "at least 1", "got 0"],
    ),  # fmt: skip
    (
        "fit-measure-steps-0",
        (*FIT, "--measure", "--measure-device", "cpu", "--measure-steps", "0"),
        ["--measure-steps", "at least 1"],
    ),  # fmt: skip
    (
        "fit-measure-layers-0",
        (*FIT, "--measure", "--measure-device", "cpu", "--measure-layers", "0"),
        ["--measure-layers", "at least 1"],
    ),  # fmt: skip
    (
        "fit-measure-device",
        (*FIT, "--measure", "--measure-device", "tpu"),
        ["--measure-device", "cuda or cpu"],
    ),
    ("fit-measure-serve", (*FIT, "--task", "serve", "--measure"), ["--measure", "--task serve"]),
    (
        "fit-storage-scheme",
        (*FIT, "--storage", "bogus://nowhere"),
        ["--storage bogus://nowhere", "sqlite:///study.db"],
    ),
    (
        "fit-storage-not-url",
        (*FIT, "--storage", "study.db"),
        ["--storage", "'study.db'", "sqlite:///study.db"],
    ),
    (
        "fit-storage-missing-dir",
        (*FIT, "--storage", "sqlite:////nonexistent/dir/s.db"),
        ["--storage sqlite:////nonexistent/dir/s.db", "sqlite:///study.db"],
    ),  # fmt: skip
    (
        "fit-output-missing-dir",
        (*FIT, "-o", "/nonexistent/plan.yaml"),
        ["-o/--output", "/nonexistent", "does not exist"],
    ),
    ("fit-output-directory", (*FIT, "-o", "."), ["-o/--output", "is a directory"]),
    ("fit-output-unwritable", (*FIT, "-o", f"{UNWRITABLE}/plan.yaml"), ["-o/--output", "permission denied"]),
    # fit: options the task's search does not read are refused, not ignored
    (
        "fit-serve-method",
        (*FIT, "--task", "serve", "--method", "lora"),
        ["--method only applies to training"],
    ),
    ("fit-serve-zero", (*FIT, "--task", "serve", "--zero", "3"), ["--zero only applies to training"]),
    (
        "fit-serve-grad-ckpt",
        (*FIT, "--task", "serve", "--no-grad-ckpt"),
        ["--grad-ckpt only applies to training"],
    ),
    (
        "fit-serve-dataset-tokens",
        (*FIT, "--task", "serve", "--dataset-tokens", "5M"),
        ["--dataset-tokens only applies"],
    ),
    ("fit-train-ttft", (*FIT, "--ttft", "1"), ["--ttft only applies to --task serve"]),
    ("fit-train-kv-dtype", (*FIT, "--kv-dtype", "fp8"), ["--kv-dtype only applies to --task serve"]),
    # size
    (
        "size-budget-negative",
        (*SIZE, "--budget", "-5"),
        ["--budget", "positive, finite amount of US dollars", "'-5'"],
    ),
    ("size-budget-zero", (*SIZE, "--budget", "0"), ["--budget", "positive, finite amount"]),
    ("size-budget-word", (*SIZE, "--budget", "cheap"), ["--budget", "'cheap'", "20k"]),
    ("size-deadline", (*SIZE, "--deadline", "soon"), ["--deadline", "'soon'", "48h"]),
    ("size-deadline-negative", (*SIZE, "--deadline", "-3h"), ["--deadline", "'-3h'"]),
    ("size-epochs-negative", (*SIZE, "--epochs", "-1"), ["--epochs must be greater than 0", "-1"]),
    ("size-epochs-nan", (*SIZE, "--epochs", "nan"), ["--epochs", "finite"]),
    ("size-global-batch-0", (*SIZE, "--global-batch", "0"), ["--global-batch must be at least 1"]),
    ("size-seq-0", (*SIZE, "--seq", "0"), ["--seq must be at least 1"]),
    ("size-max-gpus-0", (*SIZE, "--max-gpus", "0"), ["--max-gpus must be at least 1"]),
    ("size-max-nodes-0", (*SIZE, "--max-nodes", "0"), ["--max-nodes must be at least 1"]),
    ("size-network", (*SIZE, "--network-gbps", "-100"), ["--network-gbps must be greater than 0"]),
    ("size-host-ram", (*SIZE, "--host-ram", "-1"), ["--host-ram must be at least 0"]),
    ("size-headroom", (*SIZE, "--headroom", "1"), ["--headroom", "below 0.9"]),
    ("size-rank-0", (*SIZE, "--rank", "0"), ["--rank", "at least 1"]),
    ("size-top-0", (*SIZE, "--top", "0"), ["--top", "at least 1"]),
    ("size-method", (*SIZE, "--method", "prefix"), ["--method", "'prefix'", "full, lora, qlora"]),
    ("size-quant", (*SIZE, "--quant", "awq"), ["--quant", "'awq'", "nf4"]),
    ("size-serve-quant", (*SERVE_SIZE, "--quant", "nf4-dq"), ["--quant", "'nf4-dq'", "fp8"]),
    (
        "size-attention",
        (*SIZE, "--attention", "xformers"),
        ["--attention", "'xformers'", "sdpa, flash, eager"],
    ),
    ("size-vendor", (*SIZE, "--vendor", "intel"), ["--vendor", "intel", "nvidia"]),
    ("size-vendor-empty", (*SIZE, "--vendor", ","), ["--vendor", "names no value"]),
    ("size-accelerators", (*SIZE, "--accelerators", "tpu-v5"), ["'tpu-v5'", "swiftplan gpus"]),
    ("size-objective", (*SIZE, "--objective", "speed"), ["--objective", "'speed'", "cost-per-token"]),
    ("size-ttft", (*SERVE_SIZE, "--ttft", "-1"), ["--ttft must be greater than 0"]),
    ("size-decode-tps", (*SERVE_SIZE, "--decode-tps", "0"), ["--decode-tps must be greater than 0"]),
    (
        "size-concurrency",
        ("size", M, "--task", "serve", "--concurrency", "-4"),
        ["--concurrency", "at least 1"],
    ),
    (
        "size-request-rate",
        ("size", M, "--task", "serve", "--request-rate", "0", "--prompt-tokens", "5", "--output-tokens", "5"),
        ["--request-rate must be greater than 0"],
    ),  # fmt: skip
    (
        "size-prompt-tokens",
        ("size", M, "--task", "serve", "--request-rate", "1", "--prompt-tokens", "0", "--output-tokens", "5"),
        ["--prompt-tokens must be at least 1"],
    ),  # fmt: skip
    (
        "size-output-tokens",
        (
            "size",
            M,
            "--task",
            "serve",
            "--request-rate",
            "1",
            "--prompt-tokens",
            "5",
            "--output-tokens",
            "-1",
        ),
        ["--output-tokens must be at least 1"],
    ),  # fmt: skip
    ("size-context", (*SERVE_SIZE, "--context", "0"), ["--context must be at least 1"]),
    (
        "size-gpu-mem-util",
        (*SERVE_SIZE, "--gpu-memory-utilization", "0"),
        ["--gpu-memory-utilization", "0.05"],
    ),
    ("size-eager-training", (*SIZE, "--enforce-eager"), ["--enforce-eager", "serving option"]),
    (
        "size-csv-missing-dir",
        (*SIZE, "--csv", "/nonexistent/x.csv"),
        ["--csv /nonexistent/x.csv", "does not exist"],
    ),
    ("size-csv-directory", (*SIZE, "--csv", "."), ["--csv", "is a directory"]),
    ("size-csv-unwritable", (*SIZE, "--csv", f"{UNWRITABLE}/x.csv"), ["--csv", "permission denied"]),
    ("size-json-csv-stdout", (*SIZE, "--json", "--csv", "-"), ["--json and --csv -", "file name"]),
    (
        "size-plot-missing-dir",
        (*SIZE, "--plot", "/nonexistent/p.png"),
        ["--plot /nonexistent/p.png", "does not exist"],
    ),
    (
        "size-prices-missing",
        (*SIZE, "--prices", "/nonexistent/prices.yaml"),
        ["--prices", "/nonexistent/prices.yaml"],
    ),
    # estimate (the set-up flags go through cli/options.py, shared with verify)
    ("estimate-rank-0", (*EST, "--rank", "0"), ["--rank must be at least 1"]),
    # preference/RL objectives (planner/objective.py)
    ("estimate-task-objective", (*EST, "--task", "rlhf"), ["--task", "'rlhf'", "dpo", "grpo"]),
    (
        "estimate-reference",
        (*EST, "--task", "dpo", "--reference", "ema"),
        ["reference", "'ema'", "adapters-off"],
    ),
    (
        "estimate-grpo-one-generation",
        (*EST, "--task", "grpo", "--num-generations", "1"),
        ["--num-generations", "at least 2"],
    ),
    (
        "estimate-completion-len-0",
        (*EST, "--task", "grpo", "--completion-len", "0"),
        ["--completion-len", "positive integer"],
    ),
    (
        "estimate-rollout-memory",
        (*EST, "--task", "grpo", "--rollout-memory", "2"),
        ["--rollout-memory", "0.05 and 0.95"],
    ),
    (
        "estimate-rollout-tp-0",
        (*EST, "--task", "grpo", "--rollout-tp", "0"),
        ["--rollout-tp", "positive integer"],
    ),
    (
        "estimate-rollout-engine",
        (*EST, "--task", "ppo", "--rollout-engine", "sglang"),
        ["rollout engine", "'sglang'", "vllm, hf"],
    ),
    (
        "estimate-rollout-server-no-gpus",
        (*EST, "--task", "grpo", "--rollout", "server"),
        ["--rollout-gpus", "--rollout-tp"],
    ),
    (
        "estimate-prompt-len-too-long",
        (*EST, "--task", "dpo", "--prompt-len", "4096", "--seq", "2048"),
        ["--prompt-len 4096", "no response"],
    ),
    ("estimate-batch-0", (*EST, "--batch", "0"), ["--batch", "positive integer"]),
    ("estimate-seq-negative", (*EST, "--seq", "-1"), ["--seq", "positive integer"]),
    ("estimate-grad-accum-0", (*EST, "--grad-accum", "0"), ["--grad-accum must be at least 1"]),
    ("estimate-lora-dropout", (*EST, "--lora-dropout", "1"), ["--lora-dropout", "below 1"]),
    ("estimate-zero-9", (*EST, "--zero", "9"), ["--zero must be between 0 and 3", "9"]),
    ("estimate-offload", (*EST, "--offload", "disk"), ["--offload", "'disk'", "optimizer+params"]),
    ("estimate-method", (*EST, "--method", "ia3"), ["--method", "'ia3'", "full, lora, qlora"]),
    ("estimate-precision", (*EST, "--precision", "int4"), ["--precision", "'int4'", "amp-bf16"]),
    ("estimate-quant", (*EST, "--quant", "int3"), ["--quant", "'int3'", "gptq"]),
    ("estimate-optimizer", (*EST, "--optimizer", "lion"), ["--optimizer", "'lion'", "adafactor"]),
    ("estimate-attention", (*EST, "--attention", "bogus"), ["--attention", "'bogus'", "sdpa, flash, eager"]),
    ("estimate-tp-0", (*EST, "--tp", "0"), ["--tp", "positive integer"]),
    ("estimate-pp-0", (*EST, "--pp", "0"), ["--pp", "positive integer"]),
    ("estimate-gpus", (*EST, "--gpus", "gtx9090"), ["'gtx9090'", "swiftplan gpus"]),
    (
        "estimate-network-word",
        (*EST, "--gpus", "2x8xH100@fast"),
        ["'@fast'", "@<Gb/s per node>gbps", "400gbps"],
    ),
    ("estimate-network-zero", (*EST, "--gpus", "2x8xH100@0gbps"), ["Bad network speed '0'", "positive"]),
    (
        "estimate-adapter-dtype",
        (*EST, "--adapter-dtype", "bf16"),
        ["--adapter-dtype 'bf16'", "fp32, model, kbit-bf16"],
    ),
    (
        "estimate-reduce-bucket-zero",
        (*EST, "--reduce-bucket-elements", "0"),
        ["--reduce-bucket-elements", "at least 1"],
    ),
    (
        "fit-prefetch-bucket-negative",
        ("fit", "Qwen/Qwen2.5-0.5B", "--gpus", "rtx4090", "--prefetch-bucket-elements", "-5"),
        ["--prefetch-bucket-elements", "at least 0"],
    ),
    (
        "size-max-live-negative",
        ("size", "Qwen/Qwen2.5-0.5B", "--max-live-parameters", "-1"),
        ["--max-live-parameters", "at least 0"],
    ),
    (
        "fit-max-reuse-negative",
        ("fit", "Qwen/Qwen2.5-0.5B", "--gpus", "rtx4090", "--max-reuse-distance", "-1"),
        ["--max-reuse-distance", "at least 0"],
    ),
    (
        "fit-expandable-serving",
        ("fit", "Qwen/Qwen2.5-0.5B", "--gpus", "rtx4090", "--task", "serve", "--expandable-segments"),
        ["--expandable-segments", "only applies to training"],
    ),
    ("estimate-loss-legacy-typo", (*EST, "--loss", "full_old"), ["--loss 'full_old'", "full_legacy"]),
    (
        "estimate-serve-runtime",
        (*EST, "--task", "serve", "--runtime", "tgi"),
        ["--runtime 'tgi'", "lmdeploy, sglang"],
    ),
    ("estimate-task", (*EST, "--task", "infer"), ["--task", "'infer'", "serve"]),
    ("estimate-engine", (*EST, "--engine", "bogus"), ["'bogus'", "swiftplan"]),
    (
        "estimate-serve-context",
        (*EST, "--task", "serve", "--context", "0"),
        ["--context", "positive integer"],
    ),
    (
        "estimate-serve-concurrency",
        (*EST, "--task", "serve", "--concurrency", "0"),
        ["--concurrency", "positive"],
    ),
    (
        "estimate-serve-kv-dtype",
        (*EST, "--task", "serve", "--kv-dtype", "int4"),
        ["--kv-dtype", "'int4'", "auto, fp8"],
    ),
    (
        "estimate-serve-precision",
        (*EST, "--task", "serve", "--precision", "int8"),
        ["--precision", "'int8'", "bf16, fp16, fp32"],
    ),
    (
        "estimate-serve-gpu-mem-util",
        (*EST, "--task", "serve", "--gpu-memory-utilization", "0"),
        ["--gpu-memory-utilization", "between 0.05 and 1"],
    ),  # fmt: skip
    ("estimate-eager-training", (*EST, "--enforce-eager"), ["--enforce-eager", "serving option"]),
    ("estimate-plan-file-and-options", ("estimate", "serve.yaml", "--batch", "8"), ["plan file", "--batch"]),
    # estimate: vision-language options (planner/vision.py)
    (
        "estimate-vision-text-model",
        (*EST, "--images-per-sample", "2"),
        [M, "text-only model", "vision-language model"],
    ),
    (
        "estimate-image-size-form",
        ("estimate", VLM, "--image-size", "1024"),
        ["--image-size", "'1024'", "1024x768"],
    ),
    (
        "estimate-image-size-zero",
        ("estimate", VLM, "--image-size", "0x512"),
        ["--image-size", "'0x512'", "at least 1"],
    ),
    (
        "estimate-image-size-huge",
        ("estimate", VLM, "--image-size", "100000x10"),
        ["--image-size", "100000", "32,768"],
    ),
    (
        "estimate-images-negative",
        ("estimate", VLM, "--images-per-sample", "-1"),
        ["--images-per-sample", "-1", "at least 0"],
    ),
    (
        "estimate-images-none",
        ("estimate", VLM, "--images-per-sample", "0"),
        ["--images-per-sample 0", "at least one image"],
    ),
    (
        "estimate-image-tokens-negative",
        ("estimate", VLM, "--image-tokens", "-5"),
        ["--image-tokens", "-5", "at least 0"],
    ),
    (
        "estimate-image-tokens-and-size",
        ("estimate", VLM, "--image-tokens", "64", "--image-size", "448x448"),
        ["--image-tokens 64", "--image-size 448x448", "one of them"],
    ),
    (
        "estimate-video-frames-negative",
        ("estimate", VLM, "--video-frames", "-2"),
        ["--video-frames", "-2", "at least 0"],
    ),
    (
        "estimate-video-on-llava",
        ("estimate", "llava-hf/llava-1.5-7b-hf", "--video-frames", "8"),
        ["LLaVA-1.5 takes images only", "--video-frames 8"],
    ),
    (
        "estimate-serve-train-vit",
        ("estimate", VLM, "--task", "serve", "--train-vit"),
        ["--train-vit", "--task serve"],
    ),
    (
        "estimate-serve-images-over-context",
        ("estimate", VLM, "--task", "serve", "--context", "1024", "--image-size", "1024x1024"),
        ["1,225", "--context 1,024"],
    ),
    (
        "estimate-plan-file-and-vision",
        ("estimate", "serve.yaml", "--image-size", "448x448"),
        ["plan file", "--image-size"],
    ),
    # verify
    (
        "verify-quant-gptq",
        (*VERIFY, "--quant", "gptq"),
        ["--quant gptq", "none, nf4, fp4, int8", "swiftplan estimate"],
    ),
    ("verify-quant-unknown", (*VERIFY, "--quant", "int3"), ["--quant", "'int3'"]),
    ("verify-task", (*VERIFY, "--task", "infer"), ["--task", "'infer'", "train, sft, dpo", "grpo, serve"]),
    ("verify-method", (*VERIFY, "--method", "ia3"), ["--method", "'ia3'", "full, lora, qlora"]),
    # serve (checked before the plan or any model is loaded)
    ("serve-port-huge", (*SERVE, "--port", "99999"), ["--port", "between 1 and 65535", "99999"]),
    ("serve-port-0", (*SERVE, "--port", "0"), ["--port", "between 1 and 65535"]),
    ("serve-port-negative", (*SERVE, "--port", "-1"), ["--port", "65535"]),
    ("serve-port-word", (*SERVE, "--port", "http"), ["--port", "integer"]),
    ("serve-host-empty", (*SERVE, "--host", " "), ["--host is empty", "127.0.0.1"]),
    ("serve-context-0", (*SERVE, "--context", "0"), ["--context must be at least 1"]),
    ("serve-concurrency-0", (*SERVE, "--concurrency", "0"), ["--concurrency must be at least 1"]),
    ("serve-device", (*SERVE, "--device", "tpu"), ["--device", "'tpu'", "auto, cuda, cpu"]),
    ("serve-dtype", (*SERVE, "--dtype", "int3"), ["Unknown dtype", "int3"]),
    ("serve-engine", (*SERVE, "--engine", "tgi"), ["--engine", "'tgi'", "builtin"]),
    ("serve-seed", (*SERVE, "--seed", "-1"), ["--seed", "between 0 and 4294967295"]),
    ("serve-report-every", (*SERVE, "--report-every", "-1"), ["--report-every must be at least 0"]),
    ("serve-health-timeout", (*SERVE, "--health-timeout", "0"), ["--health-timeout must be greater than 0"]),
    (
        "serve-report-dir-is-file",
        (*SERVE, "--report-dir", "serve.yaml"),
        ["--report-dir serve.yaml", "is a file"],
    ),
    (
        "serve-report-dir-unwritable",
        (*SERVE, "--report-dir", f"{UNWRITABLE}/r"),
        ["--report-dir", "permission denied"],
    ),
    (
        "serve-random-init-missing",
        (*SERVE, "--random-init", "nope.json"),
        ["--random-init nope.json", "config.json"],
    ),
    ("serve-json-without-dry-run", ("serve", "serve.yaml", "--json"), ["--json", "--dry-run"]),
    ("serve-lora", (*SERVE, "--lora", "nonsense"), ["NAME=PATH"]),
    # train (checked before the plan, the data or torch is loaded)
    ("train-max-steps-0", (*TRAIN, "--max-steps", "0"), ["--max-steps must be at least 1", "got 0"]),
    ("train-epochs-0", (*TRAIN, "--epochs", "0"), ["--epochs must be at least 1"]),
    ("train-save-steps", (*TRAIN, "--save-steps", "-1"), ["--save-steps must be at least 0"]),
    (
        "train-save-total-limit",
        (*TRAIN, "--save-total-limit", "0"),
        ["--save-total-limit must be at least 1"],
    ),
    ("train-warmup", (*TRAIN, "--warmup-steps", "-1"), ["--warmup-steps must be at least 0"]),
    ("train-lr-0", (*TRAIN, "--lr", "0"), ["--lr must be greater than 0"]),
    ("train-lr-inf", (*TRAIN, "--lr", "inf"), ["--lr", "finite"]),
    (
        "train-lr-scheduler",
        (*TRAIN, "--lr-scheduler", "step"),
        ["--lr-scheduler", "'step'", "cosine, linear, constant"],
    ),
    ("train-weight-decay", (*TRAIN, "--weight-decay", "-0.1"), ["--weight-decay must be at least 0"]),
    ("train-max-grad-norm", (*TRAIN, "--max-grad-norm", "-1"), ["--max-grad-norm must be at least 0"]),
    ("train-seed", (*TRAIN, "--seed", "-1"), ["--seed", "between 0 and 4294967295"]),
    ("train-device", (*TRAIN, "--device", "tpu"), ["--device", "'tpu'", "auto, cuda, npu, mps, cpu"]),
    ("train-nproc-0", (*TRAIN, "--nproc-per-node", "0"), ["--nproc-per-node must be at least 1"]),
    ("train-nnodes-0", (*TRAIN, "--nnodes", "0"), ["--nnodes must be at least 1"]),
    ("train-node-rank-negative", (*TRAIN, "--node-rank", "-1"), ["--node-rank must be at least 0"]),
    ("train-node-rank-outside", (*TRAIN, "--nnodes", "2", "--node-rank", "2"), ["--node-rank 2", "0..1"]),
    ("train-master-port", (*TRAIN, "--master-port", "70000"), ["--master-port", "between 1 and 65535"]),
    ("train-master-addr-empty", (*TRAIN, "--master-addr", ""), ["--master-addr is empty"]),
    (
        "train-output-dir-is-file",
        (*TRAIN, "--output-dir", "train.yaml"),
        ["--output-dir train.yaml", "is a file"],
    ),
    (
        "train-output-dir-unwritable",
        (*TRAIN, "--output-dir", f"{UNWRITABLE}/run"),
        ["--output-dir", "permission denied"],
    ),
    ("train-max-steps-word", (*TRAIN, "--max-steps", "many"), ["--max-steps", "integer"]),
    # export, dash, gpus
    ("export-run-missing", ("export", "/nonexistent/run"), ["/nonexistent/run", "not a directory"]),
    ("export-output-is-file", ("export", ".", "-o", "serve.yaml"), ["--output serve.yaml", "is a file"]),
    (
        "export-output-unwritable",
        ("export", ".", "-o", f"{UNWRITABLE}/out"),
        ["--output", "permission denied"],
    ),
    ("dash-gpus", ("dash", "--gpus", "bogus"), ["Unknown GPU 'bogus'"]),
    (
        "dash-run-missing",
        ("dash", "--run", "/nonexistent/run"),
        ["--run /nonexistent/run", "not a directory"],
    ),
    ("dash-plan-path", ("dash", "--plan-path", "/nonexistent/p.yaml"), ["--plan-path", "does not exist"]),
    ("gpus-backend", ("gpus", "--backend", "tpu"), ["'tpu'", "cuda, rocm, npu, mps"]),
    # padded batches (planner/padding.py): a bad --padding is named with the valid batchings; a --padding that would
    # change nothing (every row a full --seq) is refused, not ignored
    (
        "est-padding",
        (*EST, "--variable-lengths", "--padding", "left"),
        ["--padding", "'left'", "max_length, multiple, longest, unmasked"],
    ),
    (
        "fit-padding",
        (*FIT, "--padding", "left"),
        ["--padding", "'left'", "max_length, multiple, longest, unmasked"],
    ),
    ("size-padding", (*SIZE, "--padding", "left"), ["--padding", "'left'", "max_length"]),
    ("est-padding-full-rows", (*EST, "--padding", "longest"), ["--padding longest", "--variable-lengths"]),
    ("fit-padding-full-rows", (*FIT, "--padding", "multiple"), ["--padding multiple", "--lengths or --data"]),
    ("size-padding-full-rows", (*SIZE, "--padding", "longest"), ["--padding longest", "full --seq rows"]),
    (
        "verify-variable-lengths-dpo",
        (*VERIFY, "--task", "dpo", "--variable-lengths"),
        ["--variable-lengths", "SFT only", "--task dpo"],
    ),
    # runtime features (planner/runtime_features.py): each refusal names its flag and what is valid
    ("est-ckpt-every-0", (*EST, "--ckpt-every", "0"), ["--ckpt-every must be at least 1"]),
    (
        "est-ckpt-position",
        (*EST, "--ckpt-position", "middle"),
        ["--ckpt-position", "'middle'", "first, last"],
    ),
    (
        "est-ckpt-every-no-ckpt",
        (*EST, "--ckpt-every", "2", "--no-grad-ckpt"),
        ["--ckpt-every 2", "--grad-ckpt"],
    ),
    (
        "est-fsdp-cpu-offload-alone",
        (*EST, "--fsdp-cpu-offload"),
        ["--fsdp-cpu-offload", "--fsdp fsdp1 or fsdp2"],
    ),
    ("est-float8-lora", (*EST, "--float8", "--gpus", "h100"), ["--float8", "--method full --precision bf16"]),
    ("est-float8-no-fp8", (*EST, "--method", "full", "--float8", "--gpus", "a100"), ["fp8", "A100"]),
    (
        "est-serve-nf4-torchao",
        (*EST, "--task", "serve", "--quant", "nf4-torchao"),
        ["nf4-torchao", "no serving engine"],
    ),
    (
        "est-serve-offload",
        (*EST, "--task", "serve", "--activation-offload"),
        ["--activation-offload", "--task serve"],
    ),
    ("est-packing-variable", (*EST, "--packing", "--variable-lengths"), ["--packing", "--variable-lengths"]),
    ("est-packing-serve", (*EST, "--task", "serve", "--packing"), ["--packing", "--task serve"]),
    ("fit-nf4-torchao", (*FIT, "--quant", "nf4-torchao"), ["--quant nf4-torchao", "estimate-only", "nf4-dq"]),
    ("size-nf4-torchao", (*SIZE, "--quant", "none,nf4-torchao"), ["--quant nf4-torchao", "estimate-only"]),
    ("verify-float8", (*VERIFY, "--method", "full", "--float8"), ["--float8", "torchao"]),
    ("size-deadline-zero", (*SIZE, "--deadline", "0h"), ["--deadline '0h'", "positive duration"]),
    # fit: a knob flag the planned runtime leaves idle (swiftplan's loop runs the full loss)
    (
        "fit-loss-chunks-idle",
        (*FIT, "--loss-chunks", "4"),
        ["--loss-chunks", "loss is full", "--loss chunked"],
    ),
    ("fit-dataset-tokens-fraction", (*FIT, "--dataset-tokens", "0.5"), ["--dataset-tokens", "'0.5'", "50M"]),
    (
        "fit-padding-packing",
        (*FIT, "--lengths", "lengths.txt", "--padding", "longest", "--packing"),
        ["--padding longest", "--packing", "would change nothing"],
    ),
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A directory holding a tiny serving plan and a tiny training plan."""
    directory = write_tiny_plans(tmp_path_factory.mktemp("bad_input"))
    (directory / "lengths.txt").write_text("100\n200\n300\n")
    return directory


@pytest.mark.parametrize(("args", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_option_is_refused_with_the_flag_and_what_is_valid(workdir, args, fragments):
    before = sorted(p.name for p in workdir.iterdir())
    result = run_cli(*args, cwd=workdir, env={"COLUMNS": "200"})
    assert_refused(result, *fragments)
    assert sorted(p.name for p in workdir.iterdir()) == before  # nothing written (no plan, run dir, study)


def test_the_table_is_large_and_its_ids_unique():
    assert len(CASES) >= 100 and len({c[0] for c in CASES}) == len(CASES)


def test_serve_refuses_a_port_in_use_before_loading_anything(workdir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("serve", "serve.yaml", "--engine", "builtin", "--port", str(port), cwd=workdir)
    assert_refused(result, f"--port {port} is already in use", "another port")


def test_serve_refuses_an_address_of_another_machine(workdir):
    result = run_cli("serve", "serve.yaml", "--engine", "builtin", "--host", "192.0.2.1", cwd=workdir)
    assert_refused(result, "Cannot bind 192.0.2.1", "--host must be an address of this machine")


def test_a_good_storage_url_still_plans(tmp_path):
    result = run_cli(*FIT, "--storage", f"sqlite:///{tmp_path}/study.db", "--json")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "study.db").exists()
