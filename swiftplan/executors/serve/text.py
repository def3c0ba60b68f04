"""Incremental detokenization with stop strings (pure: no torch).

Byte-level tokenizers can end a decoded prefix in the middle of a UTF-8 character (decoded as
U+FFFD), and a stop string can arrive split over several tokens, so a delta is only sent once it
can no longer change: trailing replacement characters and any suffix that starts a stop string are
held back until the next token or the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

_REPLACEMENT = "\ufffd"


def _held_suffix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class TextStream:
    """Generated token ids in, safe text deltas out; notices stop strings."""

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stops = tuple(s for s in stop if s)
        self._longest_stop = max((len(s) for s in self._stops), default=0)
        self._ids: list[int] = []
        self._emitted = 0
        self.text = ""
        """The text so far (cut before the stop string once one is found)."""
        self.stopped = False
        """A stop string appeared; the text ends just before it."""

    def push(self, token_id: int) -> str:
        """Add one generated token; return the text that became final (may be empty)."""
        self._ids.append(token_id)
        text = self._decode(self._ids)
        if self._stops:
            start = max(0, self._emitted - self._longest_stop)
            hits = [i for i in (text.find(s, start) for s in self._stops) if i >= 0]
            if hits:
                cut = max(min(hits), self._emitted)
                self.text, self.stopped = text[:cut], True
                delta, self._emitted = text[self._emitted : cut], cut
                return delta
        self.text = text
        safe = len(text.rstrip(_REPLACEMENT))
        safe -= _held_suffix(text[:safe], self._stops)
        if safe <= self._emitted:
            return ""
        delta, self._emitted = text[self._emitted : safe], safe
        return delta

    def flush(self) -> str:
        """At the end of generation: whatever was held back."""
        delta, self._emitted = self.text[self._emitted :], len(self.text)
        return delta
