"""Bad input FILES and values that only the model or the hardware can bound (issue 13): config.json,
plan files, data files, price files, --rank/--gpus against the model and the catalog, and an offline
or unreachable hub. Every row is a malformed input a user could produce; each must be refused with one
clear message (exit 2, no traceback) naming the bad value and what would be valid.

The bad files are written into tmp_path from code; most rows run the CLI in-process, the few that
used to hang or exhaust memory run in a memory-capped subprocess (`run_cli_bounded`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from bad_input_support import CliResult, assert_refused, run_cli, run_cli_bounded
from train_support import TINY_MODEL, write_plan

BASE_CONFIG: dict[str, Any] = json.loads(TINY_MODEL.read_text())
"""The tiny Llama fixture: hidden 64, 4 heads, 2 kv heads, head_dim 16, 256 positions."""
SMALL = "Qwen/Qwen2.5-0.5B"
"""Catalog model used for data and rank rows: 32,768 positions, hidden size 896."""
OFFLINE = {"SWIFTPLAN_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


# --- config.json ------------------------------------------------------------------------------------


def _config(**changes: Any) -> bytes:
    """The tiny config with keys changed (None removes a key)."""
    config = {k: v for k, v in BASE_CONFIG.items() if changes.get(k, 0) is not None}
    config.update({k: v for k, v in changes.items() if v is not None})
    return json.dumps(config).encode()


MOE = {"model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2}

CONFIG_ROWS = [
    ("hidden-fraction", _config(hidden_size=64.5), ("hidden_size=64.5", "whole number of at least 1")),
    ("hidden-word", _config(hidden_size="big"), ("hidden_size='big'", "whole number")),
    ("hidden-bool", _config(hidden_size=True), ("hidden_size=True", "whole number")),
    ("hidden-negative", _config(hidden_size=-64), ("hidden_size=-64", "at least 1")),
    ("hidden-missing", _config(hidden_size=None), ("none of the keys hidden_size", "complete config.json")),
    ("hidden-nan", b'{"model_type": "llama", "hidden_size": NaN, "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 8}', ("hidden_size=nan", "whole number")),  # noqa: E501
    ("hidden-infinite", b'{"model_type": "llama", "hidden_size": Infinity, "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 8}', ("hidden_size=inf", "whole number")),  # noqa: E501
    ("heads-zero", _config(num_attention_heads=0), ("num_attention_heads=0", "at least 1")),
    ("heads-negative", _config(num_attention_heads=-4), ("num_attention_heads=-4", "at least 1")),
    ("heads-text", _config(num_attention_heads="4"), ("num_attention_heads='4'", "whole number")),
    ("layers-huge", _config(num_hidden_layers=10**9), ("num_hidden_layers=1,000,000,000", "at most 1,000 layers")),
    ("layers-zero", _config(num_hidden_layers=0), ("num_hidden_layers=0", "at least 1")),
    ("layers-missing", _config(num_hidden_layers=None), ("none of the keys num_hidden_layers",)),
    ("kv-not-dividing", _config(num_key_value_heads=3), ("4 attention heads and 3 key/value heads", "multiple")),
    ("kv-above-heads", _config(num_key_value_heads=8), ("4 attention heads and 8 key/value heads", "multiple")),
    ("kv-zero", _config(num_key_value_heads=0), ("num_key_value_heads=0", "at least 1")),
    ("heads-not-dividing-hidden", _config(num_attention_heads=5, num_key_value_heads=5, head_dim=None),
     ("hidden_size=64 and 5 attention heads", "not divisible by 5")),
    ("vocab-zero", _config(vocab_size=0), ("vocab_size=0", "at least 1")),
    ("vocab-negative", _config(vocab_size=-512), ("vocab_size=-512", "at least 1")),
    ("vocab-missing", _config(vocab_size=None), ("none of the keys vocab_size",)),
    ("vocab-fraction", _config(vocab_size=512.5), ("vocab_size=512.5", "whole number")),
    ("intermediate-negative", _config(intermediate_size=-5), ("intermediate_size=-5", "at least 1")),
    ("intermediate-word", _config(intermediate_size="wide"), ("intermediate_size='wide'", "whole number")),
    ("head-dim-zero", _config(head_dim=0), ("head_dim=0", "at least 1")),
    ("positions-zero", _config(max_position_embeddings=0), ("max_position_embeddings=0", "at least 1")),
    ("positions-word", _config(max_position_embeddings="long"), ("max_position_embeddings='long'",)),
    ("sliding-window-negative", _config(sliding_window=-1), ("sliding_window=-1", "at least 1")),
    ("model-type-unknown", _config(model_type="gpt9"), ("model_type 'gpt9'", "Supported model types: llama")),
    ("model-type-missing", _config(model_type=None), ("model_type ''", "Supported model types")),
    ("softcap-word", _config(model_type="gemma2", final_logit_softcapping="x"),
     ("final_logit_softcapping='x'", "positive number or null")),
    ("dtype-number", _config(torch_dtype=16), ("torch_dtype=16", "dtype name")),
    ("experts-word", _config(**MOE | {"num_local_experts": "x"}), ("num_local_experts='x'", "whole number")),
    ("experts-top-k-zero", _config(**MOE | {"num_experts_per_tok": 0}), ("num_experts_per_tok=0", "at least 1")),
    ("mlp-only-layers-text", _config(model_type="qwen2_moe", num_experts=4, mlp_only_layers="3"),
     ("mlp_only_layers='3'", "list of layer indices")),
    ("json-list", b"[1, 2, 3]", ("must be a JSON object, found list",)),
    ("json-string", b'"llama"', ("must be a JSON object, found str",)),
    ("json-invalid", b'{"model_type": "llama",\n "hidden_size": }', ("is not valid JSON (line 2",)),
    ("json-empty", b"", ("is not valid JSON (line 1",)),
    ("not-utf8", b'{"model_type": "\xff\xfe"}', ("Cannot read model config", "utf-8")),
]  # fmt: skip


@pytest.mark.parametrize("content, fragments", [r[1:] for r in CONFIG_ROWS], ids=[r[0] for r in CONFIG_ROWS])
def test_bad_config_json_is_refused_with_the_key(tmp_path: Path, content: bytes, fragments: tuple[str, ...]):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_bytes(content)
    assert_refused(run_cli("estimate", str(model), "--gpus", "rtx4090", env=OFFLINE), *fragments)


VERBS_ROWS = [
    ("fit-hidden-word", ("fit",), _config(hidden_size="big"), ("hidden_size='big'",)),
    ("verify-heads-zero", ("verify",), _config(num_attention_heads=0), ("num_attention_heads=0",)),
    ("verify-kv-not-dividing", ("verify",), _config(num_key_value_heads=3), ("3 key/value heads",)),
    ("fit-serve-vocab-zero", ("fit", "--task", "serve"), _config(vocab_size=0), ("vocab_size=0",)),
]


@pytest.mark.parametrize(
    "verb, content, fragments", [r[1:] for r in VERBS_ROWS], ids=[r[0] for r in VERBS_ROWS]
)
def test_bad_config_json_is_refused_by_every_verb(tmp_path: Path, verb: tuple[str, ...], content: bytes,
                                                  fragments: tuple[str, ...]):  # fmt: skip
    (tmp_path / "config.json").write_bytes(content)
    args = (verb[0], str(tmp_path / "config.json"), *verb[1:])
    if verb[0] == "fit":
        args += ("--gpus", "rtx4090")
    assert_refused(run_cli(*args, env=OFFLINE), *fragments)


def test_a_directory_without_config_json(tmp_path: Path):
    assert_refused(
        run_cli("estimate", str(tmp_path), "--gpus", "rtx4090"), "No config.json in", str(tmp_path)
    )


def test_a_billion_layers_as_1e9_is_refused_at_once_not_after_hours(tmp_path: Path):
    (tmp_path / "config.json").write_bytes(_config(num_hidden_layers=1e9))
    result = run_cli_bounded("fit", str(tmp_path), "--gpus", "rtx4090", env=OFFLINE)
    assert_refused(result, "num_hidden_layers=1,000,000,000", "at most 1,000 layers")


# --- values bounded by the model and the hardware ---------------------------------------------------

VALUE_ROWS = [
    ("estimate-rank-above-hidden", ("estimate", SMALL, "--gpus", "rtx4090", "--rank", "1000000"),
     ("LoRA rank 1,000,000", "q_proj (896 × 896)", "at most 896")),
    ("fit-rank-above-hidden", ("fit", SMALL, "--gpus", "rtx4090", "--rank", "1000000"),
     ("--rank 1,000,000", "at most 896")),
    ("fit-rank-list-one-too-big", ("fit", SMALL, "--gpus", "rtx4090", "--rank", "8,1024"), ("--rank 1,024", "at most 896")),
    ("fit-rank-above-q-proj", ("fit", SMALL, "--gpus", "rtx4090", "--rank", "1000", "--targets", "q_proj"),
     ("--rank 1,000", "q_proj (896 × 896)", "at most 896")),
    ("estimate-rank-tiny-model", ("estimate", str(TINY_MODEL), "--gpus", "rtx4090", "--rank", "128",
                                  "--targets", "all-linear"), ("LoRA rank 128", "at most 64")),
    ("gpus-9999-in-one-node", ("fit", SMALL, "--gpus", "9999xA100"), ("9,999 GPUs in one node", "at most 20")),
    ("gpus-21-in-one-node", ("estimate", SMALL, "--gpus", "21xh100"), ("21 GPUs in one node", "NODESxGPUSxMODEL")),
    ("gpus-multi-node-too-wide", ("estimate", SMALL, "--gpus", "2x64xh100"), ("64 GPUs in one node", "8x8xh100-sxm")),
    ("gpus-two-macs-in-one", ("estimate", SMALL, "--gpus", "2xm2-max"), ("a Mac has one GPU", "2x1xm2-max")),
    ("gpus-mac-nodes-of-two", ("estimate", SMALL, "--gpus", "3x2xm2-max"), ("a Mac has one GPU",)),
    ("gpus-zero", ("estimate", SMALL, "--gpus", "0xh100"), ("Bad GPU count '0'", "at least 1")),
    ("gpus-fraction", ("estimate", SMALL, "--gpus", "1.5xh100"), ("Bad GPU count '1.5'", "whole numbers")),
    ("gpus-three-counts", ("estimate", SMALL, "--gpus", "2x2x2xh100"), ("Too many counts", "2x8xH100")),
    ("gpus-unknown-model", ("estimate", SMALL, "--gpus", "4xh900"), ("Unknown GPU 'h900'", "swiftplan gpus")),
]  # fmt: skip


@pytest.mark.parametrize("args, fragments", [r[1:] for r in VALUE_ROWS], ids=[r[0] for r in VALUE_ROWS])
def test_values_beyond_the_model_or_the_hardware(args: tuple[str, ...], fragments: tuple[str, ...]):
    assert_refused(run_cli(*args, env=OFFLINE), *fragments)


@pytest.mark.parametrize("args", [("--seq", "10000000"), ("--task", "serve", "--context", "10000000")])
def test_a_sequence_past_the_models_positions_is_named(args: tuple[str, ...]):
    result = run_cli("estimate", SMALL, "--gpus", "rtx4090", *args, env=OFFLINE)
    text = " ".join(result.output.split())
    assert "Traceback" not in text and "10,000,000 is longer than the 32,768 positions" in text, text


# --- plan files -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """A QLoRA plan of the 0.5B model and a LoRA plan of the tiny model, as plain data."""
    from swiftplan.plan_file import plan_yaml
    from swiftplan.planner.hardware import parse_cluster
    from swiftplan.planner.setup import TrainSetup
    from swiftplan.usecases.estimate import plan_for_setup

    folder = tmp_path_factory.mktemp("plans")
    small = plan_for_setup(SMALL, parse_cluster("rtx4090"), TrainSetup(method="qlora"))
    return {"small": yaml.safe_load(plan_yaml(small)),
            "tiny": yaml.safe_load(write_plan(folder / "tiny.yaml").read_text())}  # fmt: skip


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """An edit that sets a dotted field ('train.lora.rank') of a plan."""

    def edit(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            data = data[key]
        data[last] = value

    return edit


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda data: data.pop(key)


def _both_seq_lens(tokens: int) -> Any:
    """train.seq_len and workload.seq_len edited together (they must agree)."""

    def edit(data: dict[str, Any]) -> None:
        data["train"]["seq_len"] = data["workload"]["seq_len"] = tokens

    return edit


def _many_gpus(data: dict[str, Any]) -> None:
    data["hardware"]["gpus_per_node"] = data["layout"]["gpus"] = data["layout"]["dp"] = 9999
    data["workload"]["global_batch"] = 9999  # a step of one sequence per rank, as the layout splits it


PLAN_ROWS = [
    ("seq-zero", _set("train.seq_len", 0), ("field 'train.seq_len'", "greater than 0", "got 0")),
    ("seq-negative", _set("train.seq_len", -5), ("field 'train.seq_len'", "got -5")),
    ("seq-word", _set("train.seq_len", "long"), ("field 'train.seq_len'", "valid integer", "'long'")),
    ("seq-fraction", _set("train.seq_len", 2048.5), ("field 'train.seq_len'", "2048.5")),
    ("seq-true", _set("train.seq_len", True), ("field 'train.seq_len'", "valid integer", "True")),
    ("seq-float-written", _set("train.seq_len", 1e9), ("field 'train.seq_len'", "valid integer")),
    ("rank-true", _set("train.lora.rank", True), ("field 'train.lora.rank'", "valid integer")),
    ("dropout-true", _set("train.lora.dropout", True), ("field 'train.lora.dropout'", "valid number")),
    ("epochs-true", _set("workload.epochs", True), ("field 'workload.epochs'", "valid number")),
    ("micro-batch-zero", _set("train.micro_batch", 0), ("field 'train.micro_batch'", "greater than 0")),
    ("micro-batch-fraction", _set("train.micro_batch", 2.5), ("field 'train.micro_batch'", "2.5")),
    ("grad-accum-negative", _set("train.grad_accum", -1), ("field 'train.grad_accum'", "got -1")),
    ("rank-zero", _set("train.lora.rank", 0), ("field 'train.lora.rank'", "greater than 0")),
    ("rank-huge", _set("train.lora.rank", 1_000_000), ("LoRA rank 1,000,000", "at most 896")),
    ("dropout-above-one", _set("train.lora.dropout", 1.5), ("field 'train.lora.dropout'", "less than 1")),
    ("targets-empty", _set("train.lora.targets", []), ("field 'train.lora.targets'", "at least 1 item")),
    ("tp-zero", _set("train.parallel.tp", 0), ("field 'train.parallel.tp'", "greater than 0")),
    ("zero-stage-seven", _set("train.parallel.zero", 7), ("field 'train.parallel.zero'", "got 7")),
    ("method-unknown", _set("train.method", "superfast"), ("field 'train.method'", "'superfast'")),
    ("gpus-per-node-9999", _many_gpus, ("at most 20 GPUs", "9,999 per node")),
    ("nodes-zero", _set("hardware.nodes", 0), ("field 'hardware.nodes'", "greater than 0")),
    ("usable-memory-negative", _set("hardware.usable_memory_bytes", -1), ("field 'hardware.usable_memory_bytes'",)),
    ("bandwidth-zero", _set("hardware.inter_node_bytes_per_s", 0), ("field 'hardware.inter_node_bytes_per_s'",)),
    ("accelerator-memory-word", _set("hardware.accelerator.memory_bytes", "lots"),
     ("field 'hardware.accelerator.memory_bytes' must be a whole number", "got 'lots'")),
    ("epochs-zero", _set("workload.epochs", 0), ("field 'workload.epochs'", "greater than 0")),
    ("dataset-tokens-negative", _set("workload.dataset_tokens", -1), ("field 'workload.dataset_tokens'", "got -1")),
    ("workload-seq-word", _set("workload.seq_len", "x"), ("field 'workload.seq_len'", "'x'")),
    ("layout-tp-zero", _set("layout.tp", 0), ("field 'layout.tp'", "greater than 0")),
    ("created-word", _set("created", "yesterday"), ("field 'created'", "'yesterday'")),
    ("model-missing", _drop("model"), ("missing field 'model'",)),
    ("task-unknown", _set("task", "pretrain"), ("field 'task'", "'pretrain'")),
    ("schema-version-word", _set("schema_version", "two"), ("schema_version 'two'", "reads versions 1, 2")),
    ("model-unknown", _set("model", "no-such-model-anywhere"), ("Unknown model 'no-such-model-anywhere'",)),
]  # fmt: skip


@pytest.mark.parametrize("edit, fragments", [r[1:] for r in PLAN_ROWS], ids=[r[0] for r in PLAN_ROWS])
def test_hand_edited_plan_files_name_the_field(tmp_path: Path, plans: dict[str, Any], edit: Any,
                                               fragments: tuple[str, ...]):  # fmt: skip
    data = json.loads(json.dumps(plans["small"]))
    edit(data)
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(data))
    result = run_cli("estimate", str(tmp_path / "plan.yaml"), env=OFFLINE)
    assert_refused(result, "plan.yaml", *fragments)


TRAIN_PLAN_ROWS = [
    ("seq-past-positions", _both_seq_lens(10**9), ("Sequence length 1,000,000,000", "256 positions")),
    ("rank-past-matrices", _set("train.lora.rank", 1000), ("LoRA rank 1,000", "at most 64")),
    ("micro-batch-word", _set("train.micro_batch", "two"), ("field 'train.micro_batch'", "'two'")),
]  # fmt: skip


@pytest.mark.parametrize(
    "edit, fragments", [r[1:] for r in TRAIN_PLAN_ROWS], ids=[r[0] for r in TRAIN_PLAN_ROWS]
)
def test_train_refuses_a_plan_the_model_cannot_run(tmp_path: Path, plans: dict[str, Any], edit: Any,
                                                   fragments: tuple[str, ...]):  # fmt: skip
    data = json.loads(json.dumps(plans["tiny"]))
    edit(data)
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(data))
    assert_refused(run_cli("train", str(tmp_path / "plan.yaml"), "--dry-run", env=OFFLINE), *fragments)


def test_a_plan_with_a_billion_token_sequence_is_refused_within_the_memory_cap(
    tmp_path: Path, plans: dict[str, Any]
):
    data = json.loads(json.dumps(plans["tiny"]))
    data["train"]["seq_len"] = data["workload"]["seq_len"] = 10**9
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(data).replace("1000000000", "1.0e+9"))
    result = run_cli_bounded(
        "train", "plan.yaml", "--data", str(TINY_MODEL.parent.parent / "text.jsonl"), cwd=tmp_path
    )
    # 1.0e+9 is a float where the plan needs a whole number: refused at the field, before any model
    # loads (the int 10**9 row in TRAIN_PLAN_ROWS meets the model's positions check instead).
    assert_refused(result, "field 'train.seq_len'", "valid integer", "1000000000.0")


@pytest.mark.parametrize(
    "content, fragments",
    [(b"train: [unclosed\n", ("is not valid YAML (line 2, column 1)",)), (b"\xff\xfe\x00", ("is not valid YAML",)),
     (b"- a\n- list\n", ("is not a swiftplan plan file",))],
    ids=["yaml-unclosed", "yaml-not-utf8", "yaml-list"],
)  # fmt: skip
def test_corrupt_plan_files(tmp_path: Path, content: bytes, fragments: tuple[str, ...]):
    (tmp_path / "plan.yaml").write_bytes(content)
    assert_refused(run_cli("estimate", str(tmp_path / "plan.yaml")), *fragments)


# --- data files -------------------------------------------------------------------------------------

TEXT = b'{"text": "hello"}\n'
LONG_LINE = json.dumps({"text": "x" * (2 * 2**20)}).encode() + b"\n"
"""2 MiB in one record: over the 1 MiB (32,768 positions × 32 bytes) the 0.5B model can hold."""

DATA_ROWS = [
    ("empty-jsonl", "d.jsonl", b"", ("holds no text", "0 records")),
    ("blank-lines-only", "d.jsonl", b"\n\n  \n", ("holds no text", "0 records")),
    ("malformed-line-2", "d.jsonl", TEXT + b'{"text": "unclosed\n', ("d.jsonl line 2: not valid JSON",)),
    ("not-utf8", "d.jsonl", b'{"text": "\xff\xfe"}\n', ("d.jsonl line 1 is not UTF-8", "Save the file as UTF-8")),
    ("latin1-line-3", "d.jsonl", TEXT * 2 + '{"text": "café"}\n'.encode("latin-1"), ("d.jsonl line 3 is not UTF-8",)),
    ("list-record", "d.jsonl", b"[1, 2]\n", ("line 1: expected a JSON object, got list",)),
    ("number-record", "d.jsonl", b"42\n", ("line 1: expected a JSON object, got int",)),
    ("unknown-keys", "d.jsonl", b'{"a": 1, "b": 2}\n', ("unknown record format (keys: a, b)", "alpaca")),
    ("empty-text", "d.jsonl", b'{"text": ""}\n', ("line 1: 'text' is empty",)),
    ("text-not-string", "d.jsonl", b'{"text": 5}\n', ("'text' must be a string, got int",)),
    ("mixed-formats", "d.jsonl", TEXT + b'{"messages": []}\n', ("line 2: expected a text record",)),
    ("chat-without-assistant", "d.jsonl", b'{"messages": [{"role": "user", "content": "q"}]}\n',
     ("'messages' has no assistant turn",)),
    ("chat-bad-role", "d.jsonl", b'{"messages": [{"role": "bot", "content": "q"}]}\n', ("role 'bot'", "assistant")),
    ("line-too-long", "d.jsonl", LONG_LINE, ("line 1 is 1,048,577 bytes or more", "1,048,576 bytes",
                                             "32,768 positions")),
    ("csv-without-text-column", "d.csv", b"a,b\n1,2\n", ("d.csv line 2: unknown record format (keys: a, b)",)),
    ("csv-header-only", "d.csv", b"text\n", ("holds no text", "0 records")),
    ("csv-extra-field", "d.csv", b"text\nfine\nnot,fine\n", ("d.csv line 3: more fields than the header",)),
    ("csv-not-utf8", "d.csv", b"text\ncaf\xe9\n", ("d.csv", "is not UTF-8")),
    ("csv-field-too-long", "d.csv", b"text\n" + b"y" * (2 * 2**20) + b"\n", ("d.csv line", "1,048,576 bytes")),
    ("json-invalid", "d.json", b'[{"text": "a"},\n {"text": ]', ("d.json is not valid JSON (line 2",)),
    ("json-array-of-numbers", "d.json", b"[1, 2, 3]", ("d.json record 1: expected a JSON object, got int",)),
    ("json-empty-array", "d.json", b"[]", ("holds no text", "0 records")),
    ("unsupported-suffix", "d.xlsx", b"PK\x03\x04", ("Unsupported data file type '.xlsx'", ".jsonl", "plain text (.txt, .md, .text)")),
    ("txt-empty", "d.txt", b"", ("holds no text",)),
    ("txt-not-utf8", "d.txt", b"ok\n\xff\n", ("d.txt line 2 is not UTF-8",)),
    ("txt-line-too-long", "d.txt", b"z" * (2 * 2**20), ("d.txt line 1", "records are limited to 1,048,576 bytes")),
]  # fmt: skip


@pytest.mark.parametrize(
    "name, content, fragments", [r[1:] for r in DATA_ROWS], ids=[r[0] for r in DATA_ROWS]
)
def test_fit_data_files(tmp_path: Path, name: str, content: bytes, fragments: tuple[str, ...]):
    (tmp_path / name).write_bytes(content)
    result = run_cli("fit", SMALL, "--gpus", "rtx4090", "--data", str(tmp_path / name), env=OFFLINE)
    assert_refused(result, *fragments)


def test_fit_data_that_is_a_directory_or_missing(tmp_path: Path):
    assert_refused(run_cli("fit", SMALL, "--gpus", "rtx4090", "--data", str(tmp_path)), "is a directory")
    missing = run_cli("fit", SMALL, "--gpus", "rtx4090", "--data", str(tmp_path / "nope.jsonl"))
    assert_refused(missing, "nope.jsonl does not exist", "--dataset-tokens")


TRAIN_DATA_ROWS = [
    ("empty", "d.jsonl", b"\n", ("has no records",)),
    ("malformed", "d.jsonl", TEXT + b"{oops\n", ("d.jsonl line 2: not valid JSON",)),
    ("not-utf8-csv", "d.csv", b"text\n\xff\n", ("d.csv", "not UTF-8")),
    ("csv-without-text", "d.csv", b"title,body\nx,y\n", ("unknown record format (keys: body, title)",)),
    ("line-past-default-bound", "d.jsonl", json.dumps({"text": "w" * (6 * 2**20)}).encode(),
     ("d.jsonl line 1", "5,242,880 bytes", "163,840 positions")),
]  # fmt: skip


@pytest.mark.parametrize("name, content, fragments", [r[1:] for r in TRAIN_DATA_ROWS], ids=[r[0] for r in TRAIN_DATA_ROWS])  # fmt: skip
def test_train_data_files(tmp_path: Path, plans: dict[str, Any], name: str, content: bytes,
                          fragments: tuple[str, ...]):  # fmt: skip
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plans["tiny"]))
    (tmp_path / name).write_bytes(content)
    result = run_cli("train", str(tmp_path / "plan.yaml"), "--dry-run", "--data", str(tmp_path / name))
    assert_refused(result, *fragments)


def test_train_data_that_is_a_directory(tmp_path: Path, plans: dict[str, Any]):
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plans["tiny"]))
    (tmp_path / "data").mkdir()
    result = run_cli("train", str(tmp_path / "plan.yaml"), "--dry-run", "--data", str(tmp_path / "data"))
    assert_refused(result, "is a directory")


def test_a_60_mb_line_is_refused_without_reading_it_whole(tmp_path: Path):
    (tmp_path / "big.jsonl").write_bytes(b'{"text": "' + b"q" * (60 * 2**20) + b'"}\n')
    result = run_cli_bounded(
        "fit", SMALL, "--gpus", "rtx4090", "--data", "big.jsonl", cwd=tmp_path, env=OFFLINE
    )
    assert_refused(result, "big.jsonl line 1", "1,048,576 bytes")


# --- price files ------------------------------------------------------------------------------------

PRICE_ROWS = [
    ("future-date", "h100-sxm: {usd_per_gpu_hour: 2.0, as_of: 2099-01-01}", ("as_of is 2099-01-01, in the future",)),
    ("future-date-quoted", "h100-sxm: {usd_per_gpu_hour: 2.0, as_of: '2999-12-31'}", ("2999-12-31, in the future",)),
    ("negative-price", "h100-sxm: {usd_per_gpu_hour: -2}", ("usd_per_gpu_hour must be a positive number", "-2")),
    ("zero-purchase", "h100-sxm: {purchase_usd: 0}", ("purchase_usd must be a positive number", "got 0")),
    ("word-price", "h100-sxm: {usd_per_gpu_hour: cheap}", ("usd_per_gpu_hour", "'cheap'")),
    ("bool-price", "h100-sxm: {usd_per_gpu_hour: true}", ("usd_per_gpu_hour", "True")),
    ("nan-price", "h100-sxm: {usd_per_gpu_hour: .nan}", ("usd_per_gpu_hour must be a positive number", "nan")),
    ("no-price-fields", "h100-sxm: {source: my quote}", ("gives neither usd_per_gpu_hour nor purchase_usd",)),
    ("unknown-key", "h100-sxm: {usd_per_gpu_hour: 2, colour: red}", ("unknown key(s) colour", "valid keys")),
    ("unknown-accelerator", "h900: {usd_per_gpu_hour: 2}", ("Unknown GPU 'h900'",)),
    ("bad-date", "h100-sxm: {usd_per_gpu_hour: 2, as_of: last week}", ("as_of must be a date like", "'last week'")),
    ("entry-not-mapping", "h100-sxm: 2.0", ("h100-sxm must map to prices", "2.0")),
    ("empty-source", "h100-sxm: {usd_per_gpu_hour: 2, source: ''}", ("source must be text",)),
    ("empty-file", "", ("the price file is empty",)),
    ("list", "- h100-sxm\n- 2.0\n", ("maps accelerator ids to prices, got list",)),
    ("invalid-yaml", "h100-sxm: {usd_per_gpu_hour: 2\n", ("is not valid YAML",)),
    ("alias-twice", "h100-sxm: {usd_per_gpu_hour: 2}\nH100 SXM5 80GB: {usd_per_gpu_hour: 3}\n", ("appears twice",)),
]  # fmt: skip


@pytest.mark.parametrize("text, fragments", [r[1:] for r in PRICE_ROWS], ids=[r[0] for r in PRICE_ROWS])
def test_price_files(tmp_path: Path, text: str, fragments: tuple[str, ...]):
    (tmp_path / "prices.yaml").write_text(text)
    result = run_cli("size", SMALL, "--accelerators", "h100-sxm", "--prices", str(tmp_path / "prices.yaml"))
    assert_refused(result, "prices.yaml", *fragments)


# --- the hub ----------------------------------------------------------------------------------------


def _timed(*args: str, env: dict[str, str]) -> tuple[CliResult, float]:
    start = time.monotonic()
    result = run_cli(*args, env=env)
    return result, time.monotonic() - start


HUB_ROWS = [
    ("hf-hub-offline", {"HF_HUB_OFFLINE": "1"}, ("not in the local Hugging Face cache", "HF_HUB_OFFLINE")),
    ("swiftplan-offline", {"SWIFTPLAN_OFFLINE": "yes"}, ("the hub is off",)),
    ("unreachable-endpoint", {"HF_ENDPOINT": "http://127.0.0.1:9", "HTTPS_PROXY": "", "https_proxy": "",
                              "ALL_PROXY": "", "all_proxy": "", "HF_HUB_OFFLINE": "0", "SWIFTPLAN_OFFLINE": ""},
     ("the hub cannot be reached", "127.0.0.1:9")),
]  # fmt: skip


@pytest.mark.parametrize("env, fragments", [r[1:] for r in HUB_ROWS], ids=[r[0] for r in HUB_ROWS])
def test_an_unknown_hub_id_without_a_hub_answers_at_once(tmp_path: Path, env: dict[str, str],
                                                         fragments: tuple[str, ...]):  # fmt: skip
    env = {"HF_HUB_CACHE": str(tmp_path), **env}
    result, elapsed_s = _timed("estimate", "someone/not-a-catalog-model", "--gpus", "rtx4090", env=env)
    assert_refused(result, "someone/not-a-catalog-model", *fragments)
    assert elapsed_s < 5, f"{elapsed_s:.1f} s: the hub was retried"
