"""The objective's own choices `fit` searches around the structure search: where the reference comes
from (on the device, or log-probs precomputed) and where the rollout engine runs (colocated at a memory
fraction, with or without sleep mode, or a server on GPUs of its own). Each variant gets its own study;
the best wins and the others are reported with why they lost. Pure."""

from __future__ import annotations

from dataclasses import dataclass, replace

from swiftplan.planner.objective import ObjectiveSetup, RolloutSetup

ROLLOUT_MEMORY_FRACTIONS = (0.3, 0.5, 0.7)
"""Colocated vLLM memory fractions searched: TRL's default 0.3 and two larger shares."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ObjectivePins:
    """Which objective choices the user fixed (those are not searched)."""

    reference: bool = False
    placement: bool = False
    memory_fraction: bool = False
    sleep: bool = False
    rollout_gpus: bool = False


def describe_variant(objective: ObjectiveSetup) -> str:
    """A variant in a few words: 'reference precomputed', 'vLLM colocated at 0.5 with sleep mode'."""
    rollout = objective.rollout
    if rollout is None or rollout.engine == "hf":
        return (
            f"reference {objective.reference}" if objective.reference != "auto" else "reference on the device"
        )
    if rollout.placement == "server":
        return f"vLLM server on {rollout.gpus} GPU(s)"
    return f"vLLM colocated at {rollout.memory_fraction:g}" + (" with sleep mode" if rollout.sleep else "")


def _server_gpus(world_size: int) -> list[int]:
    """Rollout-server sizes worth trying: powers of two up to half the cluster."""
    sizes, n = [], 1
    while n <= world_size // 2:
        sizes.append(n)
        n *= 2
    return sizes


def _rollout_variants(rollout: RolloutSetup, pins: ObjectivePins, world_size: int) -> list[RolloutSetup]:
    """Colocated at each memory fraction with and without sleep mode, and servers of each size, less
    what the user pinned (a pinned --rollout-gpus or placement rules out the other placement)."""
    if rollout.engine != "vllm":
        return [rollout]
    colocate = (not pins.placement or rollout.placement == "colocate") and not pins.rollout_gpus
    server = (not pins.placement or rollout.placement == "server") and not (
        pins.sleep or pins.memory_fraction
    )
    variants: list[RolloutSetup] = []
    if colocate:
        fractions = (rollout.memory_fraction,) if pins.memory_fraction else ROLLOUT_MEMORY_FRACTIONS
        sleeps = (rollout.sleep,) if pins.sleep else (False, True)
        variants += [
            replace(rollout, placement="colocate", gpus=0, memory_fraction=f, sleep=s)
            for f in fractions
            for s in sleeps
        ]
    if server:
        sizes = (rollout.gpus,) if pins.rollout_gpus else tuple(_server_gpus(world_size))
        variants += [
            replace(rollout, placement="server", gpus=g, sleep=False)
            for g in sizes
            if g >= rollout.tp and g % rollout.tp == 0
        ]
    return variants or [rollout]


def objective_variants(
    objective: ObjectiveSetup, pins: ObjectivePins, *, world_size: int
) -> list[ObjectiveSetup]:
    """Every objective variant to search, the user's own first."""
    variants = [objective]
    if objective.rollout is not None:
        variants += [
            replace(objective, rollout=r) for r in _rollout_variants(objective.rollout, pins, world_size)
        ]
    elif objective.needs_reference and not pins.reference:
        variants += [replace(objective, reference="precomputed")]
    unique: list[ObjectiveSetup] = []
    for variant in variants:
        if variant not in unique:
            unique.append(variant)
    return unique
