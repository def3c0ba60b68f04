"""Optional dependencies: which `pip install 'swiftplan[extra]'` brings back a missing module.

One table (kept equal to pyproject.toml's [project.optional-dependencies] by tests/test_extras.py)
and one error path: `needs(command)` turns a missing third-party module into a `SwiftplanError` with
the exact install command, and the CLI's `main()` uses `missing_module_error` as its last line of
defence for imports that were not wrapped.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager

from swiftplan.errors import SwiftplanError

EXTRAS: dict[str, tuple[str, ...]] = {
    "hub": ("huggingface_hub",),
    "trace": ("torch", "transformers", "peft", "accelerate", "trl", "torchao", "bitsandbytes"),
    "train": (
        "torch",
        "transformers",
        "peft",
        "accelerate",
        "safetensors",
        "datasets",
        "pyarrow",
        "bitsandbytes",
    ),
    "serve": ("torch", "transformers", "peft", "fastapi", "uvicorn"),
    "vllm": ("vllm",),
    "tui": ("textual",),
    "plot": ("matplotlib",),
}
"""Extra → the top-level modules it installs (import names, as pyproject.toml lists their packages)."""

COMMAND_EXTRAS: dict[str, str] = {
    "train": "train",
    "export": "train",
    "measure": "train",
    "verify": "trace",
    "serve": "serve",
    "vllm": "vllm",
    "dash": "tui",
    "plot": "plot",
}
"""What a command (or a feature: `fit --measure`, `size --plot`, `serve --engine vllm`) needs."""

REQUIRED: dict[str, tuple[str, ...]] = {
    "train": ("torch", "transformers", "peft"),
    "export": ("torch", "transformers", "peft", "safetensors"),
    "verify": ("torch", "transformers", "peft"),
    "serve": ("torch", "transformers", "fastapi", "uvicorn"),
    "dash": ("textual",),
}
"""What a command imports before it does any work: checked up front by `require`, so a missing extra
is refused before a run directory is created or a model is loaded."""

OUTSIDE_EXTRAS: dict[str, str] = {
    "deepspeed": "deepspeed",
    "torch_npu": "torch-npu",
    "pynvml": "nvidia-ml-py",
    "yaml": "pyyaml",
    "optuna": "optuna",
}
"""Modules no extra installs (or that the base install should have): the package to pip install."""


def top_level(module: str | None) -> str:
    """'transformers.models.llama' → 'transformers'."""
    return (module or "").split(".", 1)[0]


def install_command(module: str, command: str | None = None) -> str:
    """The pip command that installs `module`: the command's extra when it lists the module, else the
    first extra that does, else the module's own package."""
    name = top_level(module)
    preferred = COMMAND_EXTRAS.get(command or "")
    if preferred is not None and name in EXTRAS[preferred]:
        return f"pip install 'swiftplan[{preferred}]'"
    for extra, modules in EXTRAS.items():
        if name in modules:
            return f"pip install 'swiftplan[{extra}]'"
    return f"pip install {OUTSIDE_EXTRAS.get(name, name)}"


def missing_module_error(error: ImportError, command: str | None = None) -> SwiftplanError | None:
    """The user-facing error for a missing third-party module, or None when the missing module is
    swiftplan's own (a bug, which should keep its traceback) or the error is not about a missing module."""
    name = top_level(error.name)
    if not name or name == "swiftplan" or not isinstance(error, ModuleNotFoundError):
        return None
    who = _FEATURES.get(command or "") or (
        f"`swiftplan {command}`" if command in _COMMANDS else "This command"
    )
    return SwiftplanError(
        f"{who} needs the Python module {name!r}, which is not installed.",
        hint=install_command(name, command),
    )


_FEATURES = {
    "measure": "`swiftplan fit --measure`",
    "plot": "`swiftplan size --plot`",
    "vllm": "Serving with vLLM",
}
_COMMANDS = (
    "train",
    "export",
    "verify",
    "serve",
    "dash",
    "fit",
    "size",
    "estimate",
    "probe",
    "models",
    "gpus",
)


@contextmanager
def needs(command: str) -> Iterator[None]:
    """Run the block; a third-party module it cannot import becomes one SwiftplanError with the pip
    command of `command`'s extra."""
    try:
        yield
    except ModuleNotFoundError as error:
        known = missing_module_error(error, command)
        if known is None:
            raise
        raise known from error


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(command: str) -> None:
    """Refuse `command` with one SwiftplanError when a module it needs is not installed."""
    missing = [m for m in REQUIRED[command] if not _installed(m)]
    if missing:
        names = ", ".join(repr(m) for m in missing)
        raise SwiftplanError(
            f"`swiftplan {command}` needs the Python module{'s' if len(missing) > 1 else ''} {names}, "
            f"which {'are' if len(missing) > 1 else 'is'} not installed.",
            hint=install_command(missing[0], command),
        )
