"""A hub-id `--tokenizer` (train, serve) or `--lora` adapter (serve) while the hub is off (HF_HUB_OFFLINE=1,
TRANSFORMERS_OFFLINE=1 or SWIFTPLAN_OFFLINE=1) is looked up in the local Hugging Face cache, as huggingface_hub
finds files there (`try_to_load_from_cache`): one that is not cached is refused up front, naming the id, the
cache directory and how to get it; one that is cached is accepted. With the hub on, nothing is looked up.

The cache entries are written in huggingface_hub's documented layout (models--org--name/refs/main holding a
commit, snapshots/<commit>/FILE; https://huggingface.co/docs/huggingface_hub/guides/manage-cache), with the
folder named by huggingface_hub's own `repo_folder_name`, and checked to be what its `scan_cache_dir` reads.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from bad_input_support import assert_refused, run_cli, write_tiny_plans

from swiftplan.errors import SwiftplanError
from swiftplan.executors.model_source import check_local_or_hub, hub_off_switch

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
HUB_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "SWIFTPLAN_OFFLINE")


def cache_entry(cache: Path, repo_id: str, filename: str) -> Path:
    """Put `filename` of the hub model `repo_id` (main branch) into the cache at `cache`."""
    from huggingface_hub.file_download import repo_folder_name

    repo = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / filename).write_text("{}")
    return snapshot / filename


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache that huggingface_hub reads in this process (its HF_HUB_CACHE constant is read from
    the environment at import), with the hub off through HF_HUB_OFFLINE=1 alone."""
    from huggingface_hub import constants

    where = tmp_path / "hub"
    where.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(where))
    for name in HUB_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return where


def _tokenizer(value: str) -> None:
    check_local_or_hub(f"--tokenizer {value}", value, files=TOKENIZER_FILES, what="a tokenizer",
                       usage="--tokenizer DIR")  # fmt: skip


def test_the_layout_written_is_what_huggingface_hub_reads(cache: Path) -> None:
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache

    path = cache_entry(cache, "org/tok", "tokenizer_config.json")
    (repo,) = scan_cache_dir(cache).repos
    assert repo.repo_id == "org/tok" and {r.commit_hash for r in repo.revisions} == {COMMIT}
    assert try_to_load_from_cache("org/tok", "tokenizer_config.json") == str(path)


def test_a_cached_tokenizer_is_accepted_and_a_missing_one_refused(cache: Path) -> None:
    cache_entry(cache, "org/tok", "tokenizer_config.json")
    _tokenizer("org/tok")
    with pytest.raises(SwiftplanError) as refused:
        _tokenizer("org/missing")
    error = refused.value
    assert "--tokenizer org/missing" in error.message and str(cache) in error.message
    assert "HF_HUB_OFFLINE=1" in error.message and "\n" not in error.message
    assert error.hint and "hf download org/missing" in error.hint and "--tokenizer DIR" in error.hint


def test_a_cached_repo_without_the_file_needed_is_refused(cache: Path) -> None:
    """Another file of the repo is cached (its config.json), not the tokenizer: the tokenizer cannot load."""
    cache_entry(cache, "org/model", "config.json")
    with pytest.raises(SwiftplanError, match="org/model is not in the local Hugging Face cache"):
        _tokenizer("org/model")


@pytest.mark.parametrize(
    ("env", "off"),
    [({"TRANSFORMERS_OFFLINE": "1"}, "TRANSFORMERS_OFFLINE=1"), ({"SWIFTPLAN_OFFLINE": "yes"}, "SWIFTPLAN_OFFLINE=yes"),
     ({"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "1"}, None),  # huggingface_hub reads HF_HUB_OFFLINE first
     ({}, None)],
    ids=["transformers-offline", "swiftplan-offline", "hf-hub-offline-0-wins", "hub-on"],
)  # fmt: skip
def test_which_switch_turns_the_hub_off(
    cache: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], off: str | None
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert hub_off_switch() == off
    if off is None:
        _tokenizer("org/missing")  # the hub is on: not looked up
    else:
        with pytest.raises(SwiftplanError, match=off):
            _tokenizer("org/missing")


def test_with_the_hub_on_nothing_is_asked_of_the_network(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    def no_network(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a check must not touch the network")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(socket, "create_connection", no_network)
    _tokenizer("org/anything")


@pytest.fixture
def workdir(tmp_path: Path, cache: Path) -> Path:
    """The tiny train and serve plans (one H100 each) and a one-record data file, beside the cache."""
    write_tiny_plans(tmp_path)
    (tmp_path / "one.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    return tmp_path


def test_train_and_serve_refuse_an_uncached_hub_id_while_the_hub_is_off(workdir: Path, cache: Path) -> None:
    cache_entry(cache, "org/tok", "tokenizer.json")
    cache_entry(cache, "org/adapter", "adapter_config.json")
    train = ("train", "train.yaml", "--data", "one.jsonl", "--dry-run")
    serve = ("serve", "serve.yaml", "--dry-run", "--engine", "vllm")
    assert_refused(run_cli(*train, "--tokenizer", "org/missing", cwd=workdir),
                   "--tokenizer org/missing", str(cache), "hf download org/missing")  # fmt: skip
    assert_refused(run_cli(*serve, "--lora", "a=org/missing-adapter", cwd=workdir),
                   "--lora a=org/missing-adapter", "adapter_config.json", str(cache),
                   "hf download org/missing-adapter", "--lora NAME=DIR")  # fmt: skip
    builtin = ("serve", "serve.yaml", "--dry-run", "--engine", "builtin", "--device", "cpu")
    assert_refused(
        run_cli(*builtin, "--tokenizer", "org/missing", cwd=workdir), "--tokenizer org/missing", str(cache)
    )
    for args in ((*train, "--tokenizer", "org/tok"), (*serve, "--lora", "a=org/adapter"),
                 (*builtin, "--tokenizer", "org/tok")):  # fmt: skip
        done = run_cli(*args, cwd=workdir)
        assert done.exit_code == 0, done.output


def test_a_fresh_process_looks_in_the_cache_hf_home_names(tmp_path: Path) -> None:
    """End to end, as a user runs it: HF_HOME=DIR and HF_HUB_OFFLINE=1 in the environment; huggingface_hub
    reads DIR/hub."""
    write_tiny_plans(tmp_path)
    (tmp_path / "one.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    cache_entry(tmp_path / "home" / "hub", "org/tok", "tokenizer_config.json")
    env = {k: v for k, v in os.environ.items() if k not in (*HUB_ENV, "HF_HUB_CACHE")}
    env |= {"HF_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}

    def train(tokenizer: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "swiftplan", "train", "train.yaml", "--data", "one.jsonl",
                               "--dry-run", "--tokenizer", tokenizer],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip

    assert train("org/tok").returncode == 0
    missing = train("org/missing")
    said = " ".join((missing.stdout + missing.stderr).split())
    assert missing.returncode == 2 and "Traceback" not in said, said
    assert (
        "org/missing" in said and str(tmp_path / "home" / "hub") in said and "hf download org/missing" in said
    )
