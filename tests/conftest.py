"""Shared fixtures. Tiers: the default run is fast and CPU-only; `slow`, `gpu` and
`integration` markers tag the rest (see pyproject.toml)."""

from __future__ import annotations

import pytest

from swiftplan.planner.model_catalog import catalog_spec


@pytest.fixture(scope="session")
def qwen7b():
    """Qwen2.5-7B architecture (catalog entry; shapes equal to the base model's)."""
    return catalog_spec("Qwen/Qwen2.5-7B-Instruct")


@pytest.fixture(scope="session")
def llama8b():
    """Llama-3.1-8B architecture."""
    return catalog_spec("meta-llama/Llama-3.1-8B")


@pytest.fixture(scope="module")
def release_process_group():  # type: ignore[no-untyped-def]
    """A module that makes DeepSpeed's gloo group destroys it (and DeepSpeed's clone of it) when it ends, so later
    tests in the same process start without a default process group (the FSDP trace refuses to stack its fake
    one on it)."""
    yield
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    from swiftplan.executors.train.worker import _forget_deepspeed_world_group

    _forget_deepspeed_world_group()
