"""Eager decode (vLLM --enforce-eager and its siblings, and vLLM V0's fallback past max_seq_len_to_capture):
no CUDA-graph pool, a step at least as long as the host's kernel launches, the flag end to end (estimate, fit,
plan file, rendered command), and the published V0 rows expressed with the 8192-token graph limit."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from swiftplan.errors import SwiftplanError
from swiftplan.planner.hardware import get_accelerator
from swiftplan.planner.model_catalog import catalog_spec
from swiftplan.planner.serve_memory import serve_memory
from swiftplan.planner.setup import ServeSetup
from swiftplan.planner.speed import decode_host_launch_s, serve_efficiency, serve_speed
from tests.bad_input_support import run_cli

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from published_accuracy import DECODE_CSV  # noqa: E402
from published_rows import VLLM_V0_GRAPH_MAX_CONTEXT, express  # noqa: E402

GiB = 2**30
A100 = get_accelerator("a100-80gb-sxm")
SMALL = catalog_spec("Qwen/Qwen2.5-0.5B")
LARGE = catalog_spec("meta-llama/Llama-2-70b-hf")


def _speed(spec, setup, eff=None):
    served = serve_memory(spec, setup, device_memory_bytes=80 * GiB)
    return serve_speed(
        spec,
        setup,
        A100,
        weight_bytes=served.device.weights,
        kv_bytes_per_token=served.kv_bytes_per_token,
        efficiency=eff,
    )


def test_eager_decode_has_no_graph_pool_and_gives_it_to_the_kv_cache() -> None:
    spec = catalog_spec("meta-llama/Meta-Llama-3-8B")
    graphs = ServeSetup(concurrency=256, context=4096)
    with_graphs = serve_memory(spec, graphs, device_memory_bytes=80 * GiB)
    eager = serve_memory(spec, replace(graphs, eager=True), device_memory_bytes=80 * GiB)
    pool = {t.name: t for t in with_graphs.device.terms}["cudagraph_pool"]
    eager_pool = {t.name: t for t in eager.device.terms}["cudagraph_pool"]
    assert pool.value_bytes > 0.3 * GiB and eager_pool.value_bytes == 0
    assert "enforce_eager" in eager_pool.source and "none" in eager_pool.formula
    assert eager.kv_budget_bytes == with_graphs.kv_budget_bytes + pool.value_bytes


def test_an_eager_step_waits_for_the_host_launches_of_a_small_model() -> None:
    eff = serve_efficiency()
    setup = ServeSetup(concurrency=1, context=2048)
    graphs, eager = _speed(SMALL, setup), _speed(SMALL, replace(setup, eager=True))
    launch_s = decode_host_launch_s(SMALL, replace(setup, eager=True), eff)
    assert launch_s == pytest.approx(SMALL.num_layers * eff.eager_launch_per_layer_s)
    assert decode_host_launch_s(SMALL, setup, eff) == 0.0
    overhead_s = eff.step_overhead_s["vllm"]
    assert 1 / eager.per_user_decode_tokens_per_s == pytest.approx(launch_s + overhead_s)
    assert eager.per_user_decode_tokens_per_s < graphs.per_user_decode_tokens_per_s
    assert eager.bound == "host" and graphs.bound == "memory"


def test_a_large_model_hides_the_launches_behind_its_reads() -> None:
    setup = ServeSetup(concurrency=1, context=2048, tp=4)
    graphs, eager = _speed(LARGE, setup), _speed(LARGE, replace(setup, eager=True))
    assert eager.per_user_decode_tokens_per_s == pytest.approx(graphs.per_user_decode_tokens_per_s)
    faster_host = replace(serve_efficiency(), eager_launch_per_layer_s=1e-3)  # 80 layers × 1 ms = 80 ms
    assert _speed(LARGE, replace(setup, eager=True), faster_host).bound == "host"


def test_the_v0_graph_limit_makes_only_longer_contexts_eager() -> None:
    assert not ServeSetup(context=8192, graph_max_context=8192).decodes_eagerly
    assert ServeSetup(context=8193, graph_max_context=8192).decodes_eagerly
    assert not ServeSetup(context=131072).decodes_eagerly  # 0: no limit (vLLM V1)
    assert ServeSetup(eager=True).decodes_eagerly
    past = serve_memory(
        SMALL, ServeSetup(context=16384, graph_max_context=8192), device_memory_bytes=80 * GiB
    )
    assert {t.name: t.value_bytes for t in past.device.terms}["cudagraph_pool"] > 0  # still captured
    with pytest.raises(SwiftplanError, match="graph_max_context"):
        ServeSetup(graph_max_context=-1)


def test_published_v0_rows_decode_eagerly_past_8192_tokens() -> None:
    with DECODE_CSV.open(newline="", encoding="utf-8") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    short, long_, other = express(rows["dec-70"]), express(rows["dec-71"]), express(rows["dec-09"])
    assert isinstance(long_.setup, ServeSetup) and isinstance(short.setup, ServeSetup)
    assert long_.setup.graph_max_context == short.setup.graph_max_context == VLLM_V0_GRAPH_MAX_CONTEXT
    assert long_.setup.decodes_eagerly and not short.setup.decodes_eagerly
    assert any("fall back to eager mode" in n for n in long_.notes)
    assert isinstance(other.setup, ServeSetup) and other.setup.graph_max_context == 0  # LMDeploy


def test_estimate_with_enforce_eager_drops_the_pool_and_training_refuses_the_flag() -> None:
    base = ("estimate", "Qwen/Qwen2.5-0.5B", "--task", "serve", "--gpus", "a100-80gb-sxm", "--json")
    graphs, eager = run_cli(*base), run_cli(*base, "--enforce-eager")
    assert graphs.exit_code == 0 and eager.exit_code == 0, eager.output
    pools = [
        {t["name"]: t["bytes"] for t in json.loads(r.output)["terms"]}["cudagraph_pool"]
        for r in (graphs, eager)
    ]
    assert pools[0] > 0 and pools[1] == 0
    train = run_cli("estimate", "Qwen/Qwen2.5-0.5B", "--enforce-eager")
    assert train.exit_code != 0 and "serving option" in train.output and "Traceback" not in train.output


def test_fit_with_enforce_eager_writes_it_and_serve_renders_the_flag(tmp_path: Path) -> None:
    plan, graphs = tmp_path / "plan.yaml", tmp_path / "graphs.yaml"
    fit = ("fit", "Qwen/Qwen2.5-0.5B", "--task", "serve", "--gpus", "a100-80gb-sxm", "--concurrency", "8")
    fitted = run_cli(*fit, "--enforce-eager", "-o", str(plan))
    assert fitted.exit_code == 0, fitted.output
    assert run_cli(*fit, "-o", str(graphs)).exit_code == 0
    written, plain = yaml.safe_load(plan.read_text()), yaml.safe_load(graphs.read_text())
    assert written["serve"]["eager"] is True and plain["serve"]["eager"] is False
    assert "eager" not in written["workload"]  # stored once, with the set-up
    runtime = [p["prediction"]["per_device_bytes"]["runtime_overhead"] for p in (written, plain)]
    assert runtime[0] < runtime[1]  # the graph pool is part of the runtime row
    assert (
        written["prediction"]["per_user_decode_tokens_per_s"]
        < plain["prediction"]["per_user_decode_tokens_per_s"]
    )
    dry = run_cli("serve", str(plan), "--engine", "vllm", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "--enforce-eager" in dry.output


def test_size_with_enforce_eager_times_every_option_eagerly() -> None:
    base = ("size", "Qwen/Qwen2.5-0.5B", "--task", "serve", "--concurrency", "64",
            "--accelerators", "a100-80gb-sxm", "--json")  # fmt: skip
    graphs, eager = (json.loads(run_cli(*base, *extra).output) for extra in ((), ("--enforce-eager",)))
    assert eager["workload"]["eager"] is True and graphs["workload"]["eager"] is False
    best = [result["options"][0] for result in (graphs, eager)]
    assert best[1]["tokens_per_s"] < best[0]["tokens_per_s"]  # 24 layers' launches outlast a 0.5B step
    assert "--enforce-eager" in eager["next"] and "--enforce-eager" not in graphs["next"]  # the fit to run
    refused = run_cli("size", "Qwen/Qwen2.5-0.5B", "--enforce-eager")
    assert refused.exit_code != 0 and "serving option" in refused.output and "Traceback" not in refused.output
