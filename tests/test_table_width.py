"""`fit`'s plans table fits the terminal: a compact form at 80 columns, every column with --wide."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

FIT = ("fit", "Qwen/Qwen2.5-7B", "--gpus", "2xrtx4090")


def _fit(*extra: str, columns: int) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "swiftplan", *FIT, *extra],
        env={**os.environ, "COLUMNS": str(columns)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.parametrize("extra", [(), ("--pareto",), ("--task", "serve")], ids=["best", "pareto", "serve"])
def test_at_80_columns_no_line_is_longer_and_no_word_is_cut(extra):
    lines = _fit(*extra, columns=80)
    assert max(len(line.rstrip()) for line in lines) <= 80
    header = next(line for line in lines if "GiB/device" in line)
    assert "plan" in header  # the compact table, one set-up per cell
    table = "\n".join(lines)
    assert "adamw" in table or "weights" in table  # set-ups printed whole, not folded to 3-letter shreds


def test_wide_shows_every_column_unfolded_past_the_terminal():
    lines = _fit("--wide", columns=80)
    header = next(line for line in lines if "batch×accum" in line)
    for column in (
        "method",
        "rank",
        "quant",
        "numerics",
        "ckpt",
        "ZeRO",
        "TP/PP/DP",
        "tokens/s",
        "GPU-hours",
    ):
        assert column in header
    assert max(len(line.rstrip()) for line in lines) > 80


def test_a_wide_terminal_gets_the_full_table_without_asking():
    lines = _fit(columns=220)
    assert any("batch×accum" in line for line in lines)


SIZE_SERVE = ("size", "Qwen/Qwen2.5-7B", "--task", "serve", "--concurrency", "200", "--context", "8192")


def _run(args: tuple[str, ...], columns: int) -> list[str]:
    done = subprocess.run([sys.executable, "-m", "swiftplan", *args], env={**os.environ, "COLUMNS": str(columns)},
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_size_at_80_columns_leaves_out_columns_it_names_instead_of_cropping():
    lines = _run(SIZE_SERVE, 80)
    table = [line for line in lines if line.startswith(("┃", "│", "┏", "└"))]
    assert table and max(len(line.rstrip()) for line in table) <= 80
    assert all(line.rstrip().endswith(("┃", "│", "┓", "┘")) for line in table)  # closed, not cropped
    note = " ".join(line for line in lines if "left out to fit" in line or "--csv show them" in line)
    assert "tok/$" in note and "--wide" in note


def test_size_wide_keeps_every_column():
    header = next(line for line in _run((*SIZE_SERVE, "--wide"), 80) if line.startswith("┃"))
    for column in ("headroom", "TTFT", "tok/s/user", "tok/$", "$/M tok"):
        assert column in header
