"""Resolving what a request names: the model (catalog, local path made absolute, or hub), the hardware
(catalog string or the probe), the data's token count and the host RAM for offload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from swiftplan.errors import SwiftplanError
from swiftplan.planner.hardware import Cluster, parse_cluster
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.units import GiB

DEFAULT_HOST_RAM_BYTES = 64 * GiB
"""Host RAM per node assumed for offload when the cluster comes from the catalog."""
DEFAULT_DATASET_TOKENS = 100_000_000
"""Tokens assumed when neither a token count nor a data file is given (only scales time and cost)."""


def model_reference(model: str) -> str:
    """How a plan names the model: a local path (file or directory) becomes absolute, so the plan works
    from any directory; catalog names and hub ids stay as given."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def resolve_model(model: str) -> ModelSpec:
    """The architecture behind a model reference (catalog, local config.json, or the hub)."""
    from swiftplan.executors.model_source import resolve_model as resolve

    return resolve(model_reference(model))


def is_auto(gpus: str) -> bool:
    """Whether --gpus asks to probe this machine."""
    return gpus.strip().lower() == "auto"


def resolve_cluster(gpus: str) -> Cluster:
    """A cluster from a catalog string, or from the probe for 'auto'."""
    if is_auto(gpus):
        from swiftplan.executors.probe import cluster_from_probe, probe

        return cluster_from_probe(probe())
    return parse_cluster(gpus)


def host_ram(host_ram_bytes: int | None, gpus: str) -> tuple[int, str]:
    """(bytes per node, where the figure came from): given, probed with --gpus auto, or the default."""
    if host_ram_bytes is not None:
        if host_ram_bytes < 0:
            raise SwiftplanError(f"--host-ram must be zero or more GiB, got {host_ram_bytes / GiB:g}.")
        return host_ram_bytes, "--host-ram"
    if is_auto(gpus):
        from swiftplan.executors.probe.host import probe_host

        available = probe_host(".").ram_available_bytes
        if available is not None:
            return available, "probed available RAM"
    return DEFAULT_HOST_RAM_BYTES, "default for catalog clusters"


def dataset_tokens(
    tokens: int | None, data: str | None, model: str, max_positions: int | None = None
) -> tuple[int, str]:
    """(tokens in one epoch, where the figure came from): given, counted from a data file (no record
    longer than the model's `max_positions` can hold is read), or assumed."""
    if tokens is not None and data is not None:
        raise SwiftplanError("Pass either --dataset-tokens or --data, not both.")
    if tokens is not None:
        if tokens <= 0:
            raise SwiftplanError(f"--dataset-tokens must be positive, got {tokens}.")
        return tokens, "--dataset-tokens"
    if data is not None:
        from swiftplan.executors.dataset_tokens import count_tokens

        counted = count_tokens(data, model, max_positions=max_positions)
        return counted.tokens, f"{data}: {counted.records:,} records, {counted.method}"
    return DEFAULT_DATASET_TOKENS, "assumed; pass --dataset-tokens or --data"


def sample_lengths(
    data: str | None, lengths: str | None, model: str, max_positions: int | None = None, *, task: str = "sft"
) -> Any:
    """Per-sample token lengths (`SampleLengths`) from --data (the model's tokenizer when local, else the
    characters/4 approximation; a preference `task` reads preference records, one length per pair) or
    --lengths (one count per line); None when neither is given."""
    if data is not None and lengths is not None:
        raise SwiftplanError("Pass either --data or --lengths, not both.")
    from swiftplan.executors.dataset_tokens import preference_lengths, read_lengths
    from swiftplan.executors.dataset_tokens import sample_lengths as count

    if lengths is not None:
        return read_lengths(lengths)
    if data is None:
        return None
    if task != "sft":
        return preference_lengths(data, model, task, max_positions=max_positions)
    return count(data, model, max_positions=max_positions)
