"""Find a model's architecture: the packaged catalog, a local config.json, or the hub.

This is an edge module (it reads user files and may touch the network); the planner itself
only ever sees the resulting `ModelSpec`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from swiftplan.errors import SwiftplanError
from swiftplan.planner.model_catalog import catalog_spec, close_matches, find_catalog_id
from swiftplan.planner.model_spec import ModelSpec, spec_from_hf_config
from swiftplan.planner.plan import Plan

_LOCAL_HINT = (
    "Pass a local config.json instead: a path to the file or to the model directory holding it "
    "(e.g. `swiftplan estimate ./my-model/config.json`). `swiftplan models` lists the built-in catalog."
)


def read_config(path: Path) -> dict[str, Any]:
    """A config.json's object; one clear error when it cannot be read, is not JSON or is not an object."""
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise SwiftplanError(f"Cannot read model config {path}: {error}.") from error
    except json.JSONDecodeError as error:
        raise SwiftplanError(
            f"Model config {path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})."
        ) from error
    if not isinstance(config, dict):
        raise SwiftplanError(f"Model config {path} must be a JSON object, found {type(config).__name__}.")
    return config


def spec_from_path(path: Path) -> ModelSpec:
    """`ModelSpec` from a config.json file or a directory containing one."""
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise SwiftplanError(f"No config.json in {path}.", hint=_LOCAL_HINT)
    return spec_from_hf_config(read_config(file), name=str(path), source=str(file.resolve()))


HUB_CHECK_TIMEOUT_S = 3.0
"""How long the one reachability check of the hub may take before swiftplan calls it unreachable (a
TCP connect to the hub, or to the HTTPS proxy, answers in well under a second on a working network)."""
_TRUE = ("1", "on", "yes", "true")
"""Values huggingface_hub reads as true in HF_HUB_OFFLINE (huggingface_hub.constants._is_true)."""


def hub_off_switch() -> str | None:
    """The variable that turns the hub off ('HF_HUB_OFFLINE=1'), or None when it is on. huggingface_hub reads
    TRANSFORMERS_OFFLINE when HF_HUB_OFFLINE is unset or empty (huggingface_hub.constants.HF_HUB_OFFLINE)."""
    hub = next((n for n in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if os.environ.get(n)), "HF_HUB_OFFLINE")
    for name in (hub, "SWIFTPLAN_OFFLINE"):
        if (value := os.environ.get(name, "")).strip().lower() in _TRUE:
            return f"{name}={value}"
    return None


def _hub_address() -> tuple[str, int]:
    """(host, port) a hub request connects to first: the HTTPS proxy when one is set, else the endpoint."""
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    proxy = next(
        (
            os.environ[k]
            for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
            if os.environ.get(k)
        ),
        "",
    )
    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    url = urlsplit(proxy if "://" in proxy else f"http://{proxy}") if proxy else urlsplit(endpoint)
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def _hub_unreachable() -> str | None:
    """Why the hub cannot be reached (one quick TCP connect), or None when it answers."""
    import socket

    host, port = _hub_address()
    try:
        socket.create_connection((host, port), timeout=HUB_CHECK_TIMEOUT_S).close()
    except TimeoutError:
        return f"the hub cannot be reached ({host}:{port} gave no answer within {HUB_CHECK_TIMEOUT_S:g} s)"
    except OSError as error:
        return f"the hub cannot be reached ({host}:{port}: {error.strerror or type(error).__name__})"
    return None


_HUB_HOSTS = ("huggingface.co", "www.huggingface.co", "hf.co")
_HUB_ID = re.compile(r"(?!.*(--|\.\.))[\w\-.]{1,96}/(?![-.])[\w\-.]{1,96}(?<![-.])(?<!\.git)", re.ASCII)
"""namespace/name as the hub accepts it (huggingface_hub.utils.validate_repo_id): letters, digits, '-',
'_' and '.', up to 96 characters, no '--' or '..', not starting or ending with '-' or '.', no '.git'."""


def _hub_url_id(name: str) -> str | None:
    """The namespace/name of a pasted hub page address ('https://huggingface.co/Qwen/Qwen2.5-0.5B/tree/main'
    → 'Qwen/Qwen2.5-0.5B'), or None when `name` is not one."""
    from urllib.parse import urlsplit

    url = urlsplit(name if "://" in name else f"https://{name}")
    if (url.hostname or "").lower() not in _HUB_HOSTS or not name.lower().startswith(("http", *_HUB_HOSTS)):
        return None
    parts = [part for part in url.path.split("/") if part]
    return "/".join(parts[:2]) if len(parts) >= 2 and parts[0] not in ("datasets", "spaces") else ""


def _hub_accepts(model_id: str) -> bool:
    """Whether huggingface_hub's own check passes `model_id` (True when huggingface_hub is not installed:
    fetching then says that it is needed)."""
    try:
        from huggingface_hub.errors import HFValidationError
        from huggingface_hub.utils import validate_repo_id
    except ImportError:
        return True
    try:
        validate_repo_id(model_id)
    except HFValidationError:
        return False
    return True


def check_hub_id(name: str) -> None:
    """Refuse a model name that cannot be a hub id (a pasted page address, an @revision, a/b/c, spaces),
    saying what to type instead, before anything asks the hub about it."""
    url_id = _hub_url_id(name)
    if url_id is not None:
        instead = url_id or "namespace/name, e.g. Qwen/Qwen2.5-0.5B"
        raise SwiftplanError(
            f"{name!r} is a web address, not a model name: type the hub model id alone ({instead}).",
            hint=_LOCAL_HINT,
        )
    if "@" in name:
        model_id, _, revision = name.partition("@")
        raise SwiftplanError(
            f"{name!r} names a revision ({revision!r}), which swiftplan does not fetch: it reads a hub model's "
            f"config.json from its main branch. Type {model_id} for that, or download the revision's "
            "config.json and pass its path.",
            hint=_LOCAL_HINT,
        )
    if not _HUB_ID.fullmatch(name) or not _hub_accepts(name):
        raise SwiftplanError(
            f"{name!r} is not a hub model id, a catalog name or a local path: a hub id is namespace/name, each "
            "part up to 96 letters, digits, '-', '_' or '.' (no spaces, no further '/', no '--' or '..', "
            "not starting or ending with '-' or '.'), e.g. Qwen/Qwen2.5-0.5B.",
            hint=_LOCAL_HINT,
        )


def _fetch_hub_config(model_id: str) -> dict[str, Any]:
    """config.json from the Hugging Face hub: the local cache when offline or unreachable, else one
    download (needs huggingface_hub). An unreachable hub is found with one short connect, not retries."""
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError as error:
        raise SwiftplanError(
            f"Model {model_id!r} is not in the catalog, and fetching its config.json needs huggingface_hub "
            "(pip install 'swiftplan[hub]').",
            hint=_LOCAL_HINT,
        ) from error
    cached = try_to_load_from_cache(model_id, "config.json")
    switch = hub_off_switch()
    why = f"the hub is off ({switch})" if switch is not None else _hub_unreachable()
    if why is not None:
        if isinstance(cached, str):
            return read_config(Path(cached))
        raise SwiftplanError(
            f"Model {model_id!r} is not in the catalog, its config.json is not in the local Hugging Face cache, "
            f"and {why}.",
            hint=_LOCAL_HINT,
        )
    try:
        local = hf_hub_download(model_id, "config.json", etag_timeout=HUB_CHECK_TIMEOUT_S)
    except Exception as error:  # missing repo, gated, auth, network: all mean "could not fetch"
        raise SwiftplanError(
            f"Model {model_id!r} is not in the catalog and its config.json could not be fetched from the hub "
            f"({type(error).__name__}: no such public model, or it needs `hf auth login`).",
            hint=_LOCAL_HINT,
        ) from error
    return read_config(Path(local))


def resolve_model(name: str) -> ModelSpec:
    """`ModelSpec` for a catalog name or alias, a local path, or a hub id not in the catalog."""
    path = Path(name).expanduser()
    if path.exists():
        return spec_from_path(path)
    model_id = find_catalog_id(name)
    if model_id is not None:
        spec = catalog_spec(model_id)
        if model_id != name:
            spec = spec_from_hf_config(
                dict(spec.hf_config), name=name, source=f"catalog entry {model_id}: {spec.source}"
            )
        return spec
    if "/" in name and not name.startswith((".", "/")):
        check_hub_id(name)
        return spec_from_hf_config(
            _fetch_hub_config(name), name=name, source=f"huggingface.co/{name}/config.json"
        )
    suggestions = close_matches(name)
    did_you_mean = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
    raise SwiftplanError(
        f"Unknown model {name!r}: not in the catalog and not a local path.{did_you_mean}", hint=_LOCAL_HINT
    )


def cached_hub_config(model_id: str) -> dict[str, Any] | None:
    """A hub model's config.json from the local Hugging Face cache, without touching the network; None when
    it is not there (or huggingface_hub is not installed, or the id is malformed)."""
    try:
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.errors import HFValidationError
    except ImportError:
        return None
    try:
        cached = try_to_load_from_cache(model_id, "config.json")
    except HFValidationError:
        return None
    return read_config(Path(cached)) if isinstance(cached, str) else None


def known_spec(model: str) -> ModelSpec | None:
    """The spec of a local config or a catalog model, without touching the network; None for a hub id
    that is not in the catalog."""
    if Path(model).expanduser().exists() or find_catalog_id(model) is not None:
        return resolve_model(model)
    return None


def check_plan_model(plan: Plan, path: str | Path) -> None:
    """A (hand-edited) plan file against its model, when the model is at hand, before a run or a dry run
    prints its launch: a sequence past the model's positions, a rank too large for its matrices, a tensor
    degree that does not split its heads, LoRA targets it lacks; each refused naming the file and field."""
    from swiftplan.planner.model_limits import check_plan_shape, check_setup

    if (spec := known_spec(plan.model)) is not None:
        check_setup(spec, plan.setup, f"Plan file {path}", refuse_length=True)
        check_plan_shape(spec, plan.setup, f"Plan file {path}")


def check_local_or_hub(typed: str, value: str, *, files: tuple[str, ...], what: str, usage: str) -> None:
    """`value` (the path in the option `typed`, as the user wrote it) is a hub id, or a local directory holding
    one of `files`, which `what` is read from; a missing or wrong local path is refused here, before a dry
    run prints a command that would fail on it. With the hub off (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE,
    SWIFTPLAN_OFFLINE) a hub id must be in the local Hugging Face cache, which is all the run could read; with it
    on, the id is not looked up. `usage` is the option's form for the hint ('--lora NAME=DIR')."""
    path = Path(value).expanduser()
    needs = f"a directory holding {' or '.join(files)}"
    if path.exists():
        if not path.is_dir() or not any((path / name).is_file() for name in files):
            kind = f"a directory without {' or '.join(files)}" if path.is_dir() else "a file, not a directory"
            raise SwiftplanError(f"{typed}: {value} is {kind}, and {what} is read from {needs}.",
                                 hint=f"Give {usage} with DIR {needs}, or a hub id (namespace/name).")  # fmt: skip
        return
    if not _is_hub_id(value):
        raise SwiftplanError(f"{typed}: {value} does not exist, and is not a hub id; {what} is read from {needs}, "
                             "or from a hub id (namespace/name).",
                             hint=f"Check the path: {usage} with DIR {needs}.")  # fmt: skip
    switch = hub_off_switch()
    if switch is None:
        return  # the hub is on: the run downloads it (nothing is asked of the network here)
    cache = hub_cache_dir()
    if cache is None or _in_hub_cache(value, files):
        return
    raise SwiftplanError(f"{typed}: the hub is off ({switch}) and {value} is not in the local Hugging Face cache "
                         f"({cache} holds no {' or '.join(files)} of it on its main branch), so {what} can be "
                         "neither read nor downloaded.",
                         hint=f"Download it while online (`hf download {value}`), or pass a local directory: "
                         f"{usage} with DIR {needs}.")  # fmt: skip


def hub_cache_dir() -> str | None:
    """The Hugging Face cache directory huggingface_hub (and transformers through it) reads (HF_HUB_CACHE, else
    HF_HOME/hub, else ~/.cache/huggingface/hub); None without huggingface_hub."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    return str(constants.HF_HUB_CACHE)


def _in_hub_cache(repo_id: str, files: tuple[str, ...]) -> bool:
    """Whether the local cache holds one of `files` of the hub repo `repo_id` (its main branch), as
    huggingface_hub finds it (`try_to_load_from_cache`: refs/main → snapshots/<commit>/<file>)."""
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in files)


def _is_hub_id(value: str) -> bool:
    """namespace/name as the hub accepts it (not a relative, absolute or home path)."""
    if value.startswith(("/", ".", "~")) or value.count("/") != 1:
        return False
    try:
        check_hub_id(value)
    except SwiftplanError:
        return False
    return True
