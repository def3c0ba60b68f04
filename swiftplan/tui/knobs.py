"""The job form's runtime knobs: what each field holds for a runtime, and the user's overrides. Pure.

Each field is one `RuntimeKnobs` field that estimate, fit, size and verify take as a flag of the same
name (`planner.runtime.KNOB_FLAGS`). Picking a runtime fills the fields with its values (the profile's
defaults over swiftplan's); `runtime_overrides` keeps the fields the user changed, which is what the
CLI's flags are: `FitRequest.runtime_options`, applied over the runtime's defaults by the use case.
Bad text gets the CLI's message for the flag (parse_choice's, or "--flag must be at least N").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from swiftplan.errors import SwiftplanError
from swiftplan.planner.setup import (
    ADAPTER_DTYPES,
    CKPT_POSITIONS,
    FSDP_SHARDINGS,
    FSDPS,
    LOSS_IMPLS,
    OPTIMIZER_IMPLS,
    PADDINGS,
    SAVED_MODULES,
    RuntimeKnobs,
    parse_choice,
)

YES_NO = ("no", "yes")
KNOB_CHOICES: dict[str, tuple[str, ...]] = {
    "loss": LOSS_IMPLS,
    "optimizer_impl": OPTIMIZER_IMPLS,
    "fsdp": FSDPS,
    "fsdp_sharding": FSDP_SHARDINGS,
    "ckpt_position": CKPT_POSITIONS,
    "optimizer_in_backward": YES_NO,
    "ds_buckets": YES_NO,
    "ds_auto_buckets": YES_NO,
    "ds_overlap_comm": YES_NO,
    "activation_offload": YES_NO,
    "fsdp_cpu_offload": YES_NO,
    "float8": YES_NO,
    "adapter_dtype": ADAPTER_DTYPES,
    "keep_output": YES_NO,
    "expandable_segments": YES_NO,
    "padding": PADDINGS,
}
"""Knobs chosen from a list (on/off knobs as no/yes)."""
KNOB_MINIMUMS = {
    "loss_chunks": 1,
    "loss_chunk_tokens": 0,
    "fsdp_shard_group": 0,
    "ckpt_every": 1,
    "reduce_bucket_elements": 1,
    "prefetch_bucket_elements": 0,
    "max_live_parameters": 0,
    "max_reuse_distance": 0,
}
"""Whole-number knobs and their least value (as the CLI checks them)."""
KNOB_FIELDS = (*KNOB_CHOICES, *KNOB_MINIMUMS, "modules_to_save")
"""Every knob the form offers: the CLI's knob flags."""


def _flag(name: str) -> str:
    from swiftplan.planner.runtime import KNOB_FLAGS

    return KNOB_FLAGS[name]


def runtime_knobs(runtime: str) -> RuntimeKnobs:
    """The knobs a training runtime plans with when nothing is overridden."""
    from swiftplan.planner.runtime import choose_runtime

    return choose_runtime(runtime, "train", {}).knobs()


def knob_text(value: Any) -> str:
    """A knob value as its field shows it: no/yes, 'none' or 'embed_tokens,lm_head', the number."""
    if isinstance(value, bool):
        return YES_NO[value]
    if isinstance(value, tuple):
        return ",".join(value) or "none"
    return f"{value:_}" if isinstance(value, int) else str(value)  # 500_000_000: DeepSpeed's sizes


def runtime_knob_text(runtime: str) -> dict[str, str]:
    """Every knob field's text for a runtime's own values."""
    knobs = runtime_knobs(runtime)
    return {name: knob_text(getattr(knobs, name)) for name in KNOB_FIELDS}


def _whole(name: str, text: str) -> int:
    """A whole number as typed: 500000000, 500_000_000 or 5e8 (DeepSpeed's configs write sizes that way)."""
    flag = _flag(name)
    plain = text.strip().replace("_", "")
    try:
        value = int(plain)
    except ValueError:
        try:
            number = float(plain)
        except ValueError:
            number = float("nan")
        if not number.is_integer():
            raise SwiftplanError(f"{flag} must be a whole number, got {text!r}.") from None
        value = int(number)
    if value < KNOB_MINIMUMS[name]:
        raise SwiftplanError(f"{flag} must be at least {KNOB_MINIMUMS[name]}, got {value}.")
    return value


def _modules(text: str) -> tuple[str, ...]:
    names = tuple(m.strip() for m in text.split(",") if m.strip() and m.strip() != "none")
    modules = tuple(parse_choice(_flag("modules_to_save"), m, SAVED_MODULES) for m in names)
    if len(set(names)) != len(names):
        raise SwiftplanError(f"{_flag('modules_to_save')} names a module twice: {text}.")
    return modules


def knob_value(name: str, text: str) -> Any:
    """One field's text as the knob's value, or the CLI's error for that flag."""
    if name in KNOB_MINIMUMS:
        return _whole(name, text)
    if name == "modules_to_save":
        return _modules(text)
    choice = parse_choice(_flag(name), text.strip(), KNOB_CHOICES[name])
    return choice == "yes" if KNOB_CHOICES[name] == YES_NO else choice


def runtime_overrides(fields: Mapping[str, str], runtime: str) -> dict[str, Any]:
    """The knobs whose fields differ from `runtime`'s values (the runtime the fields were filled for),
    typed: what the CLI's knob flags would say. Fields left out count as unchanged."""
    own = runtime_knobs(runtime)
    typed = {name: knob_value(name, fields[name]) for name in KNOB_FIELDS if name in fields}
    return {name: value for name, value in typed.items() if value != getattr(own, name)}


def override_text(options: Mapping[str, Any]) -> str:
    """'fsdp fsdp2, fsdp_cpu_offload true': the knobs set over a runtime, as its one-line description
    names its defaults."""
    shown = {True: "true", False: "false"}
    return ", ".join(
        f"{name} {shown[value] if isinstance(value, bool) else knob_text(value)}"
        for name, value in options.items()
    )
