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
    ``agentlanes``), ``sqlite:///path``, ``memory:``; default SQLite in the data directory."""
    url = url if url is not None else os.environ.get("AGENTLANES_STORE") or None
    if url is None:
        return SQLiteStore(data_dir / "agentlanes.db")
    if url.startswith(("postgresql://", "postgres://")):
        from agentlanes.stores.postgres import PostgresStore

        return PostgresStore(url, schema=os.environ.get("AGENTLANES_STORE_SCHEMA") or "agentlanes")
    if url.startswith("sqlite:///"):
        return SQLiteStore(Path(url[len("sqlite:///") - 1 :]))
    if url == "memory:":
        return MemoryStore()
    raise ConfigurationError(
        f"Store {url!r} is not a store URL (postgresql://user@host/db, sqlite:///path/to/file.db, memory:)."
    )
