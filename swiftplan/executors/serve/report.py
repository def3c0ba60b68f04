"""Predicted vs measured serving: counters the engine feeds, and `serve_report.json`.

Pure apart from writing the file: the engine measures (it owns the clock and the device) and
passes numbers in; memory comes from a callable so this module never imports torch.
"""

from __future__ import annotations

import json
import statistics
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPORT_NAME = "serve_report.json"


@dataclass(frozen=True, kw_only=True, slots=True)
class Prediction:
    """What the plan predicted (None where the plan has no figure, or there is no plan)."""

    ttft_s: float | None = None
    """Time to first token for a prompt of context/2 tokens at the planned concurrency."""
    prefill_tokens_per_s: float | None = None
    """Prompt tokens per second while prefilling."""
    per_user_decode_tokens_per_s: float | None = None
    """Generated tokens per second seen by one sequence."""
    tokens_per_s: float | None = None
    """Generated tokens per second, all sequences together."""
    peak_allocated_bytes: int | None = None
    """Peak of live tensor bytes per device (torch.cuda.max_memory_allocated)."""

    @classmethod
    def from_plan(cls, plan: Any) -> Prediction:
        """From a `Plan`'s prediction (tokens/s per replica: one server process is one replica)."""
        predicted = plan.prediction
        total = predicted.tokens_per_s
        return cls(
            ttft_s=predicted.ttft_s,
            prefill_tokens_per_s=predicted.prefill_tokens_per_s,
            per_user_decode_tokens_per_s=predicted.per_user_decode_tokens_per_s,
            tokens_per_s=None if total is None else total / plan.replicas,
            peak_allocated_bytes=predicted.per_device_bytes.get("peak_allocated"),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestTiming:
    """One finished request, as the engine saw it."""

    prompt_tokens: int
    """Tokens in the prompt."""
    completion_tokens: int
    """Tokens generated."""
    queue_s: float
    """Waiting for a free slot."""
    ttft_s: float
    """Arrival to first generated token (queueing included, as vLLM counts it)."""
    prefill_s: float
    """The prompt's own forward pass (slot admission to first token)."""
    decode_s: float
    """First to last generated token."""
    aborted: bool = False
    """The client went away before the end."""


def _summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "mean": statistics.fmean(ordered),
        "p50": ordered[len(ordered) // 2],
        "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "max": ordered[-1],
    }


def _ratio(measured: float | None, predicted: float | None) -> float | None:
    return measured / predicted if measured is not None and predicted else None


class ServeStats:
    """Thread-safe counters: the engine's worker writes, the HTTP routes and the reporter read."""

    def __init__(self, memory: Callable[[], tuple[int, str]] = lambda: (0, "unknown")) -> None:
        self._lock = threading.Lock()
        self._memory = memory
        self._timings: list[RequestTiming] = []
        self._busy_s = 0.0
        self.running = 0
        """Requests holding a slot (set by the engine)."""
        self.waiting = 0
        """Requests queued for a slot (set by the engine)."""

    def record(self, timing: RequestTiming) -> int:
        """Add a finished request; returns how many have finished."""
        with self._lock:
            self._timings.append(timing)
            return len(self._timings)

    def add_busy(self, seconds: float) -> None:
        """Wall time during which at least one request was being worked on."""
        with self._lock:
            self._busy_s += seconds

    def snapshot(self) -> dict[str, Any]:
        """Totals and distributions so far (the `measured` side of the report)."""
        with self._lock:
            timings, busy_s = list(self._timings), self._busy_s
        memory_bytes, memory_kind = self._memory()
        done = [t for t in timings if t.completion_tokens]
        generated = sum(t.completion_tokens for t in timings)
        prompt = sum(t.prompt_tokens for t in timings)
        prefill_s = sum(t.prefill_s for t in done)
        decode_rates = [
            (t.completion_tokens - 1) / t.decode_s for t in done if t.completion_tokens > 1 and t.decode_s > 0
        ]
        return {
            "requests": len(timings),
            "aborted": sum(t.aborted for t in timings),
            "running": self.running,
            "waiting": self.waiting,
            "prompt_tokens": prompt,
            "completion_tokens": generated,
            "busy_s": busy_s,
            "tokens_per_s": generated / busy_s if busy_s > 0 else None,
            "prefill_tokens_per_s": sum(t.prompt_tokens for t in done) / prefill_s if prefill_s > 0 else None,
            "ttft_s": _summary([t.ttft_s for t in done]),
            "queue_s": _summary([t.queue_s for t in timings]),
            "per_user_decode_tokens_per_s": _summary(decode_rates),
            "memory_bytes": memory_bytes,
            "memory_kind": memory_kind,
        }


def build_report(
    measured: dict[str, Any], prediction: Prediction, *, context: dict[str, Any]
) -> dict[str, Any]:
    """The report: measured next to predicted, and measured / predicted where both exist."""
    ttft = (measured["ttft_s"] or {}).get("mean")
    decode = (measured["per_user_decode_tokens_per_s"] or {}).get("mean")
    memory = measured["memory_bytes"] if measured["memory_kind"] == "cuda_max_memory_allocated" else None
    return {
        **context,
        "measured": measured,
        "predicted": asdict(prediction),
        "measured_over_predicted": {
            "ttft_s": _ratio(ttft, prediction.ttft_s),
            "prefill_tokens_per_s": _ratio(measured["prefill_tokens_per_s"], prediction.prefill_tokens_per_s),
            "per_user_decode_tokens_per_s": _ratio(decode, prediction.per_user_decode_tokens_per_s),
            "tokens_per_s": _ratio(measured["tokens_per_s"], prediction.tokens_per_s),
            "peak_allocated_bytes": _ratio(memory, prediction.peak_allocated_bytes),
        },
    }


def _fmt(value: float | None, unit: str) -> str:
    return "n/a" if value is None else f"{value:.4g}{unit}"


def report_line(report: dict[str, Any]) -> str:
    """One log line: measured (predicted) for TTFT, decode speed, throughput and memory."""
    m, p = report["measured"], report["predicted"]
    ttft = (m["ttft_s"] or {}).get("mean")
    decode = (m["per_user_decode_tokens_per_s"] or {}).get("mean")
    gib = 2**30
    memory_label = "peak allocated" if m["memory_kind"] == "cuda_max_memory_allocated" else "peak RSS"
    predicted_memory = None if p["peak_allocated_bytes"] is None else p["peak_allocated_bytes"] / gib
    return (
        f"{m['requests']} requests, {m['completion_tokens']} tokens: "
        f"TTFT {_fmt(ttft, ' s')} (predicted {_fmt(p['ttft_s'], ' s')}), "
        f"decode {_fmt(decode, ' tok/s/user')} (predicted {_fmt(p['per_user_decode_tokens_per_s'], '')}), "
        f"throughput {_fmt(m['tokens_per_s'], ' tok/s')} (predicted {_fmt(p['tokens_per_s'], '')}), "
        f"{memory_label} {m['memory_bytes'] / gib:.2f} GiB (predicted peak allocated {_fmt(predicted_memory, ' GiB')})"
    )


def write_report(report: dict[str, Any], report_dir: str | Path) -> Path:
    """Write `serve_report.json` into `report_dir` (created if missing), atomically."""
    directory = Path(report_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / REPORT_NAME
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    partial.replace(path)
    return path


class Reporter:
    """Logs (and writes, with a report directory) the comparison every N requests and at shutdown."""

    def __init__(
        self, stats: ServeStats, prediction: Prediction, *, context: dict[str, Any], report_dir: str | Path | None = None,
        every: int = 100, log: Callable[[str], None] = print,
    ) -> None:  # fmt: skip
        self.stats, self.prediction, self.context = stats, prediction, context
        self.report_dir, self.every, self.log = report_dir, every, log

    def report(self) -> dict[str, Any]:
        """The report as of now."""
        return build_report(self.stats.snapshot(), self.prediction, context=self.context)

    def emit(self, *, final: bool = False) -> dict[str, Any]:
        """Log one line and, with a report directory, rewrite the file."""
        report = self.report() | {"final": final}
        self.log(("final: " if final else "") + report_line(report))
        if self.report_dir is not None:
            write_report(report, self.report_dir)
        return report

    def request_finished(self, finished: int) -> None:
        """Called by the engine with the running count of finished requests."""
        if self.every > 0 and finished % self.every == 0:
            self.emit()


def prometheus_text(snapshot: dict[str, Any]) -> str:
    """A stats snapshot as Prometheus text exposition (what GET /metrics answers by default)."""
    ttft = (snapshot["ttft_s"] or {}).get("mean")
    rows = [
        (
            "swiftplan_requests_total",
            "counter",
            "Requests finished (aborted included).",
            snapshot["requests"],
        ),
        (
            "swiftplan_requests_aborted_total",
            "counter",
            "Requests whose client went away.",
            snapshot["aborted"],
        ),
        ("swiftplan_requests_running", "gauge", "Requests holding a generation slot.", snapshot["running"]),
        ("swiftplan_requests_waiting", "gauge", "Requests queued for a slot.", snapshot["waiting"]),
        ("swiftplan_prompt_tokens_total", "counter", "Prompt tokens processed.", snapshot["prompt_tokens"]),
        ("swiftplan_generation_tokens_total", "counter", "Tokens generated.", snapshot["completion_tokens"]),
        (
            "swiftplan_generation_tokens_per_second",
            "gauge",
            "Tokens generated per busy second.",
            snapshot["tokens_per_s"],
        ),
        ("swiftplan_time_to_first_token_seconds", "gauge", "Mean time to first token.", ttft),
        ("swiftplan_memory_bytes", "gauge", f"Memory ({snapshot['memory_kind']}).", snapshot["memory_bytes"]),
    ]
    lines = []
    for name, kind, help_text, value in rows:
        lines += [
            f"# HELP {name} {help_text}",
            f"# TYPE {name} {kind}",
            f"{name} {0 if value is None else value}",
        ]
    return "\n".join(lines) + "\n"
