"""Stores: where budgets, escalation receipts and the run index live.

``MemoryStore`` is per-process; ``SQLiteStore`` (the embedded default, under the data
directory) is shared safely by concurrent tasks and by processes on one machine.
"""

import os
from pathlib import Path

from agentlanes.errors import ConfigurationError
from agentlanes.stores.base import Store, StoredReceipt
from agentlanes.stores.memory import MemoryStore
from agentlanes.stores.sqlite import SQLiteStore

__all__ = ["MemoryStore", "SQLiteStore", "Store", "StoredReceipt", "open_store"]


def open_store(url: str | None, data_dir: Path) -> Store:
    """The store ``url`` names (``AGENTLANES_STORE`` when ``None``): ``postgresql://...``
    (``agentlanes[postgres]``; schema from ``AGENTLANES_STORE_SCHEMA``, default
    ``agentlanes``; ``AGENTLANES_STORE_STATEMENT_CACHE_SIZE=0`` behind a
    transaction-pooling PgBouncer; ``AGENTLANES_STORE_TIMEOUT`` seconds for each database
    call, default 5), ``sqlite:///path``, ``memory:``; default SQLite in the
    data directory (durability from ``AGENTLANES_STORE_DURABILITY``: ``process``, the
    default, ``settlements`` or ``full``)."""
    url = url if url is not None else os.environ.get("AGENTLANES_STORE") or None
    if url is None or url.startswith("sqlite:///"):
        path = data_dir / "agentlanes.db" if url is None else Path(url[len("sqlite:///") - 1 :])
        durability = os.environ.get("AGENTLANES_STORE_DURABILITY") or "process"
        if durability not in ("process", "settlements", "full"):
            raise ConfigurationError(
                f"AGENTLANES_STORE_DURABILITY={durability!r} is not a durability level (process, settlements, full)."
            )
        return SQLiteStore(path, durability=durability)  # type: ignore[arg-type]  # checked just above
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from agentlanes.stores.postgres import PostgresStore
        except ImportError:
            raise ConfigurationError(
                "The store is PostgreSQL but asyncpg is not installed: pip install 'agentlanes[postgres]'."
            ) from None
        cache = os.environ.get("AGENTLANES_STORE_STATEMENT_CACHE_SIZE") or None
        if cache is not None and not (cache.isascii() and cache.isdigit()):
            raise ConfigurationError(
                f"AGENTLANES_STORE_STATEMENT_CACHE_SIZE={cache!r} is not a whole number (0 behind a "
                "transaction-pooling PgBouncer)."
            )
        timeout = os.environ.get("AGENTLANES_STORE_TIMEOUT") or None
        seconds = _seconds(timeout) if timeout is not None else 5.0
        if seconds is None:
            raise ConfigurationError(
                f"AGENTLANES_STORE_TIMEOUT={timeout!r} is not a number of seconds from 0.1 to 3600 "
                "(how long one database call may take; default 5)."
            )
        return PostgresStore(
            url,
            schema=os.environ.get("AGENTLANES_STORE_SCHEMA") or "agentlanes",
            statement_cache_size=int(cache) if cache is not None else None,
            timeout=seconds,
        )
    if url == "memory:":
        return MemoryStore()
    raise ConfigurationError(
        f"Store {url!r} is not a store URL (postgresql://user@host/db, sqlite:///path/to/file.db, memory:)."
    )


def _seconds(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0.1 <= value <= 3600 else None
