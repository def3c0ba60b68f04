"""Real GPU measurements next to swiftplan's estimate, and the calibration constants they imply.

Runs a matrix of training configurations for a few steps each on this machine's CUDA GPU (random-init
models from the catalog configs, some with fewer layers, recorded as such; real peft LoRA; real
bitsandbytes QLoRA when it is importable; pure bf16 = model in bf16, amp-bf16 = fp32 model + autocast;
fused AdamW; non-reentrant checkpointing), plus prefill + decode serving cases, and records
`torch.cuda.max_memory_allocated`, `max_memory_reserved`, the process's memory as nvidia-smi shows it
(NVML), step time and tokens/s next to the estimate for the same configuration (`peak_allocated`,
`device_total`, `tokens_per_s`) in `benchmarks/results/gpu/<device>.csv`. Each case runs in its own
process, so every peak and every CUDA context is that case's alone.

    python benchmarks/gpu_validate.py --quick --out $OUT      # 8 small cases, a few minutes
    python benchmarks/gpu_validate.py                         # the full matrix (7B-9B models, QLoRA)
    python benchmarks/gpu_validate.py --list                  # the matrix, without running it
    python benchmarks/gpu_validate.py --fit [CSV ...]         # fitted constants from the CSVs (no GPU needed)

`--fit` prints, in the shape of `swiftplan/profiles/calibration.json` entries, the CUDA context
(nvidia-smi − reserved at the peak) and the MFU ceiling per accelerator family and per accelerator
(measured tokens/s × the speed model's FLOPs per token / dense peak, divided by the MFU curve's factor for
the run's micro-batch and model size), each the median over the rows it names, and, as an observation,
reserved / allocated − 1 (the allocator model's constants are fitted by benchmarks/calibrate.py). It
never edits calibration.json.

Exit status: 0 when the matrix ran (cases that ran out of memory are rows with status "oom"), 2 without
a CUDA GPU or for bad arguments.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from swiftplan.planner.architecture import matmul_params_per_token
from swiftplan.planner.calibration import constant
from swiftplan.planner.dtypes import compute_dtype
from swiftplan.planner.estimate import estimate_serving, estimate_training
from swiftplan.planner.hardware import Accelerator, Cluster, match_probed_name
from swiftplan.planner.model_catalog import catalog
from swiftplan.planner.model_spec import ModelSpec, spec_from_hf_config
from swiftplan.planner.setup import LoraSetup, ServeSetup, TrainSetup
from swiftplan.planner.train_efficiency import SECTION, MfuCurve

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "gpu"
NO_CUDA = (
    "gpu_validate: no CUDA GPU here (torch.cuda.is_available() is False, or torch is missing); "
    "nothing was measured. Run it on a machine with an NVIDIA GPU, e.g. through the device tool: "
    "`python benchmarks/gpu_validate.py --quick --out $OUT`. `--fit` and `--list` work anywhere."
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Case:
    """One configuration to run for real and to estimate."""

    name: str
    """Unique label (also how a child process finds its case)."""
    model: str
    """Catalog id, or a path to a config.json."""
    layers: int | None = None
    """Run (and estimate) with this many blocks instead of the model's own; None = all."""
    train: TrainSetup | None = None
    """Training configuration; None for a serving case."""
    kbit_prep: bool = True
    """QLoRA: call peft's prepare_model_for_kbit_training (fp32 upcast of non-quantized params), as TRL does."""
    autocast: bool = False
    """Run the forward under torch.autocast in the compute dtype (amp-* always does)."""
    serve: ServeSetup | None = None
    """Serving configuration: `concurrency` sequences, prompt = context - new_tokens."""
    new_tokens: int = 0
    """Serving: tokens decoded after the prefill."""

    @property
    def task(self) -> str:
        """'train' or 'serve'."""
        return "train" if self.train is not None else "serve"


def model_config(case: Case) -> dict[str, Any]:
    """config.json dict of the case's model, with `layers` applied."""
    if case.model in catalog():
        config = dict(catalog()[case.model].config)
    else:
        config = json.loads(Path(case.model).read_text())
    if case.layers is not None:
        config["num_hidden_layers"] = case.layers
        if "layer_types" in config:
            config["layer_types"] = config["layer_types"][: case.layers]
    return config


def model_spec(case: Case) -> ModelSpec:
    """The planner's spec of what actually runs (fewer layers included)."""
    suffix = f" ({case.layers} layers)" if case.layers else ""
    return spec_from_hf_config(model_config(case), name=case.model + suffix, source=case.model)


def _lora(rank: int, targets: tuple[str, ...] = ("q_proj", "v_proj"), dropout: float = 0.0) -> LoraSetup:
    return LoraSetup(rank=rank, targets=targets, dropout=dropout)


ALL = ("all-linear",)


def matrix(quick: bool) -> list[Case]:
    """The cases: `quick` is small models and short runs; the full matrix adds 7B-9B models and QLoRA at scale."""
    t = TrainSetup
    cases = [
        Case(name="q05-full-bf16", model="Qwen/Qwen2.5-0.5B", train=t(method="full", precision="bf16", micro_batch=2, seq_len=1024, grad_ckpt=False)),
        Case(name="q05-full-amp-ckpt", model="Qwen/Qwen2.5-0.5B", train=t(method="full", precision="amp-bf16", micro_batch=2, seq_len=1024)),
        Case(name="q15-lora-all-ckpt", model="Qwen/Qwen2.5-1.5B", train=t(method="lora", lora=_lora(16, ALL), micro_batch=2, seq_len=2048)),
        Case(name="l8b-8L-lora-qv", model="meta-llama/Llama-3.1-8B", layers=8, train=t(method="lora", lora=_lora(16), micro_batch=2, seq_len=2048, grad_ckpt=False)),
        Case(name="q05-qlora-prep", model="Qwen/Qwen2.5-0.5B", autocast=True, train=t(method="qlora", lora=_lora(16, ALL), micro_batch=2, seq_len=1024)),
        Case(name="q05-qlora-noprep", model="Qwen/Qwen2.5-0.5B", kbit_prep=False, train=t(method="qlora", lora=_lora(16, ALL), micro_batch=2, seq_len=1024)),
        Case(name="q15-serve-b4", model="Qwen/Qwen2.5-1.5B", serve=ServeSetup(context=544, concurrency=4, prefill_chunk=4 * 512), new_tokens=32),
        Case(name="q05-full-8bit-adam", model="Qwen/Qwen2.5-0.5B", train=t(method="full", precision="bf16", optimizer="adamw-8bit", micro_batch=2, seq_len=1024)),
    ]  # fmt: skip
    if quick:
        return cases
    return cases + [
        Case(name="q05-lora-qv-b8", model="Qwen/Qwen2.5-0.5B", train=t(method="lora", lora=_lora(8), micro_batch=8, seq_len=512, grad_ckpt=False)),
        Case(name="q15-full-bf16-ckpt", model="Qwen/Qwen2.5-1.5B", train=t(method="full", precision="bf16", micro_batch=1, seq_len=2048)),
        Case(name="q15-full-sgd", model="Qwen/Qwen2.5-1.5B", train=t(method="full", precision="bf16", optimizer="sgd", micro_batch=2, seq_len=1024)),
        Case(name="q15-full-adafactor", model="Qwen/Qwen2.5-1.5B", train=t(method="full", precision="bf16", optimizer="adafactor", micro_batch=1, seq_len=2048)),
        Case(name="l8b-lora-qv-ckpt", model="meta-llama/Llama-3.1-8B", train=t(method="lora", lora=_lora(16), micro_batch=1, seq_len=2048)),
        Case(name="l8b-lora-all-4k", model="meta-llama/Llama-3.1-8B", train=t(method="lora", lora=_lora(16, ALL), micro_batch=2, seq_len=4096)),
        Case(name="l8b-lora-all-drop", model="meta-llama/Llama-3.1-8B", train=t(method="lora", lora=_lora(64, ALL, 0.05), micro_batch=1, seq_len=2048, grad_ckpt=False)),
        Case(name="l8b-qlora-prep", model="meta-llama/Llama-3.1-8B", autocast=True, train=t(method="qlora", lora=_lora(16, ALL), micro_batch=1, seq_len=4096)),
        Case(name="l8b-qlora-noprep", model="meta-llama/Llama-3.1-8B", kbit_prep=False, train=t(method="qlora", lora=_lora(16, ALL), micro_batch=1, seq_len=4096)),
        Case(name="l8b-8L-full-bf16", model="meta-llama/Llama-3.1-8B", layers=8, train=t(method="full", precision="bf16", micro_batch=1, seq_len=2048)),
        Case(name="l8b-8L-full-amp", model="meta-llama/Llama-3.1-8B", layers=8, train=t(method="full", precision="amp-bf16", micro_batch=1, seq_len=2048)),
        Case(name="q7b-lora-r64-all", model="Qwen/Qwen2.5-7B-Instruct", train=t(method="lora", lora=_lora(64, ALL), micro_batch=2, seq_len=2048)),
        Case(name="q7b-8L-full-bf16", model="Qwen/Qwen2.5-7B-Instruct", layers=8, train=t(method="full", precision="bf16", micro_batch=1, seq_len=1024, grad_ckpt=False)),
        Case(name="m7b-lora-qv-eager", model="mistralai/Mistral-7B-v0.1", train=t(method="lora", lora=_lora(16), micro_batch=1, seq_len=1024, attention="eager")),
        Case(name="g9b-8L-lora", model="google/gemma-2-9b", layers=8, train=t(method="lora", lora=_lora(16), micro_batch=1, seq_len=2048, attention="eager")),
        Case(name="q8b-lora-qkvo", model="Qwen/Qwen3-8B", train=t(method="lora", lora=_lora(32, ("q_proj", "k_proj", "v_proj", "o_proj")), micro_batch=2, seq_len=2048)),
        Case(name="q7b-serve-b1", model="Qwen/Qwen2.5-7B-Instruct", serve=ServeSetup(context=2176, concurrency=1, prefill_chunk=2048), new_tokens=128),
        Case(name="l8b-serve-b8", model="meta-llama/Llama-3.1-8B", serve=ServeSetup(context=1088, concurrency=8, prefill_chunk=8 * 1024), new_tokens=64),
    ]  # fmt: skip


# --- the CSV -------------------------------------------------------------------------------------------

FIELDS: dict[str, type] = {
    "date": str, "device": str, "accelerator_id": str, "device_memory_bytes": int, "case": str, "task": str,
    "model": str, "layers": int, "method": str, "precision": str, "quant": str, "double_quant": bool,
    "kbit_prep": bool, "autocast": bool, "lora_rank": int, "lora_targets": str, "lora_dropout": float,
    "optimizer": str, "micro_batch": int, "seq_len": int, "grad_accum": int, "grad_ckpt": bool, "attention": str,
    "concurrency": int, "prompt_len": int, "new_tokens": int, "steps": int, "status": str, "error": str,
    "measured_peak_allocated": int, "measured_peak_reserved": int, "measured_reserved_end": int,
    "measured_device_used": int, "device_used_method": str, "step_time_s": float, "tokens_per_s": float,
    "ttft_s": float, "decode_tokens_per_s": float, "predicted_peak_allocated": int,
    "predicted_device_total": int, "predicted_fits": bool, "predicted_tokens_per_s": float,
    "predicted_bound": str, "predicted_flops_per_token": float, "predicted_mfu_prior": float,
    "peak_flops": float, "predicted_ttft_s": float, "predicted_decode_tokens_per_s": float,
    "torch": str, "transformers": str, "peft": str, "bitsandbytes": str, "driver": str, "cuda": str,
}  # fmt: skip


def _parse(kind: type, text: str) -> Any:
    if text == "":
        return None
    if kind is bool:
        return text.lower() in ("true", "1", "yes")
    return kind(float(text)) if kind is int else kind(text)


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Append rows to a results CSV (header when the file is new); unknown keys are an error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(FIELDS), lineterminator="\n")
        if new:
            writer.writeheader()
        for row in rows:
            unknown = set(row) - set(FIELDS)
            if unknown:
                raise ValueError(f"unknown CSV fields: {sorted(unknown)}")
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in FIELDS})


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a results CSV with their types (blank = None)."""
    with path.open(newline="", encoding="utf-8") as f:
        return [{k: _parse(FIELDS[k], v) for k, v in row.items() if k in FIELDS} for row in csv.DictReader(f)]


def slug(device_name: str) -> str:
    """'NVIDIA H100 80GB HBM3' → 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")


# --- the estimate next to each measurement ---------------------------------------------------------------


def case_fields(case: Case) -> dict[str, Any]:
    """The configuration columns of a case."""
    row: dict[str, Any] = {"case": case.name, "task": case.task, "model": case.model, "layers": case.layers}
    if case.train is not None:
        s = case.train
        lora = s.lora if s.trains_adapters else None
        row |= {
            "method": s.method, "precision": s.precision, "quant": s.quant, "double_quant": s.double_quant,
            "kbit_prep": case.kbit_prep if s.quant != "none" else None,
            "autocast": case.autocast or s.precision.startswith("amp-"),
            "lora_rank": lora.rank if lora else None, "lora_targets": ",".join(lora.targets) if lora else None,
            "lora_dropout": lora.dropout if lora else None, "optimizer": s.optimizer, "micro_batch": s.micro_batch,
            "seq_len": s.seq_len, "grad_accum": s.grad_accum, "grad_ckpt": s.grad_ckpt, "attention": s.attention,
        }  # fmt: skip
    elif case.serve is not None:
        v = case.serve
        row |= {
            "precision": v.dtype,
            "quant": v.quant,
            "concurrency": v.concurrency,
            "new_tokens": case.new_tokens,
        }
        row["prompt_len"] = v.context - case.new_tokens
    return row


def predicted_fields(
    case: Case, accelerator: Accelerator, *, usable_memory_bytes: int | None = None
) -> dict[str, Any]:
    """swiftplan's estimate for the case on one `accelerator`."""
    spec = model_spec(case)
    cluster = Cluster(accelerator=accelerator, usable_memory_bytes=usable_memory_bytes)
    if case.train is not None:
        est = estimate_training(spec, case.train, cluster)
        peak = accelerator.dense_flops_basis(compute_dtype(case.train.precision))
        row = {"peak_flops": peak[1] if peak else None}
        if est.speed is not None:
            row |= {
                "predicted_tokens_per_s": est.speed.tokens_per_s,  # type: ignore[union-attr]
                "predicted_bound": est.speed.bound,
                "predicted_flops_per_token": est.speed.flops_per_token,  # type: ignore[union-attr]
                "predicted_mfu_prior": est.speed.mfu_prior,  # type: ignore[union-attr]
            }
    else:
        assert case.serve is not None
        est = estimate_serving(spec, case.serve, cluster)
        row = {}
        if est.speed is not None:
            row |= {
                "predicted_ttft_s": est.speed.ttft_s,  # type: ignore[union-attr]
                "predicted_decode_tokens_per_s": est.speed.decode_tokens_per_s,  # type: ignore[union-attr]
            }
    return row | {
        "predicted_peak_allocated": est.memory.peak_allocated,
        "predicted_device_total": est.memory.device_total,
        "predicted_fits": est.memory.device_total <= cluster.memory_bytes_per_device,
    }


# --- fitting -------------------------------------------------------------------------------------------


def _family(row: dict[str, Any]) -> str:
    """training_efficiency key of calibration.json for a row's device (as speed.efficiency_prior picks it)."""
    name = str(row["device"]).lower()
    return "consumer" if "geforce" in name or "rtx" in name else "datacenter"


def _shape_factor(row: dict[str, Any]) -> float:
    """The MFU curve's factor below its ceiling for a row's micro-batch and model (train_efficiency.MfuCurve
    with a ceiling of 1), so that measured MFU / factor estimates the family's ceiling."""
    spec = model_spec(Case(name=str(row["case"]), model=str(row["model"]), layers=row["layers"]))
    curve = MfuCurve(
        mfu_max=1.0,
        tokens_half=constant(SECTION, "tokens_half"),
        params_half=constant(SECTION, "params_half"),
    )
    return curve.at(
        tokens_per_micro_batch=row["micro_batch"] * row["seq_len"], params=matmul_params_per_token(spec)
    )


def _entry(values: list[float], source: str, *, digits: int = 4) -> dict[str, Any]:
    value: float = statistics.median(values)
    return {"value": round(value, digits) if digits else round(value), "status": "fitted", "source": source}


def fit(paths: Sequence[Path]) -> dict[str, Any]:
    """Calibration constants fitted to the measured rows of `paths` (medians; see the module docstring)."""
    rows = [(path, i, row) for path in paths for i, row in enumerate(read_rows(path), start=2)]
    ok = [(p, i, r) for p, i, r in rows if r["status"] == "ok"]

    def names(selected: list[tuple[Path, int, dict[str, Any]]]) -> str:
        by_file: dict[str, list[str]] = {}
        for p, i, _ in selected:
            by_file.setdefault(str(p), []).append(str(i))
        return "; ".join(f"{p} lines {','.join(lines)}" for p, lines in by_file.items())

    out: dict[str, Any] = {"runtime_overhead": {}, "training_efficiency": {}, "_per_accelerator": {}}
    ctx = [x for x in ok if x[2]["measured_device_used"] and x[2]["measured_reserved_end"] is not None]
    if ctx:
        out["runtime_overhead"]["cuda_context_bytes"] = _entry(
            [r["measured_device_used"] - r["measured_reserved_end"] for _, _, r in ctx],
            f"median of nvidia-smi (NVML) used - torch reserved at the end of {len(ctx)} runs: {names(ctx)}",
            digits=0,
        )
    frag = [
        x
        for x in ok
        if x[2]["task"] == "train" and x[2]["measured_peak_allocated"] and x[2]["measured_peak_reserved"]
    ]
    if frag:  # observed only: the allocator model's constants are fitted by benchmarks/calibrate.py
        out["_observed"] = {}
        out["_observed"]["reserved_over_allocated_minus_1"] = _entry(
            [r["measured_peak_reserved"] / r["measured_peak_allocated"] - 1 for _, _, r in frag],
            f"median of max_memory_reserved / max_memory_allocated - 1 over {len(frag)} training runs: {names(frag)}",
        )
    mfu = [
        x
        for x in ok
        if x[2]["task"] == "train" and x[2]["quant"] == "none" and x[2]["predicted_bound"] == "compute"
        and x[2]["tokens_per_s"] and x[2]["predicted_flops_per_token"] and x[2]["peak_flops"]
    ]  # fmt: skip
    for key, group_of in (
        ("training_efficiency", _family),
        ("_per_accelerator", lambda r: r["accelerator_id"]),
    ):
        groups: dict[str, list[tuple[Path, int, dict[str, Any]]]] = {}
        for x in mfu:
            groups.setdefault(str(group_of(x[2])), []).append(x)
        for group, members in groups.items():
            out[key][group] = _entry(
                [
                    r["tokens_per_s"] * r["predicted_flops_per_token"] / r["peak_flops"] / _shape_factor(r)
                    for _, _, r in members
                ],
                f"median of measured MFU (tokens/s x the speed model's FLOPs/token / dense peak) / the MFU curve's "
                f"shape factor at each run's tokens per micro-batch and model size (planner/train_efficiency.py), "
                f"i.e. the family's ceiling, over {len(members)} compute-bound unquantized training runs: "
                f"{names(members)}",
            )
    return out


# --- running -------------------------------------------------------------------------------------------


def cuda_available() -> bool:
    """Whether torch is importable and sees a CUDA device."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _run_child(case: Case, quick: bool, steps: int, timeout_s: int) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--run-case", case.name, "--steps", str(steps)]
    cmd += ["--quick"] if quick else []
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=os.environ | {"PYTHONWARNINGS": "ignore"},
        )
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"timed out after {timeout_s} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit {done.returncode}"]
    return {"status": "error", "error": tail[0][:300]}


def run_matrix(cases: Sequence[Case], *, quick: bool, steps: int, out_dir: Path, timeout_s: int) -> Path:
    """Run every case in its own process; append each row to <out_dir>/<device>.csv as it finishes."""
    path: Path | None = None
    device, memory = "unknown-device", None
    for case in cases:
        measured = _run_child(case, quick, steps, timeout_s)
        device = measured.get("device") or device  # a case that failed early reports no device
        memory = measured.get("device_memory_bytes") or memory
        measured |= {"device": device, "device_memory_bytes": memory}
        accelerator = match_probed_name(device, memory)
        row = {"date": date.today().isoformat(), "steps": steps} | case_fields(case) | measured
        if accelerator is not None:
            row |= {"accelerator_id": accelerator.id} | predicted_fields(
                case, accelerator, usable_memory_bytes=memory
            )
        path = out_dir / f"{slug(device)}.csv"
        write_rows(path, [row])
        print(
            f"{case.name:22s} {row['status']:6s} allocated {_gib(row.get('measured_peak_allocated'))} vs "
            f"{_gib(row.get('predicted_peak_allocated'))} GiB predicted; {row.get('tokens_per_s') or row.get('decode_tokens_per_s') or 0:,.0f} tok/s"
            + (f"  [{row['error']}]" if row.get("error") else ""),
            flush=True,
        )
    assert path is not None
    return path


def _gib(value: Any) -> str:
    return "—" if value is None else f"{value / 2**30:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the small matrix (a few minutes)")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="folder for <device>.csv (default: %(default)s)"
    )
    parser.add_argument("--only", help="run the cases whose name contains this")
    parser.add_argument("--steps", type=int, default=4, help="measured steps after one warm-up step")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per case")
    parser.add_argument("--list", action="store_true", help="print the matrix and exit")
    parser.add_argument(
        "--fit",
        nargs="*",
        type=Path,
        metavar="CSV",
        help="fit constants from CSVs (default: all in results/gpu)",
    )
    parser.add_argument("--run-case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cases = matrix(args.quick)
    if args.only:
        cases = [c for c in cases if args.only in c.name]
    if args.fit is not None:
        paths = args.fit or sorted(RESULTS.glob("*.csv"))
        if not paths:
            print(f"gpu_validate --fit: no CSV given and none in {RESULTS}.", file=sys.stderr)
            return 2
        print(json.dumps(fit(paths), indent=2))
        return 0
    if args.list:
        for c in cases:
            print(f"{c.name:22s} {c.model}{f' ({c.layers} layers)' if c.layers else ''} {c.task}")
        return 0
    if not cases:
        print(f"gpu_validate: no case name contains {args.only!r}; see --list.", file=sys.stderr)
        return 2
    if not cuda_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    if args.run_case:
        from gpu_run_case import run_case

        case = next((c for c in matrix(args.quick) if c.name == args.run_case), None)
        if case is None:
            print(f"gpu_validate: no case named {args.run_case!r}.", file=sys.stderr)
            return 2
        print(json.dumps(run_case(case, steps=args.steps, config=model_config(case))))
        return 0
    path = run_matrix(cases, quick=args.quick, steps=args.steps, out_dir=args.out, timeout_s=args.timeout)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
