"""Runtime knob flags that only act when another knob has a given value (--loss-chunks with the chunked loss,
--fsdp-sharding with FSDP, ...): typed where they would change nothing, they are refused naming the flag, never
silently dropped. A runtime profile's own values are never typed, so never refused."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from swiftplan.errors import SwiftplanError
from swiftplan.planner.runtime import TRAIN_KNOB_OPTIONS
from swiftplan.planner.setup import RuntimeKnobs


def _loss_knob(knobs: Mapping[str, Any], flag: str, loss: str) -> tuple[str, str] | None:
    if knobs["loss"] == loss:
        return None
    return (
        f"{flag} only sizes the {loss} loss, and this job's loss is {knobs['loss']}",
        f"Add --loss {loss}, or drop {flag}.",
    )


KNOB_RULES: dict[str, Any] = {
    "loss_chunks": lambda k: _loss_knob(k, "--loss-chunks", "chunked"),
    "loss_chunk_tokens": lambda k: _loss_knob(k, "--loss-chunk-tokens", "fused_linear"),
    "fsdp_sharding": lambda k: None if k["fsdp"] != "none" else (
        "--fsdp-sharding chooses how FSDP shards, and this job runs without FSDP",
        "Add --fsdp fsdp1 or fsdp2, or drop --fsdp-sharding."),
    "fsdp_shard_group": lambda k: None if k["fsdp"] != "none" and k["fsdp_sharding"] == "hybrid_shard" else (
        "--fsdp-shard-group sizes the shard groups of FSDP's hybrid_shard, and this job "
        + ("runs without FSDP" if k["fsdp"] == "none" else f"uses --fsdp-sharding {k['fsdp_sharding']}"),
        "Add --fsdp fsdp2 --fsdp-sharding hybrid_shard, or drop --fsdp-shard-group."),
    "ckpt_position": lambda k: None if k["ckpt_every"] > 1 else (
        "--ckpt-position picks which block of every --ckpt-every K is checkpointed, and here every block is "
        "(--ckpt-every 1)", "Add --ckpt-every 2 (or more), or drop --ckpt-position."),
}  # fmt: skip
"""Knob flags that only act when another knob has a given value: each → (why it is idle, what to do) or None."""


def knob_dict(knobs: RuntimeKnobs) -> dict[str, Any]:
    """The knob values of `knobs` by option name."""
    return {name: getattr(knobs, name) for name in TRAIN_KNOB_OPTIONS}


def refuse_idle_knobs(typed: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]]) -> None:
    """A typed knob flag that changes nothing under every one of `candidates` (knob sets): refused, naming it."""
    for name, rule in KNOB_RULES.items():
        if name in typed and candidates and all(rule(k) for k in candidates):
            reason, hint = rule(candidates[0])
            raise SwiftplanError(f"{reason}: it would change nothing.", hint=hint)


LORA_SHAPE_OPTIONS = ("rank", "targets", "lora_dropout")
"""Options that shape LoRA adapters: idle when every planned method trains none (full fine-tuning)."""


def refuse_idle_lora_options(method: str | Sequence[str] | None, typed: Collection[str]) -> None:
    """--rank, --targets or --lora-dropout typed (`typed`: the option names) while --method allows only full
    fine-tuning, which trains no adapters: refused naming them, instead of planned without them. `method` is
    one method, fit's and size's comma list, or their parsed tuple; None (not pinned) allows adapters."""
    idle = [n for n in LORA_SHAPE_OPTIONS if n in typed]
    listed = method.split(",") if isinstance(method, str) else (method or ())
    methods = {m.strip() for m in listed if m.strip()}
    if not idle or not methods or methods & {"lora", "qlora"}:
        return
    flags = ", ".join("--" + n.replace("_", "-") for n in idle)
    one = len(idle) == 1
    raise SwiftplanError(
        f"{flags} {'shapes' if one else 'shape'} LoRA adapters, and --method {','.join(sorted(methods))} trains "
        f"none: {'it' if one else 'they'} would change nothing.",
        hint=f"Drop {flags}, or use --method lora or qlora.",
    )
