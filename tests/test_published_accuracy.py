"""benchmarks/published_accuracy.py on benchmarks/data/published.csv: every row is parsed, the rows the
planner can express are compared, the others are skipped with a reason, and the comparisons that are exact
arithmetic (vLLM KV blocks, ZeRO model states, KV cache size) agree."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import published_accuracy  # noqa: E402
import published_rows  # noqa: E402

CSV = published_accuracy.DEFAULT_CSV


@pytest.fixture(scope="module")
def report() -> dict:
    return published_accuracy.run(CSV)


def _row(row_id: str) -> dict[str, str]:
    with CSV.open(newline="", encoding="utf-8") as f:
        return next(r for r in csv.DictReader(f) if r["id"] == row_id)


def test_every_row_is_either_compared_or_skipped_with_a_reason(report):
    with CSV.open(newline="", encoding="utf-8") as f:
        ids = [r["id"] for r in csv.DictReader(f)]
    assert report["rows_read"] == len(ids) >= 47
    done = [r["id"] for r in report["compared"]] + [r["id"] for r in report["skipped"]]
    assert sorted(done) == sorted(ids)
    assert len(set(ids)) == len(ids), "row ids must be unique"
    assert all(r["reason"] for r in report["skipped"])


def test_expected_rows_map_to_catalog_models(report):
    compared = {r["id"]: r["model"] for r in report["compared"]}
    assert compared["tt2-02"] == "meta-llama/Llama-2-7b-hf"
    assert compared["vllm-01"] == "meta-llama/Meta-Llama-3-8B"  # Meta-Llama-3-8B-Instruct, same shapes
    assert compared["us-01"] == "meta-llama/Llama-3.1-8B"
    assert compared["us-02"] == "meta-llama/Llama-3.1-70B"  # Llama-3.3-70B
    assert compared["hf4-03"] == "meta-llama/Llama-2-13b-hf"  # LLaMA-1 13B
    assert compared["qwen-06"] == "Qwen/Qwen-72B"
    assert (
        compared["tt2-01"] == "meta-llama/Llama-2-7b-hf"
    )  # torchtune QLoRA on torchao NF4 (--quant nf4-torchao)
    for row_id in ("ttlora-01", "hfq-01", "lf-01", "iss-01", "iss-02", "est-03", "paper-01", "tt-readme-01"):
        assert row_id in compared
    skipped = {r["id"]: r["reason"] for r in report["skipped"]}
    assert "encoder-decoder" in skipped["peft-01"]
    assert (
        "paged AdamW" in skipped["tt2-03"]
    )  # optimizer_in_bwd is expressed; bnb's paged fp32 states are not
    assert "not in the catalog" in skipped["hfo-01"]


def test_vllm_kv_blocks_are_within_a_few_percent(report):
    # ROCm blog: vLLM '# GPU blocks' 78,897 (fp16 KV) and 157,794 (fp8 KV) for Llama-3-8B on an MI300X at
    # gpu_memory_utilization 0.9: exact arithmetic over weights, the profiling pass and 128 KiB/token.
    rows = {r["id"]: r for r in report["compared"]}
    for row_id in ("vllm-01", "vllm-02"):
        assert abs(rows[row_id]["errors"]["kv_blocks"]) < 0.03, rows[row_id]


def test_fp8_kv_doubles_the_block_count(report):
    rows = {r["id"]: r for r in report["compared"]}
    fp16, fp8 = rows["vllm-01"]["ours"]["kv_blocks"], rows["vllm-02"]["ours"]["kv_blocks"]
    assert abs(fp8 - 2 * fp16) <= 1
    assert rows["vllm-02"]["published"] == 2 * rows["vllm-01"]["published"]


def test_analytic_rows_are_exact(report):
    rows = {r["id"]: r for r in report["compared"]}
    # ZeRO paper Fig. 1: (2 + 2 + 12/64) x 7.5B = 31.4 GB; Llama 3.1 blog: 320 KiB x 128,000 tokens = 39.06 GiB.
    assert abs(rows["paper-01"]["errors"]["model_states"]) < 0.005
    assert abs(rows["est-03"]["errors"]["kv_cache"]) < 0.005


def test_rows_become_the_planner_questions_the_sources_describe():
    qlora = published_rows.express(_row("qwen-04")).setup
    assert (qlora.method, qlora.quant, qlora.precision, qlora.parallel.zero) == ("lora", "gptq", "fp16", 2)
    assert qlora.lora.targets == ("c_attn", "c_proj", "w1", "w2") and qlora.lora.dropout == 0.05
    assert qlora.attention == "flash"
    nested = published_rows.express(_row("hf4-03")).setup
    assert nested.method == "qlora" and not nested.double_quant and nested.precision == "fp16"
    offload = published_rows.express(_row("iss-01"))
    assert offload.setup.parallel.zero == 3 and offload.setup.parallel.offload == "optimizer+params"
    assert offload.setup.precision == "amp-fp16" and offload.cluster.world_size == 8
    served = published_rows.express(_row("iss-02"))
    assert served.setup.tp == 8 and served.setup.concurrency == 8 and served.setup.context == 384


def test_unknown_models_and_gpus_are_skipped_not_crashed():
    row = _row("tt2-02") | {"model": "Some-Unknown-9B"}
    with pytest.raises(published_rows.Skip, match="not in the catalog"):
        published_rows.express(row)
    row = _row("tt2-02") | {"gpu": "Imaginary GPU 7GB"}
    with pytest.raises(published_rows.Skip, match="no catalog mapping"):
        published_rows.express(row)


def test_units_follow_the_metric_name_and_the_overrides():
    assert published_accuracy._unit({"id": "x", "metric": "reserved_gb"}) == 10**9
    assert published_accuracy._unit({"id": "x", "metric": "peak_mem_gib"}) == 2**30
    assert published_accuracy._unit({"id": "x", "metric": "peak_mem_mb_unspecified"}) == 10**6
    assert published_accuracy._unit({"id": "est-03", "metric": "kv_cache_gb"}) == 2**30


def test_report_is_written_with_summary_and_json_twin(tmp_path, capsys):
    assert published_accuracy.main(["--out", str(tmp_path)]) == 0
    md = (tmp_path / "published_accuracy.md").read_text()
    data = json.loads((tmp_path / "published_accuracy.json").read_text())
    # the report leads with the held-out test set (issue 14), then the fit set and all rows
    assert "## Test set (held-out sources, measured rows)" in md and "## Fit set" in md
    assert "## Skipped" in md and "## Notable misses" in md
    assert all(f"| {r['id']} |" in md for r in data["compared"] + data["skipped"])
    assert data["summary"]["per_counter"]["vLLM KV blocks vs kv_blocks"]["n"] == 2
    assert {r["split"] for r in data["compared"]} == {"fit", "test"}
    assert json.loads(capsys.readouterr().out) == data["test_summary"]


def test_rows_are_estimated_under_the_runtime_that_measured_them():
    # ms-swift 3.x headers ran transformers 4.4x, whose adamw_torch is foreach (fused only from PR #37358);
    # torchtune's 2024 tables predate its chunked CE (PR #1390); ms-07 is PyTorch FSDP2, not ZeRO-3.
    full = published_rows.express(_row_of(published_accuracy.MORE_CSV, "ms-03")).setup
    assert full.runtime.name == "ms-swift" and full.runtime.optimizer_impl == "foreach"
    fsdp = published_rows.express(_row_of(published_accuracy.MORE_CSV, "ms-07")).setup
    assert fsdp.runtime.fsdp == "fsdp2" and fsdp.parallel.zero == 0
    tune = published_rows.express(_row("ttlora-01")).setup
    assert tune.runtime.name == "torchtune" and tune.runtime.loss == "full"


def _row_of(path: Path, row_id: str) -> dict[str, str]:
    with path.open(newline="", encoding="utf-8") as f:
        return next(r for r in csv.DictReader(f) if r["id"] == row_id)


def test_ms_swift_header_rows_are_compared_or_skipped_by_what_ran():
    # benchmarks/ms_swift_headers.py: every memory figure in ms-swift's example headers at 3602360a.
    report = published_accuracy.run(published_accuracy.ALL_CSVS)
    ids = [r["id"] for r in published_accuracy.read_rows(published_accuracy.ALL_CSVS)]
    assert len(set(ids)) == len(ids) >= 241
    compared = {r["id"]: r for r in report["compared"]}
    skipped = {r["id"]: r["reason"] for r in report["skipped"]}
    assert set(compared) | set(skipped) == set(ids) and all(skipped.values())
    assert "Megatron" in skipped["ms-30"]  # examples/megatron/lora/dense.sh '# lora: 2 * 14GiB'
    assert "RLHF" in skipped["ms-172"]  # examples/train/rlhf/dpo/lora.sh '# 24GiB'
    assert "not a measured peak" in skipped["ms-117"]  # examples/train/full/qwen2_5_32b.sh '# 8 * 80GiB'
    # examples/train/tuners/dora/train.sh (--use_dora true) and agent/loss_scale/train.sh (Liger, modules_to_save)
    assert published_rows.express(_row_of(published_accuracy.MORE_CSV, "ms-189")).setup.lora.dora
    knobs = published_rows.express(_row_of(published_accuracy.MORE_CSV, "ms-105")).setup.runtime
    assert knobs.loss == "fused_linear" and knobs.modules_to_save == ("embed_tokens", "lm_head")
    assert compared["ms-106"]["split"] == "fit" and compared["ms-114"]["split"] == "test"
