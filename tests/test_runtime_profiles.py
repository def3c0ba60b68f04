"""Runtime profiles: every packaged profile loads, names a source per default, and refuses unknown keys."""

from __future__ import annotations

import pytest

from swiftplan.errors import SwiftplanError
from swiftplan.planner import runtime
from swiftplan.planner.runtime import apply_defaults, get_runtime, runtime_profiles, train_knobs
from swiftplan.planner.setup import RuntimeKnobs, TrainSetup

TRAIN = {"hf", "swiftplan", "ms-swift", "llamafactory", "axolotl", "unsloth", "torchtune", "torch"}
SERVE = {"vllm", "sglang", "lmdeploy"}


def test_every_runtime_of_the_issue_has_a_profile() -> None:
    profiles = runtime_profiles()
    assert {n for n, p in profiles.items() if p.task == "train"} == TRAIN
    assert {n for n, p in profiles.items() if p.task == "serve"} == SERVE
    for p in profiles.values():
        assert p.defaults, p.name
        assert all(d.source for d in p.defaults)


def test_swiftplan_profile_keeps_todays_defaults() -> None:
    """The default runtime's knobs are RuntimeKnobs' defaults, so plans for our executor do not change."""
    knobs = train_knobs(get_runtime("swiftplan"), apply_defaults(get_runtime("swiftplan"), {})[0])
    assert knobs == RuntimeKnobs()


def test_user_options_win_over_the_profile() -> None:
    merged, applied = apply_defaults(get_runtime("torch"), {"optimizer_impl": "fused"})
    assert merged["optimizer_impl"] == "fused"
    assert "optimizer_impl" not in {d.option for d in applied}
    assert (
        train_knobs(get_runtime("torchtune"), apply_defaults(get_runtime("torchtune"), {})[0]).loss
        == "chunked"
    )


def test_unknown_keys_and_options_are_refused() -> None:
    with pytest.raises(SwiftplanError, match="unknown keys"):
        runtime._profile_from("x", {"name": "x", "task": "train", "defaults": [], "colour": "red"})
    with pytest.raises(SwiftplanError, match="unknown train option"):
        runtime._profile_from("x", {"name": "x", "task": "train",
                                    "defaults": [{"option": "flux", "value": 1, "source": "s"}]})  # fmt: skip
    with pytest.raises(SwiftplanError, match="Unknown loss"):
        runtime._profile_from("x", {"name": "x", "task": "train",
                                    "defaults": [{"option": "loss", "value": "magic", "source": "s"}]})  # fmt: skip
    with pytest.raises(SwiftplanError, match="no source"):
        runtime._profile_from("x", {"name": "x", "task": "train",
                                    "defaults": [{"option": "loss", "value": "full", "source": " "}]})  # fmt: skip
    with pytest.raises(SwiftplanError, match="valid runtimes"):
        get_runtime("vllm", "train")


def test_setup_refuses_contradictory_runtime_knobs() -> None:
    with pytest.raises(SwiftplanError, match="FSDP"):
        TrainSetup(method="qlora", runtime=RuntimeKnobs(fsdp="fsdp2"), parallel=__import__(
            "swiftplan.planner.setup", fromlist=["Parallelism"]).Parallelism(zero=3))  # fmt: skip
    with pytest.raises(SwiftplanError, match="accumulate"):
        TrainSetup(method="full", grad_accum=4, runtime=RuntimeKnobs(optimizer_in_backward=True))
    with pytest.raises(SwiftplanError, match="modules-to-save"):
        TrainSetup(method="full", runtime=RuntimeKnobs(modules_to_save=("lm_head",)))
