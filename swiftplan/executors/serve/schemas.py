"""Request bodies of the OpenAI-compatible routes (pydantic, strict types, unknown fields ignored as OpenAI does).

Bodies are parsed and validated in one step from the raw bytes (`parse_body`), so invalid JSON,
non-UTF-8 bytes, lone surrogates and wrong types all come back as one `BodyError` naming the field.
Ranges follow OpenAI's API reference (temperature 0–2, top_p in (0, 1], penalties −2–2, at most 4
stop sequences, a 64-bit seed); `n` is 1 because the built-in engine samples one choice. Fields the
engine cannot honour (penalties, logit_bias, best_of, suffix, tools, response_format, logprobs) are
refused by `unsupported()` rather than silently ignored. Responses are plain dicts built in `app.py`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

MAX_STOP_SEQUENCES = 4
"""OpenAI's limit on `stop` ("Up to 4 sequences")."""
MAX_STOP_CHARS = 512
"""Longest stop string accepted: the stop check looks back this far after every token (our limit)."""
_INT64 = (-(2**63), 2**63 - 1)
"""`seed` range: OpenAI's API takes a 64-bit integer (torch.Generator.manual_seed accepts it too)."""

StopString = Annotated[str, StringConstraints(max_length=MAX_STOP_CHARS)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Body):
    """`stream_options`: whether the last streamed chunk carries the usage counts."""

    include_usage: bool = False


class _Sampling(_Body):
    """Fields shared by completions and chat completions."""

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=1)
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    seed: int | None = Field(default=None, ge=_INT64[0], le=_INT64[1])
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    def stop_strings(self) -> tuple[str, ...]:
        """`stop` as a tuple of non-empty strings."""
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return tuple(s for s in stops if s)

    def unsupported(self) -> tuple[str, str] | None:
        """(field, why) for the first field set to something the built-in engine does not do; None if none."""
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                return name, f"{name} is not supported by the built-in server (send 0 or leave it out)."
        if self.logit_bias:
            return "logit_bias", "logit_bias is not supported by the built-in server."
        return None


class CompletionRequest(_Sampling):
    """`POST /v1/completions`."""

    prompt: str | list[str] | list[int]
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = Field(default=None, ge=1)
    suffix: str | None = None

    def unsupported(self) -> tuple[str, str] | None:
        """See `_Sampling.unsupported`; also echo, logprobs, best_of > 1 and a suffix."""
        if self.echo or self.logprobs is not None:
            field = "logprobs" if self.logprobs is not None else "echo"
            return field, "echo and logprobs are not supported by the built-in server."
        if self.best_of is not None and self.best_of > 1:
            return "best_of", "best_of above 1 is not supported by the built-in server."
        if self.suffix:
            return "suffix", "suffix (insertion) is not supported by the built-in server."
        return super().unsupported()


class TextPart(_Body):
    """One part of a multi-part message; only text parts are understood."""

    type: Literal["text"]
    text: str


Role = Literal["system", "developer", "user", "assistant", "tool"]


class ChatMessage(_Body):
    """One chat turn."""

    role: Role
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        """The content as one string."""
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""

    def for_template(self) -> dict[str, str]:
        """The turn as a chat template reads it ('developer' is OpenAI's newer name for 'system')."""
        return {"role": "system" if self.role == "developer" else self.role, "content": self.text()}


class ResponseFormat(_Body):
    """`response_format`: only plain text is produced."""

    type: str


class ChatRequest(_Sampling):
    """`POST /v1/chat/completions`."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Any] | None = None
    response_format: ResponseFormat | None = None

    def token_limit(self) -> tuple[int | None, str]:
        """(tokens asked for, the field that asked): `max_completion_tokens` (the newer name), else `max_tokens`."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"

    def unsupported(self) -> tuple[str, str] | None:
        """See `_Sampling.unsupported`; also logprobs, tools and a response_format other than text."""
        if self.logprobs or self.top_logprobs:
            return "logprobs", "logprobs are not supported by the built-in server."
        if self.tools:
            return "tools", "tool calling is not supported by the built-in server."
        if self.response_format is not None and self.response_format.type != "text":
            return "response_format", (
                f"response_format {self.response_format.type!r} is not supported by the built-in server "
                "(it produces plain text)."
            )
        return super().unsupported()


class BodyError(Exception):
    """A body that is not valid JSON or does not validate: the message names the field."""

    def __init__(self, message: str, param: str | None, code: str) -> None:
        super().__init__(message)
        self.message = message
        """One sentence, starting with the field's path (e.g. 'messages.0.role: ...')."""
        self.param = param
        """The top-level field, as OpenAI's error `param` (None for the body as a whole)."""
        self.code = code
        """pydantic's error type (json_invalid, int_type, less_than_equal, ...)."""


_FIELDS = frozenset().union(
    *(
        m.model_fields
        for m in (CompletionRequest, ChatRequest, ChatMessage, TextPart, StreamOptions, ResponseFormat)
    )
)
"""Every field name of the bodies: what a location is made of, beside list indices and union tags."""

B = TypeVar("B", bound=_Body)


def parse_body(schema: type[B], raw: bytes) -> B:
    """`raw` (JSON bytes) validated as `schema`, or a BodyError naming the first field that is wrong."""
    try:
        return schema.model_validate_json(raw)
    except ValidationError as error:
        raise _body_error(error) from None


def _path(loc: tuple[int | str, ...]) -> list[int | str]:
    """A pydantic location without its union tags ('str', 'list[int]', ...): fields and list indices."""
    return [p for p in loc if isinstance(p, int) or p in _FIELDS]


def _body_error(error: ValidationError) -> BodyError:
    errors = error.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return BodyError(
            f"body: malformed JSON ({first['msg'].removeprefix('Invalid JSON: ')}).", None, "json_invalid"
        )
    # A union (prompt, content, stop) reports one error per alternative: name the deepest place that failed,
    # and every alternative's complaint there.
    top = _path(first["loc"])[:1]
    related = [e for e in errors if _path(e["loc"])[:1] == top]
    deepest = max(related, key=lambda e: len(_path(e["loc"])))
    path = _path(deepest["loc"])
    complaints = dict.fromkeys(e["msg"] for e in related if _path(e["loc"]) == path)
    where = ".".join(map(str, path)) or "body"
    return BodyError(f"{where}: {' or '.join(complaints)}.", str(path[0]) if path else None, deepest["type"])
