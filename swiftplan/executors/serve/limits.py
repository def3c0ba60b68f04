"""The request-body limit of the built-in server, and the ASGI middleware that enforces it.

A body is refused with 413 before it is parsed or tokenized: by its Content-Length when it has
one (nothing is read), else as soon as the bytes received pass the limit (chunked uploads).
uvicorn discards the unread rest of the body after the response, so the client still reads the 413.

The limit comes from the served context: `context × BODY_BYTES_PER_TOKEN`, and never below
`MIN_BODY_BYTES`. A prompt that fits the context cannot need more: English text takes about 4
bytes per token, a token-id prompt at most 8 ("123456, "), and JSON escapes grow a byte to at most
6 ("\\u00e9"); 64 bytes a token covers all of them with room to spare. The floor leaves space for
the other fields on small contexts. `make_app(max_body_bytes=...)` overrides it.
"""

from __future__ import annotations

import json
from typing import Any

BODY_BYTES_PER_TOKEN = 64
"""Bytes of request body allowed per token of context (see the module docstring for why 64)."""
MIN_BODY_BYTES = 1 << 20
"""Smallest body limit (1 MiB), whatever the context."""

Scope = dict[str, Any]
Message = dict[str, Any]


def body_limit_bytes(context: int) -> int:
    """The default request-body limit for a server with `context` tokens per sequence."""
    return max(MIN_BODY_BYTES, context * BODY_BYTES_PER_TOKEN)


def describe_limit(limit_bytes: int, context: int | None) -> str:
    """Where the limit comes from, for error messages and the start-up log."""
    if context is not None and limit_bytes == body_limit_bytes(context):
        source = (
            f"context {context} tokens × {BODY_BYTES_PER_TOKEN} bytes"
            if limit_bytes > MIN_BODY_BYTES
            else f"the {MIN_BODY_BYTES >> 20} MiB floor; context {context} tokens × {BODY_BYTES_PER_TOKEN} bytes is less"
        )
        return f"{limit_bytes:,} bytes ({source})"
    return f"{limit_bytes:,} bytes (configured)"


class _TooLarge(Exception):
    def __init__(self, received: int) -> None:
        super().__init__(received)
        self.received = received


class BodyLimit:
    """ASGI middleware: HTTP requests whose body is over `limit_bytes` get 413 and OpenAI's error body."""

    def __init__(self, app: Any, *, limit_bytes: int, context: int | None = None) -> None:
        self.app, self.limit_bytes, self.context = app, limit_bytes, context

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit_bytes:
            await self._refuse(send, f"is {declared:,} bytes")
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message: Message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit_bytes:
                    raise _TooLarge(received)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge as error:
            if started:
                raise
            await self._refuse(
                send, f"is more than {self.limit_bytes:,} bytes ({error.received:,} received so far)"
            )

    async def _refuse(self, send: Any, size: str) -> None:
        message = (f"The request body {size}; this server accepts at most "
                   f"{describe_limit(self.limit_bytes, self.context)}.")  # fmt: skip
        body = json.dumps(
            {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "request_too_large",
                }
            }  # fmt: skip
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP server refuses a malformed Content-Length before we see it
    return None
