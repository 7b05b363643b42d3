"""A PostgreSQL store (``agentlanes[postgres]``, through asyncpg) for many workers, one budget.

* **Admission in the database.** A reservation is one transaction of conditional
  single-statement updates, one per window in a fixed order (no deadlocks between
  workers): ``UPDATE ... SET reserved = reserved + $amount WHERE committed + reserved +
  $amount <= cap [AND the premium share holds] RETURNING``. A window that cannot hold it
  updates no row and the transaction is rolled back: nothing is checked in Python and
  then written.
* **Leases.** Each reservation expires after its lease (on the database's clock, so
  workers' clocks do not matter); expired reservations are reclaimed, with the windows'
  counters, in one data-modifying statement before each reservation.
* **Receipts.** One hash chain per run: appends take a per-run advisory lock, and the
  ``(run_id, seq)`` key makes a fork impossible even so.
* **Migrations** are versioned and applied under an advisory lock, so many workers may
  start at once.
* **Fail closed.** When the database is unreachable or slow, every call raises
  :class:`StoreUnavailable`; nothing is admitted, and there is no per-process fallback.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio

from agentlanes.budget import Refusal, Reservation, WindowSpec, WindowState
from agentlanes.errors import AgentLanesError, ConfigurationError
from agentlanes.stores.base import Sealer, Store, StoredReceipt

try:
    import asyncpg  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("PostgresStore needs asyncpg: pip install 'agentlanes[postgres]'") from exc

__all__ = ["MIGRATIONS", "PostgresStore", "StoreUnavailable"]

_LOCK_MIGRATE = 7_146_221_913  # advisory lock id for migrations

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "budgets, reservations, receipts, runs",
        """
        CREATE TABLE IF NOT EXISTS al_windows (
            window_name text NOT NULL, window_key text NOT NULL,
            cap bigint NOT NULL, high_end_cap bigint NOT NULL, pro_cap bigint NOT NULL,
            committed bigint NOT NULL DEFAULT 0, reserved bigint NOT NULL DEFAULT 0,
            high_end_committed bigint NOT NULL DEFAULT 0, high_end_reserved bigint NOT NULL DEFAULT 0,
            pro_committed bigint NOT NULL DEFAULT 0, pro_reserved bigint NOT NULL DEFAULT 0,
            overrun bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (window_name, window_key),
            CHECK (committed >= 0 AND reserved >= 0 AND committed + reserved <= cap));
        CREATE TABLE IF NOT EXISTS al_reservations (
            id text NOT NULL, window_name text NOT NULL, window_key text NOT NULL, lane text NOT NULL,
            amount bigint NOT NULL, expires double precision NOT NULL,
            PRIMARY KEY (id, window_name, window_key));
        CREATE INDEX IF NOT EXISTS al_reservations_expires ON al_reservations (expires);
        CREATE TABLE IF NOT EXISTS al_receipts (
            run_id text NOT NULL, seq integer NOT NULL, digest text NOT NULL, prev text, body text NOT NULL,
            ord bigserial, PRIMARY KEY (run_id, seq));
        CREATE TABLE IF NOT EXISTS al_runs (run_id text PRIMARY KEY, ord bigserial, entry jsonb NOT NULL);
    """,
    ),
]

# One round trip per reservation, settlement and release (each a function).
_MIGRATION_2 = r"""
CREATE OR REPLACE FUNCTION al_reap(v_now double precision) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM al_reservations WHERE expires <= v_now LIMIT 1;
    IF FOUND THEN
        WITH gone AS (DELETE FROM al_reservations WHERE expires <= v_now
                      RETURNING window_name, window_key, lane, amount),
             sums AS (SELECT window_name, window_key, sum(amount) AS a,
                             sum(CASE WHEN lane = 'high-end' THEN amount ELSE 0 END) AS h,
                             sum(CASE WHEN lane = 'pro' THEN amount ELSE 0 END) AS p
                      FROM gone GROUP BY window_name, window_key)
        UPDATE al_windows w SET reserved = w.reserved - s.a, high_end_reserved = w.high_end_reserved - s.h,
                                pro_reserved = w.pro_reserved - s.p
        FROM sums s WHERE w.window_name = s.window_name AND w.window_key = s.window_key;
    END IF;
END $$;

-- Admit p_amount in every window or in none: one conditional update per window, in a
-- fixed order; a refusal rolls the partial updates back (the exception block).
CREATE OR REPLACE FUNCTION al_reserve(p_id text, p_lane text, p_amount bigint, p_lease double precision,
                                      p_now double precision, p_windows jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_now double precision := COALESCE(p_now, extract(epoch from clock_timestamp()));
    w jsonb;
    refusal jsonb;
BEGIN
    -- leased and reclaimable: no need to wait for the WAL flush (settlements do)
    SET LOCAL synchronous_commit = off;
    PERFORM al_reap(v_now);
    BEGIN
        FOR w IN SELECT value FROM jsonb_array_elements(p_windows) ORDER BY value->>'w', value->>'k' LOOP
            INSERT INTO al_windows (window_name, window_key, cap, high_end_cap, pro_cap)
            VALUES (w->>'w', w->>'k', (w->>'cap')::bigint, (w->>'high')::bigint, (w->>'pro')::bigint)
            ON CONFLICT DO NOTHING;
            UPDATE al_windows SET reserved = reserved + p_amount,
                high_end_reserved = high_end_reserved + CASE WHEN p_lane = 'high-end' THEN p_amount ELSE 0 END,
                pro_reserved = pro_reserved + CASE WHEN p_lane = 'pro' THEN p_amount ELSE 0 END
            WHERE window_name = w->>'w' AND window_key = w->>'k' AND committed + reserved + p_amount <= cap
              AND (p_lane <> 'high-end' OR high_end_committed + high_end_reserved + p_amount <= high_end_cap)
              AND (p_lane <> 'pro' OR pro_committed + pro_reserved + p_amount <= pro_cap);
            IF NOT FOUND THEN
                SELECT jsonb_build_object('ok', false, 'w', window_name, 'k', window_key,
                                          'room', cap - committed - reserved,
                                          'high', high_end_cap - high_end_committed - high_end_reserved,
                                          'pro', pro_cap - pro_committed - pro_reserved)
                INTO refusal FROM al_windows WHERE window_name = w->>'w' AND window_key = w->>'k';
                RAISE EXCEPTION 'agentlanes: refused' USING ERRCODE = 'P0001';
            END IF;
            INSERT INTO al_reservations VALUES (p_id, w->>'w', w->>'k', p_lane, p_amount, v_now + p_lease);
        END LOOP;
    EXCEPTION WHEN raise_exception THEN
        RETURN refusal;
    END;
    RETURN jsonb_build_object('ok', true, 'expires', v_now + p_lease);
END $$;

CREATE OR REPLACE FUNCTION al_unreserve(p_id text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
    FOR r IN DELETE FROM al_reservations WHERE id = p_id RETURNING window_name, window_key, lane, amount LOOP
        UPDATE al_windows SET reserved = reserved - r.amount,
            high_end_reserved = high_end_reserved - CASE WHEN r.lane = 'high-end' THEN r.amount ELSE 0 END,
            pro_reserved = pro_reserved - CASE WHEN r.lane = 'pro' THEN r.amount ELSE 0 END
        WHERE window_name = r.window_name AND window_key = r.window_key;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION al_release(p_id text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    SET LOCAL synchronous_commit = off;
    PERFORM al_unreserve(p_id);
END $$;

-- Charge p_actual in every window as far as its cap (and premium share) holds; the rest
-- is overrun. Durable (synchronous commit): this is money.
CREATE OR REPLACE FUNCTION al_settle(p_id text, p_lane text, p_actual bigint, p_windows jsonb)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    w jsonb;
    row al_windows%ROWTYPE;
    room bigint;
    charged bigint;
    total bigint := p_actual;
BEGIN
    PERFORM al_unreserve(p_id);
    FOR w IN SELECT value FROM jsonb_array_elements(p_windows) ORDER BY value->>'w', value->>'k' LOOP
        INSERT INTO al_windows (window_name, window_key, cap, high_end_cap, pro_cap)
        VALUES (w->>'w', w->>'k', (w->>'cap')::bigint, (w->>'high')::bigint, (w->>'pro')::bigint)
        ON CONFLICT DO NOTHING;
        SELECT * INTO row FROM al_windows WHERE window_name = w->>'w' AND window_key = w->>'k' FOR UPDATE;
        room := row.cap - row.committed - row.reserved;
        IF p_lane = 'high-end' THEN
            room := least(room, row.high_end_cap - row.high_end_committed - row.high_end_reserved);
        ELSIF p_lane = 'pro' THEN
            room := least(room, row.pro_cap - row.pro_committed - row.pro_reserved);
        END IF;
        charged := least(p_actual, greatest(room, 0));
        UPDATE al_windows SET committed = committed + charged, overrun = overrun + (p_actual - charged),
            high_end_committed = high_end_committed + CASE WHEN p_lane = 'high-end' THEN charged ELSE 0 END,
            pro_committed = pro_committed + CASE WHEN p_lane = 'pro' THEN charged ELSE 0 END
        WHERE window_name = w->>'w' AND window_key = w->>'k';
        total := least(total, charged);
    END LOOP;
    RETURN total;
END $$;
"""
MIGRATIONS.append((2, "one round trip per reservation, settlement and release", _MIGRATION_2))


_CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.QueryCanceledError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
)


class StoreUnavailable(AgentLanesError):
    """The shared store could not be reached in time; nothing was admitted."""


def _now_sql(param: str) -> str:
    # the store's clock when one was given (tests), else the database's
    return f"COALESCE({param}::double precision, extract(epoch from clock_timestamp()))"


class PostgresStore(Store):
    """Budgets, receipts and runs in PostgreSQL.

    Args:
        dsn: ``postgresql://user@host:5432/db`` (or ``AGENTLANES_STORE``).
        schema: the schema to use (created if missing).
        timeout: seconds for any one database call; past it, :class:`StoreUnavailable`.
        clock: seconds since the epoch for leases; default: the database's clock.
        pool_size: connections in the pool.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "agentlanes",
        timeout: float = 5.0,
        clock: Callable[[], float] | None = None,
        pool_size: int = 4,
    ) -> None:
        if not dsn.startswith(("postgresql://", "postgres://")):
            raise ConfigurationError(f"PostgresStore needs a postgresql:// DSN, got {dsn!r}.")
        if not schema.replace("_", "").isalnum():
            raise ConfigurationError(f"Schema name {schema!r} must be letters, digits and underscores.")
        self.dsn = dsn
        self.schema = schema
        self.timeout = timeout
        self._clock = clock
        self._pool_size = pool_size
        self._pool: Any = None
        self._pool_lock: anyio.Lock | None = None
        self._where = dsn.split("@")[-1]  # no credentials in messages

    # -------------------------------------------------------------- plumbing

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(
            f"The PostgreSQL store at {self._where} did not answer ({type(exc).__name__}: {exc}); nothing was "
            "admitted. Check the database, or the DSN in AGENTLANES_STORE."
        )

    async def _get_pool(self) -> Any:
        if self._pool is not None:
            return self._pool
        if self._pool_lock is None:
            self._pool_lock = anyio.Lock()
        async with self._pool_lock:  # concurrent first calls must not open two pools
            return await self._open_pool()

    async def _open_pool(self) -> Any:
        if self._pool is None:
            try:
                self._pool = await asyncpg.create_pool(
                    self.dsn,
                    min_size=1,
                    max_size=self._pool_size,
                    timeout=self.timeout,
                    command_timeout=self.timeout,
                    server_settings={"search_path": self.schema},
                )
                await self._migrate()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                if self._pool is not None:
                    self._pool.terminate()
                    self._pool = None
                raise self._unavailable(exc) from exc
        return self._pool

    async def _migrate(self) -> None:
        assert self._pool is not None
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_MIGRATE)
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            await conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{self.schema}".al_migrations '
                "(version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch(f'SELECT version FROM "{self.schema}".al_migrations')}
            newest = max(v for v, _, _ in MIGRATIONS)
            if done and max(done) > newest:
                raise ConfigurationError(
                    f"The store schema {self.schema!r} was migrated by a newer agentlanes (version {max(done)}; this "
                    f"one knows up to {newest}); upgrade agentlanes."
                )
            for version, name, sql in MIGRATIONS:
                if version not in done:
                    await conn.execute(sql)
                    await conn.execute(
                        f'INSERT INTO "{self.schema}".al_migrations (version, name) VALUES ($1, $2)', version, name
                    )

    @asynccontextmanager
    async def _connection(self, *, transaction: bool) -> AsyncIterator[Any]:
        """A pooled connection (in a transaction, or for one statement); connection
        failures become :class:`StoreUnavailable` and drop the pool's broken connections
        (a later call reconnects from scratch)."""
        pool = await self._get_pool()
        try:
            async with pool.acquire(timeout=self.timeout) as conn:
                if transaction:
                    async with conn.transaction():
                        yield conn
                else:
                    yield conn
        except _CONNECTION_ERRORS as exc:
            broken, self._pool = self._pool, None
            if broken is not None:
                broken.terminate()
            raise self._unavailable(exc) from exc

    async def _tx(self, work: Callable[[Any], Any]) -> Any:
        async with self._connection(transaction=True) as conn:
            return await work(conn)

    async def _call(self, work: Callable[[Any], Any]) -> Any:
        """One statement, one round trip (its own transaction)."""
        async with self._connection(transaction=False) as conn:
            return await work(conn)

    def _now(self) -> float | None:
        return self._clock() if self._clock is not None else None

    # -------------------------------------------------------------- budgets

    @staticmethod
    def _windows_json(windows: Sequence[WindowSpec]) -> str:
        return json.dumps(
            [{"w": s.window, "k": s.key, "cap": s.cap, "high": s.high_end_cap, "pro": s.pro_cap} for s in windows]
        )

    async def reserve(
        self, windows: Sequence[WindowSpec], lane: str, amount: int, *, lease_seconds: float
    ) -> Reservation | Refusal:
        rid = uuid.uuid4().hex

        async def work(conn: Any) -> Any:
            return await conn.fetchval(
                "SELECT al_reserve($1, $2, $3, $4, $5, $6::jsonb)",
                rid,
                lane,
                amount,
                lease_seconds,
                self._now(),
                self._windows_json(windows),
            )

        answer = json.loads(await self._call(work))
        if not answer["ok"]:
            spec = next(s for s in windows if (s.window, s.key) == (answer["w"], answer["k"]))
            return _refusal(spec, lane, amount, answer)
        return Reservation(rid, lane, amount, tuple(windows), float(answer["expires"]))

    async def settle(self, reservation: Reservation, actual: int) -> int:
        async def work(conn: Any) -> Any:
            return await conn.fetchval(
                "SELECT al_settle($1, $2, $3, $4::jsonb)",
                reservation.id,
                reservation.lane,
                actual,
                self._windows_json(reservation.windows),
            )

        return int(await self._call(work))

    async def release(self, reservation: Reservation) -> None:
        async def work(conn: Any) -> Any:
            return await conn.execute("SELECT al_release($1)", reservation.id)

        await self._call(work)

    async def window_states(self, windows: Sequence[WindowSpec]) -> list[WindowState]:
        async def work(conn: Any) -> list[WindowState]:
            await conn.execute(f"SELECT al_reap({_now_sql('$1')})", self._now())
            out = []
            for spec in windows:
                row = await conn.fetchrow(
                    "SELECT * FROM al_windows WHERE window_name = $1 AND window_key = $2", spec.window, spec.key
                )
                out.append(_state(spec, row))
            return out

        result: list[WindowState] = await self._tx(work)
        return result

    # -------------------------------------------------------------- receipts and runs

    async def append_receipt(self, run_id: str, body: dict[str, Any], seal: Sealer) -> StoredReceipt:
        async def work(conn: Any) -> StoredReceipt:
            # one writer per run chain at a time: no two receipts can claim the same place
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", run_id)
            last = await conn.fetchrow(
                "SELECT seq, digest FROM al_receipts WHERE run_id = $1 ORDER BY seq DESC LIMIT 1", run_id
            )
            full = {
                **body,
                "seq": 0 if last is None else last["seq"] + 1,
                "prev": None if last is None else last["digest"],
            }
            digest, text = seal(full)
            await conn.execute(
                "INSERT INTO al_receipts (run_id, seq, digest, prev, body) VALUES ($1, $2, $3, $4, $5)",
                run_id,
                full["seq"],
                digest,
                full["prev"],
                text,
            )
            return StoredReceipt(run_id, full["seq"], digest, full["prev"], text)

        result: StoredReceipt = await self._tx(work)
        return result

    async def receipts(self, run_id: str | None = None) -> list[StoredReceipt]:
        async def work(conn: Any) -> list[StoredReceipt]:
            if run_id is not None:
                rows = await conn.fetch(
                    "SELECT run_id, seq, digest, prev, body FROM al_receipts WHERE run_id = $1 ORDER BY seq", run_id
                )
            else:
                rows = await conn.fetch(
                    "SELECT r.run_id, r.seq, r.digest, r.prev, r.body FROM al_receipts r JOIN "
                    "(SELECT run_id, min(ord) AS first FROM al_receipts GROUP BY run_id) f USING (run_id) "
                    "ORDER BY f.first, r.seq"
                )
            return [StoredReceipt(r["run_id"], r["seq"], r["digest"], r["prev"], r["body"]) for r in rows]

        result: list[StoredReceipt] = await self._tx(work)
        return result

    async def record_run(self, run: Mapping[str, Any]) -> None:
        async def work(conn: Any) -> None:
            await conn.execute(
                "INSERT INTO al_runs (run_id, entry) VALUES ($1, $2::jsonb) "
                "ON CONFLICT (run_id) DO UPDATE SET entry = al_runs.entry || EXCLUDED.entry",
                str(run["runId"]),
                json.dumps(dict(run)),
            )

        await self._tx(work)

    async def runs(self) -> list[dict[str, Any]]:
        async def work(conn: Any) -> list[dict[str, Any]]:
            rows = await conn.fetch("SELECT entry FROM al_runs ORDER BY ord")
            return [json.loads(r["entry"]) for r in rows]

        result: list[dict[str, Any]] = await self._tx(work)
        return result

    async def aclose(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                with anyio.fail_after(self.timeout):
                    await pool.close()
            except (TimeoutError, OSError, asyncpg.InterfaceError):
                pool.terminate()


def _refusal(spec: WindowSpec, lane: str, amount: int, row: Any) -> Refusal:
    room, high, pro = int(row["room"]), int(row["high"]), int(row["pro"])
    if amount > room:
        return Refusal(spec.window, spec.key, "cap", max(room, 0))
    if lane == "high-end":
        return Refusal(spec.window, spec.key, "high-end-share", max(high, 0))
    return Refusal(spec.window, spec.key, "pro-share", max(pro, 0))


def _state(spec: WindowSpec, row: Any) -> WindowState:
    if row is None:
        return WindowState(spec, 0, 0, 0, 0, 0)
    return WindowState(
        spec,
        row["committed"],
        row["reserved"],
        row["high_end_committed"] + row["high_end_reserved"],
        row["pro_committed"] + row["pro_reserved"],
        row["overrun"],
    )
