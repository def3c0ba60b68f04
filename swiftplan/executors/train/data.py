"""Read and validate a training data file (JSONL, CSV, Parquet) before anything heavy is loaded.

Four record formats, detected from the first record's keys:

- alpaca: `instruction`, optional `input`, `output` (loss on the output only);
- chat: `messages`, a list of `{role, content}` (OpenAI style; loss on assistant turns only);
- sharegpt: `conversations`, a list of `{from, value}` (human/gpt roles; loss on gpt turns only);
- text: `text` (loss on every token).

Every problem is one `SwiftplanError` naming the file, the line (or row) and what is wrong. No torch,
no tokenizer here: this runs before the model is loaded.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from swiftplan.errors import SwiftplanError

DataFormat = Literal["alpaca", "chat", "sharegpt", "text"]

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
BYTES_PER_TOKEN_BOUND = 32
"""Generous bytes of a data file per token: BPE tokens of English text average ~4 characters, UTF-8
takes up to 4 bytes a character and a JSON escape of one up to 12 (a \\uXXXX surrogate pair)."""
LONGEST_CATALOG_CONTEXT = 163_840
"""The longest max_position_embeddings in profiles/models.json (DeepSeek-V2/V3), for when no model is known."""
DEFAULT_MAX_RECORD_BYTES = LONGEST_CATALOG_CONTEXT * BYTES_PER_TOKEN_BOUND
"""Longest record (JSONL line, CSV row) read when the model's context is not known: 5 MiB."""


def max_record_bytes(max_positions: int | None) -> int:
    """The longest record worth reading for a model that reads `max_positions` tokens: a record longer
    than BYTES_PER_TOKEN_BOUND bytes per position is more text than the model can ever see at once."""
    return DEFAULT_MAX_RECORD_BYTES if max_positions is None else max_positions * BYTES_PER_TOKEN_BOUND


def _too_long(where: str, size: int, limit: int) -> SwiftplanError:
    return SwiftplanError(
        f"{where} is {size:,} bytes or more; records are limited to {limit:,} bytes "
        f"({limit // BYTES_PER_TOKEN_BOUND:,} positions × {BYTES_PER_TOKEN_BOUND} bytes per token).",
        hint="Split long documents into several records (or check the file: a missing newline joins records).",
    )


CHAT_ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "tool": "tool",
    "observation": "tool",
    "function_call": "assistant",
}
_FORMAT_HINT = (
    "Each record needs one of: instruction/input/output (alpaca), messages (chat), "
    "conversations (ShareGPT) or text."
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Record:
    """One validated training example."""

    where: str
    """'FILE line N' (or 'row N' for Parquet), for error messages."""
    messages: tuple[tuple[str, str], ...] = ()
    """(role, content) turns for chat and ShareGPT records, roles normalised to system/user/assistant/tool."""
    prompt: str = ""
    """Alpaca: the rendered instruction (+ input) prompt; text: empty."""
    answer: str = ""
    """Alpaca: the output; text: the whole text."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Dataset:
    """A validated data file."""

    path: Path
    """The file read."""
    format: DataFormat
    """Record format, detected from the first record."""
    records: tuple[Record, ...]
    """Examples in file order."""


ALPACA_PROMPT = (
    "Below is an instruction that describes a task{context}. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\n{instruction}\n\n{input_block}### Response:\n"
)
"""The Stanford Alpaca prompt (github.com/tatsu-lab/stanford_alpaca, train.py PROMPT_DICT)."""


def alpaca_prompt(instruction: str, input_text: str) -> str:
    """The Alpaca prompt for one record, with or without the input block."""
    if input_text:
        return ALPACA_PROMPT.format(
            context=", paired with an input that provides further context",
            instruction=instruction,
            input_block=f"### Input:\n{input_text}\n\n",
        )
    return ALPACA_PROMPT.format(context="", instruction=instruction, input_block="")


def text_lines(path: Path, limit: int) -> Iterator[tuple[str, str]]:
    """(where, text) for each non-blank line of `path`, read one bounded line at a time: a line longer
    than `limit` bytes or not UTF-8 is refused naming the file and the line."""
    with path.open("rb") as handle:
        number = 0
        while line := handle.readline(limit + 1):
            number += 1
            where = f"{path.name} line {number}"
            if len(line) > limit and not line.endswith(b"\n"):
                raise _too_long(where, len(line), limit)
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise SwiftplanError(
                    f"{where} is not UTF-8 text ({error.reason} at byte {error.start}).",
                    hint="Save the file as UTF-8.",
                ) from error
            if text.strip():
                yield where, text


def _json_lines(path: Path, limit: int) -> Iterator[tuple[str, Any]]:
    """JSONL records, read one bounded line at a time."""
    for where, text in text_lines(path, limit):
        try:
            yield where, json.loads(text)
        except json.JSONDecodeError as error:
            raise SwiftplanError(
                f"{where}: not valid JSON ({error.msg} at column {error.colno}).",
                hint="JSONL files hold one JSON object per line.",
            ) from error


def _json_array(path: Path, limit: int) -> Iterator[tuple[str, Any]]:
    """The records of a .json file holding one array (each record bounded like a line)."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise SwiftplanError(
            f"{path.name} is not UTF-8 text ({error.reason} at byte {error.start})."
        ) from error
    except json.JSONDecodeError as error:
        raise SwiftplanError(
            f"{path.name} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})."
        ) from error
    for number, row in enumerate(data if isinstance(data, list) else [data], start=1):
        where = f"{path.name} record {number}"
        if len(json.dumps(row)) > limit:
            raise _too_long(where, limit + 1, limit)
        yield where, row


def _starts_with_array(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4096).lstrip().startswith(b"[")


def _csv_rows(path: Path, limit: int) -> Iterator[tuple[str, Any]]:
    name = path.name
    previous = csv.field_size_limit(limit)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            try:
                for row in reader:
                    if None in row:
                        raise SwiftplanError(
                            f"{name} line {reader.line_num}: more fields than the header has columns."
                        )
                    yield f"{name} line {reader.line_num}", {k: _csv_value(v) for k, v in row.items()}
            except csv.Error as error:
                if "field larger than field limit" in str(error):
                    raise _too_long(f"{name} line {reader.line_num}", limit + 1, limit) from error
                raise SwiftplanError(f"{name} line {reader.line_num}: {error}.") from error
            except UnicodeDecodeError as error:
                raise SwiftplanError(
                    f"{name} near line {reader.line_num + 1} is not UTF-8 text ({error.reason}).",
                    hint="Save the file as UTF-8.",
                ) from error
    finally:
        csv.field_size_limit(previous)


def raw_records(path: Path, limit: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[tuple[str, Any]]:
    """(location, raw record) pairs in file order; no record longer than `limit` bytes is read whole."""
    suffix = path.suffix.lower()
    name = path.name
    if suffix == ".json" and _starts_with_array(path):
        yield from _json_array(path, limit)
    elif suffix in (".jsonl", ".json"):
        yield from _json_lines(path, limit)
    elif suffix == ".csv":
        yield from _csv_rows(path, limit)
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as error:
            raise SwiftplanError(
                f"Reading {name} needs pyarrow, which is not installed.",
                hint="pip install 'swiftplan[train]' (or pip install pyarrow), or convert the file to JSONL.",
            ) from error
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as error:  # pyarrow raises several types for corrupt files
            raise SwiftplanError(f"{name} is not a readable Parquet file ({error}).") from error
        for number, row in enumerate(rows, start=1):
            yield f"{name} row {number}", row
    else:
        raise SwiftplanError(
            f"Unsupported data file type {path.suffix or '(no suffix)'!r} for {name}.",
            hint=f"Use one of: {', '.join(SUFFIXES)}.",
        )


def _csv_value(value: str | None) -> Any:
    """CSV cells are text; a cell holding a JSON list (chat messages in a CSV) is decoded."""
    if value is not None and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def detect_format(row: dict[str, Any]) -> DataFormat | None:
    """The format whose keys `row` has, or None."""
    if "messages" in row:
        return "chat"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "text" in row:
        return "text"
    return None


def _text(where: str, row: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = row.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise SwiftplanError(f"{where}: '{key}' must be a string, got {_kind(value)}.")
    if required and not value.strip():
        raise SwiftplanError(f"{where}: '{key}' is empty.")
    return value


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def message_content(where: str, index: int, value: Any) -> str:
    """Message content: a string, or OpenAI-style parts of type 'text'."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        kinds = {p.get("type") for p in value}
        if kinds <= {"text"} and all(isinstance(p.get("text"), str) for p in value):
            return "".join(p["text"] for p in value)
        raise SwiftplanError(
            f"{where}: message {index} has non-text content parts ({', '.join(map(str, kinds))})."
        )
    raise SwiftplanError(f"{where}: message {index} 'content' must be a string, got {_kind(value)}.")


def _turns(where: str, turns: Any, *, key: str, role_key: str, text_key: str, roles: dict[str, str]) -> tuple[tuple[str, str], ...]:  # fmt: skip
    if not isinstance(turns, list) or not turns:
        raise SwiftplanError(f"{where}: '{key}' must be a non-empty list, got {_kind(turns)}.")
    out = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
            raise SwiftplanError(
                f"{where}: {key}[{index}] must be an object with '{role_key}' and '{text_key}'."
            )
        role = turn[role_key]
        if role not in roles:
            raise SwiftplanError(
                f"{where}: {key}[{index}] has {role_key} {role!r}; expected one of {', '.join(roles)}."
            )
        out.append((roles[role], message_content(where, index, turn[text_key])))
    if not any(role == "assistant" for role, _ in out):
        raise SwiftplanError(f"{where}: '{key}' has no assistant turn, so there is nothing to learn.")
    return tuple(out)


def parse_record(where: str, row: Any, data_format: DataFormat) -> Record:
    """Validate one raw record of a known format."""
    if not isinstance(row, dict):
        raise SwiftplanError(f"{where}: expected a JSON object, got {_kind(row)}.")
    found = detect_format(row)
    if found != data_format:
        keys = ", ".join(sorted(map(str, row))) or "none"
        raise SwiftplanError(
            f"{where}: expected a {data_format} record like the first one, found keys: {keys}.",
            hint=_FORMAT_HINT,
        )
    if data_format == "chat":
        turns = _turns(where, row["messages"], key="messages", role_key="role", text_key="content",
                       roles={r: r for r in CHAT_ROLES})  # fmt: skip
        return Record(where=where, messages=turns)
    if data_format == "sharegpt":
        turns = _turns(where, row["conversations"], key="conversations", role_key="from", text_key="value",
                       roles=SHAREGPT_ROLES)  # fmt: skip
        return Record(where=where, messages=turns)
    if data_format == "alpaca":
        instruction = _text(where, row, "instruction")
        input_text = _text(where, row, "input", required=False)
        return Record(
            where=where, prompt=alpaca_prompt(instruction, input_text), answer=_text(where, row, "output")
        )
    return Record(where=where, answer=_text(where, row, "text"))


def check_data_path(path: Path, hint: str) -> None:
    """A data path must be a readable file: not missing, not a directory."""
    if path.is_dir():
        raise SwiftplanError(f"Data file {path} is a directory; pass one data file.", hint=hint)
    if not path.is_file():
        raise SwiftplanError(f"Data file {path} does not exist.", hint=hint)


def iter_records(path: Path, *, max_positions: int | None = None) -> Iterator[tuple[DataFormat, Record]]:
    """Validated records in file order with the format detected from the first; the first problem
    stops it. A record longer than `max_record_bytes(max_positions)` is refused before it is read whole."""
    data_format: DataFormat | None = None
    for where, row in raw_records(path, max_record_bytes(max_positions)):
        if data_format is None:
            if not isinstance(row, dict):
                raise SwiftplanError(f"{where}: expected a JSON object, got {_kind(row)}.", hint=_FORMAT_HINT)
            data_format = detect_format(row)
            if data_format is None:
                keys = ", ".join(sorted(map(str, row))) or "none"
                raise SwiftplanError(f"{where}: unknown record format (keys: {keys}).", hint=_FORMAT_HINT)
        yield data_format, parse_record(where, row, data_format)


def read_dataset(path: str | Path, *, max_positions: int | None = None) -> Dataset:
    """Read and validate every record of a data file; the first problem stops it."""
    path = Path(path)
    check_data_path(path, f"Pass --data with a {'/'.join(SUFFIXES)} file.")
    pairs = list(iter_records(path, max_positions=max_positions))
    if not pairs:
        raise SwiftplanError(f"Data file {path} has no records.", hint=_FORMAT_HINT)
    return Dataset(path=path, format=pairs[0][0], records=tuple(record for _, record in pairs))
