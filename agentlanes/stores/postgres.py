"""A PostgreSQL store (``agentlanes[postgres]``, through asyncpg) for many workers, one budget.

* **Admission in the database, in one statement.** A reservation is one call: a single
  ``INSERT ... ON CONFLICT DO UPDATE ... WHERE committed + overrun + reserved + amount <=
  cap [AND the premium share holds]`` over every window, in a fixed order (no deadlocks
  between workers); if any window could not hold it, the windows that took it give it
  back in the same transaction and the call returns the refusal. Nothing is checked in
  Python and then written. Each reservation is one row.
* **Settlement: the charge first, then the counters.** A settlement appends the charge
  to ``al_charges`` (keyed by the reservation id, so settling again charges nothing) and
  commits it durably; only then, in a second transaction of the same call that does not
  wait for the WAL flush, is it rolled into the windows' counters (``al_unapplied``
  lists the charges not rolled up yet). The windows' rows are therefore never
  locked across a disk flush, and concurrent settlements share flushes. A charge whose
  roll-up was interrupted (a server crash, a cancelled call) is rolled up by the next
  sweep, which every store runs when it connects and then every 30 s.
* **Leases.** Each reservation expires after its lease (on the database's clock, so
  workers' clocks do not matter); expired reservations are reclaimed, with the windows'
  counters, before the next admission.
* **Receipts.** One hash chain per run: appends take a per-run advisory lock, and the
  ``(run_id, seq)`` key makes a fork impossible even so.
* **Migrations** are versioned and applied under an advisory lock, so many workers may
  start at once; every table and function lives in the store's schema (created if
  missing) and every statement names it, so nothing depends on ``search_path`` and
  nothing is ever created in ``public``.
* **Poolers.** Nothing is sent as a start-up parameter but ``application_name``, so the
  store works behind PgBouncer in session and transaction pooling; for transaction
  pooling turn asyncpg's statement cache off (``statement_cache_size=0``, or
  ``?statement_cache_size=0`` in the DSN).
* **Backpressure, not failure.** Calls wait, in order, for one of the store's
  ``pool_size`` connections for as long as it takes (``acquire_timeout`` bounds the wait
  if you want); a wait never touches the connections. Only a connection that failed is
  dropped. The store keeps no session state, so a connection is reused as it is, with no
  reset round trip.
* **Fail closed.** When the database is unreachable or slow, every call raises
  :class:`~agentlanes.errors.StoreUnavailable` (other database errors
  :class:`~agentlanes.errors.StoreError`), saying what was admitted; no asyncpg
  exception escapes, and there is no per-process fallback.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio

from agentlanes.budget import Refusal, Reservation, WindowSpec, WindowState, check_micro
from agentlanes.errors import AgentLanesError, ConfigurationError, StoreError, StoreUnavailable
from agentlanes.stores.base import (
    Sealer,
    Store,
    StoredReceipt,
    Unsettled,
    check_admission,
    new_reservation_id,
    with_unsettled,
)

try:
    import asyncpg  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("PostgresStore needs asyncpg: pip install 'agentlanes[postgres]'") from exc

__all__ = ["MIGRATIONS", "PostgresStore", "StoreUnavailable"]

_T = TypeVar("_T")

_LOCK_MIGRATE = 7_146_221_913  # advisory lock id for migrations
_SWEEP_EVERY = 30.0  # seconds between sweeps of charges whose roll-up was interrupted
_SWEEP_AGE = 5.0  # a charge not rolled up after this many seconds was interrupted
_DOWN_FOR = 1.0  # after a connection failure, calls fail at once for this long

# Options agentlanes reads from the DSN's query string (and removes before asyncpg sees it:
# asyncpg would send unknown ones to the server as settings, which poolers refuse).
_DSN_OPTIONS: Final = ("statement_cache_size",)

# Migrations: (version, name, SQL). "@S@" stands for the store's quoted schema. Versions 1
# and 2 are kept as they were written (their names are unqualified; they run with the
# schema as the transaction's only search_path); later versions name the schema.
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

# What a window can still take for a lane, from its counters with `held` (the
# reservation being settled) taken out: the cap less everything spent and reserved, and
# for a premium lane no more than its share. Written so no intermediate value leaves
# 64 bits (cap - committed - reserved >= 0 always holds).
_ROOM = """
CREATE FUNCTION @S@.al_room(lane text, cap bigint, committed bigint, reserved bigint, overrun bigint,
                            high_cap bigint, high_used bigint, pro_cap bigint, pro_used bigint)
RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE lane
        WHEN 'high-end' THEN least((cap - committed - reserved) - overrun, high_cap - high_used)
        WHEN 'pro' THEN least((cap - committed - reserved) - overrun, pro_cap - pro_used)
        ELSE (cap - committed - reserved) - overrun END
$$;
"""

_MIGRATION_3 = (
    r"""
-- One row per reservation (was one per window).
CREATE TABLE @S@.al_holds (
    id text PRIMARY KEY, lane text NOT NULL, amount bigint NOT NULL, expires double precision NOT NULL,
    names text[] NOT NULL, keys text[] NOT NULL);
CREATE INDEX al_holds_expires ON @S@.al_holds (expires);
INSERT INTO @S@.al_holds (id, lane, amount, expires, names, keys)
SELECT id, min(lane), max(amount), min(expires),
       array_agg(window_name ORDER BY window_name, window_key), array_agg(window_key ORDER BY window_name, window_key)
FROM @S@.al_reservations GROUP BY id;
DROP FUNCTION IF EXISTS @S@.al_reserve(text, text, bigint, double precision, double precision, jsonb);
DROP FUNCTION IF EXISTS @S@.al_settle(text, text, bigint, jsonb);
DROP FUNCTION IF EXISTS @S@.al_release(text);
DROP FUNCTION IF EXISTS @S@.al_unreserve(text);
DROP FUNCTION IF EXISTS @S@.al_reap(double precision);
DROP TABLE @S@.al_reservations;

-- Every settlement, keyed by its reservation: the durable record of the money; and the
-- ones not rolled up into the windows yet.
CREATE TABLE @S@.al_charges (
    id text PRIMARY KEY, lane text NOT NULL, actual bigint NOT NULL,
    names text[] NOT NULL, keys text[] NOT NULL, caps bigint[] NOT NULL, highs bigint[] NOT NULL,
    pros bigint[] NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE @S@.al_unapplied (id text PRIMARY KEY);
"""
    + _ROOM
    + r"""
-- Reclaim reservations past their lease: lock their windows in order, then give back.
CREATE FUNCTION @S@.al_reap(v_now double precision) RETURNS void LANGUAGE plpgsql AS $$
DECLARE vn text[]; vk text[]; va bigint[]; vh bigint[]; vp bigint[];
BEGIN
    WITH gone AS (DELETE FROM @S@.al_holds WHERE expires <= v_now RETURNING lane, amount, names, keys),
         per AS (SELECT u.n, u.k, sum(g.amount) AS a,
                        sum(CASE WHEN g.lane = 'high-end' THEN g.amount ELSE 0 END) AS h,
                        sum(CASE WHEN g.lane = 'pro' THEN g.amount ELSE 0 END) AS p
                 FROM gone g, unnest(g.names, g.keys) AS u(n, k) GROUP BY u.n, u.k)
    SELECT array_agg(n ORDER BY n, k), array_agg(k ORDER BY n, k), array_agg(a ORDER BY n, k),
           array_agg(h ORDER BY n, k), array_agg(p ORDER BY n, k)
    INTO vn, vk, va, vh, vp FROM per;
    IF vn IS NULL THEN
        RETURN;
    END IF;
    PERFORM 1 FROM @S@.al_windows x JOIN unnest(vn, vk) AS u(n, k) ON x.window_name = u.n AND x.window_key = u.k
    ORDER BY x.window_name, x.window_key FOR UPDATE OF x;
    UPDATE @S@.al_windows x SET reserved = x.reserved - u.a, high_end_reserved = x.high_end_reserved - u.h,
                                pro_reserved = x.pro_reserved - u.p
    FROM unnest(vn, vk, va, vh, vp) AS u(n, k, a, h, p) WHERE x.window_name = u.n AND x.window_key = u.k;
END $$;

-- Admit p_amount in every window or in none, in one statement: each window's row is
-- locked in a fixed order and takes the amount only where it fits; if one could not,
-- the others give it back and the first that could not is reported. Reservations are
-- leased and reclaimable: they do not wait for the WAL flush (settlements do).
CREATE PROCEDURE @S@.al_reserve(
    p_id text, p_lane text, p_amount bigint, p_lease double precision, p_now double precision,
    p_names text[], p_keys text[], p_caps bigint[], p_highs bigint[], p_pros bigint[],
    INOUT o_ok boolean DEFAULT NULL, INOUT o_expires double precision DEFAULT NULL,
    INOUT o_w text DEFAULT NULL, INOUT o_k text DEFAULT NULL, INOUT o_room bigint DEFAULT NULL,
    INOUT o_high bigint DEFAULT NULL, INOUT o_pro bigint DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    v_now double precision := COALESCE(p_now, extract(epoch from clock_timestamp()));
    v_high bigint := CASE WHEN p_lane = 'high-end' THEN p_amount ELSE 0 END;
    v_pro bigint := CASE WHEN p_lane = 'pro' THEN p_amount ELSE 0 END;
    took_n text[];
    took_k text[];
BEGIN
    IF EXISTS (SELECT 1 FROM @S@.al_holds h WHERE h.expires <= v_now) THEN
        PERFORM set_config('synchronous_commit', 'off', true);
        PERFORM @S@.al_reap(v_now);
        COMMIT;  -- its own transaction: its locks never mix with the admission's order
    END IF;
    PERFORM set_config('synchronous_commit', 'off', true);
    WITH took AS (
        INSERT INTO @S@.al_windows AS x (window_name, window_key, cap, high_end_cap, pro_cap,
                                         reserved, high_end_reserved, pro_reserved)
        SELECT t.n, t.k, t.cap, t.high, t.pro, p_amount, v_high, v_pro
        FROM unnest(p_names, p_keys, p_caps, p_highs, p_pros) AS t(n, k, cap, high, pro)
        WHERE p_amount <= t.cap AND v_high <= t.high AND v_pro <= t.pro
        ORDER BY t.n, t.k
        ON CONFLICT (window_name, window_key) DO UPDATE SET
            reserved = x.reserved + p_amount, high_end_reserved = x.high_end_reserved + v_high,
            pro_reserved = x.pro_reserved + v_pro
        WHERE p_amount <= @S@.al_room(p_lane, x.cap, x.committed, x.reserved, x.overrun,
                                      x.high_end_cap, x.high_end_committed + x.high_end_reserved,
                                      x.pro_cap, x.pro_committed + x.pro_reserved)
        RETURNING x.window_name, x.window_key)
    SELECT array_agg(window_name), array_agg(window_key) INTO took_n, took_k FROM took;
    IF coalesce(cardinality(took_n), 0) = cardinality(p_names) THEN
        INSERT INTO @S@.al_holds (id, lane, amount, expires, names, keys)
        VALUES (p_id, p_lane, p_amount, v_now + p_lease, p_names, p_keys);
        o_ok := true;
        o_expires := v_now + p_lease;
        RETURN;
    END IF;
    UPDATE @S@.al_windows x SET reserved = x.reserved - p_amount, high_end_reserved = x.high_end_reserved - v_high,
                                pro_reserved = x.pro_reserved - v_pro
    FROM unnest(took_n, took_k) AS u(n, k) WHERE x.window_name = u.n AND x.window_key = u.k;
    SELECT t.n, t.k, coalesce((x.cap - x.committed - x.reserved) - x.overrun, t.cap),
           coalesce(x.high_end_cap - x.high_end_committed - x.high_end_reserved, t.high),
           coalesce(x.pro_cap - x.pro_committed - x.pro_reserved, t.pro)
    INTO o_w, o_k, o_room, o_high, o_pro
    FROM unnest(p_names, p_keys, p_caps, p_highs, p_pros) AS t(n, k, cap, high, pro)
    LEFT JOIN @S@.al_windows x ON x.window_name = t.n AND x.window_key = t.k
    WHERE (t.n, t.k) NOT IN (SELECT * FROM unnest(coalesce(took_n, '{}'), coalesce(took_k, '{}')))
    ORDER BY t.n, t.k LIMIT 1;
    o_ok := false;
END $$;

-- Roll a recorded charge into its windows, once: what each window's cap (and premium
-- share) can hold is committed, the rest is overrun (saturating at 2^63-1); the
-- reservation, if still held, is removed. Rows are locked in the fixed order.
CREATE FUNCTION @S@.al_apply(p_id text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    c @S@.al_charges%ROWTYPE;
    held bigint := 0;
    held_high bigint := 0;
    held_pro bigint := 0;
    h_lane text;
    h_amount bigint;
BEGIN
    DELETE FROM @S@.al_unapplied WHERE id = p_id;
    IF NOT FOUND THEN
        RETURN;  -- rolled up before (a concurrent sweep waits on the row lock, then finds it gone)
    END IF;
    SELECT * INTO c FROM @S@.al_charges WHERE id = p_id;
    DELETE FROM @S@.al_holds WHERE id = p_id RETURNING lane, amount INTO h_lane, h_amount;
    IF FOUND THEN  -- else reclaimed after its lease: the money was spent all the same
        held := h_amount;
        held_high := CASE WHEN h_lane = 'high-end' THEN h_amount ELSE 0 END;
        held_pro := CASE WHEN h_lane = 'pro' THEN h_amount ELSE 0 END;
    END IF;
    INSERT INTO @S@.al_windows AS x (window_name, window_key, cap, high_end_cap, pro_cap, committed, overrun,
                                     high_end_committed, pro_committed)
    SELECT t.n, t.k, t.cap, t.high, t.pro, t.fit, c.actual - t.fit,
           CASE WHEN c.lane = 'high-end' THEN t.fit ELSE 0 END, CASE WHEN c.lane = 'pro' THEN t.fit ELSE 0 END
    FROM (SELECT u.*, least(c.actual, greatest(@S@.al_room(c.lane, u.cap, 0, 0, 0, u.high, 0, u.pro, 0), 0)) AS fit
          FROM unnest(c.names, c.keys, c.caps, c.highs, c.pros) AS u(n, k, cap, high, pro)) t
    ORDER BY t.n, t.k
    ON CONFLICT (window_name, window_key) DO UPDATE SET
        committed = x.committed + least(c.actual, greatest(@S@.al_room(c.lane, x.cap, x.committed,
            x.reserved - held, x.overrun, x.high_end_cap, x.high_end_committed + x.high_end_reserved - held_high,
            x.pro_cap, x.pro_committed + x.pro_reserved - held_pro), 0)),
        overrun = x.overrun + least(c.actual - least(c.actual, greatest(@S@.al_room(c.lane, x.cap, x.committed,
            x.reserved - held, x.overrun, x.high_end_cap, x.high_end_committed + x.high_end_reserved - held_high,
            x.pro_cap, x.pro_committed + x.pro_reserved - held_pro), 0)), 9223372036854775807 - x.overrun),
        high_end_committed = x.high_end_committed + CASE WHEN c.lane = 'high-end' THEN least(c.actual,
            greatest(@S@.al_room(c.lane, x.cap, x.committed, x.reserved - held, x.overrun, x.high_end_cap,
            x.high_end_committed + x.high_end_reserved - held_high, x.pro_cap,
            x.pro_committed + x.pro_reserved - held_pro), 0)) ELSE 0 END,
        pro_committed = x.pro_committed + CASE WHEN c.lane = 'pro' THEN least(c.actual,
            greatest(@S@.al_room(c.lane, x.cap, x.committed, x.reserved - held, x.overrun, x.high_end_cap,
            x.high_end_committed + x.high_end_reserved - held_high, x.pro_cap,
            x.pro_committed + x.pro_reserved - held_pro), 0)) ELSE 0 END,
        reserved = x.reserved - held, high_end_reserved = x.high_end_reserved - held_high,
        pro_reserved = x.pro_reserved - held_pro;
END $$;

-- Settle: record the charge durably (the session's synchronous_commit, on by default),
-- idempotent by reservation id; then roll it up in a transaction that does not wait for
-- the flush, so no window row is ever locked across one.
CREATE PROCEDURE @S@.al_settle(p_id text, p_lane text, p_actual bigint, p_names text[], p_keys text[],
                               p_caps bigint[], p_highs bigint[], p_pros bigint[])
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO @S@.al_charges (id, lane, actual, names, keys, caps, highs, pros)
    VALUES (p_id, p_lane, p_actual, p_names, p_keys, p_caps, p_highs, p_pros)
    ON CONFLICT (id) DO NOTHING;
    IF FOUND THEN
        INSERT INTO @S@.al_unapplied (id) VALUES (p_id);
    END IF;
    COMMIT;
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM @S@.al_apply(p_id);
END $$;

CREATE FUNCTION @S@.al_release(p_id text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE h @S@.al_holds%ROWTYPE;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    DELETE FROM @S@.al_holds WHERE id = p_id RETURNING * INTO h;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM 1 FROM @S@.al_windows x JOIN unnest(h.names, h.keys) AS u(n, k)
        ON x.window_name = u.n AND x.window_key = u.k
    ORDER BY x.window_name, x.window_key FOR UPDATE OF x;
    UPDATE @S@.al_windows x SET reserved = x.reserved - h.amount,
        high_end_reserved = x.high_end_reserved - CASE WHEN h.lane = 'high-end' THEN h.amount ELSE 0 END,
        pro_reserved = x.pro_reserved - CASE WHEN h.lane = 'pro' THEN h.amount ELSE 0 END
    FROM unnest(h.names, h.keys) AS u(n, k) WHERE x.window_name = u.n AND x.window_key = u.k;
END $$;

-- Roll up charges whose roll-up was interrupted (a server crash, a cancelled call), each
-- in its own transaction.
CREATE PROCEDURE @S@.al_sweep(p_age double precision) LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
    FOR r IN SELECT u.id FROM @S@.al_unapplied u JOIN @S@.al_charges c USING (id)
             WHERE c.at < clock_timestamp() - make_interval(secs => p_age)
             ORDER BY c.at LIMIT 1000 LOOP
        PERFORM set_config('synchronous_commit', 'off', true);
        PERFORM @S@.al_apply(r.id);
        COMMIT;
    END LOOP;
END $$;
"""
)
MIGRATIONS.append((3, "one row per reservation, charges recorded before they are rolled up", _MIGRATION_3))


def _split_dsn(dsn: str) -> tuple[str, dict[str, str]]:
    """The DSN without agentlanes' own query options, and those options."""
    parts = urlsplit(dsn)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in _DSN_OPTIONS}
    if not ours:
        return dsn, {}
    rest = urlencode([(k, v) for k, v in query if k not in _DSN_OPTIONS])
    return urlunsplit(parts._replace(query=rest)), ours


def _from_the_database(exc: BaseException) -> bool:
    """The driver, the server or the network failed (as opposed to an exception raised
    by a callback the caller handed in, which passes through unchanged)."""
    return isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError | OSError | TimeoutError) or (
        type(exc).__module__.startswith("asyncpg")
    )


def _is_connection_failure(exc: BaseException) -> bool:
    """The connection (or the server) is gone, as opposed to a statement that failed."""
    if isinstance(exc, asyncpg.InterfaceError):
        return "closed" in str(exc)  # "the connection is closed"; not a bad argument
    return isinstance(
        exc,
        OSError
        | asyncpg.PostgresConnectionError
        | asyncpg.CannotConnectNowError
        | asyncpg.AdminShutdownError
        | asyncpg.CrashShutdownError
        | asyncpg.TooManyConnectionsError,
    )


_CONSEQUENCE: Final = {
    "reserve": "nothing was admitted",
    "settle": "the charge was not recorded",
    "release": "the reservation stays held until its lease runs out",
    "read": "nothing was read and nothing was admitted",
    "receipt": "the receipt was not written",
    "run": "the run index was not updated",
    "open": "nothing was admitted",
}


class PostgresStore(Store):
    """Budgets, receipts and runs in PostgreSQL.

    Args:
        dsn: ``postgresql://user@host:5432/db`` (or ``AGENTLANES_STORE``). A
            ``statement_cache_size=N`` query option is read by agentlanes (see below).
        schema: the schema to use (created if missing; never ``public`` by accident).
        timeout: seconds to connect, and for any one statement; past it,
            :class:`~agentlanes.errors.StoreUnavailable`.
        clock: seconds since the epoch for leases; default: the database's clock.
        pool_size: connections in the pool; calls beyond it wait their turn.
        statement_cache_size: asyncpg's prepared-statement cache per connection (default
            100). Set ``0`` behind a pooler in transaction mode (PgBouncer
            ``pool_mode = transaction``), which cannot keep prepared statements.
        acquire_timeout: seconds a call may wait for a free connection before it fails
            with :class:`~agentlanes.errors.StoreUnavailable` (default: no limit; waiting
            is backpressure, and never breaks the pool).
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "agentlanes",
        timeout: float = 5.0,
        clock: Callable[[], float] | None = None,
        pool_size: int = 4,
        statement_cache_size: int | None = None,
        acquire_timeout: float | None = None,
    ) -> None:
        if not dsn.startswith(("postgresql://", "postgres://")):
            raise ConfigurationError(f"PostgresStore needs a postgresql:// DSN, got {_redact(dsn)!r}.")
        if not schema or not schema.replace("_", "").isalnum() or not schema.isascii():
            raise ConfigurationError(f"Schema name {schema!r} must be ASCII letters, digits and underscores.")
        if pool_size < 1:
            raise ConfigurationError(f"PostgresStore pool_size must be at least 1, got {pool_size}.")
        dsn, options = _split_dsn(dsn)
        if statement_cache_size is None and "statement_cache_size" in options:
            raw = options["statement_cache_size"]
            if not raw.isdigit():
                raise ConfigurationError(
                    f"statement_cache_size={raw!r} in the store DSN is not a whole number (use 0 behind a "
                    "transaction-pooling PgBouncer, or leave it out)."
                )
            statement_cache_size = int(raw)
        if statement_cache_size is not None and statement_cache_size < 0:
            raise ConfigurationError(f"statement_cache_size must be 0 or more, got {statement_cache_size}.")
        self.dsn = dsn
        self.schema = schema
        self.timeout = timeout
        self.statement_cache_size = 100 if statement_cache_size is None else statement_cache_size
        self.acquire_timeout = acquire_timeout
        self._clock = clock
        self._pool_size = pool_size
        self._idle: list[Any] = []  # open connections not in use, most recently used last
        self._generation = 0  # bumped by aclose: connections of an older generation are closed
        self._ready = False
        self._ready_lock: anyio.Lock | None = None
        self._slots: anyio.Semaphore | None = None
        self._down_until = 0.0
        self._down_why = ""
        self._next_sweep = 0.0
        self._where = _redact(dsn).split("@")[-1]  # no credentials in messages
        s = f'"{schema}"'
        self._s = s
        self._sql_reserve = f"CALL {s}.al_reserve($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        self._sql_settle = f"CALL {s}.al_settle($1, $2, $3, $4, $5, $6, $7, $8)"
        self._sql_release = f"SELECT {s}.al_release($1)"
        self._sql_sweep = f"CALL {s}.al_sweep($1)"
        self._sql_states = (
            "SELECT x.committed, x.overrun, x.reserved, x.high_end_committed, x.high_end_reserved,"
            " x.pro_committed, x.pro_reserved, e.a, e.h, e.p"
            " FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(n, k, i)"
            f" LEFT JOIN {s}.al_windows x ON x.window_name = t.n AND x.window_key = t.k"
            " LEFT JOIN (SELECT u.n, u.k, sum(g.amount)::bigint AS a,"
            " sum(CASE WHEN g.lane = 'high-end' THEN g.amount ELSE 0 END)::bigint AS h,"
            " sum(CASE WHEN g.lane = 'pro' THEN g.amount ELSE 0 END)::bigint AS p"
            f" FROM {s}.al_holds g, unnest(g.names, g.keys) AS u(n, k)"
            " WHERE g.expires <= COALESCE($3::double precision, extract(epoch from clock_timestamp()))"
            " GROUP BY u.n, u.k) e ON e.n = t.n AND e.k = t.k"
            " ORDER BY t.i"
        )

    @property
    def identity(self) -> str:
        return f"postgresql://{self._where}#{self.schema}"

    # -------------------------------------------------------------- plumbing

    def _failure(self, op: str, exc: BaseException) -> StoreError:
        """The agentlanes error for a failed call, saying what it means for the money."""
        consequence = _CONSEQUENCE.get(op, "nothing was written")
        where = f"The PostgreSQL store at {self._where} (schema {self.schema})"
        what = f"{type(exc).__name__}: {exc}".rstrip(": ")
        if isinstance(exc, TimeoutError):
            return StoreUnavailable(
                f"{where} did not answer within {self.timeout:g} s ({what}); {consequence}. Check the database's "
                "load and reachability, or give the store a longer timeout (PostgresStore(timeout=...), or "
                "AGENTLANES_STORE_TIMEOUT)."
            )
        if _is_connection_failure(exc):
            return StoreUnavailable(
                f"{where} did not answer ({what}); {consequence}. Check the database, or the DSN in AGENTLANES_STORE."
            )
        state = getattr(exc, "sqlstate", None)
        code = f"SQLSTATE {state}, " if state else ""
        if state in ("42P05", "26000") and self.statement_cache_size:  # a prepared statement gone or doubled
            return StoreError(
                f"{where} lost its prepared statements ({code}{what}); {consequence}. Behind a pooler in "
                "transaction mode (PgBouncer pool_mode = transaction) turn the statement cache off: "
                "statement_cache_size=0 (or ?statement_cache_size=0 in the DSN, or "
                "AGENTLANES_STORE_STATEMENT_CACHE_SIZE=0)."
            )
        return StoreError(
            f"{where} refused the call ({code}{what}); {consequence}. Check the database's logs and that no "
            "older or newer agentlanes shares the schema."
        )

    async def _open(self) -> None:
        """Migrate the schema, once (the first call of each store does it)."""
        if self._ready:
            return
        if self._ready_lock is None:
            self._ready_lock = anyio.Lock()
        async with self._ready_lock:  # concurrent first calls must not migrate twice
            if not self._ready:
                await self._with_conn("open", self._migrate)
                self._ready = True

    async def _connect(self) -> Any:
        return await asyncpg.connect(
            self.dsn,
            timeout=self.timeout,
            command_timeout=self.timeout,
            statement_cache_size=self.statement_cache_size,
            server_settings={"application_name": "agentlanes"},
        )

    async def _migrate(self, conn: Any) -> None:
        s = self._s
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_MIGRATE)
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
            # for the unqualified names of the first migrations: this schema and nothing else
            await conn.execute(f"SET LOCAL search_path TO {s}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {s}.al_migrations "
                "(version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch(f"SELECT version FROM {s}.al_migrations")}
            newest = max(v for v, _, _ in MIGRATIONS)
            if done and max(done) > newest:
                raise ConfigurationError(
                    f"The store schema {self.schema!r} was migrated by a newer agentlanes (version {max(done)}; this "
                    f"one knows up to {newest}); upgrade agentlanes."
                )
            for version, name, sql in MIGRATIONS:
                if version not in done:
                    await conn.execute(sql.replace("@S@", s))
                    await conn.execute(f"INSERT INTO {s}.al_migrations (version, name) VALUES ($1, $2)", version, name)
        await conn.execute(self._sql_sweep, _SWEEP_AGE)
        self._next_sweep = time.monotonic() + _SWEEP_EVERY

    async def _with_conn(self, op: str, work: Callable[[Any], Awaitable[_T]]) -> _T:
        """Run ``work`` on one of the store's connections (at most ``pool_size``).

        Waiting for a connection is backpressure (cancellable, fair, bounded only by
        ``acquire_timeout``); a wait never touches the connections. Once a connection is
        in hand the work is shielded from cancellation, so a call the database committed
        is never lost to a cancelled caller (each statement is still bounded by
        ``timeout``). Only a connection that failed is dropped; a connection failure
        makes the calls of the next second fail at once instead of queueing behind
        connection attempts. The store keeps no session state on a connection, so one
        goes back to the pool as it is (no reset round trip).
        """
        if self._slots is None:
            self._slots = anyio.Semaphore(self._pool_size)
        slots = self._slots
        try:
            slots.acquire_nowait()  # the common case: no wait, no trip through the event loop
        except anyio.WouldBlock:
            await self._wait_for_slot(slots, op)
        generation = self._generation
        conn: Any = None
        try:
            if time.monotonic() < self._down_until:
                raise StoreUnavailable(
                    f"The PostgreSQL store at {self._where} did not answer a moment ago ({self._down_why}); "
                    f"{_CONSEQUENCE.get(op, 'nothing was written')}. Check the database, or the DSN in "
                    "AGENTLANES_STORE."
                )
            idle = self._idle
            while idle and conn is None:
                conn = idle.pop()  # the most recently used: warm caches
                if conn.is_closed():
                    conn = None
            if conn is None:
                try:
                    conn = await self._connect()
                except Exception as exc:
                    raise self._down(op, exc) from exc
            with anyio.CancelScope(shield=True):
                try:
                    result = await work(conn)
                except AgentLanesError:
                    raise
                except Exception as exc:
                    if not _from_the_database(exc):
                        # the caller's own callback (a receipt's seal or chain check) said
                        # no: its exception is its message to the caller, not a failure
                        if conn.is_in_transaction():
                            conn.terminate()
                        raise
                    if _is_connection_failure(exc) or isinstance(exc, TimeoutError):
                        conn.terminate()  # broken, or left mid-statement: never reused
                    if _is_connection_failure(exc):
                        raise self._down(op, exc) from exc
                    raise self._failure(op, exc) from exc  # a statement failed: the other connections are fine
        finally:
            if conn is not None:
                if generation != self._generation or conn.is_closed() or conn.is_in_transaction():
                    conn.terminate()
                else:
                    self._idle.append(conn)
            slots.release()
        return result

    async def _wait_for_slot(self, slots: anyio.Semaphore, op: str) -> None:
        if self.acquire_timeout is None:
            await slots.acquire()
            return
        try:
            with anyio.fail_after(self.acquire_timeout):
                await slots.acquire()
        except TimeoutError:
            raise StoreUnavailable(
                f"All {self._pool_size} connections to the PostgreSQL store at {self._where} stayed busy for "
                f"{self.acquire_timeout:g} s; {_CONSEQUENCE.get(op, 'nothing was written')}. Give PostgresStore "
                "a larger pool_size or acquire_timeout."
            ) from None

    def _down(self, op: str, exc: BaseException) -> StoreError:
        """The error for a connection that failed or could not be made; calls fail at
        once for the next second rather than queue behind more connection attempts."""
        self._down_until = time.monotonic() + _DOWN_FOR
        self._down_why = f"{type(exc).__name__}: {exc}".rstrip(": ")
        error = self._failure(op, exc)
        if isinstance(error, StoreUnavailable):
            return error
        return StoreUnavailable(str(error))

    async def _call(self, op: str, work: Callable[[Any], Awaitable[_T]]) -> _T:
        if not self._ready:
            await self._open()
        return await self._with_conn(op, work)

    async def _tx(self, op: str, work: Callable[[Any], Awaitable[_T]]) -> _T:
        async def in_tx(conn: Any) -> _T:
            async with conn.transaction():
                return await work(conn)

        return await self._call(op, in_tx)

    def _now(self) -> float | None:
        return self._clock() if self._clock is not None else None

    # -------------------------------------------------------------- budgets

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
        if reservation_id is not None:
            # Asked again (a retried activity): the same reservation while it is held. The
            # first ask and its retries come one after another, so a read before the
            # admission is enough (a concurrent duplicate fails on the hold's key).
            async def held(conn: Any) -> Any:
                return await conn.fetchrow(f"SELECT lane, amount, expires FROM {self._s}.al_holds WHERE id = $1", rid)

            row = await self._call("reserve", held)
            if row is not None:
                return Reservation(rid, row["lane"], int(row["amount"]), specs, float(row["expires"]))
        if unsettled:
            return await self._reserve_beside(specs, lane, amount, lease_seconds, unsettled, rid)

        async def work(conn: Any) -> Any:
            return await conn.fetchrow(
                self._sql_reserve,
                rid,
                lane,
                amount,
                lease_seconds,
                self._now(),
                [s.window for s in specs],
                [s.key for s in specs],
                [s.cap for s in specs],
                [s.high_end_cap for s in specs],
                [s.pro_cap for s in specs],
            )

        row = await self._call("reserve", work)
        if time.monotonic() >= self._next_sweep:
            await self._sweep()
        if row["o_ok"]:
            return Reservation(rid, lane, amount, specs, float(row["o_expires"]))
        spec = next((s for s in specs if (s.window, s.key) == (row["o_w"], row["o_k"])), None)
        if spec is None:
            raise StoreError(f"A reservation named the same window twice ({[(s.window, s.key) for s in specs]}).")
        return _refusal(spec, lane, amount, int(row["o_room"]), int(row["o_high"]), int(row["o_pro"]))

    async def _reserve_beside(
        self,
        specs: tuple[WindowSpec, ...],
        lane: str,
        amount: int,
        lease_seconds: float,
        unsettled: Unsettled,
        rid: str,
    ) -> Reservation | Refusal:
        """Admission counting spend the store does not hold yet (a ledger's journaled
        charges): rarer, so in a few statements under the windows' row locks, taken in
        the same fixed order as every admission."""
        s = self._s
        order = sorted(specs, key=lambda spec: (spec.window, spec.key))
        high, pro = (amount if lane == "high-end" else 0), (amount if lane == "pro" else 0)

        async def work(conn: Any) -> Reservation | Refusal:
            await conn.execute("SET LOCAL synchronous_commit = off")
            now = await conn.fetchval(
                "SELECT COALESCE($1::double precision, extract(epoch from clock_timestamp()))", self._now()
            )
            await conn.execute(
                f"INSERT INTO {s}.al_windows (window_name, window_key, cap, high_end_cap, pro_cap) "
                "SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[]) "
                "ON CONFLICT DO NOTHING",
                [x.window for x in order],
                [x.key for x in order],
                [x.cap for x in order],
                [x.high_end_cap for x in order],
                [x.pro_cap for x in order],
            )
            rows = {}
            for spec in order:  # one by one, in order: the lock order every admission uses
                rows[(spec.window, spec.key)] = await conn.fetchrow(
                    f"SELECT * FROM {s}.al_windows WHERE window_name = $1 AND window_key = $2 FOR UPDATE",
                    spec.window,
                    spec.key,
                )
            for spec in specs:
                row = rows[(spec.window, spec.key)]
                stored = WindowSpec(spec.window, spec.key, row["cap"], row["high_end_cap"], row["pro_cap"])
                state = with_unsettled(
                    _state(stored, {**row, "a": 0, "h": 0, "p": 0}), unsettled.get((spec.window, spec.key))
                )
                refusal = check_admission(state, lane, amount)
                if refusal is not None:
                    return refusal
            for spec in order:
                await conn.execute(
                    f"UPDATE {s}.al_windows SET reserved = reserved + $3, high_end_reserved = high_end_reserved + $4,"
                    " pro_reserved = pro_reserved + $5 WHERE window_name = $1 AND window_key = $2",
                    spec.window,
                    spec.key,
                    amount,
                    high,
                    pro,
                )
            expires = float(now) + lease_seconds
            await conn.execute(
                f"INSERT INTO {s}.al_holds (id, lane, amount, expires, names, keys) VALUES ($1, $2, $3, $4, $5, $6)",
                rid,
                lane,
                amount,
                expires,
                [x.window for x in order],
                [x.key for x in order],
            )
            return Reservation(rid, lane, amount, specs, expires)

        return await self._tx("reserve", work)

    async def _sweep(self) -> None:
        """Roll up charges whose roll-up was interrupted; a failure waits for the next."""
        self._next_sweep = time.monotonic() + _SWEEP_EVERY

        async def work(conn: Any) -> None:
            await conn.execute(self._sql_sweep, _SWEEP_AGE)

        with contextlib.suppress(StoreError):
            await self._with_conn("read", work)

    async def settle(self, reservation: Reservation, actual: int) -> int:
        check_micro("A settlement", actual)
        specs = reservation.windows

        async def work(conn: Any) -> None:
            await conn.execute(
                self._sql_settle,
                reservation.id,
                reservation.lane,
                actual,
                [s.window for s in specs],
                [s.key for s in specs],
                [s.cap for s in specs],
                [s.high_end_cap for s in specs],
                [s.pro_cap for s in specs],
            )

        await self._call("settle", work)
        return actual

    async def release(self, reservation: Reservation) -> None:
        async def work(conn: Any) -> None:
            await conn.execute(self._sql_release, reservation.id)

        await self._call("release", work)

    async def window_states(self, windows: Sequence[WindowSpec]) -> list[WindowState]:
        specs = tuple(windows)
        if not specs:
            await self._open()
            return []

        async def work(conn: Any) -> list[Any]:
            result: list[Any] = await conn.fetch(
                self._sql_states, [s.window for s in specs], [s.key for s in specs], self._now()
            )
            return result

        rows = await self._call("read", work)
        return [_state(spec, row) for spec, row in zip(specs, rows, strict=True)]

    # -------------------------------------------------------------- receipts and runs

    async def append_receipt(self, run_id: str, body: dict[str, Any], seal: Sealer) -> StoredReceipt:
        s = self._s

        async def work(conn: Any) -> StoredReceipt:
            # one writer per run chain at a time: no two receipts can claim the same place
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", run_id)
            last = await conn.fetchrow(
                f"SELECT seq, digest FROM {s}.al_receipts WHERE run_id = $1 ORDER BY seq DESC LIMIT 1", run_id
            )
            full = {
                **body,
                "seq": 0 if last is None else last["seq"] + 1,
                "prev": None if last is None else last["digest"],
            }
            digest, text = seal(full)
            await conn.execute(
                f"INSERT INTO {s}.al_receipts (run_id, seq, digest, prev, body) VALUES ($1, $2, $3, $4, $5)",
                run_id,
                full["seq"],
                digest,
                full["prev"],
                text,
            )
            return StoredReceipt(run_id, full["seq"], digest, full["prev"], text)

        return await self._tx("receipt", work)

    async def receipts(self, run_id: str | None = None) -> list[StoredReceipt]:
        s = self._s

        async def work(conn: Any) -> list[StoredReceipt]:
            if run_id is not None:
                rows = await conn.fetch(
                    f"SELECT run_id, seq, digest, prev, body FROM {s}.al_receipts WHERE run_id = $1 ORDER BY seq",
                    run_id,
                )
            else:
                rows = await conn.fetch(
                    f"SELECT r.run_id, r.seq, r.digest, r.prev, r.body FROM {s}.al_receipts r JOIN "
                    f"(SELECT run_id, min(ord) AS first FROM {s}.al_receipts GROUP BY run_id) f USING (run_id) "
                    "ORDER BY f.first, r.seq"
                )
            return [StoredReceipt(r["run_id"], r["seq"], r["digest"], r["prev"], r["body"]) for r in rows]

        return await self._tx("read", work)

    async def record_run(self, run: Mapping[str, Any], *, only_if: Mapping[str, Any] | None = None) -> bool:
        s = self._s

        async def work(conn: Any) -> bool:
            if only_if is not None:
                # one statement: the entry changes only while it still holds what was read
                done = await conn.execute(
                    f"UPDATE {s}.al_runs SET entry = entry || $2::jsonb WHERE run_id = $1 AND entry @> $3::jsonb",
                    str(run["runId"]),
                    json.dumps(dict(run)),
                    json.dumps(dict(only_if)),
                )
                return bool(done == "UPDATE 1")
            await conn.execute(
                f"INSERT INTO {s}.al_runs (run_id, entry) VALUES ($1, $2::jsonb) "
                "ON CONFLICT (run_id) DO UPDATE SET entry = al_runs.entry || EXCLUDED.entry",
                str(run["runId"]),
                json.dumps(dict(run)),
            )
            return True

        return await self._call("run", work)

    async def runs(self) -> list[dict[str, Any]]:
        s = self._s

        async def work(conn: Any) -> list[dict[str, Any]]:
            rows = await conn.fetch(f"SELECT entry FROM {s}.al_runs ORDER BY ord")
            return [json.loads(r["entry"]) for r in rows]

        return await self._tx("read", work)

    async def aclose(self) -> None:
        """Close the connections (those in use close when their call ends). The store
        may be used again afterwards: it reconnects."""
        self._generation += 1
        idle, self._idle = self._idle, []
        self._ready = False
        self._ready_lock = None
        for conn in idle:
            try:
                with anyio.fail_after(self.timeout):
                    await conn.close()
            except Exception:
                conn.terminate()


def _redact(dsn: str) -> str:
    """The DSN without its password."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _refusal(spec: WindowSpec, lane: str, amount: int, room: int, high: int, pro: int) -> Refusal:
    if amount > room:
        return Refusal(spec.window, spec.key, "cap", max(room, 0))
    if lane == "high-end":
        return Refusal(spec.window, spec.key, "high-end-share", max(high, 0))
    return Refusal(spec.window, spec.key, "pro-share", max(pro, 0))


def _state(spec: WindowSpec, row: Any) -> WindowState:
    if row["committed"] is None:
        return WindowState(spec, 0, 0, 0, 0, 0)
    a, h, p = row["a"] or 0, row["h"] or 0, row["p"] or 0  # reservations past their lease
    return WindowState(
        spec,
        row["committed"],
        row["reserved"] - a,
        row["high_end_committed"] + row["high_end_reserved"] - h,
        row["pro_committed"] + row["pro_reserved"] - p,
        row["overrun"],
    )
