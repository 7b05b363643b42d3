"""The embedded default store: one SQLite file, safe across tasks and processes.

Every mutation is one ``BEGIN IMMEDIATE`` transaction (SQLite's write lock), so a
reservation is admitted or refused atomically even when several processes share the
file. Calls run in worker threads (``anyio.to_thread``) with one connection per thread;
WAL journaling lets readers proceed while a writer holds the lock.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from agentlanes.budget import Refusal, Reservation, WindowSpec, WindowState
from agentlanes.errors import ConfigurationError
from agentlanes.stores.base import Sealer, Store, StoredReceipt, check_admission, settle_amounts

__all__ = ["SQLiteStore"]

_T = TypeVar("_T")

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS windows (
    window TEXT NOT NULL, key TEXT NOT NULL,
    committed INTEGER NOT NULL DEFAULT 0, overrun INTEGER NOT NULL DEFAULT 0,
    high_end_committed INTEGER NOT NULL DEFAULT 0, pro_committed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (window, key));
CREATE TABLE IF NOT EXISTS reservations (
    id TEXT NOT NULL, window TEXT NOT NULL, key TEXT NOT NULL, lane TEXT NOT NULL,
    amount INTEGER NOT NULL, expires REAL NOT NULL, PRIMARY KEY (id, window, key));
CREATE INDEX IF NOT EXISTS reservations_window ON reservations (window, key);
CREATE INDEX IF NOT EXISTS reservations_expires ON reservations (expires);
CREATE TABLE IF NOT EXISTS receipts (
    run_id TEXT NOT NULL, seq INTEGER NOT NULL, digest TEXT NOT NULL, prev TEXT,
    body TEXT NOT NULL, PRIMARY KEY (run_id, seq));
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, ord INTEGER NOT NULL, entry TEXT NOT NULL);
"""


class SQLiteStore(Store):
    """A store in one SQLite file.

    Args:
        path: the database file (created, with its directory, if missing).
        clock: seconds since the epoch, for leases (injectable for tests).
        busy_timeout: how long a transaction waits for another process's lock.
    """

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time, busy_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self._clock = clock
        self._busy_ms = int(busy_timeout * 1000)
        self._local = threading.local()
        self._limiter = anyio.CapacityLimiter(4)
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._tx() as db:
                row = db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
                if row is None:
                    db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                elif int(row[0]) > SCHEMA_VERSION:
                    raise ConfigurationError(
                        f"{self.path} was written by a newer agentlanes (store schema {row[0]}, this one reads "
                        f"up to {SCHEMA_VERSION}); upgrade agentlanes or use another data directory."
                    )
        except sqlite3.Error as exc:
            raise ConfigurationError(f"Cannot open the SQLite store {self.path}: {exc}.") from exc

    # -------------------------------------------------------------- plumbing

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, isolation_level=None, timeout=self._busy_ms / 1000, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.executescript(_SCHEMA)
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        else:
            db.execute("COMMIT")

    async def _run(self, fn: Callable[[], _T]) -> _T:
        return await anyio.to_thread.run_sync(fn, limiter=self._limiter)

    # -------------------------------------------------------------- budgets

    def _state(self, db: sqlite3.Connection, spec: WindowSpec, exclude: str | None = None) -> WindowState:
        row = db.execute(
            "SELECT committed, overrun, high_end_committed, pro_committed FROM windows WHERE window=? AND key=?",
            (spec.window, spec.key),
        ).fetchone() or (0, 0, 0, 0)
        res = db.execute(
            "SELECT COALESCE(SUM(amount),0), COALESCE(SUM(CASE WHEN lane='high-end' THEN amount END),0),"
            " COALESCE(SUM(CASE WHEN lane='pro' THEN amount END),0)"
            " FROM reservations WHERE window=? AND key=? AND id IS NOT ?",
            (spec.window, spec.key, exclude),
        ).fetchone()
        return WindowState(spec, row[0], res[0], row[2] + res[1], row[3] + res[2], row[1])

    async def reserve(
        self, windows: Sequence[WindowSpec], lane: str, amount: int, *, lease_seconds: float
    ) -> Reservation | Refusal:
        def work() -> Reservation | Refusal:
            now = self._clock()
            with self._tx() as db:
                db.execute("DELETE FROM reservations WHERE expires <= ?", (now,))
                for spec in windows:
                    refusal = check_admission(self._state(db, spec), lane, amount)
                    if refusal is not None:
                        return refusal
                res = Reservation(uuid.uuid4().hex, lane, amount, tuple(windows), now + lease_seconds)
                db.executemany(
                    "INSERT INTO reservations VALUES (?,?,?,?,?,?)",
                    [(res.id, s.window, s.key, lane, amount, res.expires_at) for s in windows],
                )
                return res

        return await self._run(work)

    async def settle(self, reservation: Reservation, actual: int) -> int:
        def work() -> int:
            charged_total = actual
            with self._tx() as db:
                db.execute("DELETE FROM reservations WHERE id = ?", (reservation.id,))
                for spec in reservation.windows:
                    charged, overrun = settle_amounts(self._state(db, spec), reservation.lane, actual)
                    db.execute(
                        "INSERT INTO windows (window, key, committed, overrun, high_end_committed, pro_committed)"
                        " VALUES (?,?,?,?,?,?) ON CONFLICT (window, key) DO UPDATE SET"
                        " committed = committed + excluded.committed, overrun = overrun + excluded.overrun,"
                        " high_end_committed = high_end_committed + excluded.high_end_committed,"
                        " pro_committed = pro_committed + excluded.pro_committed",
                        (
                            spec.window,
                            spec.key,
                            charged,
                            overrun,
                            charged if reservation.lane == "high-end" else 0,
                            charged if reservation.lane == "pro" else 0,
                        ),
                    )
                    charged_total = min(charged_total, charged)
            return charged_total

        return await self._run(work)

    async def release(self, reservation: Reservation) -> None:
        def work() -> None:
            with self._tx() as db:
                db.execute("DELETE FROM reservations WHERE id = ?", (reservation.id,))

        await self._run(work)

    async def window_states(self, windows: Sequence[WindowSpec]) -> list[WindowState]:
        def work() -> list[WindowState]:
            db = self._conn()
            db.execute("BEGIN")  # one consistent snapshot for every window
            try:
                now = self._clock()
                states = []
                for spec in windows:
                    state = self._state(db, spec)
                    expired = db.execute(
                        "SELECT COALESCE(SUM(amount),0), COALESCE(SUM(CASE WHEN lane='high-end' THEN amount END),0),"
                        " COALESCE(SUM(CASE WHEN lane='pro' THEN amount END),0)"
                        " FROM reservations WHERE window=? AND key=? AND expires <= ?",
                        (spec.window, spec.key, now),
                    ).fetchone()
                    states.append(
                        WindowState(
                            spec,
                            state.committed,
                            state.reserved - expired[0],
                            state.high_end_used - expired[1],
                            state.pro_used - expired[2],
                            state.overrun,
                        )
                    )
                return states
            finally:
                db.execute("COMMIT")

        return await self._run(work)

    # -------------------------------------------------------------- receipts and runs

    async def append_receipt(self, run_id: str, body: dict[str, Any], seal: Sealer) -> StoredReceipt:
        def work() -> StoredReceipt:
            with self._tx() as db:
                last = db.execute(
                    "SELECT seq, digest FROM receipts WHERE run_id=? ORDER BY seq DESC LIMIT 1", (run_id,)
                ).fetchone()
                full = {**body, "seq": 0 if last is None else last[0] + 1, "prev": None if last is None else last[1]}
                digest, text = seal(full)
                db.execute("INSERT INTO receipts VALUES (?,?,?,?,?)", (run_id, full["seq"], digest, full["prev"], text))
            return StoredReceipt(run_id, full["seq"], digest, full["prev"], text)

        return await self._run(work)

    async def receipts(self, run_id: str | None = None) -> list[StoredReceipt]:
        def work() -> list[StoredReceipt]:
            db = self._conn()
            if run_id is not None:
                rows = db.execute(
                    "SELECT run_id, seq, digest, prev, body FROM receipts WHERE run_id=? ORDER BY seq", (run_id,)
                ).fetchall()
            else:
                rows = db.execute(
                    "SELECT r.run_id, r.seq, r.digest, r.prev, r.body FROM receipts r"
                    " JOIN (SELECT run_id, MIN(rowid) AS first FROM receipts GROUP BY run_id) f USING (run_id)"
                    " ORDER BY f.first, r.seq"
                ).fetchall()
            return [StoredReceipt(*row) for row in rows]

        return await self._run(work)

    async def record_run(self, run: Mapping[str, Any]) -> None:
        def work() -> None:
            with self._tx() as db:
                row = db.execute("SELECT entry FROM runs WHERE run_id=?", (str(run["runId"]),)).fetchone()
                if row is None:
                    n = db.execute("SELECT COALESCE(MAX(ord), 0) + 1 FROM runs").fetchone()[0]
                    db.execute("INSERT INTO runs VALUES (?,?,?)", (str(run["runId"]), n, json.dumps(dict(run))))
                else:
                    entry = {**json.loads(row[0]), **run}
                    db.execute("UPDATE runs SET entry=? WHERE run_id=?", (json.dumps(entry), str(run["runId"])))

        await self._run(work)

    async def runs(self) -> list[dict[str, Any]]:
        def work() -> list[dict[str, Any]]:
            rows = self._conn().execute("SELECT entry FROM runs ORDER BY ord").fetchall()
            return [json.loads(r[0]) for r in rows]

        return await self._run(work)

    async def aclose(self) -> None:
        with self._conns_lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        self._local = threading.local()
