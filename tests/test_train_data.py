"""Training data: the four record formats, three file types, and errors that name the file and line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from swiftplan.errors import SwiftplanError
from swiftplan.executors.train.data import read_dataset

FIXTURES = Path(__file__).parent / "fixtures" / "train"


@pytest.mark.parametrize(
    "name,fmt", [("alpaca", "alpaca"), ("chat", "chat"), ("sharegpt", "sharegpt"), ("text", "text")]
)
def test_fixture_formats_are_detected(name, fmt):
    dataset = read_dataset(FIXTURES / f"{name}.jsonl")
    assert dataset.format == fmt
    assert len(dataset.records) == 35


def test_sharegpt_roles_are_normalised():
    record = read_dataset(FIXTURES / "sharegpt.jsonl").records[0]
    assert [role for role, _ in record.messages] == ["user", "assistant"]


def test_alpaca_prompt_has_input_block_only_when_input_is_given(tmp_path):
    path = tmp_path / "a.jsonl"
    rows = [
        {"instruction": "Say hi.", "input": "", "output": "hi"},
        {"instruction": "Echo.", "input": "x", "output": "x"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first, second = read_dataset(path).records
    assert "### Input:" not in first.prompt and first.prompt.endswith("### Response:\n")
    assert "### Input:\nx\n\n### Response:\n" in second.prompt


def _error(path: Path) -> str:
    with pytest.raises(SwiftplanError) as info:
        read_dataset(path)
    return str(info.value)


@pytest.mark.parametrize(
    "lines,expected",
    [
        (['{"text": "ok"}', '{"text": "ok"', '{"text": "ok"}'], "bad.jsonl line 2: not valid JSON"),
        (
            ['{"instruction": "a", "output": "b"}', "", '{"instruction": "a"}'],
            "bad.jsonl line 3: expected a alpaca record",
        ),
        (['{"messages": [{"role": "user", "content": "q"}]}'], "line 1: 'messages' has no assistant turn"),
        (['{"messages": [{"role": "bot", "content": "q"}]}'], "line 1: messages[0] has role 'bot'"),
        (
            ['{"messages": [{"role": "assistant", "content": 3}]}'],
            "line 1: message 0 'content' must be a string",
        ),
        (
            ['{"conversations": [{"from": "gpt"}]}'],
            "line 1: conversations[0] must be an object with 'from' and 'value'",
        ),
        (['{"instruction": "a", "output": ""}'], "line 1: 'output' is empty"),
        (['{"prompt": "a", "completion": "b"}'], "line 1: unknown record format (keys: completion, prompt)"),
        (["[1, 2]"], "line 1: expected a JSON object, got list"),
    ],
)
def test_malformed_rows_name_file_line_and_problem(tmp_path, lines, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert expected in _error(path)


def test_csv_rows_and_chat_json_cells(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('instruction,input,output\nAdd.,1 and 2,3\n"Multi\nline",,ok\n')
    dataset = read_dataset(path)
    assert dataset.format == "alpaca" and len(dataset.records) == 2
    assert dataset.records[1].where == "d.csv line 4"  # the quoted field spans lines 3-4
    chat = tmp_path / "c.csv"
    chat.write_text(
        'messages\n"[{""role"": ""user"", ""content"": ""q""}, {""role"": ""assistant"", ""content"": ""a""}]"\n'
    )
    assert read_dataset(chat).records[0].messages == (("user", "q"), ("assistant", "a"))
    extra = tmp_path / "e.csv"
    extra.write_text("text\nfine\nnot,fine\n")
    assert "e.csv line 3: more fields than the header has columns" in _error(extra)


def test_empty_and_unsupported_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    assert "has no records" in _error(tmp_path / "empty.jsonl")
    (tmp_path / "d.txt").write_text("hello")
    assert "Unsupported data file type '.txt'" in _error(tmp_path / "d.txt")
    assert "does not exist" in _error(tmp_path / "missing.jsonl")


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(SwiftplanError) as info:
        read_dataset(tmp_path / "d.parquet")
    assert "needs pyarrow" in info.value.message and "swiftplan[train]" in (info.value.hint or "")


def test_parquet_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a b c", ""]}), tmp_path / "d.parquet")
    assert "d.parquet row 2: 'text' is empty" in _error(tmp_path / "d.parquet")
