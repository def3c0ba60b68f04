"""`swiftplan doctor` over real failure logs from public issues (tests/fixtures/doctor/, each file's first line
names the issue it was copied from): what ran out, by how much, at which phase, and a change that names a
real setting."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from swiftplan.planner.failure_log import KIND_TEXT, read_log
from swiftplan.units import GiB, MiB
from swiftplan.usecases.doctor import DoctorRequest, diagnose

FIXTURES = Path(__file__).parent / "fixtures" / "doctor"

# file → (message family, kind, phase, backend, amount check, words a remedy must contain)
# Amounts are recomputed by hand from the message quoted in the fixture (e.g. 3.39 GiB asked − 2.40 GiB free).
CASES = {
    "cuda_oom_reserved_unallocated.log": ("pytorch-cuda", "device_memory", "unknown", "cuda",
                                          ("shortfall_bytes", 22.78 - 12.73, GiB), "expandable_segments:True"),
    "deepspeed_zero3_optimizer_step_oom.log": ("deepspeed", "device_memory", "optimizer_step", "cuda",
                                               ("shortfall_bytes", 3.39 - 2.40, GiB), "ZeRO-2/3"),
    "cuda_oom_adamw_step.log": ("pytorch-cuda", "device_memory", "optimizer_step", "cuda",
                                ("shortfall_bytes", (130.00 - 87.19) / 1024, GiB), "8-bit or paged optimizer"),
    "unsloth_forward_long_context.log": ("unsloth", "device_memory", "forward", "cuda",
                                         ("shortfall_bytes", 9.47 - 3.78, GiB), "--micro-batch or --seq"),
    "cuda_oom_legacy_format.log": ("pytorch-cuda-legacy", "device_memory", "unknown", "cuda",
                                   ("shortfall_bytes", (256.00 - 230.50) / 1024, GiB), "gradient checkpointing"),
    "rocm_hip_oom_forward.log": ("rocm", "device_memory", "forward", "rocm",
                                 ("reserved_unallocated_bytes", 14.93, GiB), "PYTORCH_HIP_ALLOC_CONF=expandable_segments"),
    "rocm_hip_oom_unified.log": ("rocm", "device_memory", "unknown", "rocm",
                                 ("shortfall_bytes", 16.00 - 15.09, GiB), "carve-out"),
    "ascend_npu_oom_load.log": ("ascend-npu", "device_memory", "load", "npu",
                                ("shortfall_bytes", (386.00 - 16.54) / 1024, GiB), "quantize (QLoRA"),
    "npu_oom_vllm_ascend_serve.log": ("ascend-npu", "device_memory", "unknown", "npu",
                                      ("shortfall_bytes", 3.47 - 1.66, GiB), "micro-batch"),
    "mps_oom_backward.log": ("mps", "device_memory", "backward", "mps",
                             ("shortfall_bytes", 11.14 + 6.65 + 375.40 / 1024 - 18.13, GiB), "PYTORCH_MPS_HIGH_WATERMARK_RATIO"),
    "host_ram_sigkill_load.log": ("torchrun-sigkill", "host_memory", "load", None, None, "low_cpu_mem_usage"),
    "dmesg_oom_killer.log": ("dmesg-oom-killer", "host_memory", "unknown", None,
                             ("process_rss_bytes", 1041924 / 1024**2, GiB), "--host-ram"),
    "nccl_watchdog_allreduce.log": ("nccl-watchdog", "nccl", "collective", None, ("timeout_s", 600.0, 1),
                                    "ddp_timeout"),
    "vllm_no_cache_blocks.log": ("vllm-no-blocks", "kv_cache", "kv_cache_allocation", None, None,
                                 "--gpu-memory-utilization"),
    "vllm_max_model_len.log": ("vllm-max-model-len", "kv_cache", "kv_cache_allocation", None,
                               ("tokens_needed", 29000, 1), "--max-model-len 23552"),
    "sglang_mem_fraction.log": ("sglang-mem-fraction", "kv_cache", "kv_cache_allocation", None, None,
                                "--mem-fraction-static"),
    "enospc_checkpoint.log": ("enospc", "disk", "checkpoint_save", None, None, "save_total_limit"),
    "enospc_safetensors.log": ("enospc", "disk", "checkpoint_save", None, None, "save_total_limit"),
}  # fmt: skip


def _text(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def test_every_fixture_is_a_cited_real_log_and_has_a_case():
    names = {p.name for p in FIXTURES.glob("*.log")}
    assert set(CASES) | {"unknown_nccl_info.log"} == names
    for name in names:
        first = _text(name).splitlines()[0]
        assert re.match(r"# source: https://github\.com/[\w.-]+/[\w.-]+/(issues|pull)/\d+", first), name
    families = {case[0] for case in CASES.values()}
    assert len(CASES) >= 15 and len(families) >= 8, (len(CASES), families)


@pytest.mark.parametrize("name", sorted(CASES))
def test_doctor_names_the_cause_amount_phase_and_a_change(name):
    family, kind, phase, backend, amount, remedy_words = CASES[name]
    outcome = diagnose(DoctorRequest(text=_text(name), source=name))
    finding = outcome.reading.primary
    assert finding is not None, outcome.reading.clues
    assert (finding.kind, finding.phase, finding.backend) == (kind, phase, backend)
    if amount is not None:
        field, expected, unit = amount
        assert getattr(finding, field) == pytest.approx(expected * unit, rel=0.01, abs=2 * MiB)
    assert any(remedy_words in remedy.text for remedy in outcome.remedies), [r.text for r in outcome.remedies]
    if family == "deepspeed":
        assert "deepspeed" in finding.frameworks


def test_the_same_error_on_many_ranks_is_one_finding_and_memory_comes_before_nccl():
    oom = _text("deepspeed_zero3_optimizer_step_oom.log").splitlines()[2]
    nccl = _text("nccl_watchdog_allreduce.log").splitlines()[1:3]
    reading = read_log("\n".join([*nccl, oom, oom.replace("GPU 1", "GPU 1")]))
    assert [f.kind for f in reading.findings] == ["device_memory", "nccl"]


def test_unknown_log_says_so_and_shows_the_lines_it_looked_at():
    outcome = diagnose(DoctorRequest(text=_text("unknown_nccl_info.log"), source="x"))
    assert outcome.reading.primary is None and outcome.remedies == ()
    assert outcome.headline.startswith("no known failure found in 5 lines")
    assert outcome.reading.clues and "NCCL INFO" in outcome.reading.clues[-1]


def test_error_lines_that_match_nothing_are_the_clues():
    reading = read_log("step 1\nRuntimeError: shapes cannot be multiplied\nstep 2\n")
    assert reading.primary is None and reading.clues == ("RuntimeError: shapes cannot be multiplied",)


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from swiftplan.cli import main; main()", *args],
        capture_output=True, text=True, timeout=120, input=stdin,
        env={"SWIFTPLAN_OFFLINE": "1", "PATH": "/usr/bin:/bin", "COLUMNS": "120"},
    )  # fmt: skip


@pytest.mark.parametrize("name", ["deepspeed_zero3_optimizer_step_oom.log", "vllm_max_model_len.log",
                                  "host_ram_sigkill_load.log"])  # fmt: skip
def test_cli_reads_the_fixture_and_prints_one_screen(name):
    result = run_cli("doctor", str(FIXTURES / name))
    assert result.returncode == 0, result.stderr
    assert KIND_TEXT[CASES[name][1]] in result.stdout
    assert len(result.stdout.splitlines()) <= 24


def test_cli_json_from_stdin():
    result = run_cli("doctor", "-", "--json", stdin=_text("rocm_hip_oom_forward.log"))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["found"] and data["source"] == "stdin"
    assert data["finding"]["backend"] == "rocm" and data["finding"]["phase"] == "forward"
    assert any(r["change"] == "expandable_segments" for r in data["remedies"])


def test_cli_unknown_log_exits_zero_and_says_no_known_failure():
    result = run_cli("doctor", str(FIXTURES / "unknown_nccl_info.log"))
    assert result.returncode == 0 and "no known failure found" in result.stdout


def test_cli_missing_log_is_one_line_error():
    result = run_cli("doctor", "/nonexistent/run.log")
    assert result.returncode == 2 and "Cannot read log" in result.stderr


def test_with_a_plan_the_failure_maps_onto_its_terms_and_fit_checks_a_change(tmp_path):
    """Llama-3-8B QLoRA on a T4 at 2048 tokens fits by the estimator (11.8 of 16 GiB); the unsloth log (T4,
    long context) shows the forward pass short by 5.69 GiB. doctor maps that onto activations and logits and
    re-plans with the budget cut by what the run needed beyond the plan, and fit's estimator checks the answer."""
    plan_path = tmp_path / "plan.yaml"
    made = run_cli("fit", "meta-llama/Meta-Llama-3-8B", "--gpus", "t4", "--method", "qlora", "--seq", "2048",
                   "-o", str(plan_path))  # fmt: skip
    assert made.returncode == 0, made.stderr
    outcome = diagnose(DoctorRequest(text=_text("unsloth_forward_long_context.log"), source="log",
                                     plan_path=str(plan_path)))  # fmt: skip
    comparison = outcome.comparison
    assert comparison is not None
    assert [name for name, _ in comparison.terms] == ["activations", "logits"]
    # missed = the log's capacity + its shortfall − the plan's device total
    assert comparison.missed_bytes == pytest.approx(14.75 * GiB + (9.47 - 3.78) * GiB - comparison.planned_device_bytes,
                                                    abs=4 * MiB)  # fmt: skip
    checked = [r for r in outcome.remedies if r.source == "fit"]
    assert checked, outcome.notes
    device_total = float(re.search(r"([\d.]+) GiB per device", checked[0].text).group(1))  # type: ignore[union-attr]
    assert device_total * GiB <= comparison.device_memory_bytes - comparison.missed_bytes


def test_line_numbers_count_newlines_only_as_grep_does() -> None:
    """A progress bar redraws itself with carriage returns inside one line: the OOM below it is on line 3, as
    `grep -n` says, not on line 5."""
    log = (
        "loading\n"
        "step 1/3\rstep 2/3\rstep 3/3\n"
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
        "79.10 GiB of which 1.00 GiB is free.\n"
    )
    reading = read_log(log)
    assert reading.primary is not None and reading.primary.line_number == 3
    assert reading.lines_scanned == 3
