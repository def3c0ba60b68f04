"""Plan-file values against the dataclass fields they fill: a hardware snapshot's `accelerator` mapping is passed to
`Accelerator` as it is, so a wrong type (a number for its name, text for its price, an infinite FLOP/s rate) must be
refused here, naming the field and what it takes, before any formula divides by it."""

from __future__ import annotations

import math
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin


def _matches(value: Any, kind: Any) -> bool:
    origin, args = get_origin(kind), get_args(kind)
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if origin is tuple:
        return isinstance(value, tuple) and all(_matches(item, args[0]) for item in value)
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if kind is str:
        return isinstance(value, str)
    return True  # a type this check does not know: the dataclass's own validation decides


def _described(kind: Any) -> str:
    origin, args = get_origin(kind), get_args(kind)
    if origin in (Union, types.UnionType):
        return " or ".join(_described(arg) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(str(arg) for arg in args)
    if origin is tuple:
        return f"a list of {_described(args[0]).removeprefix('a ')}"
    names = {
        type(None): "null",
        bool: "true or false",
        int: "a whole number",
        float: "a finite number",
        str: "text",
    }
    return names.get(kind, getattr(kind, "__name__", str(kind)))


def value_problem(cls: type, values: dict[str, Any]) -> str | None:
    """The first of `values` whose type its field in dataclass `cls` does not take, as "FIELD must be WHAT, got
    VALUE"; None when every value has its field's type."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        kind = hints.get(name)
        if kind is not None and not _matches(value, kind):
            shown = list(value) if isinstance(value, tuple) else value  # a YAML list, read in as a tuple
            return f"'{name}' must be {_described(kind)}, got {shown!r}"
    return None
