"""Run the built-in server: uvicorn in the foreground (the CLI) or in a thread (tests, embedding)."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from swiftplan.errors import SwiftplanError


def _uvicorn_server(app: Any, *, host: str, port: int, log_level: str) -> Any:
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5,
                            lifespan="off", server_header=False)  # fmt: skip
    return uvicorn.Server(config)


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on host:port (port 0 = any free port), or a one-line error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise SwiftplanError(f"Cannot listen on {host}:{port}: {error.strerror or error}.",
                             hint="Pick another --port, or stop what is using this one.") from error  # fmt: skip
    return sock


def run_foreground(app: Any, *, host: str, port: int, log_level: str = "info") -> None:
    """Serve until SIGINT/SIGTERM, then return normally so the caller can clean up.

    uvicorn handles both signals (finishing open requests for up to 5 s) and then re-raises the
    signal it caught against the handlers it found; the ones set here just note it, so neither a
    KeyboardInterrupt nor a default SIGTERM death skips the caller's shutdown work.
    """
    sock = bind(host, port)
    main = threading.current_thread() is threading.main_thread()
    previous = (
        {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    )
    try:
        _uvicorn_server(app, host=host, port=port, log_level=log_level).run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()


@contextlib.contextmanager
def serve_in_thread(app: Any, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                    timeout_s: float = 20.0) -> Iterator[str]:  # fmt: skip
    """Serve `app` from a background thread; yields the base URL (http://host:port)."""
    sock = bind(host, port)
    server = _uvicorn_server(app, host=host, port=sock.getsockname()[1], log_level=log_level)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="swiftplan-serve-http", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise SwiftplanError("The HTTP server did not start.")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
        sock.close()
