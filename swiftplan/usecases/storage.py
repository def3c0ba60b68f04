"""The Optuna storage a search keeps its study in (fit --storage, the dashboard's storage field): checked before
the search starts, so a bad URL is one message naming it rather than a failure inside Optuna."""

from __future__ import annotations

from swiftplan.errors import SwiftplanError


def check_storage_url(url: str | None) -> None:
    """An Optuna storage URL that Optuna can open (the storage is created here when it is new)."""
    if url is None:
        return
    examples = "Examples: sqlite:///study.db, postgresql://user:pass@host/db, mysql://user:pass@host/db."
    if "://" not in url:
        raise SwiftplanError(f"--storage {url!r} is not a database URL.", hint=examples)
    import optuna

    try:
        optuna.storages.RDBStorage(url)
    except ImportError as error:
        raise SwiftplanError(f"--storage {url}: its database driver is not installed ({error.name or error}).",
                             hint=examples) from None  # fmt: skip
    except Exception as error:  # noqa: BLE001 - sqlalchemy and optuna raise many kinds; each is a bad URL
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SwiftplanError(f"Cannot open --storage {url}: {reason}", hint=examples) from None
