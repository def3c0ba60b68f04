"""The OpenAI-compatible HTTP routes of the built-in server (FastAPI), over an `Engine`.

Errors use OpenAI's body, `{"error": {"message", "type", "param", "code"}}`: 400 for a bad body
(malformed JSON, non-UTF-8 bytes, wrong types, out-of-range fields, a prompt longer than the
context; the message starts with the field), 401 for a missing or wrong API key, 404 for an
unknown model, 413 for a body over the limit (`limits.py`), 500 (no traceback) for a server fault.
`/health` and `/metrics` need no key.

Nothing slow runs on the event loop: bodies over the limit are refused before they are read,
the chat template and the tokenizer run in worker threads, and generation and detokenization run
on the engine's own thread, so one large or slow request never holds up /health or other clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from swiftplan.executors.serve.engine import (
    Engine,
    Event,
    Failed,
    Finished,
    Job,
    PromptError,
    PromptTooLong,
    SamplingParams,
    TextDelta,
)
from swiftplan.executors.serve.limits import BodyLimit, body_limit_bytes
from swiftplan.executors.serve.report import prometheus_text
from swiftplan.executors.serve.schemas import BodyError, ChatRequest, CompletionRequest, parse_body

log = logging.getLogger("swiftplan.serve")

_DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
_DISCONNECT_CHECK_S = 0.5  # how often a non-streaming request checks that its client is still there


class ApiError(Exception):
    """An error answered with OpenAI's error body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


def _error(status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
           code: str | None = None) -> JSONResponse:  # fmt: skip
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def _usage(done: Finished) -> dict[str, int]:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}  # fmt: skip


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _params(body: CompletionRequest | ChatRequest, max_tokens: int) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens, temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p, stop=body.stop_strings(), seed=body.seed,
    )  # fmt: skip


Chunk = Callable[[dict[str, Any], str | None], dict[str, Any]]
"""Builds one response chunk from a delta ({'text': ...}, optionally 'role') and a finish reason."""


def _add_error_handlers(app: FastAPI) -> None:
    """Answer every error with OpenAI's error body."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, type=exc.type, param=exc.param, code=exc.code)

    @app.exception_handler(BodyError)
    async def _bad_body(_: Request, exc: BodyError) -> JSONResponse:
        return _error(400, exc.message, param=exc.param, code=exc.code)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), code=str(exc.status_code))

    @app.exception_handler(Exception)
    async def _fault(_: Request, exc: Exception) -> JSONResponse:
        log.error("request failed", exc_info=exc)
        return _error(500, f"Internal server error ({type(exc).__name__}); the server log has the details.",
                      type="server_error")  # fmt: skip


async def _sse_events(
    job: Job, events: asyncio.Queue[Event], chunk: Chunk, include_usage: bool, first: dict[str, Any] | None
) -> AsyncIterator[str]:
    """A job's events as server-sent chunks, ending with [DONE]; the job is cancelled if the client leaves."""
    try:
        if first is not None:
            yield _sse(chunk(first, None))
        while True:
            event = await events.get()
            if isinstance(event, TextDelta):
                yield _sse(chunk({"text": event.text}, None))
            elif isinstance(event, Finished):
                yield _sse(chunk({"text": ""}, event.finish_reason))
                if include_usage:
                    yield _sse(chunk({}, None) | {"choices": [], "usage": _usage(event)})
                break
            else:
                yield _sse(
                    {"error": {"message": event.message, "type": "server_error", "param": None, "code": None}}
                )
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()  # frees the slot when the client disconnected mid-stream


def _stream(
    job: Job,
    events: asyncio.Queue[Event],
    chunk: Chunk,
    include_usage: bool,
    first: dict[str, Any] | None = None,
) -> StreamingResponse:
    """The streaming (server-sent events) response for a job."""
    return StreamingResponse(
        _sse_events(job, events, chunk, include_usage, first),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
    )


async def _collect(request: Request, job: Job, events: asyncio.Queue[Event]) -> Finished | None:
    """Wait for the end; None when the client went away (the job is cancelled)."""
    checked = time.monotonic()
    try:
        while True:
            try:
                event: Event | None = await asyncio.wait_for(events.get(), timeout=_DISCONNECT_CHECK_S)
            except asyncio.TimeoutError:
                event = None
            if time.monotonic() - checked >= _DISCONNECT_CHECK_S:
                checked = time.monotonic()
                if await request.is_disconnected():
                    return None
            if isinstance(event, Finished):
                return event
            if isinstance(event, Failed):
                raise ApiError(500, f"Generation failed: {event.message}", type="server_error")
    finally:
        job.cancel()  # no-op once finished


def _include_usage(body: CompletionRequest | ChatRequest) -> bool:
    """Whether a streamed response ends with a usage chunk."""
    return bool(body.stream_options and body.stream_options.include_usage)


class _Routes:
    """The HTTP routes over one engine: checks (key, model, token budget), job start, and the handlers."""

    def __init__(self, engine: Engine, api_key: str | None) -> None:
        self.engine, self.api_key, self.created = engine, api_key, int(time.time())

    async def authorize(self, request: Request) -> None:
        """Refuse a /v1 request without the API key (when the server has one)."""
        if self.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            token.strip().encode(), self.api_key.encode()
        ):
            raise ApiError(401, "Invalid or missing API key (send it as 'Authorization: Bearer KEY').",
                           type="authentication_error", code="invalid_api_key")  # fmt: skip

    def adapter_for(self, model: str) -> str | None:
        """The LoRA adapter a model name asks for (None: the base model); unknown names are a 404."""
        engine = self.engine
        if model not in engine.served_names:
            raise ApiError(404, f"The model '{model}' does not exist; this server has: {', '.join(engine.served_names)}.",
                           param="model", code="model_not_found")  # fmt: skip
        return None if model == engine.served_name else model

    def token_budget(
        self, prompt_ids: list[int], requested: int | None, default: int | None, *, param: str,
        limit_param: str = "max_tokens",
    ) -> int:  # fmt: skip
        """Tokens to generate: as asked (in `limit_param`), else the default, within what the context leaves."""
        context = self.engine.context
        if not prompt_ids:
            raise ApiError(400, f"{param}: the prompt is empty.", param=param)
        room = context - len(prompt_ids)
        if room <= 0:
            raise ApiError(400, f"{param}: this model's maximum context length is {context} tokens; the prompt has "
                           f"{len(prompt_ids)}.", param=param, code="context_length_exceeded")  # fmt: skip
        max_tokens = requested if requested is not None else min(default or room, room)
        if len(prompt_ids) + max_tokens > context:
            raise ApiError(400, f"{limit_param}: this model's maximum context length is {context} tokens; you asked for "
                           f"{len(prompt_ids) + max_tokens} ({len(prompt_ids)} in the prompt, {max_tokens} to generate).",
                           param=limit_param, code="context_length_exceeded")  # fmt: skip
        return max_tokens

    def too_long(self, error: PromptTooLong, *, param: str) -> ApiError:
        """The 400 for a text refused before tokenizing: it has more characters than the context holds."""
        return ApiError(400, f"{param}: this model's maximum context length is {self.engine.context} tokens; "
                        f"{error}.", param=param, code="context_length_exceeded")  # fmt: skip

    def start(self, prompt_ids: list[int], params: SamplingParams, adapter: str | None) -> tuple[Job, asyncio.Queue[Event]]:  # fmt: skip
        """Submit a job; its events arrive on the returned queue (from the worker thread)."""
        loop, events = asyncio.get_running_loop(), asyncio.Queue[Event]()

        def emit(event: Event) -> None:
            with contextlib.suppress(RuntimeError):  # the event loop is gone (server shutting down)
                loop.call_soon_threadsafe(events.put_nowait, event)

        return self.engine.submit(prompt_ids, params, adapter=adapter, emit=emit), events

    async def health(self) -> Response:
        """200 while the generation worker runs, else 503."""
        if self.engine.alive:
            return JSONResponse({"status": "ok"})
        return _error(503, "The generation worker is not running.", type="server_error")

    async def metrics(self, request: Request) -> Response:
        """The engine's counters: JSON when asked for, else Prometheus text."""
        snapshot = self.engine.stats.snapshot()
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse(snapshot)
        return PlainTextResponse(prometheus_text(snapshot))

    async def models(self) -> dict[str, Any]:
        """The base model and its adapters, as OpenAI lists models."""
        base = self.engine.served_name
        data = [
            {"id": name, "object": "model", "created": self.created, "owned_by": "swiftplan", "root": base,
             "parent": None if name == base else base}
            for name in self.engine.served_names
        ]  # fmt: skip
        return {"object": "list", "data": data}

    async def prompt_ids(self, body: CompletionRequest) -> list[int]:
        """A completion request's prompt as token ids (one text prompt, tokenized in a worker thread, or
        token ids in the vocabulary)."""
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise ApiError(
                    400,
                    "prompt: one prompt per request (a list of several prompts is not supported).",
                    param="prompt",
                )
            prompt = prompt[0]
        if isinstance(prompt, str):
            try:
                return await run_in_threadpool(self.engine.encode_prompt, prompt)
            except PromptTooLong as error:
                raise self.too_long(error, param="prompt") from error
        prompt_ids = [int(t) for t in prompt]
        if any(not 0 <= t < self.engine.vocab_size for t in prompt_ids):
            raise ApiError(
                400, f"prompt: token ids must be in [0, {self.engine.vocab_size}).", param="prompt"
            )
        return prompt_ids

    async def completions(self, request: Request) -> Response:
        """POST /v1/completions."""
        body = parse_body(CompletionRequest, await request.body())
        adapter = self.adapter_for(body.model)
        _refuse_unsupported(body)
        prompt_ids = await self.prompt_ids(body)
        max_tokens = self.token_budget(
            prompt_ids, body.max_tokens, _DEFAULT_COMPLETION_TOKENS, param="prompt"
        )
        job, events = self.start(prompt_ids, _params(body, max_tokens), adapter)
        ident, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            choice = {"index": 0, "text": delta.get("text", ""), "logprobs": None, "finish_reason": finish}
            return {
                "id": ident,
                "object": "text_completion",
                "created": now,
                "model": body.model,
                "choices": [choice],
            }

        if body.stream:
            return _stream(job, events, chunk, _include_usage(body))
        done = await _collect(request, job, events)
        if done is None:
            return Response(status_code=499)
        return JSONResponse(chunk({"text": done.text}, done.finish_reason) | {"usage": _usage(done)})

    async def chat(self, request: Request) -> Response:
        """POST /v1/chat/completions."""
        body = parse_body(ChatRequest, await request.body())
        adapter = self.adapter_for(body.model)
        _refuse_unsupported(body)
        if not self.engine.has_chat_template:
            raise ApiError(
                400, "This model's tokenizer has no chat template; use /v1/completions.", param="messages"
            )
        try:
            prompt_ids = await run_in_threadpool(
                self.engine.encode_chat, [m.for_template() for m in body.messages]
            )
        except PromptTooLong as error:
            raise self.too_long(error, param="messages") from error
        except PromptError as error:
            raise ApiError(400, f"messages: {error}", param="messages") from error
        requested, limit_param = body.token_limit()
        max_tokens = self.token_budget(prompt_ids, requested, None, param="messages", limit_param=limit_param)
        job, events = self.start(prompt_ids, _params(body, max_tokens), adapter)
        ident, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            message = {"role": "assistant"} if "role" in delta else {}
            if "text" in delta and (delta["text"] or finish is None):
                message["content"] = delta["text"]
            choice = {"index": 0, "delta": message, "logprobs": None, "finish_reason": finish}
            return {"id": ident, "object": "chat.completion.chunk", "created": now, "model": body.model,
                    "choices": [choice]}  # fmt: skip

        if body.stream:
            return _stream(job, events, chunk, _include_usage(body), first={"role": "assistant", "text": ""})
        done = await _collect(request, job, events)
        if done is None:
            return Response(status_code=499)
        choice = {"index": 0, "message": {"role": "assistant", "content": done.text}, "logprobs": None,
                  "finish_reason": done.finish_reason}  # fmt: skip
        return JSONResponse({"id": ident, "object": "chat.completion", "created": now, "model": body.model,
                             "choices": [choice], "usage": _usage(done)})  # fmt: skip


def _refuse_unsupported(body: CompletionRequest | ChatRequest) -> None:
    """A 400 naming the first field set to something the built-in engine does not do."""
    if refused := body.unsupported():
        raise ApiError(400, f"{refused[0]}: {refused[1]}", param=refused[0], code="unsupported_parameter")


def make_app(engine: Engine, *, api_key: str | None = None, max_body_bytes: int | None = None) -> FastAPI:
    """The FastAPI application serving `engine` (the engine's worker is started by the caller).

    Request bodies over `max_body_bytes` get 413 (default: `limits.body_limit_bytes(engine.context)`).
    """
    app = FastAPI(title="swiftplan serve", docs_url=None, redoc_url=None, openapi_url=None)
    limit = body_limit_bytes(engine.context) if max_body_bytes is None else max_body_bytes
    app.add_middleware(BodyLimit, limit_bytes=limit, context=engine.context)
    _add_error_handlers(app)
    routes = _Routes(engine, api_key)
    keyed = [Depends(routes.authorize)]
    app.get("/health")(routes.health)
    app.get("/metrics")(routes.metrics)
    app.get("/v1/models", dependencies=keyed)(routes.models)
    app.post("/v1/completions", dependencies=keyed)(routes.completions)
    app.post("/v1/chat/completions", dependencies=keyed)(routes.chat)
    return app
