"""The built-in generation engine: one worker thread owns the model and serves every request.

Requests wait in a queue for one of `max_slots` slots. The worker advances every slot by one
token in turn (the prompt's prefill is a slot's first step), each sequence with its own KV cache
and its own random generator, so a response never depends on what else is running: it is the
same token for token as when the request runs alone. A cancelled request (its client went away)
is dropped at its next turn, freeing the slot. Results go back through the `emit` callback each
request brings (the HTTP layer hands them to its event loop).
"""

from __future__ import annotations

import copy
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from swiftplan.executors.serve.loading import LoadedModel, max_chars_per_token
from swiftplan.executors.serve.report import RequestTiming, ServeStats
from swiftplan.executors.serve.text import TextStream

log = logging.getLogger("swiftplan.serve")

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True, kw_only=True, slots=True)
class SamplingParams:
    """How to pick tokens for one request."""

    max_tokens: int
    """Most tokens to generate."""
    temperature: float = 1.0
    """0 = greedy; otherwise logits are divided by it before sampling."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    stop: tuple[str, ...] = ()
    """Strings that end the text (not included in it)."""
    seed: int | None = None
    """Seed of this request's random generator (random when None)."""


@dataclass(frozen=True, slots=True)
class TextDelta:
    """New text for the client."""

    text: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Finished:
    """The request is done; `text` is all of it."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class Failed:
    """Generation raised; the message says why."""

    message: str


Event = TextDelta | Finished | Failed


class PromptError(ValueError):
    """The messages cannot be turned into a prompt (the chat template refused them)."""


class PromptTooLong(ValueError):
    """The text has more characters than `context` tokens of this tokenizer can stand for."""

    def __init__(self, chars: int, most: int) -> None:
        super().__init__(f"{chars:,} characters cannot fit (at most {most:,} with this tokenizer)")
        self.chars, self.most = chars, most


_CHARS_MARGIN = 4
"""Slack on the characters-per-token bound for normalizers that shorten text (NFC composes up to 3 to 1)."""


@dataclass(kw_only=True, eq=False)
class Job:
    """One submitted request."""

    prompt_ids: list[int]
    params: SamplingParams
    adapter: str | None
    emit: Callable[[Event], None]
    submitted_s: float = field(default_factory=time.perf_counter)
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Stop generating for this request (its slot is freed at its next turn)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


@dataclass(kw_only=True, eq=False)
class _Slot:
    job: Job
    stream: TextStream
    generator: Any
    past: Any = None
    last_token: int = -1
    generated: int = 0
    start_s: float = 0.0
    first_s: float = 0.0
    last_s: float = 0.0


def sample_next(logits: Any, *, temperature: float, top_p: float, generator: Any) -> int:
    """One token id from a row of logits: greedy at temperature 0, else temperature + top-p sampling."""
    import torch

    if temperature == 0:
        return int(torch.argmax(logits))
    # In float64 and shifted so the largest is 0 before dividing: any temperature above 0 (down to 5e-324)
    # gives 0 and -inf, never 0/0 (float32 rounds 1e-300 to 0) or inf - inf.
    logits = logits.double()
    probs = torch.softmax((logits - logits.max()) / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def _eos_ids(loaded: LoadedModel) -> frozenset[int]:
    ids: set[int] = set()
    for value in (
        loaded.tokenizer.eos_token_id,
        getattr(loaded.model.generation_config, "eos_token_id", None),
    ):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    return frozenset(ids)


class Engine:
    """Queue + worker thread around one loaded model."""

    def __init__(
        self, loaded: LoadedModel, *, served_name: str, context: int, max_slots: int,
        stats: ServeStats | None = None, on_finished: Callable[[int], None] | None = None,
    ) -> None:  # fmt: skip
        self.loaded = loaded
        self.served_name = served_name
        self.context = context
        self.max_slots = max_slots
        self.stats = stats or ServeStats()
        self._on_finished = on_finished
        self._queue: queue.Queue[Job] = queue.Queue()
        self._tokenizer_lock = threading.Lock()
        self._worker_tokenizer = copy.deepcopy(loaded.tokenizer)
        self._eos = _eos_ids(loaded)
        bound = max_chars_per_token(loaded.tokenizer)
        self.max_prompt_chars = None if bound is None else context * bound * _CHARS_MARGIN
        """Longer texts cannot fit the context and are refused without tokenizing (None: no bound)."""
        self.vocab_size = int(loaded.model.get_input_embeddings().num_embeddings)
        """Rows of the embedding: valid token ids are below it."""
        self._active_adapter: str | None = loaded.adapters[0] if loaded.adapters else None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def served_names(self) -> tuple[str, ...]:
        """Model names clients may ask for: the base model, then each adapter."""
        return (self.served_name, *self.loaded.adapters)

    @property
    def alive(self) -> bool:
        """The worker thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def _check_length(self, text: str) -> None:
        if self.max_prompt_chars is not None and len(text) > self.max_prompt_chars:
            raise PromptTooLong(len(text), self.max_prompt_chars)

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a completion prompt (with the tokenizer's special tokens, e.g. BOS); a text too
        long for the context is a PromptTooLong before any tokenizing (call it off the event loop)."""
        self._check_length(text)
        with self._tokenizer_lock:
            return list(self.loaded.tokenizer(text)["input_ids"])

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Token ids of a conversation through the tokenizer's chat template, ready for the reply.

        A template that refuses the messages (e.g. roles out of order, raised with `raise_exception`)
        is a PromptError carrying its message."""
        from jinja2 import TemplateError

        with self._tokenizer_lock:
            try:
                text = self.loaded.tokenizer.apply_chat_template(
                    list(messages), add_generation_prompt=True, tokenize=False
                )
            except TemplateError as error:
                raise PromptError(f"the chat template refused these messages: {error}") from error
            self._check_length(text)
            return list(self.loaded.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def has_chat_template(self) -> bool:
        return getattr(self.loaded.tokenizer, "chat_template", None) is not None

    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        adapter: str | None,
        emit: Callable[[Event], None],
    ) -> Job:
        """Queue a request; events arrive through `emit` from the worker thread."""
        job = Job(prompt_ids=prompt_ids, params=params, adapter=adapter, emit=emit)
        self._queue.put(job)
        self.stats.waiting = self._queue.qsize()
        return job

    def start(self) -> None:
        """Start the worker thread."""
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="swiftplan-serve-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the worker; requests still running are aborted."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # --- worker thread -------------------------------------------------------------------------

    def _run(self) -> None:
        import torch

        active: list[_Slot] = []
        with torch.inference_mode():
            while not self._stopping.is_set():
                self._admit(active)
                if not active:
                    continue
                started = time.perf_counter()
                for slot in list(active):
                    if slot.job.cancelled:
                        self._finish(active, slot, "abort")
                        continue
                    try:
                        self._advance(active, slot)
                    except Exception as error:  # one request's failure must not stop the server
                        log.exception("generation failed")
                        active.remove(slot)
                        slot.job.emit(Failed(f"{type(error).__name__}: {error}"))
                    time.sleep(
                        0
                    )  # let the HTTP thread take the GIL between steps instead of waiting out the switch interval
                self.stats.add_busy(time.perf_counter() - started)
                self.stats.running = len(active)
            for slot in list(active):
                self._finish(active, slot, "abort")

    def _admit(self, active: list[_Slot]) -> None:
        import torch

        while len(active) < self.max_slots:
            try:
                job = self._queue.get(timeout=0.05) if not active else self._queue.get_nowait()
            except queue.Empty:
                break
            seed = job.params.seed if job.params.seed is not None else random.SystemRandom().getrandbits(63)
            generator = torch.Generator(device=self.loaded.device).manual_seed(seed)
            slot = _Slot(job=job, stream=TextStream(self._decode, job.params.stop), generator=generator)
            if job.cancelled:
                self._record(slot, aborted=True)
                continue
            active.append(slot)
        self.stats.waiting = self._queue.qsize()
        self.stats.running = len(active)

    def _decode(self, ids: list[int]) -> str:
        return self._worker_tokenizer.decode(ids, skip_special_tokens=True)

    def _use_adapter(self, name: str | None) -> None:
        if not self.loaded.adapters or name == self._active_adapter:
            return
        model = self.loaded.model
        if name is None:
            model.base_model.disable_adapter_layers()
        else:
            if self._active_adapter is None:
                model.base_model.enable_adapter_layers()
            model.set_adapter(name)
        self._active_adapter = name

    def _advance(self, active: list[_Slot], slot: _Slot) -> None:
        import torch

        job, device = slot.job, self.loaded.device
        self._use_adapter(job.adapter)
        if slot.past is None:
            slot.start_s = time.perf_counter()
            input_ids = torch.tensor([job.prompt_ids], device=device)
        else:
            input_ids = torch.tensor([[slot.last_token]], device=device)
        out = self.loaded.model(input_ids=input_ids, past_key_values=slot.past, use_cache=True)
        slot.past = out.past_key_values
        token = sample_next(
            out.logits[0, -1],
            temperature=job.params.temperature,
            top_p=job.params.top_p,
            generator=slot.generator,
        )
        now = time.perf_counter()
        slot.first_s = slot.first_s or now
        slot.last_s = now
        slot.generated += 1  # an end-of-sequence token counts, as vLLM's usage does
        if token in self._eos:
            self._finish(active, slot, "stop")
            return
        slot.last_token = token
        delta = slot.stream.push(token)
        if delta:
            job.emit(TextDelta(delta))
        if slot.stream.stopped:
            self._finish(active, slot, "stop")
        elif slot.generated >= job.params.max_tokens or len(job.prompt_ids) + slot.generated >= self.context:
            self._finish(active, slot, "length")

    def _finish(self, active: list[_Slot], slot: _Slot, reason: FinishReason) -> None:
        active.remove(slot)
        slot.past = None
        if reason != "abort":
            rest = slot.stream.flush()
            if rest:
                slot.job.emit(TextDelta(rest))
            slot.job.emit(
                Finished(
                    text=slot.stream.text, finish_reason=reason, prompt_tokens=len(slot.job.prompt_ids),
                    completion_tokens=slot.generated,
                )
            )  # fmt: skip
        self._record(slot, aborted=reason == "abort")

    def _record(self, slot: _Slot, *, aborted: bool) -> None:
        job = slot.job
        start = slot.start_s or time.perf_counter()
        timing = RequestTiming(
            prompt_tokens=len(job.prompt_ids), completion_tokens=slot.generated, queue_s=start - job.submitted_s,
            ttft_s=(slot.first_s - job.submitted_s) if slot.first_s else 0.0,
            prefill_s=(slot.first_s - start) if slot.first_s else 0.0,
            decode_s=slot.last_s - slot.first_s, aborted=aborted,
        )  # fmt: skip
        finished = self.stats.record(timing)
        if self._on_finished is not None:
            self._on_finished(finished)
