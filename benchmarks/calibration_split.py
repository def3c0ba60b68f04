"""Which published rows may tune constants (fit set) and which only test them (test set).

Rule, fixed before any error was looked at: a row's *source* is its publication (a README table, an
example script, a blog post, an issue thread): the `source` column up to its first " (", which drops
commit/date remarks, lower-cased and stripped. The source goes to the fit set when the first byte of the
SHA-256 of that key is even, otherwise to the test set. All rows of one publication land on the same side,
so the fit set and the test set never share a source; the split does not change when rows are added to
other sources.

Also here: the runtime each source measured (for the per-runtime table), from words in the source.
"""

from __future__ import annotations

import hashlib
from typing import Literal

Split = Literal["fit", "test"]

RUNTIMES: tuple[tuple[str, str], ...] = (
    ("ms-swift", "ms-swift"),
    ("torchtune", "torchtune"),
    ("llama-factory", "llamafactory"),
    ("llamafactory", "llamafactory"),
    ("unsloth", "hf"),  # the rows compare the HF + FA2 baseline, not Unsloth
    ("qwenlm/qwen", "hf"),  # finetune.py on transformers' Trainer
    ("vllm", "vllm"),
    ("fastchat", "hf"),
    ("meta-llama/llama", "torch"),
    ("huggingface", "hf"),
    ("peft", "hf"),
    ("deepspeed", "analytic"),
    ("zero", "analytic"),
    ("qlora", "hf"),
)


def source_key(source: str) -> str:
    """The publication a row comes from: the source text before its first ' (', lower-cased."""
    return source.split(" (")[0].strip().lower()


def split_of(source: str) -> Split:
    """'fit' or 'test' for a row of this source (first byte of sha256(source_key) even → fit)."""
    digest = hashlib.sha256(source_key(source).encode("utf-8")).digest()
    return "fit" if digest[0] % 2 == 0 else "test"


def runtime_of(source: str) -> str:
    """The framework whose run a source measured (first keyword that matches), or 'other'."""
    text = source.lower()
    return next((runtime for word, runtime in RUNTIMES if word in text), "other")
