"""How fast is `swiftplan size`? Wall time of the issue's examples (and harder cases) in fresh processes.

Each case runs `swiftplan size ... --json` in a new process (CLI start, model lookup and planning
included), `--repeats` times; the report gives the median and max wall time, the median CPU time
(user + system: less sensitive to other load on a shared machine), what the run planned and its answer.

Run: python benchmarks/size_speed.py  → writes benchmarks/results/size_speed.md
Target (issue #9): a few seconds for the two examples on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path


@dataclass(frozen=True)
class Case:
    label: str
    args: tuple[str, ...]
    target_s: float | None = None


CASES = [
    Case(
        "issue example: Qwen2.5-72B QLoRA, 50M tokens, deadline 48h (objective cost)",
        (
            "Qwen/Qwen2.5-72B",
            "--task",
            "sft",
            "--method",
            "qlora",
            "--dataset-tokens",
            "50M",
            "--deadline",
            "48h",
        ),
        target_s=5.0,
    ),
    Case(
        "issue example: Qwen2.5-7B serving, 200 sequences × 8192 tokens (objective cost-per-token)",
        ("Qwen/Qwen2.5-7B", "--task", "serve", "--concurrency", "200", "--context", "8192"),
        target_s=5.0,
    ),
    Case(
        "Qwen2.5-72B QLoRA, deadline 48h, objective time (every accelerator, no price needed)",
        (
            "Qwen/Qwen2.5-72B",
            "--method",
            "qlora",
            "--dataset-tokens",
            "50M",
            "--deadline",
            "48h",
            "--objective",
            "time",
        ),
    ),
    Case(
        "Qwen2.5-7B, every method, 1.5B tokens, objective time (every accelerator)",
        ("Qwen/Qwen2.5-7B", "--dataset-tokens", "1.5B", "--objective", "time"),
    ),
    Case(
        "Llama-3.1-70B, every method, 100M tokens, objective time (every accelerator)",
        ("meta-llama/Llama-3.1-70B", "--objective", "time"),
    ),
    Case(
        "Qwen2.5-7B, every method, --buy --vendor nvidia (list prices)",
        ("Qwen/Qwen2.5-7B", "--dataset-tokens", "1.5B", "--buy", "--vendor", "nvidia"),
    ),
    Case(
        "Qwen2.5-7B serving, 20 req/s × (1024 + 256 tokens), TTFT ≤ 2 s, objective time",
        (
            "Qwen/Qwen2.5-7B",
            "--task",
            "serve",
            "--request-rate",
            "20",
            "--prompt-tokens",
            "1024",
            "--output-tokens",
            "256",
            "--ttft",
            "2",
            "--objective",
            "time",
        ),
    ),  # fmt: skip
]


def _run(case: Case) -> tuple[float, float, dict]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", "from swiftplan.cli import main; main()", "size", *case.args, "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 1):
        raise SystemExit(f"{case.label}: exit {done.returncode}\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, json.loads(done.stdout)


def _answer(payload: dict) -> str:
    best = payload["recommended"]
    if best is None:
        return "nothing qualifies"
    if payload["task"] == "train":
        figure = f"{best['time_s'] / 3600:.1f} h"
    else:
        figure = f"{best['tokens_per_s']:,.0f} tok/s"
    money = best["rent_usd"] if payload["money"] == "rent" else best["purchase_usd"]
    if money is not None:
        figure += f", ${money:,.2f}" + (
            "/h" if payload["task"] == "serve" and payload["money"] == "rent" else ""
        )
    return f"{best['hardware']} ({figure})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "size_speed.md"))
    options = parser.parse_args()
    rows = []
    for case in CASES:
        runs = [_run(case) for _ in range(options.repeats)]
        walls = [r[0] for r in runs]
        cpus = [r[1] for r in runs]
        payload = runs[-1][2]
        search = payload["search"]
        rows.append(
            "| {label} | {considered} | {searched} | {pruned} | {estimates:,} | {options} | {answer} | "
            "{median:.2f} | {max:.2f} | {cpu:.2f} | {target} |".format(
                label=case.label,
                considered=search["considered"],
                searched=search["searched"],
                pruned=search["pruned"],
                estimates=search["estimates"],
                options=len(payload["options"]),
                answer=_answer(payload),
                median=statistics.median(walls),
                max=max(walls),
                cpu=statistics.median(cpus),
                target="—" if case.target_s is None else f"{case.target_s:g}",
            )
        )
        print(rows[-1], flush=True)
    header = f"""# `swiftplan size` wall time

Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {date.today().isoformat()}.
Each case is `swiftplan size ... --json` in a fresh process (CLI start, model lookup and planning included),
median and max of {options.repeats} runs; CPU s is the median user + system time of the same processes (less
sensitive to other load on a shared machine). Written by `python benchmarks/size_speed.py`.

Training: every catalog accelerator that has the price the objective needs, as 1, 2, 4, 8 GPUs in a node and
2-4 nodes of 8; clusters whose memory cannot hold the smallest weights, or whose speed bound already misses
the deadline, are skipped without a search ("pruned"); the rest get the fastest whole-cluster plan by branch
and bound on the fit search's speed bound (exact: the same plan as `swiftplan fit` restricted to layouts that
use every GPU; `tests/test_size.py` checks it).
Serving: every accelerator with the price needed, each weight format × KV-cache dtype × tensor-parallel degree.

| case | considered | searched | pruned | estimates | options | recommended | median s | max s | CPU s | target s |
|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|
"""
    Path(options.out).write_text(header + "\n".join(rows) + "\n", encoding="utf-8")
    print(f"wrote {options.out}")


if __name__ == "__main__":
    main()
