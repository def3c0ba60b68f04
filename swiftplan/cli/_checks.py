"""Checks on command-line values at the CLI's edge, before anything is loaded or computed.

Each check refuses one flag with one `SwiftplanError` that names the flag, the value given and what
would be valid, so a bad value never turns into a traceback, a hang or a silently different plan.
"""

from __future__ import annotations

import errno
import math
import os
import re
import socket
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import get_args

from swiftplan.errors import SwiftplanError
from swiftplan.planner.setup import AttentionImpl

ATTENTIONS: tuple[str, ...] = get_args(AttentionImpl)
"""--attention values (the planner's `AttentionImpl`)."""


def _show(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def finite(flag: str, value: float | None) -> None:
    """Not inf or nan (None: not given)."""
    if value is not None and not math.isfinite(value):
        raise SwiftplanError(f"{flag} must be a finite number, got {value}.")


def at_least(flag: str, value: float | None, minimum: float, *, unit: str = "") -> None:
    """`value >= minimum` and finite (None: not given, nothing to check)."""
    finite(flag, value)
    if value is not None and not value >= minimum:
        raise SwiftplanError(f"{flag} must be at least {_show(minimum)}{unit}, got {_show(value)}.")


def positive(flag: str, value: float | None, *, unit: str = "") -> None:
    """`value > 0` and finite (None: not given)."""
    finite(flag, value)
    if value is not None and not value > 0:
        raise SwiftplanError(f"{flag} must be greater than 0{unit}, got {_show(value)}.")


def between(flag: str, value: float | None, low: float, high: float, *, unit: str = "") -> None:
    """`low <= value <= high` (None: not given)."""
    finite(flag, value)
    if value is not None and not low <= value <= high:
        raise SwiftplanError(
            f"{flag} must be between {_show(low)} and {_show(high)}{unit}, got {_show(value)}."
        )


def one_of(flag: str, value: str | None, valid: Iterable[str]) -> None:
    """`value` is one of `valid` (None: not given)."""
    options = tuple(valid)
    if value is not None and value not in options:
        raise SwiftplanError(f"Unknown {flag} {value!r}; valid values are: {', '.join(options)}.")


def split_list(flag: str, text: str | None) -> tuple[str, ...] | None:
    """'a, b' → ('a', 'b'); None when not given; an empty list is refused (it would allow nothing)."""
    if text is None:
        return None
    items = tuple(part.strip() for part in text.split(",") if part.strip())
    if not items:
        raise SwiftplanError(
            f"{flag} got {text!r}, which names no value.", hint=f"Leave {flag} out to search the defaults."
        )
    return items


def list_of(flag: str, text: str | None, valid: Iterable[str]) -> tuple[str, ...] | None:
    """A comma list whose every item is one of `valid`."""
    items = split_list(flag, text)
    for item in items or ():
        one_of(flag, item, valid)
    return items


def int_list(
    flag: str, text: str | None, *, minimum: int, maximum: int | None = None, what: str = ""
) -> tuple[int, ...] | None:
    """A comma list of whole numbers within [minimum, maximum]; `what` replaces the range in the message."""
    items = split_list(flag, text)
    if items is None:
        return None
    valid = what or (f"{minimum}-{maximum}" if maximum is not None else f"at least {minimum}")
    numbers = []
    for item in items:
        try:
            number = int(item)
        except ValueError:
            raise SwiftplanError(
                f"{flag} takes whole numbers separated by commas ({valid}), got {item!r}."
            ) from None
        if number < minimum or (maximum is not None and number > maximum):
            raise SwiftplanError(f"{flag} {number} is out of range: {valid}.")
        numbers.append(number)
    return tuple(numbers)


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path.cwd()


def _writable(directory: Path) -> bool:
    """Whether a file can be created in `directory` (tried for real: as root, os.access says yes to
    read-only file systems and sysfs)."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def output_file(flag: str, path: str | os.PathLike[str] | None) -> None:
    """A file we will write: not a directory, in an existing directory we may write to ('-' is stdout)."""
    if path is None or str(path) == "-":
        return
    target = Path(path).expanduser()
    if target.is_dir():
        raise SwiftplanError(
            f"{flag} {path} is a directory; give a file name.", hint=f"For example {target / 'out'}."
        )
    parent = target.parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise SwiftplanError(
            f"Cannot write {flag} {path}: {parent} {what}.", hint="Create the directory first."
        )
    if not _writable(parent) or (target.exists() and not os.access(target, os.W_OK)):
        raise SwiftplanError(
            f"Cannot write {flag} {path}: permission denied.", hint="Choose a writable location."
        )


def output_dir(flag: str, path: str | os.PathLike[str] | None) -> None:
    """A directory we will create or fill: not an existing file, under a directory we may write to."""
    if path is None:
        return
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise SwiftplanError(
            f"{flag} {path} is a file, not a directory.", hint="Give a directory (it is created if missing)."
        )
    existing = _nearest_existing(target)
    if not existing.is_dir():
        raise SwiftplanError(f"Cannot create {flag} {path}: {existing} is a file, not a directory.")
    if not _writable(existing):
        raise SwiftplanError(f"Cannot write {flag} {path}: permission denied on {existing}.",
                             hint="Choose a writable location.")  # fmt: skip


def port(flag: str, value: int | None) -> None:
    """A TCP port number."""
    between(flag, value, 1, 65535)


_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def host(flag: str, value: str) -> None:
    """An address to bind, by its form alone (no lookup, so --dry-run needs no network): an IPv4 or IPv6
    literal, or a host name of letters, digits, hyphens and dots (RFC 1123; all-digit names are IPv4)."""
    import ipaddress

    hint = "Give an address of this machine: 127.0.0.1 (this machine only), 0.0.0.0 (the network), ::1, or a host name."
    if not value.strip():
        raise SwiftplanError(f"{flag} is empty.", hint=hint)
    try:
        ipaddress.ip_address(value)
        return
    except ValueError:
        pass
    labels = value.removesuffix(".").split(".")
    if all(label.isdigit() for label in labels):
        raise SwiftplanError(
            f"{flag} {value!r} is not an IPv4 address (four numbers 0-255, e.g. 127.0.0.1).", hint=hint
        )
    if len(value) > 253 or not all(_LABEL.match(label) for label in labels):
        raise SwiftplanError(
            f"{flag} {value!r} is neither an IP address nor a host name (letters, digits and hyphens, in "
            "dot-separated parts of at most 63 characters).",
            hint=hint,
        )


def port_free(flag: str, host: str, number: int) -> None:
    """Nothing listens on host:number yet (checked with a bind, before any model is loaded)."""
    try:
        infos = socket.getaddrinfo(host or None, number, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise SwiftplanError(f"Cannot bind --host {host!r}: {error.strerror}.",
                             hint="Give an address of this machine: 127.0.0.1, 0.0.0.0 or ::1.") from None  # fmt: skip
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise SwiftplanError(f"{flag} {number} is already in use on {host}.",
                                     hint="Stop what listens there, or pick another port.") from None  # fmt: skip
            raise SwiftplanError(f"Cannot bind {host}:{number}: {error.strerror or error}.",
                                 hint="Ports below 1024 need privileges; --host must be an address of this machine.") from None  # fmt: skip
