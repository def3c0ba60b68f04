"""Count the tokens of a training data file for `swiftplan fit --data` (an edge module: reads user files).

With transformers installed and the model's tokenizer available locally (a model directory, or the
Hugging Face cache; nothing is downloaded), the text is tokenized. Otherwise the count is estimated
at ~4 characters per token, the usual figure for English text with BPE vocabularies of 32k-150k.
The result says which was used.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swiftplan.errors import SwiftplanError
from swiftplan.executors.train.data import (
    SUFFIXES,
    Record,
    check_data_path,
    iter_records,
    max_record_bytes,
    text_lines,
)

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
    """Records (JSONL lines, JSON list items, CSV rows, or lines of plain text)."""


_TEXT_SUFFIXES = (".txt", ".md", ".text")
"""Plain-text files: every line is text (no record format)."""


def _record_text(record: Record) -> str:
    return "\n".join([record.prompt, record.answer, *(content for _, content in record.messages)]).strip()


def _texts(path: Path, max_positions: int | None) -> Iterator[str]:
    """The text of each record: the training formats swiftplan train reads (JSONL, JSON, CSV, Parquet),
    or each line of a plain-text file; no line or record longer than the model can read is loaded."""
    if path.suffix.lower() not in SUFFIXES + _TEXT_SUFFIXES:
        raise SwiftplanError(
            f"Unsupported data file type {path.suffix or '(no suffix)'!r} for {path.name}.",
            hint=f"Use a training file ({', '.join(SUFFIXES)}) or plain text ({', '.join(_TEXT_SUFFIXES)}).",
        )
    if path.suffix.lower() not in _TEXT_SUFFIXES:
        for _, record in iter_records(path, max_positions=max_positions):
            yield _record_text(record)
        return
    for _, text in text_lines(path, max_record_bytes(max_positions)):
        yield text


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


def count_tokens(
    path: str | Path, model: str, *, use_tokenizer: bool = True, max_positions: int | None = None
) -> TokenCount:
    """Tokens in `path` for `model`: a training data file (.jsonl, .json, .csv, .parquet) or plain text
    (.txt, .md). `max_positions` (the model's context) bounds how long one record may be."""
    path = Path(path)
    check_data_path(path, "Pass --dataset-tokens N (e.g. 50M) instead.")
    tokenizer = _local_tokenizer(model) if use_tokenizer else None
    records = chars = tokens = 0
    batch: list[str] = []

    def flush() -> int:
        if tokenizer is None or not batch:
            return 0
        ids: list[list[int]] = tokenizer(batch, add_special_tokens=True)["input_ids"]
        batch.clear()
        return sum(len(row) for row in ids)

    for text in _texts(path, max_positions):
        records += 1
        chars += len(text)
        if tokenizer is not None:
            batch.append(text)
            if len(batch) >= 1000:
                tokens += flush()
    if records == 0 or chars == 0:
        raise SwiftplanError(
            f"Data file {path} holds no text ({records:,} records, 0 characters).",
            hint="Point --data at a JSONL/JSON/CSV/Parquet file with text, alpaca, chat or ShareGPT records.",
        )
    if tokenizer is not None:
        tokens += flush()
        return TokenCount(tokens=tokens, method=f"tokenizer of {model}", records=records)
    return TokenCount(
        tokens=max(1, round(chars / CHARS_PER_TOKEN)),
        method=f"estimate: {chars:,} characters / {CHARS_PER_TOKEN:g} (no local tokenizer)",
        records=records,
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class SampleLengths:
    """Tokens per sample of a data file, and how they were counted."""

    lengths: tuple[int, ...]
    """Tokens in each record, in file order."""
    method: str
    """'tokenizer of <model>', 'approximation: characters / 4 (no local tokenizer)', or 'lengths file'."""
    skipped: int = 0
    """Empty samples left out (a lengths file's 0, a record with no text): a trainer drops them."""


def sample_lengths(
    path: str | Path, model: str, *, use_tokenizer: bool = True, max_positions: int | None = None
) -> SampleLengths:
    """Tokens in each record of `path` (the formats `count_tokens` reads), with the model's tokenizer when
    it is available locally, else ~4 characters per token."""
    path = Path(path)
    check_data_path(
        path, "Pass --dataset-tokens N (e.g. 50M) or --lengths FILE (one token count per line) instead."
    )
    tokenizer = _local_tokenizer(model) if use_tokenizer else None
    read = list(_texts(path, max_positions))
    texts = [t for t in read if t]
    if not texts:
        raise SwiftplanError(f"Data file {path} holds no text ({len(read):,} records).",
                             hint="Point --data at a JSONL/JSON/CSV/Parquet file with text, alpaca, chat or ShareGPT records.")  # fmt: skip
    lengths, method = _token_counts(texts, tokenizer, model)
    return SampleLengths(lengths=tuple(lengths), method=method, skipped=len(read) - len(texts))


def _token_counts(texts: list[str], tokenizer: Any | None, model: str) -> tuple[list[int], str]:
    """Tokens in each of `texts` with `tokenizer` (1,000 texts a call), or ~4 characters a token without one; and
    how they were counted."""
    if tokenizer is None:
        counts = [max(1, round(len(t) / CHARS_PER_TOKEN)) for t in texts]
        return counts, f"approximation: characters / {CHARS_PER_TOKEN:g} (no local tokenizer)"
    counts = []
    for start in range(0, len(texts), 1000):
        ids: list[list[int]] = tokenizer(texts[start : start + 1000], add_special_tokens=True)["input_ids"]
        counts.extend(len(row) for row in ids)
    return counts, f"tokenizer of {model}"


PREFERENCE_FIELDS = {"paired": ("chosen", "rejected"), "kto": ("completion", "label")}
"""What a preference record holds beside its prompt (TRL's standard formats, huggingface/trl v1.16.0
docs/source/dataset_formats.md): a chosen and a rejected response (dpo, orpo, simpo, cpo, rm), or one
completion and its desirable/undesirable label (kto). executors/train_engines/objectives.py renders them."""
_PREFERENCE_EXAMPLE = {
    "paired": '{"prompt": "...", "chosen": "...", "rejected": "..."}',
    "kto": '{"prompt": "...", "completion": "...", "label": true}',
}


def _message_text(where: str, key: str, value: Any) -> str:
    """A preference field: a string, or a conversation (a list of {role, content} messages, each content a string
    or OpenAI-style text parts, as chat records take)."""
    from swiftplan.executors.train.data import message_content

    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        return "\n".join(message_content(f"{where}: '{key}'", i, m["content"]) for i, m in enumerate(value))
    raise SwiftplanError(
        f"{where}: '{key}' must be a string or a list of {{role, content}} messages, got {type(value).__name__}."
    )


def _preference_texts(where: str, row: Any, kind: str, form: str) -> tuple[str, ...]:
    """The sequences one preference record trains: prompt + chosen and prompt + rejected, or prompt + completion."""
    fields = PREFERENCE_FIELDS[form]
    if not isinstance(row, dict) or any(key not in row for key in fields):
        keys = ", ".join(sorted(map(str, row))) if isinstance(row, dict) else type(row).__name__
        raise SwiftplanError(
            f"{where}: --task {kind} reads preference records with {', '.join(('prompt', *fields))}, "
            f"found keys: {keys or 'none'}.",
            hint=f"Each record looks like {_PREFERENCE_EXAMPLE[form]} (TRL's standard preference format); "
            "text, alpaca and chat records are for --task sft.",
        )
    prompt = _message_text(where, "prompt", row.get("prompt", ""))
    responses = fields[:2] if form == "paired" else fields[:1]
    return tuple(prompt + _message_text(where, key, row[key]) for key in responses)


def preference_lengths(
    path: str | Path, model: str, kind: str, *, use_tokenizer: bool = True, max_positions: int | None = None
) -> SampleLengths:
    """Tokens per preference record of `path` for `--task kind`: a pair's longer sequence (prompt + chosen or
    prompt + rejected: both are padded to it in one forward), or prompt + completion for kto."""
    from swiftplan.executors.train.data import raw_records  # every data format, bounded in size

    path = Path(path)
    check_data_path(
        path, "Pass --dataset-tokens N (e.g. 50M) or --lengths FILE (one token count per line) instead."
    )
    form = "kto" if kind == "kto" else "paired"
    records = [
        _preference_texts(where, row, kind, form)
        for where, row in raw_records(path, max_record_bytes(max_positions))
    ]
    kept = [texts for texts in records if any(texts)]
    if not kept:
        raise SwiftplanError(f"Data file {path} holds no text ({len(records):,} records).",
                             hint=f"Each record looks like {_PREFERENCE_EXAMPLE[form]}.")  # fmt: skip
    flat = [text for texts in kept for text in texts]
    counts, method = _token_counts(flat, _local_tokenizer(model) if use_tokenizer else None, model)
    per_record = len(kept[0])
    lengths = tuple(max(counts[i : i + per_record]) for i in range(0, len(counts), per_record))
    what = "the longer of each pair" if form == "paired" else "prompt + completion"
    return SampleLengths(lengths=lengths, method=f"{method}; {what}", skipped=len(records) - len(kept))


_MAX_SAMPLE_TOKENS = 10**12
"""Above this a lengths file's count is garbled, not a sample (the longest contexts are millions of tokens)."""


def read_lengths(path: str | Path) -> SampleLengths:
    """A precomputed lengths file: one non-negative integer (tokens of one sample) per line; blank lines skipped,
    and 0-token samples too (counted in `skipped`: an empty row trains nothing and a trainer drops it)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # -sig: a spreadsheet's byte-order mark
    except (OSError, UnicodeDecodeError) as error:
        raise SwiftplanError(
            f"Cannot read lengths file {path}: {getattr(error, 'strerror', None) or error}."
        ) from error
    lengths: list[int] = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        if not (text.isascii() and text.isdigit()):  # isdigit alone passes '²', which int() refuses
            raise SwiftplanError(f"{path}, line {number}: {text[:40]!r} is not a token count.",
                                 hint="A lengths file holds one whole number of tokens per line.")  # fmt: skip
        if len(text) > len(str(_MAX_SAMPLE_TOKENS)) or int(text) > _MAX_SAMPLE_TOKENS:
            raise SwiftplanError(f"{path}, line {number}: {text[:40]!r}{'...' if len(text) > 40 else ''} "
                                 f"({len(text):,} digits) is more tokens than one sample holds; a token count is "
                                 f"a whole number from 0 to {_MAX_SAMPLE_TOKENS:,}.",
                                 hint="A lengths file holds one whole number of tokens per line.")  # fmt: skip
        lengths.append(int(text))
    if not lengths:
        raise SwiftplanError(f"Lengths file {path} holds no token counts.")
    kept = tuple(n for n in lengths if n > 0)
    if not kept:
        raise SwiftplanError(f"Lengths file {path} holds only 0-token samples ({len(lengths):,}): nothing to train on.",
                             hint="A lengths file holds each sample's token count, one whole number per line.")  # fmt: skip
    return SampleLengths(lengths=kept, method=f"lengths file {path.name}", skipped=len(lengths) - len(kept))
