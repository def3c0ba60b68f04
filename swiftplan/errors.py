"""The one exception type users see: a sentence saying what is wrong and what would be valid."""

from __future__ import annotations


class SwiftplanError(Exception):
    """A known, user-facing error. The CLI prints `message` (and `hint`) without a traceback."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} {self.hint}"
