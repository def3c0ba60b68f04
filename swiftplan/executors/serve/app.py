"""The OpenAI-compatible HTTP routes of the built-in server (FastAPI), over an `Engine`.

Errors use OpenAI's body, `{"error": {"message", "type", "param", "code"}}`: 400 for a bad body
(malformed JSON, out-of-range fields, a prompt longer than the context), 401 for a missing or
wrong API key, 404 for an unknown model. `/health` and `/metrics` need no key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from swiftplan.executors.serve.engine import Engine, Event, Failed, Finished, Job, SamplingParams, TextDelta
from swiftplan.executors.serve.schemas import ChatRequest, CompletionRequest

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


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return _error(
            400,
            f"Malformed JSON body: {first.get('ctx', {}).get('error', first['msg'])}.",
            code="json_invalid",
        )
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = loc[0] if loc else None
    where = ".".join(loc) or "body"
    return _error(400, f"{where}: {first['msg']}.", param=param, code=first.get("type"))


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


def _prometheus(snapshot: dict[str, Any]) -> str:
    ttft = (snapshot["ttft_s"] or {}).get("mean")
    rows = [
        (
            "swiftplan_requests_total",
            "counter",
            "Requests finished (aborted included).",
            snapshot["requests"],
        ),
        (
            "swiftplan_requests_aborted_total",
            "counter",
            "Requests whose client went away.",
            snapshot["aborted"],
        ),
        ("swiftplan_requests_running", "gauge", "Requests holding a generation slot.", snapshot["running"]),
        ("swiftplan_requests_waiting", "gauge", "Requests queued for a slot.", snapshot["waiting"]),
        ("swiftplan_prompt_tokens_total", "counter", "Prompt tokens processed.", snapshot["prompt_tokens"]),
        ("swiftplan_generation_tokens_total", "counter", "Tokens generated.", snapshot["completion_tokens"]),
        (
            "swiftplan_generation_tokens_per_second",
            "gauge",
            "Tokens generated per busy second.",
            snapshot["tokens_per_s"],
        ),
        ("swiftplan_time_to_first_token_seconds", "gauge", "Mean time to first token.", ttft),
        ("swiftplan_memory_bytes", "gauge", f"Memory ({snapshot['memory_kind']}).", snapshot["memory_bytes"]),
    ]
    lines = []
    for name, kind, help_text, value in rows:
        lines += [
            f"# HELP {name} {help_text}",
            f"# TYPE {name} {kind}",
            f"{name} {0 if value is None else value}",
        ]
    return "\n".join(lines) + "\n"


def make_app(engine: Engine, *, api_key: str | None = None) -> FastAPI:
    """The FastAPI application serving `engine` (the engine's worker is started by the caller)."""
    app = FastAPI(title="swiftplan serve", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, type=exc.type, param=exc.param, code=exc.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), code=str(exc.status_code))

    async def authorize(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "Invalid or missing API key (send it as 'Authorization: Bearer KEY').",
                           type="authentication_error", code="invalid_api_key")  # fmt: skip

    def adapter_for(model: str) -> str | None:
        if model not in engine.served_names:
            raise ApiError(404, f"The model '{model}' does not exist; this server has: {', '.join(engine.served_names)}.",
                           param="model", code="model_not_found")  # fmt: skip
        return None if model == engine.served_name else model

    def token_budget(prompt_ids: list[int], requested: int | None, default: int | None, *, param: str) -> int:
        if not prompt_ids:
            raise ApiError(400, "The prompt is empty.", param=param)
        room = engine.context - len(prompt_ids)
        if room <= 0:
            raise ApiError(400, f"This model's maximum context length is {engine.context} tokens; the prompt has "
                           f"{len(prompt_ids)}.", param=param, code="context_length_exceeded")  # fmt: skip
        max_tokens = requested if requested is not None else min(default or room, room)
        if len(prompt_ids) + max_tokens > engine.context:
            raise ApiError(400, f"This model's maximum context length is {engine.context} tokens; you asked for "
                           f"{len(prompt_ids) + max_tokens} ({len(prompt_ids)} in the prompt, {max_tokens} to generate).",
                           param="max_tokens", code="context_length_exceeded")  # fmt: skip
        return max_tokens

    def start(
        prompt_ids: list[int], params: SamplingParams, adapter: str | None
    ) -> tuple[Job, asyncio.Queue[Event]]:
        loop, events = asyncio.get_running_loop(), asyncio.Queue[Event]()

        def emit(event: Event) -> None:
            with contextlib.suppress(RuntimeError):  # the event loop is gone (server shutting down)
                loop.call_soon_threadsafe(events.put_nowait, event)

        return engine.submit(prompt_ids, params, adapter=adapter, emit=emit), events

    async def collect(request: Request, job: Job, events: asyncio.Queue[Event]) -> Finished | None:
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

    def stream(job: Job, events: asyncio.Queue[Event], chunk: Callable[[dict[str, Any], str | None], dict[str, Any]],
               include_usage: bool, first: dict[str, Any] | None = None) -> StreamingResponse:  # fmt: skip
        async def body() -> AsyncIterator[str]:
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
                            {
                                "error": {
                                    "message": event.message,
                                    "type": "server_error",
                                    "param": None,
                                    "code": None,
                                }
                            }
                        )
                        break
                yield "data: [DONE]\n\n"
            finally:
                job.cancel()  # frees the slot when the client disconnected mid-stream

        return StreamingResponse(
            body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @app.get("/health")
    async def health() -> Response:
        if engine.alive:
            return JSONResponse({"status": "ok"})
        return _error(503, "The generation worker is not running.", type="server_error")

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        snapshot = engine.stats.snapshot()
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse(snapshot)
        return PlainTextResponse(_prometheus(snapshot))

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models() -> dict[str, Any]:
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "swiftplan", "root": engine.served_name,
             "parent": None if name == engine.served_name else engine.served_name}
            for name in engine.served_names
        ]  # fmt: skip
        return {"object": "list", "data": data}

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(body: CompletionRequest, request: Request) -> Response:
        adapter = adapter_for(body.model)
        if body.echo or body.logprobs is not None:
            raise ApiError(
                400,
                "echo and logprobs are not supported by the built-in server.",
                param="logprobs" if body.logprobs is not None else "echo",
            )
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise ApiError(
                    400,
                    "One prompt per request (a list of several prompts is not supported).",
                    param="prompt",
                )
            prompt = prompt[0]
        if isinstance(prompt, str):
            prompt_ids = engine.encode_prompt(prompt)
        else:
            prompt_ids = [int(t) for t in prompt]
            if any(not 0 <= t < engine.vocab_size for t in prompt_ids):
                raise ApiError(400, f"Token ids must be in [0, {engine.vocab_size}).", param="prompt")
        max_tokens = token_budget(prompt_ids, body.max_tokens, _DEFAULT_COMPLETION_TOKENS, param="prompt")
        job, events = start(prompt_ids, _params(body, max_tokens), adapter)
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
            return stream(job, events, chunk, bool(body.stream_options and body.stream_options.include_usage))
        done = await collect(request, job, events)
        if done is None:
            return Response(status_code=499)
        return JSONResponse(chunk({"text": done.text}, done.finish_reason) | {"usage": _usage(done)})

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat(body: ChatRequest, request: Request) -> Response:
        adapter = adapter_for(body.model)
        if not engine.has_chat_template:
            raise ApiError(
                400, "This model's tokenizer has no chat template; use /v1/completions.", param="messages"
            )
        prompt_ids = engine.encode_chat([{"role": m.role, "content": m.text()} for m in body.messages])
        max_tokens = token_budget(prompt_ids, body.token_limit(), None, param="messages")
        job, events = start(prompt_ids, _params(body, max_tokens), adapter)
        ident, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            message = {"role": "assistant"} if "role" in delta else {}
            if "text" in delta and (delta["text"] or finish is None):
                message["content"] = delta["text"]
            choice = {"index": 0, "delta": message, "logprobs": None, "finish_reason": finish}
            return {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": now,
                "model": body.model,
                "choices": [choice],
            }

        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return stream(job, events, chunk, include_usage, first={"role": "assistant", "text": ""})
        done = await collect(request, job, events)
        if done is None:
            return Response(status_code=499)
        choice = {"index": 0, "message": {"role": "assistant", "content": done.text}, "logprobs": None,
                  "finish_reason": done.finish_reason}  # fmt: skip
        return JSONResponse({"id": ident, "object": "chat.completion", "created": now, "model": body.model,
                             "choices": [choice], "usage": _usage(done)})  # fmt: skip

    return app
