"""Read a SQLite store without writing anything: for verifying a ledger on read-only
media, or one copied off a machine, without touching it.

``SQLiteStore`` opens its file for writing (it creates the schema and turns WAL on).
This reader opens ``file:...?mode=ro`` when the database has a write-ahead log beside it
(a writer may be live: the read must go through SQLite's locks to be consistent), and
``immutable=1`` otherwise: with no ``-wal`` file there is no live writer, and an
immutable open creates no ``-wal`` or ``-shm`` file, so the directory is left exactly as
it was (and read-only media work). When a log is there but cannot be opened through
(read-only media without its ``-shm``), a private copy of the file and its log is
read instead (in a temporary directory, removed afterwards).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentlanes.errors import ConfigurationError
from agentlanes.stores.base import StoredReceipt

__all__ = ["LedgerSnapshot", "read_ledger"]

_RECEIPTS_ALL = (
    "SELECT r.run_id, r.seq, r.digest, r.prev, r.body FROM receipts r"
    " JOIN (SELECT run_id, MIN(rowid) AS first FROM receipts GROUP BY run_id) f USING (run_id)"
    " ORDER BY f.first, r.seq"
)
_RECEIPTS_ONE = "SELECT run_id, seq, digest, prev, body FROM receipts WHERE run_id=? ORDER BY seq"


@dataclass(frozen=True)
class LedgerSnapshot:
    """What a read-only read of a SQLite store found.

    Attributes:
        receipts: stored records in chain order (per chain, chains in first-record order).
        runs: the run index, oldest first.
        notes: what the reader should know (a private copy was read).
    """

    receipts: list[StoredReceipt]
    runs: list[dict[str, Any]]
    notes: tuple[str, ...] = field(default_factory=tuple)


def _uri(path: Path, mode: str) -> str:
    quoted = urllib.parse.quote(str(path.resolve()))
    return f"file:{quoted}?mode=ro" if mode == "ro" else f"file:{quoted}?mode=ro&immutable=1"


def _signature(path: Path) -> tuple[int, int, bool]:
    info = path.stat()
    return info.st_size, info.st_mtime_ns, Path(f"{path}-wal").exists()


def _read(path: Path, mode: str, run_id: str | None) -> tuple[list[StoredReceipt], list[dict[str, Any]]]:
    conn = sqlite3.connect(_uri(path, mode), uri=True, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA query_only = ON")
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "receipts" not in tables:
            raise ConfigurationError(f"{path} is not an agentlanes store (it has no receipts table).")
        conn.execute("BEGIN")  # one snapshot for receipts and runs
        try:
            rows = conn.execute(_RECEIPTS_ALL if run_id is None else _RECEIPTS_ONE, () if run_id is None else (run_id,))
            receipts = [StoredReceipt(*row) for row in rows]
            runs: list[dict[str, Any]] = []
            if "runs" in tables:
                for (entry,) in conn.execute("SELECT entry FROM runs ORDER BY ord"):
                    try:
                        value = json.loads(entry)
                    except (ValueError, RecursionError, TypeError):
                        continue  # a damaged index entry: the ledger is what is verified
                    if isinstance(value, dict):
                        runs.append(value)
        finally:
            conn.execute("COMMIT")
        return receipts, runs
    finally:
        conn.close()


def _read_copy(path: Path, wal: Path, run_id: str | None) -> tuple[list[StoredReceipt], list[dict[str, Any]]]:
    with tempfile.TemporaryDirectory(prefix="agentlanes-ledger-") as tmp:
        copy = Path(tmp) / "agentlanes.db"
        shutil.copyfile(path, copy)
        shutil.copyfile(wal, Path(f"{copy}-wal"))
        return _read(copy, "ro", run_id)


def read_ledger(path: str | Path, run_id: str | None = None) -> LedgerSnapshot:
    """Receipts (all chains, or ``run_id``'s) and the run index of the SQLite store at
    ``path``, read without writing anything.

    Raises:
        ConfigurationError: there is no such file, it is not a regular file, or it is
            not an agentlanes SQLite store.
    """
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigurationError(
            f"No receipt ledger at {path}; pass --data-dir (or set AGENTLANES_HOME, or AGENTLANES_STORE for a "
            "shared store)."
        ) from None
    except OSError as exc:
        raise ConfigurationError(f"Cannot read the receipt ledger {path}: {exc.strerror}.") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigurationError(f"The receipt ledger {path} is not a regular file; pass the data directory.")
    if not os.access(path, os.R_OK):
        raise ConfigurationError(f"Cannot read the receipt ledger {path}: permission denied.")
    notes: list[str] = []
    wal = Path(f"{path}-wal")
    try:
        if wal.exists():
            try:
                receipts, runs = _read(path, "ro", run_id)
            except sqlite3.OperationalError:
                # read-only media without the -shm file SQLite needs to read through the
                # log: read a private copy of the file and its log instead
                receipts, runs = _read_copy(path, wal, run_id)
                notes.append(f"read a private copy of {path} and its write-ahead log (read-only media without -shm)")
        else:
            before = _signature(path)
            receipts, runs = _read(path, "immutable", run_id)
            if _signature(path) != before:
                # a writer started while we read: read again through its locks
                receipts, runs = _read(path, "ro", run_id)
    except sqlite3.DatabaseError as exc:
        raise ConfigurationError(f"Cannot read the receipt ledger {path}: {exc}.") from None
    except OSError as exc:
        raise ConfigurationError(f"Cannot read the receipt ledger {path}: {exc.strerror}.") from None
    return LedgerSnapshot(receipts, runs, tuple(notes))
