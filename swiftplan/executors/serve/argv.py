"""Small pieces the server renderers share: the health URL to poll and a printable, masked command."""

from __future__ import annotations

import shlex
from collections.abc import Sequence


def health_url(host: str, port: int, path: str = "/health") -> str:
    """The loopback URL to poll for a server bound to `host` (0.0.0.0 / :: are polled on 127.0.0.1)."""
    probe = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    probe = f"[{probe}]" if ":" in probe else probe
    return f"http://{probe}:{port}{path}"


def masked(argv: Sequence[str], secret_flags: Sequence[str]) -> tuple[str, ...]:
    """`argv` with the value after each of `secret_flags` replaced by ***."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg in secret_flags:
            out[i + 1] = "***"
    return tuple(out)


def format_masked(argv: Sequence[str], env: dict[str, str], secret_flags: Sequence[str]) -> str:
    """A shell line for a command (`--dry-run`), secrets on the command line and in the environment masked."""
    prefix = " ".join(f"{k}=***" for k in env)
    return (prefix + " " if prefix else "") + shlex.join(masked(argv, secret_flags))
