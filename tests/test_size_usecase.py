"""The size use case: its request validation, and its "next:" fit command, which `swiftplan fit` itself
must parse back into the very `FitRequest` size built."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

import swiftplan.cli.fit as fit_cli
from swiftplan.errors import SwiftplanError
from swiftplan.planner.hardware import parse_cluster
from swiftplan.planner.search.pins import Pins
from swiftplan.planner.search.space import RANKS
from swiftplan.usecases.describe import fit_command_line
from swiftplan.usecases.fit import FitRequest
from swiftplan.usecases.size import SizeRequest, plan_size

GiB = 2**30


class _Parsed(Exception):
    def __init__(self, request: FitRequest) -> None:
        self.request = request


def parse_fit(command: str, monkeypatch: pytest.MonkeyPatch) -> FitRequest:
    """The `FitRequest` that `swiftplan fit`'s own option parsing makes of a command line, less the names of
    the options it typed (`FitRequest.typed`: a command line types what size's request holds as values; size
    only plans clusters whose data-parallel ranks divide the global batch, so fit's rounding of an untyped
    one changes nothing there)."""
    argv = shlex.split(command)
    assert argv[:2] == ["swiftplan", "fit"], command

    def capture(**options):
        raise _Parsed(parse(**options))

    parse = fit_cli.fit_request
    monkeypatch.setattr(fit_cli, "fit_request", capture)
    fit_only = typer.Typer()
    fit_cli.register(fit_only)
    result = CliRunner().invoke(fit_only, argv[2:])
    monkeypatch.setattr(fit_cli, "fit_request", parse)
    assert isinstance(result.exception, _Parsed), result.output
    return dataclasses.replace(result.exception.request, typed=frozenset())


REQUESTS = [
    FitRequest(model="Qwen/Qwen2.5-7B", gpus="rtx4090"),
    FitRequest(
        model="./my model/config.json",
        gpus="2x8xh100-sxm",
        objective="cost",
        pareto=True,
        dataset_tokens=1_500_000_000,
        epochs=2.5,
        global_batch=64,
        seq_len=4096,
        attention="flash",
        headroom=0.1,
        host_ram_bytes=1_234_567_891,
        seed=7,
        trials=40,
        storage="sqlite:///study.db",
        study_name="a b",
        pins=Pins(
            methods=("lora", "qlora"),
            quants=("nf4",),
            ranks=(16, 64),
            targets=("q_proj,v_proj",),
            precisions=("bf16",),
            optimizers=("adamw", "sgd"),
            grad_ckpt=(False,),
            zero=(0, 2),
            max_offload="optimizer",
            tp=(1, 2),
            pp=(1,),
            dp=(4,),
            micro_batch=(2,),
        ),
    ),  # fmt: skip
    FitRequest(model="m", gpus="a100", dataset_tokens=123_457, pins=Pins(quants=("none",), ranks=RANKS)),
    FitRequest(
        model="Qwen/Qwen2.5-7B",
        gpus="4xl40s",
        task="serve",
        engine="vllm",
        context=8192,
        concurrency=200,
        ttft_s=0.25,
        decode_tps=12.5,
        gpu_memory_utilization=0.85,
        pins=Pins(quants=("fp8",), kv_dtypes=("auto", "fp8")),
    ),  # fmt: skip
    FitRequest(model="Qwen/Qwen2.5-0.5B", gpus="a100", task="serve", concurrency=8, eager=True),
]


@pytest.mark.parametrize("request_", REQUESTS, ids=range(len(REQUESTS)))
def test_fit_command_line_parses_back_to_the_same_request(request_, monkeypatch):
    command = fit_command_line(request_)
    assert parse_fit(command, monkeypatch) == request_


def test_fit_command_line_names_only_what_differs_from_the_defaults():
    assert fit_command_line(FitRequest(model="Qwen/Qwen2.5-7B")) == "swiftplan fit Qwen/Qwen2.5-7B"
    assert (
        fit_command_line(FitRequest(model="Qwen/Qwen2.5-7B", gpus="rtx4090", dataset_tokens=50_000_000))
        == "swiftplan fit Qwen/Qwen2.5-7B --gpus rtx4090 --dataset-tokens 50M"
    )
    assert "'./my model/config.json'" in fit_command_line(REQUESTS[1])  # shell-quoted


def _small(**changes) -> SizeRequest:
    return SizeRequest(
        **{"model": "Qwen/Qwen2.5-7B", "accelerators": ("h100-sxm", "a100-80gb-sxm", "rtx4090"), **changes}
    )


@pytest.mark.parametrize(
    "request_",
    [
        _small(dataset_tokens=20_000_000, max_gpus=8, host_ram_bytes=32 * GiB, attention="flash", epochs=2.0),
        _small(
            pins=Pins(methods=("lora", "qlora"), quants=("none",), ranks=(32,)), seq_len=4096, headroom=0.1
        ),
        _small(task="serve", concurrency=200, context=8192),
        _small(
            task="serve",
            request_rate=20.0,
            prompt_tokens=1024,
            output_tokens=256,
            ttft_s=2.0,
            decode_tps=10.0,
        ),
    ],
    ids=["train", "train-pins", "serve-concurrency", "serve-rate"],
)
def test_next_command_is_the_fit_request_for_the_recommended_option(request_, monkeypatch):
    outcome = plan_size(request_)
    best, fit = outcome.ranking.recommended, outcome.next_fit
    assert best is not None and fit is not None
    assert parse_fit(fit_command_line(fit), monkeypatch) == fit
    assert (
        fit.model == request_.model
        and fit.task == request_.task
        and fit.pins.methods == request_.pins.methods
    )
    cluster = parse_cluster(fit.gpus)
    assert (cluster.accelerator.id, cluster.world_size, cluster.nodes) == (
        best.accelerator_id,
        best.gpus,
        best.nodes,
    )
    if request_.task == "serve":
        assert fit.context == request_.load_context and fit.pins.quants == (best.plan_fields["quant"],)
        assert fit.ttft_s == request_.ttft_s and fit.decode_tps == request_.decode_tps
    else:
        assert (fit.dataset_tokens, fit.epochs, fit.seq_len, fit.attention) == (
            request_.dataset_tokens, request_.epochs, request_.seq_len, request_.attention,
        )  # fmt: skip
        assert fit.host_ram_bytes == (
            None if request_.host_ram_bytes == 64 * GiB else request_.host_ram_bytes
        )


def test_cli_prints_the_next_command_in_json(monkeypatch):
    args = ["Qwen/Qwen2.5-7B", "--accelerators", "h100-sxm,rtx4090", "--dataset-tokens", "20M", "--rank", "64",
            "--seq", "1024", "--json"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", "from swiftplan.cli import main; main()", "size", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, "SWIFTPLAN_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    command = json.loads(done.stdout)["next"]
    assert command.endswith(" -o plan.yaml")
    parsed = parse_fit(command, monkeypatch)
    expected = plan_size(_small(accelerators=("h100-sxm", "rtx4090"), dataset_tokens=20_000_000,
                                pins=Pins(ranks=(64,)), seq_len=1024)).next_fit  # fmt: skip
    assert parsed == expected


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mode": "buy", "objective": "cost"}, "--buy does not use"),
        ({"mode": "rent", "objective": "purchase"}, "--rent does not use"),
        ({"task": "serve"}, "needs a load"),
        ({"task": "serve", "concurrency": 3, "request_rate": 2.0}, "not both"),
        ({"task": "serve", "request_rate": 2.0}, "needs --prompt-tokens"),
        ({"task": "serve", "concurrency": 3, "deadline_s": 3600.0}, "--deadline applies to training"),
        ({"headroom": 0.95}, "--headroom"),
        ({"max_gpus": 0}, "--max-gpus"),
        ({"dataset_tokens": 0}, "must be positive"),
    ],
)
def test_size_request_refuses_what_cannot_be_sized(changes, message):
    with pytest.raises(SwiftplanError, match=message):
        SizeRequest(model="Qwen/Qwen2.5-7B", **changes)


def test_size_request_defaults_the_objective_by_task_and_mode():
    assert SizeRequest(model="m").goal == "cost"
    assert SizeRequest(model="m", mode="buy").goal == "purchase"
    assert SizeRequest(model="m", task="serve", concurrency=1).goal == "cost-per-token"
    assert SizeRequest(model="m", objective="time", mode="buy").goal == "time"
