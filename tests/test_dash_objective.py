"""The dashboard's job form plans preference and RL jobs as `swiftplan fit --task` does."""

from __future__ import annotations

import pytest

from swiftplan.errors import SwiftplanError
from swiftplan.planner.hardware import parse_cluster
from swiftplan.tui.job import TASK_CHOICES, parse_job
from swiftplan.tui.search import fit_request, prepare, run_search


def test_every_fit_task_is_offered() -> None:
    assert set(TASK_CHOICES) >= {"train", "serve", "dpo", "kto", "orpo", "simpo", "cpo", "rm", "ppo", "grpo"}


def test_a_dpo_job_plans_for_an_engine_that_runs_it() -> None:
    job = parse_job({"model": "Qwen/Qwen2.5-0.5B", "task": "dpo"})
    assert (job.task, job.training, job.runtime) == ("train", "dpo", "ms-swift")
    outcome = run_search(prepare(job, parse_cluster("rtx4090"), host_ram_bytes=64 * 2**30), lambda e: None)
    assert outcome.plan is not None and outcome.plan.engine == "ms-swift"
    assert outcome.plan.setup.objective.kind == "dpo"  # type: ignore[union-attr]
    assert {v.objective.reference for v in outcome.variants} == {"auto", "precomputed"}


def test_a_grpo_job_sizes_prompt_plus_completion_and_whole_prompts() -> None:
    request = fit_request(parse_job({"model": "Qwen/Qwen2.5-0.5B", "task": "grpo", "global_batch": "12"}),
                          host_ram_bytes=64 * 2**30)  # fmt: skip
    assert request.training.rollout is not None
    assert request.seq_len == request.training.rollout.seq_len == 1024
    assert request.global_batch == 16  # rounded up to whole prompts of 8 generations
    assert request.training.kl  # ms-swift's GRPO default beta 0.04
    assert request.training.rollout.memory_fraction == 0.9  # ms-swift's vllm_gpu_memory_utilization, as fit


def test_an_unknown_task_names_the_valid_ones() -> None:
    with pytest.raises(SwiftplanError, match="grpo"):
        parse_job({"model": "Qwen/Qwen2.5-0.5B", "task": "rlhf"})
