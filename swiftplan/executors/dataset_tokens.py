"""Count the tokens of a training data file for `swiftplan fit --data` (an edge module: reads user files).

With transformers installed and the model's tokenizer available locally (a model directory, or the
Hugging Face cache; nothing is downloaded), the text is tokenized. Otherwise the count is estimated
at ~4 characters per token, the usual figure for English text with BPE vocabularies of 32k-150k.
The result says which was used.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swiftplan.errors import SwiftplanError

CHARS_PER_TOKEN = 4.0
"""Characters per token assumed without a tokenizer (OpenAI's rule of thumb for English text)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class TokenCount:
    """Tokens in a data file and how they were counted."""

    tokens: int
    """Tokens in one pass over the file."""
    method: str
    """'tokenizer <name>' or 'estimate: N characters / 4'."""
    records: int
    """Records (JSONL lines, JSON list items, or 1 for plain text)."""


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _texts(path: Path) -> list[str]:
    """One string per record: the concatenated string values of each JSON record, or the whole text file."""
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SwiftplanError(f"Cannot read data file {path}: {error}.") from error
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        texts = []
        for number, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                try:
                    texts.append("\n".join(_strings(json.loads(line))))
                except json.JSONDecodeError as error:
                    raise SwiftplanError(
                        f"Data file {path}, line {number}, is not valid JSON ({error.msg})."
                    ) from error
        return texts
    if suffix == ".json":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as error:
            raise SwiftplanError(
                f"Data file {path} is not valid JSON (line {error.lineno}: {error.msg})."
            ) from error
        records = data if isinstance(data, list) else [data]
        return ["\n".join(_strings(record)) for record in records]
    return [raw]


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def _has_local_tokenizer(model: str) -> bool:
    """A model directory with tokenizer files, or a hub id whose tokenizer is in the local cache
    (checked before importing transformers, which takes seconds)."""
    path = Path(model).expanduser()
    if path.exists():
        folder = path if path.is_dir() else path.parent
        return any((folder / name).is_file() for name in _TOKENIZER_FILES)
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return any(isinstance(try_to_load_from_cache(model, name), str) for name in _TOKENIZER_FILES)


def _local_tokenizer(model: str) -> Any | None:
    if not _has_local_tokenizer(model):
        return None
    path = Path(model).expanduser()
    source = str(path if path.is_dir() else path.parent) if path.exists() else model
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except Exception:  # no local files, no tokenizer in the directory, remote code: fall back to the estimate
        return None


def count_tokens(path: str | Path, model: str, *, use_tokenizer: bool = True) -> TokenCount:
    """Tokens in `path` (.jsonl, .json, or text) for `model`."""
    path = Path(path)
    if not path.is_file():
        raise SwiftplanError(
            f"Data file {path} does not exist.", hint="Pass --dataset-tokens N (e.g. 50M) instead."
        )
    texts = _texts(path)
    tokenizer = _local_tokenizer(model) if use_tokenizer else None
    if tokenizer is not None:
        tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"])
        return TokenCount(tokens=tokens, method=f"tokenizer of {model}", records=len(texts))
    chars = sum(len(text) for text in texts)
    return TokenCount(
        tokens=max(1, round(chars / CHARS_PER_TOKEN)),
        method=f"estimate: {chars:,} characters / {CHARS_PER_TOKEN:g} (no local tokenizer)",
        records=len(texts),
    )
