"""The embedded default store: one SQLite file, safe across tasks and processes.

* **Admission** is one ``BEGIN IMMEDIATE`` transaction (SQLite's write lock): the
  windows' counters are read, checked and updated, and the reservation is written as
  one row, so a reservation is admitted or refused atomically even when several
  processes share the file.
* **Settlement** is one transaction too: the charge is recorded under the reservation's
  id (settling the same reservation again charges nothing), the reservation is removed
  and every window is charged.
* **Durability** (``durability=``): WAL journaling throughout; what a commit survives
  depends on the level. ``"process"`` (the default, ``synchronous=NORMAL``): a committed
  transaction survives the death of any process (kill -9, a crash, the OOM killer) at
  any moment, since it is in the WAL file before the call returns; an OS crash or power
  loss can roll back the transactions committed since the WAL was last synced (at the
  latest, the last checkpoint). ``"settlements"``: the same, and a settlement or receipt
  is synced to disk before it is acknowledged, so power loss loses none (nor anything
  committed before it); a reservation can still be lost, which frees its money early but
  its settlement is charged all the same. ``"full"`` (``synchronous=FULL``): every
  transaction is synced before it is acknowledged.
* **Cheap calls.** A call that needs no disk sync runs on the event loop's thread when
  the write lock is free (a transaction is tens of microseconds; a thread hop costs
  more), and in a worker thread, waiting up to ``busy_timeout`` for the lock, when
  another connection holds it; calls that sync, and checkpoints, always run in a
  worker thread.
* **Failures** become :class:`~agentlanes.errors.StoreError`: a lock held past
  ``busy_timeout`` (:class:`~agentlanes.errors.StoreUnavailable`), a full disk or size
  limit, I/O errors, a damaged or read-only file. Each message says what was admitted.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import anyio
import anyio.to_thread

from agentlanes._private import private_dir, private_file, tighten_file
from agentlanes.budget import MAX_MICRO, Refusal, Reservation, WindowSpec, WindowState, check_micro
from agentlanes.errors import ConfigurationError, StoreError, StoreUnavailable
from agentlanes.stores.base import (
    Sealer,
    Store,
    StoredReceipt,
    Unsettled,
    check_admission,
    new_reservation_id,
    settle_amounts,
    with_unsettled,
)

__all__ = ["Durability", "SQLiteStore"]

_T = TypeVar("_T")

Durability = Literal["process", "settlements", "full"]
_DURABILITY: Final = ("process", "settlements", "full")

SCHEMA_VERSION = 2

# Version 2: the windows carry their reserved counters; one row per reservation (holds);
# charges keyed by reservation id (settlement is idempotent).
_SCHEMA_V2 = (
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS windows (
    window TEXT NOT NULL, key TEXT NOT NULL,
    committed INTEGER NOT NULL DEFAULT 0, overrun INTEGER NOT NULL DEFAULT 0,
    high_end_committed INTEGER NOT NULL DEFAULT 0, pro_committed INTEGER NOT NULL DEFAULT 0,
    reserved INTEGER NOT NULL DEFAULT 0, high_end_reserved INTEGER NOT NULL DEFAULT 0,
    pro_reserved INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (window, key))""",
    """CREATE TABLE IF NOT EXISTS holds (
    id TEXT PRIMARY KEY, lane TEXT NOT NULL, amount INTEGER NOT NULL, expires REAL NOT NULL,
    windows TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS holds_expires ON holds (expires)",
    """CREATE TABLE IF NOT EXISTS charges (
    id TEXT PRIMARY KEY, lane TEXT NOT NULL, actual INTEGER NOT NULL, at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS receipts (
    run_id TEXT NOT NULL, seq INTEGER NOT NULL, digest TEXT NOT NULL, prev TEXT,
    body TEXT NOT NULL, PRIMARY KEY (run_id, seq))""",
    "CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, ord INTEGER NOT NULL, entry TEXT NOT NULL)",
)

# Version 1 to 2, in the same transaction as the version bump.
_MIGRATE_1_TO_2 = (
    "ALTER TABLE windows ADD COLUMN reserved INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE windows ADD COLUMN high_end_reserved INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE windows ADD COLUMN pro_reserved INTEGER NOT NULL DEFAULT 0",
    *_SCHEMA_V2[2:5],
    "INSERT OR IGNORE INTO windows (window, key) SELECT DISTINCT window, key FROM reservations",
    """INSERT INTO holds (id, lane, amount, expires, windows)
    SELECT id, MIN(lane), MAX(amount), MIN(expires), json_group_array(json_array(window, key))
    FROM reservations GROUP BY id""",
    """UPDATE windows SET
    reserved = (SELECT COALESCE(SUM(amount), 0) FROM reservations r
                WHERE r.window = windows.window AND r.key = windows.key),
    high_end_reserved = (SELECT COALESCE(SUM(amount), 0) FROM reservations r
                         WHERE r.window = windows.window AND r.key = windows.key AND r.lane = 'high-end'),
    pro_reserved = (SELECT COALESCE(SUM(amount), 0) FROM reservations r
                    WHERE r.window = windows.window AND r.key = windows.key AND r.lane = 'pro')""",
    "DROP TABLE reservations",
)

_COLS = "committed, overrun, reserved, high_end_committed, high_end_reserved, pro_committed, pro_reserved"
# Indexes into a window's counters, in _COLS order.
_C, _O, _R, _HC, _HR, _PC, _PR = range(7)


@functools.cache
def _select_windows(n: int) -> str:
    # ORed key pairs: SQLite answers each from the primary key (a row-value IN would scan)
    return f"SELECT window, key, {_COLS} FROM windows WHERE " + " OR ".join(["(window = ? AND key = ?)"] * n)


_ADD_TO_WINDOW = (
    f"INSERT INTO windows (window, key, {_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (window, key) DO UPDATE SET " + ", ".join(f"{c} = {c} + excluded.{c}" for c in _COLS.split(", "))
)
_ZERO: Final = (0, 0, 0, 0, 0, 0, 0)

# Inline write transactions between two checkpoints (run in a worker thread): about
# 4 pages each, so the WAL stays near 1,000 pages as with SQLite's own autocheckpoint.
_CHECKPOINT_EVERY = 250


class _Busy(Exception):
    """The write lock (or a read snapshot) was not free right now: try in a thread."""


def _state(spec: WindowSpec, row: Sequence[int]) -> WindowState:
    return WindowState(spec, row[_C], row[_R], row[_HC] + row[_HR], row[_PC] + row[_PR], row[_O])


def _lane_columns(lane: str, amount: int) -> tuple[int, int]:
    """(high-end part, pro part) of an amount on ``lane``."""
    return (amount if lane == "high-end" else 0), (amount if lane == "pro" else 0)


class SQLiteStore(Store):
    """A store in one SQLite file.

    Args:
        path: the database file (created, with its directory, if missing).
        clock: seconds since the epoch, for leases (injectable for tests).
        busy_timeout: how long a call waits for another connection's write lock before
            it fails with :class:`~agentlanes.errors.StoreUnavailable`.
        durability: what an acknowledged call survives: ``"process"`` (default; any
            process's death, not power loss), ``"settlements"`` (settlements and receipts
            also survive power loss) or ``"full"`` (every transaction survives power
            loss). See the module docstring and ``docs/deploying.md``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 30.0,
        durability: Durability = "process",
    ) -> None:
        if durability not in _DURABILITY:
            raise ConfigurationError(
                f"SQLite durability {durability!r} is not a level (levels: process, settlements, full)."
            )
        self.path = Path(path)
        self.durability: Durability = durability
        self._clock = clock
        self._busy_ms = max(int(busy_timeout * 1000), 0)
        self._local = threading.local()
        self._limiter = anyio.CapacityLimiter(4)
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._inline_commits = 0
        self._checkpointer: threading.Thread | None = None
        try:
            # The database holds the runs index, receipts and budgets: 0600 from the
            # start (SQLite gives its -wal and -shm the database file's mode).
            private_dir(self.path.parent, tighten=False)
            private_file(self.path)
            for suffix in ("-wal", "-shm", "-journal"):
                tighten_file(self.path.with_name(self.path.name + suffix))
            conn = self._conn(self._busy_ms)
            self._transact(conn, self._migrate)
        except _Busy as exc:  # pragma: no cover - a busy timeout of 0 and a held lock
            raise StoreUnavailable(
                f"The SQLite store {self.path} is locked by another process; it could not be opened."
            ) from exc
        except (sqlite3.Error, OSError) as exc:
            raise ConfigurationError(f"Cannot open the SQLite store {self.path}: {exc}.") from exc

    @property
    def identity(self) -> str:
        return f"sqlite:{self.path.resolve()}"

    # -------------------------------------------------------------- plumbing

    def _migrate(self, db: sqlite3.Connection) -> None:
        has_meta = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
        row = db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone() if has_meta else None
        if row is None:
            for statement in _SCHEMA_V2:
                db.execute(statement)
            db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            return
        version = int(row[0])
        if version > SCHEMA_VERSION:
            raise ConfigurationError(
                f"{self.path} was written by a newer agentlanes (store schema {version}, this one reads "
                f"up to {SCHEMA_VERSION}); upgrade agentlanes or use another data directory."
            )
        if version == 1:
            for statement in _MIGRATE_1_TO_2:
                db.execute(statement)
            db.execute("UPDATE meta SET value = ? WHERE name = 'schema'", (str(SCHEMA_VERSION),))

    def _conn(self, busy_ms: int) -> sqlite3.Connection:
        """This thread's connection, waiting up to ``busy_ms`` for locks."""
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=busy_ms / 1000, check_same_thread=False)
            local.conn = conn
            local.busy = None
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {'FULL' if self.durability == 'full' else 'NORMAL'}")
            with self._conns_lock:
                self._conns.append(conn)
        if local.busy != busy_ms:
            conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
            # The event loop's connection (busy_ms 0) never checkpoints by itself (a
            # checkpoint syncs the disk); the store runs checkpoints in a worker thread.
            conn.execute(f"PRAGMA wal_autocheckpoint = {0 if busy_ms == 0 else 1000}")
            local.busy = busy_ms
        return conn

    @staticmethod
    def _transact(db: sqlite3.Connection, fn: Callable[[sqlite3.Connection], _T], *, write: bool | None = True) -> _T:
        """``fn`` in one transaction: ``BEGIN IMMEDIATE`` to write, ``BEGIN`` to read
        several statements from one snapshot, none (``write=None``) for one statement."""
        if write is None:
            try:
                return fn(db)
            except sqlite3.OperationalError as exc:
                if _is_busy(exc):
                    raise _Busy from exc
                raise
        try:
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise _Busy from exc
            raise
        try:
            result = fn(db)
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
                raise _Busy from exc
            raise
        return result

    def _syncs(self, op: str) -> bool:
        """Whether ``op`` must reach the disk before it is acknowledged."""
        if self.durability == "full":
            return True
        return self.durability == "settlements" and op in ("settle", "receipt")

    async def _call(self, op: str, fn: Callable[[sqlite3.Connection], _T], *, write: bool | None = True) -> _T:
        """Run ``fn`` in one transaction: on the event loop's thread when that needs no
        disk sync and the lock is free, else in a worker thread."""
        syncs = bool(write) and self._syncs(op)
        if not syncs:
            try:
                result = self._transact(self._conn(0), fn, write=write)
            except _Busy:
                pass  # another connection holds the lock: wait for it in a worker thread
            except (sqlite3.Error, OverflowError) as exc:
                raise self._failure(op, exc) from exc
            else:
                if write:
                    self._inline_commits += 1
                    if self._inline_commits >= _CHECKPOINT_EVERY:
                        self._start_checkpoint()
                return result

        def work() -> _T:
            db = self._conn(self._busy_ms)
            if syncs and self.durability == "settlements":
                db.execute("PRAGMA synchronous = FULL")
                try:
                    return self._transact(db, fn, write=write)
                finally:
                    db.execute("PRAGMA synchronous = NORMAL")
            return self._transact(db, fn, write=write)

        return await self._in_thread(op, work)

    async def _in_thread(self, op: str, work: Callable[[], _T]) -> _T:
        try:
            return await anyio.to_thread.run_sync(work, limiter=self._limiter)
        except _Busy as exc:
            raise self._failure(op, exc.__cause__ or exc) from exc
        except (sqlite3.Error, OverflowError) as exc:
            raise self._failure(op, exc) from exc

    def _start_checkpoint(self) -> None:
        """Copy the WAL into the database file, in a background thread: no caller waits
        for its disk syncs. A checkpoint that fails is retried at the next one (the WAL
        keeps everything meanwhile)."""
        running = self._checkpointer
        if running is not None and running.is_alive():
            return
        self._inline_commits = 0

        def checkpoint() -> None:
            with contextlib.suppress(sqlite3.Error):
                self._conn(self._busy_ms).execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

        self._checkpointer = threading.Thread(target=checkpoint, name="agentlanes-sqlite-checkpoint", daemon=True)
        self._checkpointer.start()

    def _failure(self, op: str, exc: BaseException) -> StoreError:
        """The agentlanes error for a failed call, saying what it means for the money."""
        consequence = _CONSEQUENCE.get(op, "nothing was written")
        where = f"The SQLite store {self.path}"
        name = getattr(exc, "sqlite_errorname", "") or ""
        text = str(exc)
        if isinstance(exc, _Busy) or (isinstance(exc, sqlite3.Error) and _is_busy(exc)):
            return StoreUnavailable(
                f"{where} stayed locked by another connection for {self._busy_ms / 1000:g} s ({text}); "
                f"{consequence}. Another process is holding a long write: retry, or give SQLiteStore a "
                "longer busy_timeout."
            )
        if isinstance(exc, OverflowError):
            return StoreError(f"{where} cannot hold an amount beyond 64 bits ({text}); {consequence}.")
        if name == "SQLITE_FULL":
            return StoreError(
                f"{where} is full (its disk is full or its size limit is reached: {text}); {consequence}. "
                "Free space on its disk."
            )
        if name.startswith("SQLITE_IOERR"):
            return StoreError(
                f"{where} could not be read or written (I/O error: {text}); {consequence}. Check its disk."
            )
        if name.startswith("SQLITE_READONLY"):
            return StoreError(
                f"{where} is read-only ({text}); {consequence}. Give agentlanes a writable data directory."
            )
        if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
            return StoreError(
                f"{where} is damaged or not a database ({text}); {consequence}. Restore it from a backup or "
                "move it aside."
            )
        return StoreError(f"{where} failed ({type(exc).__name__}: {text}); {consequence}.")

    # -------------------------------------------------------------- budgets

    @staticmethod
    def _rows(db: sqlite3.Connection, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], list[int]]:
        """The counters of each window (zeros for a window with no row yet), in one query."""
        wanted = list(dict.fromkeys(keys))
        rows = {key: list(_ZERO) for key in wanted}
        for window, key, *counters in db.execute(_select_windows(len(wanted)), [x for k in wanted for x in k]):
            rows[(window, key)] = counters
        return rows

    @staticmethod
    def _add(db: sqlite3.Connection, deltas: Mapping[tuple[str, str], Sequence[int]]) -> None:
        db.executemany(_ADD_TO_WINDOW, [(w, k, *d) for (w, k), d in deltas.items() if any(d)])

    @staticmethod
    def _unhold(deltas: dict[tuple[str, str], list[int]], lane: str, amount: int, windows_json: str) -> None:
        """Add the removal of one hold from its windows to ``deltas``."""
        high, pro = _lane_columns(lane, amount)
        for w, k in json.loads(windows_json):
            d = deltas.setdefault((w, k), list(_ZERO))
            d[_R] -= amount
            d[_HR] -= high
            d[_PR] -= pro

    def _reap(self, db: sqlite3.Connection, now: float) -> None:
        """Reclaim expired reservations (inside a write transaction)."""
        expired = db.execute("SELECT lane, amount, windows FROM holds WHERE expires <= ?", (now,)).fetchall()
        if expired:
            deltas: dict[tuple[str, str], list[int]] = {}
            for lane, amount, windows_json in expired:
                self._unhold(deltas, lane, amount, windows_json)
            db.execute("DELETE FROM holds WHERE expires <= ?", (now,))
            self._add(db, deltas)

    async def reserve(
        self,
        windows: Sequence[WindowSpec],
        lane: str,
        amount: int,
        *,
        lease_seconds: float,
        unsettled: Unsettled | None = None,
        reservation_id: str | None = None,
    ) -> Reservation | Refusal:
        check_micro("A reservation", amount)
        rid = reservation_id or new_reservation_id()
        specs = tuple(windows)

        def work(db: sqlite3.Connection) -> Reservation | Refusal:
            now = self._clock()
            self._reap(db, now)
            if reservation_id is not None:  # asked again: the same reservation, while it is held
                held = db.execute("SELECT lane, amount, expires FROM holds WHERE id = ?", (rid,)).fetchone()
                if held is not None:
                    return Reservation(rid, held[0], int(held[1]), specs, float(held[2]))
            rows = self._rows(db, ((s.window, s.key) for s in specs))
            for spec in specs:
                state = _state(spec, rows[(spec.window, spec.key)])
                if unsettled:
                    state = with_unsettled(state, unsettled.get((spec.window, spec.key)))
                refusal = check_admission(state, lane, amount)
                if refusal is not None:
                    return refusal
            high, pro = _lane_columns(lane, amount)
            self._add(db, dict.fromkeys(rows, (0, 0, amount, 0, high, 0, pro)))
            expires = now + lease_seconds
            db.execute(
                "INSERT INTO holds (id, lane, amount, expires, windows) VALUES (?, ?, ?, ?, ?)",
                (rid, lane, amount, expires, json.dumps([[s.window, s.key] for s in specs])),
            )
            return Reservation(rid, lane, amount, specs, expires)

        return await self._call("reserve", work)

    async def settle(self, reservation: Reservation, actual: int) -> int:
        check_micro("A settlement", actual)
        lane = reservation.lane

        def work(db: sqlite3.Connection) -> int:
            first = db.execute(
                "INSERT INTO charges (id, lane, actual, at) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (reservation.id, lane, actual, self._clock()),
            ).rowcount
            if not first:
                return actual  # settled before (a journaled charge applied again): nothing more
            deltas: dict[tuple[str, str], list[int]] = {}
            hold = _take_hold(db, reservation.id)
            if hold is not None:  # else reclaimed after its lease: the money was spent all the same
                self._unhold(deltas, *hold)
            rows = self._rows(db, ((s.window, s.key) for s in reservation.windows))
            for spec in reservation.windows:
                key = (spec.window, spec.key)
                d = deltas.setdefault(key, list(_ZERO))
                without = [r + x for r, x in zip(rows[key], d, strict=True)]
                charged, overrun = settle_amounts(_state(spec, without), lane, actual)
                high, pro = _lane_columns(lane, charged)
                d[_C] += charged
                d[_O] += min(overrun, MAX_MICRO - without[_O])  # saturates: it must fit 64 bits
                d[_HC] += high
                d[_PC] += pro
            self._add(db, deltas)
            return actual

        return await self._call("settle", work)

    async def release(self, reservation: Reservation) -> None:
        def work(db: sqlite3.Connection) -> None:
            hold = _take_hold(db, reservation.id)
            if hold is not None:
                deltas: dict[tuple[str, str], list[int]] = {}
                self._unhold(deltas, *hold)
                self._add(db, deltas)

        await self._call("release", work)

    async def window_states(self, windows: Sequence[WindowSpec]) -> list[WindowState]:
        specs = tuple(windows)
        wanted = list(dict.fromkeys((s.window, s.key) for s in specs))
        # One statement (one snapshot, no BEGIN/COMMIT): the windows, then the
        # reservations past their lease, which no longer count, reclaimed or not.
        sql = _select_windows(len(wanted)) + (
            " UNION ALL SELECT NULL, lane, amount, windows, 0, 0, 0, 0, 0 FROM holds WHERE expires <= ?"
        )

        def work(db: sqlite3.Connection) -> list[WindowState]:
            rows = {key: list(_ZERO) for key in wanted}
            deltas: dict[tuple[str, str], list[int]] = {}
            for window, key, *counters in db.execute(sql, [*(x for k in wanted for x in k), self._clock()]):
                if window is None:  # an expired hold: (lane, amount, windows)
                    self._unhold(deltas, key, counters[0], counters[1])
                else:
                    rows[(window, key)] = counters
            for key, d in deltas.items():
                if key in rows:
                    rows[key] = [r + x for r, x in zip(rows[key], d, strict=True)]
            return [_state(spec, rows[(spec.window, spec.key)]) for spec in specs]

        return await self._call("read", work, write=None)

    # -------------------------------------------------------------- receipts and runs

    async def append_receipt(self, run_id: str, body: dict[str, Any], seal: Sealer) -> StoredReceipt:
        def work() -> StoredReceipt:
            def tx(db: sqlite3.Connection) -> StoredReceipt:
                last = db.execute(
                    "SELECT seq, digest FROM receipts WHERE run_id=? ORDER BY seq DESC LIMIT 1", (run_id,)
                ).fetchone()
                full = {**body, "seq": 0 if last is None else last[0] + 1, "prev": None if last is None else last[1]}
                digest, text = seal(full)
                db.execute("INSERT INTO receipts VALUES (?,?,?,?,?)", (run_id, full["seq"], digest, full["prev"], text))
                return StoredReceipt(run_id, full["seq"], digest, full["prev"], text)

            db = self._conn(self._busy_ms)
            if self._syncs("receipt") and self.durability == "settlements":
                db.execute("PRAGMA synchronous = FULL")
                try:
                    return self._transact(db, tx)
                finally:
                    db.execute("PRAGMA synchronous = NORMAL")
            return self._transact(db, tx)

        # sealing signs: always in a worker thread
        return await self._in_thread("receipt", work)

    async def receipts(self, run_id: str | None = None) -> list[StoredReceipt]:
        def work() -> list[StoredReceipt]:
            db = self._conn(self._busy_ms)
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

        return await self._in_thread("read", work)

    async def record_run(self, run: Mapping[str, Any], *, only_if: Mapping[str, Any] | None = None) -> bool:
        entry_id = str(run["runId"])
        text = json.dumps(dict(run))

        def work(db: sqlite3.Connection) -> bool:
            row = db.execute("SELECT entry FROM runs WHERE run_id=?", (entry_id,)).fetchone()
            if row is None:
                if only_if is not None:
                    return False
                n = db.execute("SELECT COALESCE(MAX(ord), 0) + 1 FROM runs").fetchone()[0]
                db.execute("INSERT INTO runs VALUES (?,?,?)", (entry_id, n, text))
                return True
            old = _index_entry(row[0])  # a damaged row is replaced, not a reason to fail the run
            old = old if isinstance(old, dict) else {}
            if only_if is not None and any(old.get(k) != v for k, v in only_if.items()):
                return False
            db.execute("UPDATE runs SET entry=? WHERE run_id=?", (json.dumps({**old, **run}), entry_id))
            return True

        return await self._call("run", work)

    async def runs(self) -> list[dict[str, Any]]:
        def work() -> list[dict[str, Any]]:
            rows = self._conn(self._busy_ms).execute("SELECT entry FROM runs ORDER BY ord").fetchall()
            return [entry for (text,) in rows if isinstance(entry := _index_entry(text), dict)]

        return await self._in_thread("read", work)

    async def aclose(self) -> None:
        running = self._checkpointer
        if running is not None:
            await anyio.to_thread.run_sync(running.join)
            self._checkpointer = None
        with self._conns_lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        self._local = threading.local()


_RETURNING = sqlite3.sqlite_version_info >= (3, 35)


def _index_entry(text: Any) -> Any:
    """A run index row's entry, or ``None`` when the row is damaged (not JSON text)."""
    try:
        return json.loads(text)
    except (ValueError, TypeError, RecursionError):
        return None


def _take_hold(db: sqlite3.Connection, rid: str) -> tuple[str, int, str] | None:
    """Remove a reservation's row; its (lane, amount, windows), or ``None`` if it is gone."""
    if _RETURNING:
        rows = db.execute("DELETE FROM holds WHERE id = ? RETURNING lane, amount, windows", (rid,)).fetchall()
        return rows[0] if rows else None
    hold = db.execute("SELECT lane, amount, windows FROM holds WHERE id = ?", (rid,)).fetchone()
    if hold is not None:
        db.execute("DELETE FROM holds WHERE id = ?", (rid,))
    return hold  # type: ignore[no-any-return]


def _is_busy(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "database is locked" in str(exc)


_CONSEQUENCE = {
    "reserve": "nothing was admitted",
    "settle": "the charge was not recorded",
    "release": "the reservation stays held until its lease runs out",
    "read": "nothing was read and nothing was admitted",
    "receipt": "the receipt was not written",
    "run": "the run index was not updated",
}
