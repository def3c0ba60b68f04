"""Runtime profiles: each framework's defaults that change memory or speed, as data with sources.

A profile (swiftplan/profiles/runtimes/NAME.yaml) names its framework, the version it was read at,
and a list of defaults; each default is one set-up option (a `TrainSetup`/`RuntimeKnobs` field, or a
`ServeSetup` field) with the value the framework uses and where in its source that value is set.
Options the user gives on the command line win over the profile (`apply_defaults`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Literal

import yaml

from swiftplan.errors import SwiftplanError
from swiftplan.planner.setup import RuntimeKnobs, ServeSetup, TrainSetup

RuntimeTask = Literal["train", "serve"]
DEFAULT_TRAIN_RUNTIME = "swiftplan"
DEFAULT_SERVE_RUNTIME = "vllm"

TRAIN_SETUP_OPTIONS = ("optimizer", "grad_ckpt", "attention", "kbit_upcast", "precision")
"""TrainSetup fields a training profile may set (numerics the framework picks by default)."""
TRAIN_KNOB_OPTIONS = tuple(f for f in RuntimeKnobs.__dataclass_fields__ if f != "name")
"""RuntimeKnobs fields a training profile may set."""
SERVE_OPTIONS = ("gpu_memory_utilization", "prefill_chunk", "kv_dtype")
"""ServeSetup fields a serving profile may set."""

_PROFILE_KEYS = {"name", "task", "label", "framework", "version", "defaults", "notes"}
_DEFAULT_KEYS = {"option", "value", "source"}


@dataclass(frozen=True, kw_only=True, slots=True)
class RuntimeDefault:
    """One framework default that changes memory or speed."""

    option: str
    """Set-up option it sets (a TrainSetup, RuntimeKnobs or ServeSetup field name)."""
    value: Any
    """The framework's value, in swiftplan's terms."""
    source: str
    """Where the framework sets it: repository, file, commit or version."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RuntimeProfile:
    """A training or serving framework's defaults."""

    name: str
    """Profile name (--runtime)."""
    task: RuntimeTask
    """train or serve."""
    label: str
    """Framework, in words."""
    framework: str
    """Repository the defaults were read from."""
    version: str
    """Commit or release they were read at."""
    defaults: tuple[RuntimeDefault, ...]
    """Each default with its source."""
    notes: tuple[str, ...] = ()
    """What the profile does not model yet."""

    def __post_init__(self) -> None:
        valid = TRAIN_SETUP_OPTIONS + TRAIN_KNOB_OPTIONS if self.task == "train" else SERVE_OPTIONS
        seen: set[str] = set()
        for d in self.defaults:
            if d.option not in valid:
                raise SwiftplanError(
                    f"Runtime profile {self.name!r}: unknown {self.task} option {d.option!r}; valid: {', '.join(valid)}."
                )
            if d.option in seen:
                raise SwiftplanError(f"Runtime profile {self.name!r} sets {d.option!r} twice.")
            if not d.source.strip():
                raise SwiftplanError(f"Runtime profile {self.name!r}: default {d.option!r} has no source.")
            seen.add(d.option)
        try:  # every value must make a valid set-up on its own
            if self.task == "train":
                knobs = {
                    d.option: _typed(d.option, d.value)
                    for d in self.defaults
                    if d.option in TRAIN_KNOB_OPTIONS
                }
                setup = {d.option: d.value for d in self.defaults if d.option in TRAIN_SETUP_OPTIONS}
                TrainSetup(**setup, runtime=RuntimeKnobs(name=self.name, **knobs))
            else:
                ServeSetup(**{d.option: d.value for d in self.defaults})
        except TypeError as e:
            raise SwiftplanError(f"Runtime profile {self.name!r}: {e}.") from None

    def value(self, option: str) -> Any:
        """The profile's value for `option`, or None when it sets none."""
        return next((_typed(d.option, d.value) for d in self.defaults if d.option == option), None)


def _typed(option: str, value: Any) -> Any:
    """YAML lists become tuples (frozen set-ups hold tuples)."""
    return tuple(value) if isinstance(value, list) else value


def _profile_from(name: str, data: Any) -> RuntimeProfile:
    if not isinstance(data, dict):
        raise SwiftplanError(f"Runtime profile {name!r} is not a mapping.")
    if unknown := set(data) - _PROFILE_KEYS:
        raise SwiftplanError(f"Runtime profile {name!r}: unknown keys {', '.join(sorted(unknown))}.")
    if data.get("name") != name:
        raise SwiftplanError(f"Runtime profile file {name}.yaml names itself {data.get('name')!r}.")
    defaults = []
    for entry in data.get("defaults") or ():
        if (
            not isinstance(entry, dict)
            or (unknown := set(entry) - _DEFAULT_KEYS)
            or set(entry) != _DEFAULT_KEYS
        ):
            raise SwiftplanError(
                f"Runtime profile {name!r}: each default needs exactly option, value, source ({entry!r})."
            )
        defaults.append(
            RuntimeDefault(option=entry["option"], value=entry["value"], source=str(entry["source"]))
        )
    if data.get("task") not in ("train", "serve"):
        raise SwiftplanError(
            f"Runtime profile {name!r}: task must be train or serve, got {data.get('task')!r}."
        )
    return RuntimeProfile(
        name=name,
        task=data["task"],
        label=str(data.get("label", name)),
        framework=str(data.get("framework", "")),
        version=str(data.get("version", "")),
        defaults=tuple(defaults),
        notes=tuple(str(n) for n in data.get("notes") or ()),
    )


@cache
def runtime_profiles() -> dict[str, RuntimeProfile]:
    """Every packaged profile by name."""
    folder = resources.files("swiftplan.profiles").joinpath("runtimes")
    profiles = {}
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        if item.name.endswith(".yaml"):
            name = item.name.removesuffix(".yaml")
            profiles[name] = _profile_from(name, yaml.safe_load(item.read_text(encoding="utf-8")))
    return profiles


def get_runtime(name: str, task: RuntimeTask | None = None) -> RuntimeProfile:
    """The profile called `name` (for `task` when given), or one SwiftplanError listing the valid ones."""
    profiles = runtime_profiles()
    profile = profiles.get(name)
    if profile is None or (task is not None and profile.task != task):
        valid = ", ".join(n for n, p in profiles.items() if task is None or p.task == task)
        raise SwiftplanError(
            f"Unknown {task or ''} runtime {name!r}; valid runtimes are: {valid}.".replace("  ", " ")
        )
    return profile


def apply_defaults(
    profile: RuntimeProfile, given: dict[str, Any]
) -> tuple[dict[str, Any], tuple[RuntimeDefault, ...]]:
    """Options for a set-up: `given` (what the user typed) over the profile's defaults.

    Returns the merged options and the defaults that were applied (those the user did not override)."""
    merged = dict(given)
    applied = []
    for d in profile.defaults:
        if d.option not in given:
            merged[d.option] = _typed(d.option, d.value)
            applied.append(d)
    return merged, tuple(applied)


def train_knobs(profile: RuntimeProfile, options: dict[str, Any]) -> RuntimeKnobs:
    """The RuntimeKnobs of `options` (merged by `apply_defaults`), named after the profile."""
    return RuntimeKnobs(name=profile.name, **{k: v for k, v in options.items() if k in TRAIN_KNOB_OPTIONS})


def profile_json(profile: RuntimeProfile, applied: tuple[RuntimeDefault, ...]) -> dict[str, Any]:
    """The profile and the defaults it applied, for --json."""
    return {
        "name": profile.name,
        "label": profile.label,
        "framework": profile.framework,
        "version": profile.version,
        "applied": [{"option": d.option, "value": d.value, "source": d.source} for d in applied],
        "overridden": [d.option for d in profile.defaults if d not in applied],
        "notes": list(profile.notes),
    }


KNOB_FLAGS = {
    "loss": "--loss",
    "loss_chunks": "--loss-chunks",
    "loss_chunk_tokens": "--loss-chunk-tokens",
    "optimizer_impl": "--optimizer-impl",
    "modules_to_save": "--modules-to-save",
    "optimizer_in_backward": "--optimizer-in-backward",
    "fsdp": "--fsdp",
    "fsdp_sharding": "--fsdp-sharding",
    "fsdp_shard_group": "--fsdp-shard-group",
    "ds_buckets": "--ds-buckets",
    "reduce_bucket_elements": "--reduce-bucket-elements",
    "prefetch_bucket_elements": "--prefetch-bucket-elements",
    "max_live_parameters": "--max-live-parameters",
    "max_reuse_distance": "--max-reuse-distance",
    "ds_auto_buckets": "--ds-auto-buckets",
    "ds_overlap_comm": "--ds-overlap-comm",
    "ckpt_every": "--ckpt-every",
    "ckpt_position": "--ckpt-position",
    "activation_offload": "--activation-offload",
    "fsdp_cpu_offload": "--fsdp-cpu-offload",
    "float8": "--float8",
    "adapter_dtype": "--adapter-dtype",
    "keep_output": "--keep-output",
    "expandable_segments": "--expandable-segments",
    "padding": "--padding",
}
"""The command-line flag of each RuntimeKnobs field (estimate, fit, size, verify)."""


def refuse_knobs_for_serving(knobs: dict[str, Any]) -> None:
    """Training runtime knobs set for a serving plan: refused instead of ignored, naming their flags (the
    CLI's --task serve with knob flags, the dashboard's knob fields changed while the task is serve)."""
    if knobs:
        flags = ", ".join(KNOB_FLAGS[k] for k in knobs)
        verb, pronoun = ("describes", "it does") if len(knobs) == 1 else ("describe", "they do")
        raise SwiftplanError(
            f"{flags} {verb} how a training framework runs; {pronoun} not apply to --task serve."
        )


def refuse_eager_for_training(eager: bool) -> None:
    """Eager decode asked for a training job (the CLI's --enforce-eager, the dashboard's field): refused
    instead of ignored."""
    if eager:
        raise SwiftplanError(
            "--enforce-eager is a serving option (decode without CUDA graphs); it does not apply to training. "
            "Use --task serve, or drop the flag."
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class RuntimeChoice:
    """A runtime profile resolved against what the user typed: the options to plan with, and which of
    them came from the profile."""

    profile: RuntimeProfile
    """The profile (--runtime)."""
    options: dict[str, Any]
    """Option → value: the user's over the profile's defaults."""
    applied: tuple[RuntimeDefault, ...]
    """The profile's defaults that were used (not overridden)."""

    def knobs(self) -> RuntimeKnobs:
        """The RuntimeKnobs to plan a training set-up with."""
        return train_knobs(self.profile, self.options)

    def setup_options(self) -> dict[str, Any]:
        """The TrainSetup (training) or ServeSetup (serving) fields the profile or the user set."""
        names = TRAIN_SETUP_OPTIONS if self.profile.task == "train" else SERVE_OPTIONS
        return {k: v for k, v in self.options.items() if k in names}

    def to_json(self) -> dict[str, Any]:
        """The profile and each default applied with its source (--json)."""
        return profile_json(self.profile, self.applied)

    def describe(self) -> str:
        """One line for text output: which runtime was planned for and what it set."""
        values = ", ".join(f"{d.option} {_shown(_typed(d.option, d.value))}" for d in self.applied)
        return f"runtime {self.profile.name}" + (f" (its defaults: {values})" if values else "")


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def choose_runtime(name: str, task: RuntimeTask, given: dict[str, Any]) -> RuntimeChoice:
    """The profile called `name` for `task` with the user's options (`given`, only those typed) over it."""
    profile = get_runtime(name, task)
    options, applied = apply_defaults(profile, given)
    return RuntimeChoice(profile=profile, options=options, applied=applied)


def setup_choice(setup: TrainSetup) -> RuntimeChoice:
    """The runtime a training set-up (a plan file's) was planned for: its profile, its options, and the
    profile's defaults it uses."""
    profile = get_runtime(setup.runtime.name, "train")
    options = {f: getattr(setup.runtime, f) for f in TRAIN_KNOB_OPTIONS}
    options |= {f: getattr(setup, f) for f in TRAIN_SETUP_OPTIONS}
    applied = tuple(d for d in profile.defaults if options.get(d.option) == _typed(d.option, d.value))
    return RuntimeChoice(profile=profile, options=options, applied=applied)
