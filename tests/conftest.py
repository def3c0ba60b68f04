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
