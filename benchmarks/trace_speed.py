"""How long the tracing verifier takes on 7B and 14B configs (CPU only, no real memory).

    python benchmarks/trace_speed.py            # Qwen2.5-7B and Qwen2.5-14B, LoRA r64, batch 2, seq 2048
    python benchmarks/trace_speed.py --json

Shapes from the models' config.json on the Hugging Face Hub (Qwen/Qwen2.5-7B, Qwen/Qwen2.5-14B).
The first trace in a process also pays for importing transformers/peft (about 2-3 s); the script
prints that separately.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from swiftplan.planner.model_catalog import catalog_spec
from swiftplan.units import format_gib

QWEN25_7B: dict[str, Any] = dict(catalog_spec("Qwen/Qwen2.5-7B-Instruct").hf_config)
QWEN25_14B: dict[str, Any] = dict(catalog_spec("Qwen/Qwen2.5-14B").hf_config)
CASES = {"Qwen2.5-7B": QWEN25_7B, "Qwen2.5-14B": QWEN25_14B}
SETUP: dict[str, Any] = {
    "method": "lora",
    "precision": "bf16",
    "lora_rank": 64,
    "lora_targets": ("q_proj", "v_proj"),
    "batch": 2,
    "seq": 2048,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per case")
    args = parser.parse_args()
    started = time.perf_counter()
    import peft  # noqa: F401  (import cost reported on its own)
    import transformers  # noqa: F401

    from swiftplan.executors.trace import trace_training

    import_s = time.perf_counter() - started
    if not args.json:
        print(f"import transformers+peft: {import_s:.1f} s")
    for name, config in CASES.items():
        result = trace_training(config, **SETUP)
        row = {
            "case": name,
            **{k: v for k, v in SETUP.items() if k != "lora_targets"},
            "seconds": round(result.seconds, 2),
            "peak_bytes": result.peak_bytes,
            "params": result.params,
            "trainable_params": result.trainable_params,
        }
        if args.json:
            print(json.dumps(row))
        else:
            print(
                f"{name}: {result.seconds:.1f} s, peak {format_gib(result.peak_bytes)}, "
                f"params {result.params:,} (trainable {result.trainable_params:,})"
            )


if __name__ == "__main__":
    main()
