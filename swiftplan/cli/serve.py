"""`swiftplan serve PLAN`: vLLM when it can run here, else the built-in OpenAI-compatible server."""

from __future__ import annotations

import importlib.util
import threading
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from swiftplan.cli._output import console, print_json

if TYPE_CHECKING:
    from swiftplan.executors.serve.builtin import BuiltinOptions
    from swiftplan.executors.serve.target import ServeTarget

EPILOG = """
Examples:

  swiftplan serve plan.yaml                         (a plan from `swiftplan fit --task serve -o plan.yaml`)

  swiftplan serve plan.yaml --engine vllm --dry-run (print the vllm serve command)

  swiftplan serve plan.yaml --model ./my-model --lora sql=./adapters/sql --api-key "$KEY"

  swiftplan serve Qwen/Qwen2.5-0.5B-Instruct --engine builtin --context 2048 --concurrency 4

  swiftplan serve plan.yaml --random-init tiny/config.json --tokenizer tiny/ --report-dir runs/serve

Binds 127.0.0.1 unless --host says otherwise. --engine auto picks vLLM when it is installed and a
CUDA GPU is visible, else the built-in server (torch + transformers; pip install 'swiftplan[serve]').
The built-in server logs measured TTFT, decode speed and memory next to the plan's prediction every
--report-every requests and at shutdown (serve_report.json in --report-dir).
"""


class EngineChoice(str, Enum):
    auto = "auto"
    vllm = "vllm"
    sglang = "sglang"
    lmdeploy = "lmdeploy"
    builtin = "builtin"


def _vllm_usable() -> tuple[bool, str]:
    """(usable, why not): vLLM installed and a CUDA device visible to torch."""
    if importlib.util.find_spec("vllm") is None:
        return False, "vLLM is not installed"
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA GPU is visible"
    return True, ""


def _require(engine: str, target: Any) -> None:
    """Refuse a set-up `engine` cannot serve as planned (on the plan's backend): one line naming each
    setting, the engine that can in the hint (profiles/engines.json)."""
    from swiftplan.planner.engines import get_engine, require_engine, serve_requirements

    needs = serve_requirements(target.setup, backend=target.backend or "cuda", gpus=target.gpus,
                               accelerator=target.accelerator)  # fmt: skip
    require_engine(get_engine(engine, "serve"), needs, plan=target.plan_path or "PLAN")


def _pick_engine(choice: EngineChoice, target: Any, *, random_init: bool, dry_run: bool) -> str:
    """The engine to serve with: the one asked for, else the plan's (rendered as planned with --dry-run;
    on a real run vLLM needs to be installed with a GPU, else the built-in server if it can run the plan)."""
    from rich.console import Console

    from swiftplan.errors import SwiftplanError

    if choice in (EngineChoice.vllm, EngineChoice.sglang, EngineChoice.lmdeploy) and random_init:
        raise SwiftplanError(f"--random-init is a built-in server option; {choice.value} loads real weights.",
                             hint="Use --engine builtin.")  # fmt: skip
    if choice is not EngineChoice.auto:
        chosen = choice.value
    elif random_init:
        chosen = "builtin"
    elif dry_run and target.engine:
        chosen = target.engine
    else:
        usable, why = _vllm_usable()
        chosen = "vllm" if usable and target.engine in (None, "vllm") else "builtin"
        if chosen == "builtin" and target.engine == "vllm":
            Console(stderr=True).print(f"[dim]the plan is for vLLM, but {why}: using the built-in server.[/]")
    _require(chosen, target)
    return chosen


def _opt(*names: str, help: str) -> Any:
    return typer.Option(*names, help=help)


PlanArg = Annotated[
    str, typer.Argument(help="Serving plan file (.yaml), or a model: hub id or local directory.")
]
EngineOpt = Annotated[EngineChoice, _opt("--engine", help="auto | vllm | sglang | lmdeploy | builtin")]
ModelOpt = Annotated[
    str | None, _opt("--model", help="Weights to load (hub id or directory); default: the plan's model.")
]
RandomInitOpt = Annotated[
    Path | None,
    _opt("--random-init", help="Built-in: random weights from this config.json (tests, smoke runs)."),
]
TokenizerOpt = Annotated[
    str | None, _opt("--tokenizer", help="Built-in: tokenizer directory or hub id (default: the model's).")
]
LoraOpt = Annotated[
    list[str] | None, _opt("--lora", help="LoRA adapter NAME=PATH, served as model NAME; repeatable.")
]
NameOpt = Annotated[
    str | None, _opt("--served-model-name", help="Model name clients use (default: the plan's model).")
]
HostOpt = Annotated[str, _opt("--host", help="Address to bind; 0.0.0.0 exposes the server to the network.")]
PortOpt = Annotated[int, _opt("--port", help="TCP port, 1-65535.")]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key", envvar="SWIFTPLAN_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1 routes."
    ),
]
ContextOpt = Annotated[
    int | None, _opt("--context", help="Override the plan's context (max tokens per sequence).")
]
ConcurrencyOpt = Annotated[
    int | None, _opt("--concurrency", help="Override the plan's concurrency (sequences at once).")
]
DtypeOpt = Annotated[str | None, _opt("--dtype", help="Override the plan's dtype: bf16 | fp16 | fp32.")]
DeviceOpt = Annotated[str, _opt("--device", help="Built-in: auto | cuda | cpu.")]
DEVICES = ("auto", "cuda", "cpu")
"""--device values the built-in server loads onto."""
SeedOpt = Annotated[int, _opt("--seed", help="Built-in: seed for --random-init weights.")]
ReportDirOpt = Annotated[
    Path | None, _opt("--report-dir", help="Built-in: write serve_report.json (measured vs predicted) here.")
]
ReportEveryOpt = Annotated[
    int, _opt("--report-every", help="Built-in: log the comparison every N requests (0 = only at shutdown).")
]
HealthOpt = Annotated[float, _opt("--health-timeout", help="vLLM: seconds to wait for /health.")]
DryRunOpt = Annotated[bool, _opt("--dry-run", help="Print what would run and exit.")]
JsonOpt = Annotated[bool, _opt("--json", help="With --dry-run: print one JSON object.")]


def serve_command(
    ctx: typer.Context,
    plan: PlanArg,
    engine: EngineOpt = EngineChoice.auto,
    model: ModelOpt = None,
    random_init: RandomInitOpt = None,
    tokenizer: TokenizerOpt = None,
    lora: LoraOpt = None,
    served_model_name: NameOpt = None,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    api_key: ApiKeyOpt = None,
    context: ContextOpt = None,
    concurrency: ConcurrencyOpt = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    report_dir: ReportDirOpt = None,
    report_every: ReportEveryOpt = 100,
    health_timeout: HealthOpt = 900.0,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Serve a plan with an OpenAI-compatible API."""
    from swiftplan.cli.options import given_options
    from swiftplan.executors.serve.target import parse_loras, resolve_target

    typed = set(given_options(ctx))
    _check_options(dict(locals()))

    target = resolve_target(plan, weights=model, context=context, concurrency=concurrency, dtype=dtype,
                            load_weights=random_init is None)  # fmt: skip
    served_name = served_model_name or target.model
    loras = parse_loras(lora or [], served_name=served_name)
    chosen = _pick_engine(engine, target, random_init=random_init is not None, dry_run=dry_run)
    _refuse_ignored(chosen, typed, dict(locals()), picked=engine is EngineChoice.auto)
    if chosen == "vllm":
        _serve_vllm(target, served_name=served_name, host=host, port=port, loras=loras, api_key=api_key,
                    health_timeout=health_timeout, dry_run=dry_run, as_json=as_json)  # fmt: skip
        return
    if chosen in ("sglang", "lmdeploy"):
        _serve_external(chosen, target, served_name=served_name, host=host, port=port, loras=loras,
                        api_key=api_key, health_timeout=health_timeout, dry_run=dry_run, as_json=as_json)  # fmt: skip
        return
    from swiftplan.extras import needs

    with needs("serve"):
        from swiftplan.executors.serve.builtin import BuiltinOptions
    options = BuiltinOptions(
        target=target, served_name=served_name, loras=loras, random_init=None if random_init is None else str(random_init),
        tokenizer=tokenizer, host=host, port=port, api_key=api_key, device=device, seed=seed,
        report_dir=None if report_dir is None else str(report_dir), report_every=report_every,
    )  # fmt: skip
    _serve_builtin(options, dry_run=dry_run, as_json=as_json)


def _check_options(o: dict[str, Any]) -> None:
    """Every option in range, and (unless --dry-run) the port free, before the plan or a model is loaded."""
    from swiftplan.cli import _checks
    from swiftplan.errors import SwiftplanError

    _checks.port("--port", o["port"])
    _checks.host("--host", o["host"])
    if o["served_model_name"] is not None and not o["served_model_name"].strip():
        raise SwiftplanError(
            f"--served-model-name {o['served_model_name']!r} is {'blank' if o['served_model_name'] else 'empty'}: "
            "clients would have no model name to ask for.",
            hint="Give the name clients use, or leave --served-model-name out to serve under the plan's model name.",
        )
    if o["api_key"] is not None and not o["api_key"].strip():
        source = o["ctx"].get_parameter_source("api_key")
        if source is not None and source.name == "ENVIRONMENT":
            raise SwiftplanError(
                f"SWIFTPLAN_API_KEY is {'blank' if o['api_key'] else 'empty'}: the server would start without "
                "authentication, and nothing would say so.",
                hint="Set SWIFTPLAN_API_KEY to the key, or unset it to serve without one.",
            )
        raise SwiftplanError(
            f"--api-key {o['api_key']!r} is {'blank' if o['api_key'] else 'empty'}: the server would start without authentication, and nothing "
            'would say so (an unset variable in --api-key "$KEY" gives this).',
            hint="Give the key (or set SWIFTPLAN_API_KEY), or leave --api-key out to serve without one.",
        )
    _checks.at_least("--context", o["context"], 1, unit=" token")
    _checks.at_least("--concurrency", o["concurrency"], 1)
    _checks.one_of("--device", o["device"], DEVICES)
    _checks.between("--seed", o["seed"], 0, 2**32 - 1)
    _checks.at_least("--report-every", o["report_every"], 0, unit=" requests")
    _checks.positive("--health-timeout", o["health_timeout"], unit=" s")
    _checks.output_dir("--report-dir", o["report_dir"])
    if o["random_init"] is not None and not o["random_init"].is_file():
        raise SwiftplanError(
            f"--random-init {o['random_init']} is not a file.", hint="Give a model's config.json."
        )
    if o["tokenizer"] is not None:
        from swiftplan.executors.model_source import check_local_or_hub

        check_local_or_hub(f"--tokenizer {o['tokenizer']}", o["tokenizer"], files=("tokenizer.json", "tokenizer_config.json"),
                           what="a tokenizer", usage="--tokenizer DIR")  # fmt: skip
    if o["as_json"] and not o["dry_run"]:
        raise SwiftplanError("--json prints what --dry-run would run; it needs --dry-run.")
    if not o["dry_run"]:
        _checks.port_free("--port", o["host"], o["port"])


_BUILTIN_ONLY = ("tokenizer", "device", "seed", "report_dir", "report_every")
"""Options only the built-in server reads (vLLM, SGLang and LMDeploy are given none of them)."""


def _refuse_ignored(chosen: str, typed: set[str], o: dict[str, Any], *, picked: bool) -> None:
    """Options the chosen engine would drop, typed by the user, refused naming the engine that honours them."""
    from swiftplan.errors import SwiftplanError

    def shown(name: str) -> str:
        value = o[name]
        return f"--{name.replace('_', '-')} {f'{value:g}' if isinstance(value, float) else value}"

    how = " (picked by --engine auto)" if picked else ""
    if chosen == "builtin":
        if "health_timeout" in typed:
            raise SwiftplanError(f"{shown('health_timeout')} is how long swiftplan waits for vLLM's, SGLang's or "
                                 f"LMDeploy's /health; the built-in server{how} starts in this process and would "
                                 "ignore it.", hint="Leave --health-timeout out, or serve with --engine vllm.")  # fmt: skip
        return
    ignored = [name for name in _BUILTIN_ONLY if name in typed]
    if not ignored:
        return
    one = len(ignored) == 1
    raise SwiftplanError(
        f"{', '.join(shown(name) for name in ignored)} {'is a' if one else 'are'} built-in server "
        f"option{'' if one else 's'}: {chosen}{how} is not given {'it' if one else 'them'} and would serve "
        f"without {'it' if one else 'them'}; only --engine builtin honours {'it' if one else 'them'}.",
        hint=f"Leave {'it' if one else 'them'} out to serve with {chosen}, or add --engine builtin.",
    )


def _serve_builtin(options: BuiltinOptions, *, dry_run: bool, as_json: bool) -> None:
    """Run the built-in server, or print what it would run."""
    if dry_run:
        summary = options.describe()
        if as_json:
            print_json(summary)
        else:
            for key, value in summary.items():
                console.print(f"{key}: {value}", highlight=False)
        return
    from swiftplan.extras import needs, require

    require("serve")  # before the model is loaded
    with needs("serve"):
        from swiftplan.executors.serve.builtin import run_builtin

        run_builtin(
            options, log=lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True)
        )


def _serve_vllm(
    target: ServeTarget, *, served_name: str, host: str, port: int, loras: tuple[tuple[str, str], ...],
    api_key: str | None, health_timeout: float, dry_run: bool, as_json: bool,
) -> None:  # fmt: skip
    """Launch vLLM's OpenAI server for the target, or print the command."""
    from swiftplan.executors.serve.vllm_cmd import format_command, render_vllm, run_server_process

    spec = render_vllm(target.setup, model=target.weights, served_name=served_name, host=host, port=port,
                       loras=loras, api_key=api_key)  # fmt: skip
    if dry_run:
        if as_json:
            print_json({"engine": "vllm", "argv": list(spec.argv), "env": {k: "***" for k in spec.env},
                        "health_url": spec.health_url, "notes": list(spec.notes)})  # fmt: skip
        else:
            print(format_command(spec))
            for note in spec.notes:
                console.print(f"[yellow]note:[/] {note}")
        return
    for note in spec.notes:
        console.print(f"[yellow]note:[/] {note}")
    stopped = threading.Event()
    code = run_server_process(spec, health_timeout_s=health_timeout, log=print, stop_when=stopped)
    if code != 0 and not stopped.is_set():  # vLLM ended by itself, not because we stopped it
        raise typer.Exit(code if code > 0 else 1)


def _serve_external(
    engine: str, target: ServeTarget, *, served_name: str, host: str, port: int,
    loras: tuple[tuple[str, str], ...], api_key: str | None, health_timeout: float, dry_run: bool, as_json: bool,
) -> None:  # fmt: skip
    """Launch SGLang's or LMDeploy's OpenAI server for the target (the memory fraction in that engine's
    own meaning), or print the command with secrets masked."""
    from swiftplan.executors.serve import lmdeploy_cmd, sglang_cmd
    from swiftplan.executors.serve.argv import format_masked, masked
    from swiftplan.executors.serve.vllm_cmd import run_server_process

    module = sglang_cmd if engine == "sglang" else lmdeploy_cmd
    render = sglang_cmd.render_sglang if engine == "sglang" else lmdeploy_cmd.render_lmdeploy
    spec = render(target.setup, model=target.weights, served_name=served_name, host=host, port=port,
                  loras=loras, api_key=api_key, memory=target.memory, backend=target.backend or "cuda")  # fmt: skip
    if dry_run:
        if as_json:
            print_json({"engine": engine, "argv": list(masked(spec.argv, module.SECRET_FLAGS)),
                        "env": {k: "***" for k in spec.env}, "health_url": spec.health_url,
                        "notes": list(spec.notes)})  # fmt: skip
        else:
            print(format_masked(spec.argv, dict(spec.env), module.SECRET_FLAGS))
            for note in spec.notes:
                console.print(f"[yellow]note:[/] {note}")
        return
    for note in spec.notes:
        console.print(f"[yellow]note:[/] {note}")
    stopped = threading.Event()
    code = run_server_process(spec, health_timeout_s=health_timeout, log=print, stop_when=stopped)
    if code != 0 and not stopped.is_set():
        raise typer.Exit(code if code > 0 else 1)


def register(app: typer.Typer) -> None:
    """Add `serve` to the CLI."""
    app.command("serve", epilog=EPILOG)(serve_command)
