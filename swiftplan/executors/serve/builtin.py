"""Wire the built-in server together: load → engine → app → uvicorn, with the report at the end."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from swiftplan.executors.serve.limits import body_limit_bytes, describe_limit
from swiftplan.executors.serve.target import ServeTarget

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True, kw_only=True, slots=True)
class BuiltinOptions:
    """Everything `run_builtin` needs, as parsed by the CLI."""

    target: ServeTarget
    """Model, weights, set-up and prediction."""
    served_name: str
    """Model name of the base model in the API."""
    loras: tuple[tuple[str, str], ...] = ()
    """(name, adapter directory) pairs."""
    random_init: str | None = None
    """A config.json to build random weights from instead of loading `target.weights`."""
    tokenizer: str | None = None
    """Tokenizer source when not the model's own."""
    host: str = "127.0.0.1"
    """Bind address."""
    port: int = 8000
    """TCP port."""
    api_key: str | None = None
    """Bearer token the /v1 routes require."""
    device: str = "auto"
    """auto | cuda | cpu."""
    seed: int = 0
    """Seed for random-init weights."""
    report_dir: str | None = None
    """Where serve_report.json goes (None: log only)."""
    report_every: int = 100
    """Log/write the comparison every N finished requests (0: only at shutdown)."""
    max_body_bytes: int | None = None
    """Largest request body accepted (None: from the context, `limits.body_limit_bytes`)."""

    def describe(self) -> dict[str, Any]:
        """What would be served (`--dry-run`)."""
        setup = self.target.setup
        return {
            "engine": "builtin",
            "plan": self.target.plan_path,
            "model": self.target.model,
            "weights": f"random init from {self.random_init}" if self.random_init else self.target.weights,
            "tokenizer": self.tokenizer or self.target.weights,
            "served_model_names": [self.served_name, *(name for name, _ in self.loras)],
            "url": f"http://{self.host}:{self.port}/v1",
            "api_key": "required" if self.api_key else "none",
            "dtype": setup.dtype,
            "context": setup.context,
            "slots": setup.concurrency,
            "device": self.device,
            "max_body_bytes": self.max_body_bytes or body_limit_bytes(setup.context),
            "report_dir": self.report_dir,
        }


def require_builtin_can_serve(target: ServeTarget) -> None:
    """Refuse, before loading anything, a plan whose set-up the built-in server would not run as planned
    (NF4/int8/fp8 weights, an fp8 KV cache, several GPUs): one line naming each setting, and a hint
    naming the engine that can (from profiles/engines.json)."""
    from swiftplan.planner.engines import get_engine, require_engine, serve_requirements

    needs = serve_requirements(target.setup, backend=target.backend or "cuda", gpus=target.gpus,
                               accelerator=target.accelerator)  # fmt: skip
    require_engine(get_engine("builtin", "serve"), needs, plan=target.plan_path or "PLAN")


def run_builtin(options: BuiltinOptions, *, log: Callable[[str], None] = print) -> None:
    """Load the model and serve until SIGINT/SIGTERM; write the final report on the way out."""
    from swiftplan.executors.serve.app import make_app
    from swiftplan.executors.serve.engine import Engine
    from swiftplan.executors.serve.loading import load_model, memory_probe, require_serve_dependencies
    from swiftplan.executors.serve.report import Reporter, ServeStats
    from swiftplan.executors.serve.server import bind, run_foreground

    require_builtin_can_serve(options.target)
    require_serve_dependencies()
    bind(options.host, options.port).close()  # fail on a taken port before loading weights
    setup = options.target.setup
    if options.host not in _LOOPBACK:
        log(f"warning: listening on {options.host}: other machines can reach this server"
            + ("" if options.api_key else " and no --api-key is set"))  # fmt: skip
    loaded = load_model(
        source=None if options.random_init else options.target.weights, random_init=options.random_init,
        tokenizer=options.tokenizer, dtype=setup.dtype, device=options.device, adapters=dict(options.loras),
        seed=options.seed,
    )  # fmt: skip
    notes = ["The built-in engine runs one sequence per forward pass (no batching): its throughput does not "
             "grow with concurrency as vLLM's does.",
             "The predicted TTFT is for a prompt of context/2 tokens at the planned concurrency."]  # fmt: skip
    context = setup.context
    if loaded.max_positions and context > loaded.max_positions:
        notes.append(
            f"Context {context} is above the model's max_position_embeddings; serving {loaded.max_positions}."
        )
        context = loaded.max_positions
    if loaded.device == "cpu":
        notes.append("On CPU the measured memory is the process's peak RSS (interpreter, libraries, weights), "
                     "not comparable with the predicted GPU peak_allocated.")  # fmt: skip
    stats = ServeStats(memory=lambda: memory_probe(loaded.device))
    report_context = {
        "engine": "builtin", "plan": options.target.plan_path, "model": options.target.model,
        "served_model_names": [options.served_name, *loaded.adapters], "device": loaded.device,
        "dtype": setup.dtype, "context": context, "slots": setup.concurrency, "notes": notes,
    }  # fmt: skip
    reporter = Reporter(stats, options.target.prediction, context=report_context, report_dir=options.report_dir,
                        every=options.report_every, log=lambda line: log(f"serve report: {line}"))  # fmt: skip
    engine = Engine(loaded, served_name=options.served_name, context=context, max_slots=setup.concurrency,
                    stats=stats, on_finished=reporter.request_finished)  # fmt: skip
    for note in notes:
        log(f"note: {note}")
    engine.start()
    body_limit = options.max_body_bytes or body_limit_bytes(context)
    log(f"serving {', '.join(engine.served_names)} at http://{options.host}:{options.port}/v1 "
        f"({loaded.device}, {setup.dtype}, context {context}, {setup.concurrency} slots, "
        f"request bodies up to {describe_limit(body_limit, context)})")  # fmt: skip
    app = make_app(engine, api_key=options.api_key, max_body_bytes=body_limit)
    # torch + transformers leave ~400k long-lived objects: a full collection of them takes ~0.5 s with every
    # thread stopped, stalling /health and every client. Nothing loaded so far is garbage, so freeze it.
    gc.collect()
    gc.freeze()
    try:
        run_foreground(app, host=options.host, port=options.port)
    finally:
        engine.stop()
        reporter.emit(final=True)
