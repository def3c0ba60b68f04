"""Runtime knob flags that only act when another knob has a given value (--loss-chunks with the chunked loss,
--fsdp-sharding with FSDP, ...): typed where they would change nothing, they are refused naming the flag, never
silently dropped. A runtime profile's own values are never typed, so never refused."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
