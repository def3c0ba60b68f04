"""Wall time of `swiftplan estimate` from a fresh process (CLI start included).

Run: python benchmarks/estimate_speed.py  → writes benchmarks/results/estimate_speed.md
Target (issue #2): well under one second on a 2-core laptop-class machine without a GPU.
"""

from __future__ import annotations

import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

CASES = [
    ["estimate", "Qwen/Qwen2.5-72B", "--method", "qlora", "--gpus", "rtx4090", "--json"],
    [
        "estimate",
        "Qwen/Qwen2.5-7B",
        "--method",
        "lora",
        "--rank",
        "64",
        "--batch",
        "2",
        "--gpus",
        "h100",
        "--json",
    ],
    [
        "estimate",
        "meta-llama/Llama-3.1-70B",
        "--method",
        "full",
        "--zero",
        "3",
        "--gpus",
        "2x8xH100",
        "--json",
    ],
    ["estimate", "deepseek-ai/DeepSeek-V3", "--task", "serve", "--tp", "8", "--gpus", "8xH200", "--json"],
]


def main(repeats: int = 5) -> None:
    rows = []
    for args in CASES:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "swiftplan", *args], check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        rows.append((" ".join(args[1:-1]), statistics.median(times), max(times)))
    lines = [
        "# `swiftplan estimate` wall time (fresh process, CLI start included)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}, {date.today()}. "
        f"Median and max of {repeats} runs. Target: well under 1 s.",
        "",
        "| case | median s | max s |",
        "|---|---:|---:|",
        *[f"| `{name}` | {median:.3f} | {worst:.3f} |" for name, median, worst in rows],
    ]
    out = Path(__file__).parent / "results" / "estimate_speed.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
