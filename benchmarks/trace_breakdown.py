"""Which tensors one decoder layer and the loss keep alive for backward, per token, from a real trace.

Runs one forward (labels = input_ids, batch 1) of the real transformers/peft model over fake tensors
and lists the storages allocated inside one middle decoder layer (and inside the LM head + loss) that
are still alive when the forward returns -- what autograd saved for backward. Two sequence lengths
give bytes per token and a constant part (AMP keeps per-layer bf16 copies of the weights).

    python benchmarks/trace_breakdown.py                      # Qwen2.5-7B shapes, 8 set-ups
    python benchmarks/trace_breakdown.py --method lora --precision bf16 --targets all-linear
"""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Any

from swiftplan.executors.trace import training_rig
from swiftplan.planner.model_catalog import catalog_spec

QWEN25_7B: dict[str, Any] = dict(catalog_spec("Qwen/Qwen2.5-7B-Instruct").hf_config)


def saved_after_forward(
    config: dict[str, Any], *, layers: int, seq: int, **setup: Any
) -> tuple[Counter[str], Counter[str]]:
    """Bytes by origin still alive after one forward (batch 1): (middle decoder layer, LM head + loss)."""
    config = {**config, "num_hidden_layers": layers}
    windows: dict[str, list[int]] = {}
    with training_rig(config, batch=1, seq=seq, round_bytes=1, **setup) as rig:
        tracker = rig.tracker
        lm = rig.model.get_base_model() if hasattr(rig.model, "get_base_model") else rig.model
        middle = lm.model.layers[layers // 2]
        middle.register_forward_pre_hook(lambda *_: windows.__setitem__("layer", [tracker.allocations]))
        middle.register_forward_hook(lambda *_: windows["layer"].append(tracker.allocations))
        head = lm.get_output_embeddings()
        head.register_forward_pre_hook(lambda *_: windows.__setitem__("loss", [tracker.allocations]))
        loss = rig.forward()
        windows["loss"].append(tracker.allocations)
        out = []
        for window in ("layer", "loss"):
            by_origin: Counter[str] = Counter()
            for _cat, nbytes, origin in tracker.live_storages(*windows[window]):
                by_origin[_shape_free(origin, seq)] += nbytes
            out.append(by_origin)
        del loss
    return out[0], out[1]


def per_token(
    config: dict[str, Any], *, layers: int, seq: int, **setup: Any
) -> tuple[dict[str, tuple[float, int]], dict[str, tuple[float, int]]]:
    """origin -> (bytes per token, constant bytes), fitted from forwards at seq and 2 x seq."""
    a = saved_after_forward(config, layers=layers, seq=seq, **setup)
    b = saved_after_forward(config, layers=layers, seq=2 * seq, **setup)
    fits = []
    for short, long in zip(a, b, strict=True):
        fit = {}
        for origin in sorted(set(short) | set(long)):
            slope = (long[origin] - short[origin]) / seq
            fit[origin] = (slope, round(short[origin] - slope * seq))
        fits.append(fit)
    return fits[0], fits[1]


def _shape_free(origin: str, seq: int) -> str:
    """'mm.default (256, 3584) bfloat16' -> 'mm [S,3584] bfloat16' so both runs name rows alike."""
    op, _, rest = origin.partition(" (")
    shape, _, dtype = rest.rpartition(") ")
    dims = [d.strip() for d in shape.split(",") if d.strip()]
    names = ["S" if d == str(seq) else "S+1" if d == str(seq + 1) else d for d in dims]
    return f"{op.removesuffix('.default').removesuffix('.Tensor')} [{','.join(names)}] {dtype}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--seq", type=int, default=100, help="fit from seq and 2 x seq (batch 1)")
    parser.add_argument("--targets", default="q_proj,v_proj", help="LoRA target modules")
    parser.add_argument("--method", choices=["full", "lora"])
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32", "amp-bf16", "amp-fp16"])
    parser.add_argument("--grad-ckpt", action="store_true")
    args = parser.parse_args()
    setups = (
        [(args.method, args.precision, args.grad_ckpt)]
        if args.method and args.precision
        else [(m, p, g) for m in ("full", "lora") for p in ("bf16", "amp-bf16") for g in (False, True)]
    )
    for method, precision, grad_ckpt in setups:
        setup: dict[str, Any] = {"method": method, "precision": precision, "grad_ckpt": grad_ckpt}
        if method == "lora":
            targets = args.targets if args.targets == "all-linear" else tuple(args.targets.split(","))
            setup.update(lora_rank=64, lora_targets=targets)
        layer, head = per_token(QWEN25_7B, layers=args.layers, seq=args.seq, optimizer="sgd", **setup)
        print(f"\n== {method} {precision} grad_ckpt={grad_ckpt}: kept for backward after forward")
        for title, fit in (("one decoder layer", layer), ("LM head + loss", head)):
            total = sum(v[0] for v in fit.values())
            const = sum(v[1] for v in fit.values())
            print(f"  {title}: {total:.0f} B/token + {const / 2**20:.1f} MiB constant")
            for origin, (slope, c) in sorted(fit.items(), key=lambda kv: (-kv[1][0], -kv[1][1])):
                print(f"    {slope:>9.0f} B/token {c / 2**20:>9.2f} MiB  {origin}")


if __name__ == "__main__":
    main()
