"""Incremental detokenization: deltas add up to the final text, stop strings cut it, bytes stay whole."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from swiftplan.executors.serve.text import TextStream


def _byte_decode(ids: list[int]) -> str:
    """A byte-level 'tokenizer': each id is one byte (so tokens can split UTF-8 characters)."""
    return bytes(ids).decode("utf-8", errors="replace")


def _run(ids: list[int], stop: tuple[str, ...] = ()) -> tuple[TextStream, list[str]]:
    stream = TextStream(_byte_decode, stop)
    deltas = []
    for token in ids:
        deltas.append(stream.push(token))
        if stream.stopped:
            break
    deltas.append(stream.flush())
    return stream, deltas


def test_multibyte_character_is_held_until_complete():
    stream = TextStream(_byte_decode)
    first, second = "é".encode()
    assert stream.push(ord("a")) == "a"
    assert stream.push(first) == ""  # half a character: nothing final yet
    assert stream.push(second) == "é"


def test_stop_string_split_over_tokens_is_held_then_cut():
    stream, deltas = _run(list(b"hello END world"), stop=("END",))
    assert stream.stopped and stream.text == "hello "
    assert "".join(deltas) == "hello "
    assert all("E" not in d for d in deltas)


def test_partial_stop_that_does_not_complete_is_released():
    stream, deltas = _run(list(b"an ENd"), stop=("END",))
    assert not stream.stopped
    assert "".join(deltas) == "an ENd" == stream.text


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 255), max_size=40),
    st.lists(st.text(alphabet="ab\u00e9 ", min_size=1, max_size=3), max_size=2),
)
def test_deltas_always_add_up_to_the_text(ids, stops):
    stream, deltas = _run(ids, tuple(stops))
    full = _byte_decode(ids)
    assert "".join(deltas) == stream.text
    assert full.startswith(stream.text)
    assert not any(s in stream.text for s in stops)
    if stream.stopped:
        assert any(full[len(stream.text) :].startswith(s) for s in stops)
    else:
        assert stream.text == _byte_decode(ids)
