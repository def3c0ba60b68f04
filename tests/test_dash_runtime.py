"""The dashboard's runtime knobs (issue 14): picking a runtime fills the knob fields with its profile's
defaults, changed fields plan as fit's knob flags do (same request, same plan), bad values get the CLI's
paragraph, and the plan view names the runtime and the knobs it was planned with."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("textual")

from dash_support import pick_option, settle  # noqa: E402
from textual.widgets import Collapsible, Input, Select, Static  # noqa: E402

from swiftplan.planner.hardware import parse_cluster  # noqa: E402
from swiftplan.planner.runtime import KNOB_FLAGS, get_runtime  # noqa: E402
from swiftplan.planner.setup import RuntimeKnobs  # noqa: E402
from swiftplan.tui.app import make_app  # noqa: E402
from swiftplan.tui.job import parse_job, runtime_choices  # noqa: E402
from swiftplan.tui.knobs import KNOB_FIELDS, knob_text  # noqa: E402
from swiftplan.tui.panes.job import JobPane  # noqa: E402
from swiftplan.tui.search import fit_request  # noqa: E402
from tests.bad_input_support import run_cli  # noqa: E402

MODEL, GPUS = "Qwen/Qwen2.5-0.5B", "2xrtx4090"
RUNTIME = "hf"
"""A runtime fit plans for (its engine, TRL, runs FSDP) whose profile changes several knobs."""
SIZE = (100, 60)
"""Tall enough to show the whole form with the knob group open."""


def _form(app: Any, key: str) -> str:
    return str(app.query_one(f"#job-{key}", Input | Select).value)


def _profile_knobs(runtime: str) -> dict[str, str]:
    """Each knob field's expected text, read from the profile itself (its default, else swiftplan's)."""
    profile, base = get_runtime(runtime, "train"), RuntimeKnobs()
    return {k: knob_text(v if (v := profile.value(k)) is not None else getattr(base, k)) for k in KNOB_FIELDS}


def test_every_knob_flag_of_the_cli_has_a_field() -> None:
    assert set(KNOB_FIELDS) == set(KNOB_FLAGS)
    assert RUNTIME in runtime_choices()


def test_a_runtime_fills_its_defaults_and_changed_knobs_plan_as_fit_does(monkeypatch) -> None:
    import swiftplan.usecases.fit as fit_usecase

    async def drive() -> Any:
        app = make_app(gpus=GPUS, cursor_blink=False)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("2")
            app.query_one(JobPane).fill({"model": MODEL, "dataset_tokens": "50M"})
            knobs = app.query_one("#job-knobs", Collapsible)
            assert knobs.collapsed
            await pilot.click("#job-knobs CollapsibleTitle")
            await pilot.pause()
            assert not knobs.collapsed
            assert {k: _form(app, k) for k in KNOB_FIELDS} == _profile_knobs("swiftplan")
            await pick_option(pilot, "#job-runtime", RUNTIME)
            shown = {k: _form(app, k) for k in KNOB_FIELDS}
            assert shown == _profile_knobs(RUNTIME) and shown != _profile_knobs("swiftplan")
            await pick_option(pilot, "#job-fsdp", "fsdp2")
            await pick_option(pilot, "#job-fsdp_cpu_offload", "yes")
            fields = app.query_one(JobPane).values()
            await pilot.press("ctrl+r")
            await settle(pilot)
            assert app.outcome is not None and app.outcome.choices
            return fields, app.outcome, str(app.query_one("#plan-runtime", Static).render())

    fields, outcome, runtime_shown = asyncio.run(drive())
    job = parse_job(fields)
    assert job.runtime == RUNTIME and job.runtime_options == {"fsdp": "fsdp2", "fsdp_cpu_offload": True}

    seen: list[Any] = []
    real = fit_usecase.plan_fit
    monkeypatch.setattr(fit_usecase, "plan_fit", lambda request: seen.append(real(request)) or seen[-1])
    cli = run_cli("fit", MODEL, "--gpus", GPUS, "--dataset-tokens", "50M", "--runtime", RUNTIME,
                  "--fsdp", "fsdp2", "--fsdp-cpu-offload", "--json")  # fmt: skip
    assert cli.exit_code == 0, cli.output
    theirs = seen[0]
    ours_request = fit_request(job, host_ram_bytes=theirs.problem.evaluator.host_ram_bytes)
    assert ours_request.runtime_options == theirs.problem.request.runtime_options
    plan, their_plan = outcome.choices[0].plan, theirs.plan
    assert their_plan is not None
    assert plan.setup == their_plan.setup and plan.setup.runtime.fsdp_cpu_offload  # type: ignore[union-attr]
    assert plan.prediction == their_plan.prediction
    assert plan.layout == their_plan.layout and plan.engine == their_plan.engine
    # the plan view says what it was planned with: the runtime, its defaults, and the knobs set over them
    assert runtime_shown.startswith(theirs.problem.runtime.describe())
    assert runtime_shown.endswith("set: fsdp fsdp2, fsdp_cpu_offload true")


BAD = [
    ("loss_chunks", "0", ("--loss-chunks", "0")),
    ("fsdp_shard_group", "-1", ("--fsdp-shard-group", "-1")),
    ("ckpt_every", "0", ("--ckpt-every", "0")),
    ("modules_to_save", "embed_tokens,bogus", ("--modules-to-save", "embed_tokens,bogus")),
    ("modules_to_save", "lm_head,lm_head", ("--modules-to-save", "lm_head,lm_head")),
    ("reduce_bucket_elements", "0", ("--reduce-bucket-elements", "0")),
    ("max_live_parameters", "-1", ("--max-live-parameters", "-1")),
]


@pytest.mark.parametrize(("field", "text", "flag"), BAD, ids=[f"{f}={t}" for f, t, _ in BAD])
def test_a_bad_knob_shows_the_clis_paragraph(field: str, text: str, flag: tuple[str, str]) -> None:
    cli = run_cli("fit", MODEL, "--gpus", GPUS, *flag)
    assert cli.exit_code != 0 and "Traceback" not in cli.output
    cli_error = " ".join(cli.output.split()).removeprefix("error: ")

    async def drive() -> str:
        app = make_app(gpus=GPUS, cursor_blink=False)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("2")
            app.query_one(JobPane).fill({"model": MODEL, field: text})
            await pilot.press("ctrl+r")
            await settle(pilot)
            assert app.query_one("TabbedContent").active == "job"  # sent back to the form
            return str(app.query_one("#job-error", Static).render())

    shown = asyncio.run(drive())
    assert shown.strip() and "Traceback" not in shown
    assert " ".join(shown.split()) in cli_error  # the CLI's paragraph (it may add a hint line)
    assert text.split(",")[-1] in shown


def test_text_that_is_no_number_names_the_flag_and_the_value() -> None:
    from swiftplan.errors import SwiftplanError

    with pytest.raises(SwiftplanError, match=r"--loss-chunks must be a whole number, got 'eight'"):
        parse_job({"model": MODEL, "loss_chunks": "eight"})


def test_knobs_left_at_the_runtimes_values_are_not_overrides_and_serving_refuses_changed_ones() -> None:
    from swiftplan.errors import SwiftplanError

    same = parse_job({"model": MODEL, "runtime": RUNTIME, **_profile_knobs(RUNTIME)})
    assert same.runtime_options == {}
    serve = parse_job({"model": MODEL, "task": "serve", **_profile_knobs("swiftplan")})
    assert serve.runtime_options == {}
    assert fit_request(serve, host_ram_bytes=0).runtime_options == {}
    with pytest.raises(SwiftplanError, match="--fsdp describes how a training framework runs"):
        parse_job({"model": MODEL, "task": "serve", "fsdp": "fsdp2"})  # as estimate --task serve --fsdp
    # a preference task moves swiftplan's loop to ms-swift; what was changed in the form goes with it
    dpo = parse_job({"model": MODEL, "task": "dpo", **_profile_knobs("swiftplan"), "loss": "chunked"})
    assert (dpo.runtime, dpo.runtime_options) == ("ms-swift", {"loss": "chunked"})


def test_deepspeeds_buffer_sizes_are_typed_as_its_configs_write_them() -> None:
    from swiftplan.errors import SwiftplanError

    shown = _profile_knobs("llamafactory")
    assert shown["reduce_bucket_elements"] == f"{RuntimeKnobs().reduce_bucket_elements:_}"  # 500_000_000
    job = parse_job({"model": MODEL, "runtime": "llamafactory", **shown, "reduce_bucket_elements": "2e8",
                     "prefetch_bucket_elements": "50_000_000", "max_live_parameters": "0"})  # fmt: skip
    # only what differs from the runtime's own values is an override, as fit's flags would say
    assert job.runtime_options == {"reduce_bucket_elements": 200_000_000, "max_live_parameters": 0}
    with pytest.raises(
        SwiftplanError, match=r"--prefetch-bucket-elements must be a whole number, got '1\.5e3x'"
    ):
        parse_job({"model": MODEL, "prefetch_bucket_elements": "1.5e3x"})


def test_the_search_plans_with_the_overridden_knobs() -> None:
    from swiftplan.tui.search import prepare

    job = parse_job({"model": MODEL, "runtime": RUNTIME, "optimizer_impl": "foreach"})
    problem = prepare(job, parse_cluster("rtx4090"), host_ram_bytes=64 * 2**30)
    assert problem.runtime is not None
    assert problem.runtime.knobs().optimizer_impl == "foreach"
    assert problem.runtime.knobs().loss == get_runtime(RUNTIME, "train").value("loss")


def test_headroom_and_host_ram_plan_as_fits_flags() -> None:
    probed = 64 * 2**30
    default = fit_request(parse_job({"model": MODEL}), host_ram_bytes=probed)
    assert (default.headroom, default.host_ram_bytes) == (0.05, probed)  # fit's defaults, the probed host RAM
    typed = fit_request(
        parse_job({"model": MODEL, "headroom": "0.2", "host_ram": "0"}), host_ram_bytes=probed
    )
    assert (typed.headroom, typed.host_ram_bytes) == (0.2, 0)  # no host RAM for offload, as --host-ram 0


@pytest.mark.parametrize(
    ("field", "text", "flag"),
    [("headroom", "0.95", "--headroom"), ("host_ram", "-3", "--host-ram"), ("headroom", "nan", "--headroom"),
     ("host_ram", "inf", "--host-ram")],
)  # fmt: skip
def test_a_bad_headroom_or_host_ram_gets_the_clis_message(field: str, text: str, flag: str) -> None:
    from swiftplan.errors import SwiftplanError
    from swiftplan.tui.search import prepare

    cli = run_cli("fit", MODEL, "--gpus", GPUS, flag, text)
    assert cli.exit_code != 0 and "Traceback" not in cli.output
    with pytest.raises(SwiftplanError) as raised:  # the dashboard's search: the form, then fit's use case
        prepare(parse_job({"model": MODEL, field: text}), parse_cluster(GPUS), host_ram_bytes=64 * 2**30)
    assert str(raised.value) in " ".join(cli.output.split())
