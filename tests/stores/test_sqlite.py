"""The SQLite store's own guarantees: lock timeouts are agentlanes errors, no
acknowledged settlement is lost on kill -9, version-1 files migrate forward, and the
durability levels are what they say."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

from agentlanes.budget import Refusal, Reservation, WindowSpec
from agentlanes.errors import ConfigurationError, StoreUnavailable
from agentlanes.stores import SQLiteStore, open_store
from tests.conftest import ROOT

W = WindowSpec("task", "run-1", 1_000_000, 250_000, 50_000)


async def test_a_lock_held_past_busy_timeout_is_store_unavailable(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "a.db", busy_timeout=0.3)
    held = await store.reserve([W], "standard", 1_000, lease_seconds=60)
    assert isinstance(held, Reservation)
    other = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"stayed locked by another connection for 0\.3 s.*nothing was "
                                                   r"admitted"):
            await store.reserve([W], "standard", 1_000, lease_seconds=60)
        assert time.monotonic() - started >= 0.25  # it waited (in a worker thread), then gave up
        with pytest.raises(StoreUnavailable, match="the charge was not recorded"):
            await store.settle(held, 900)
        with pytest.raises(StoreUnavailable, match="stays held until its lease runs out"):
            await store.release(held)
        [state] = await store.window_states([W])  # reads are not blocked by a writer
        assert state.reserved == 1_000
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert await store.settle(held, 900) == 900
    await store.aclose()


async def test_a_lock_held_briefly_is_waited_for(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "a.db")
    other = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")

    async def let_go() -> None:
        await anyio.sleep(0.3)
        other.execute("COMMIT")

    async with anyio.create_task_group() as tg:
        tg.start_soon(let_go)
        assert isinstance(await store.reserve([W], "standard", 1_000, lease_seconds=60), Reservation)
    other.close()
    await store.aclose()


@pytest.mark.parametrize("level", ["process", "settlements", "full"])
async def test_every_durability_level_keeps_the_accounting(tmp_path: Path, level: str) -> None:
    store = SQLiteStore(tmp_path / "a.db", durability=level)  # type: ignore[arg-type]
    a = await store.reserve([W], "high-end", 200_000, lease_seconds=60)
    b = await store.reserve([W], "standard", 700_000, lease_seconds=60)
    assert isinstance(a, Reservation) and isinstance(b, Reservation)
    assert isinstance(await store.reserve([W], "standard", 100_001, lease_seconds=60), Refusal)
    assert await store.settle(a, 150_000) == 150_000
    await store.release(b)
    [state] = await store.window_states([W])
    assert (state.committed, state.reserved, state.high_end_used) == (150_000, 0, 150_000)
    await store.aclose()
    reopened = SQLiteStore(tmp_path / "a.db")
    [state] = await reopened.window_states([W])
    assert state.committed == 150_000
    await reopened.aclose()


def test_durability_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="'paranoid' is not a level"):
        SQLiteStore(tmp_path / "a.db", durability="paranoid")  # type: ignore[arg-type]
    monkeypatch.setenv("AGENTLANES_STORE_DURABILITY", "settlements")
    store = open_store(None, tmp_path)
    assert isinstance(store, SQLiteStore) and store.durability == "settlements"
    monkeypatch.setenv("AGENTLANES_STORE_DURABILITY", "sometimes")
    with pytest.raises(ConfigurationError, match="AGENTLANES_STORE_DURABILITY='sometimes'"):
        open_store(None, tmp_path)


def test_a_version_1_file_migrates_forward(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript("""
        CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema', '1');
        CREATE TABLE windows (window TEXT NOT NULL, key TEXT NOT NULL,
            committed INTEGER NOT NULL DEFAULT 0, overrun INTEGER NOT NULL DEFAULT 0,
            high_end_committed INTEGER NOT NULL DEFAULT 0, pro_committed INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (window, key));
        CREATE TABLE reservations (id TEXT NOT NULL, window TEXT NOT NULL, key TEXT NOT NULL, lane TEXT NOT NULL,
            amount INTEGER NOT NULL, expires REAL NOT NULL, PRIMARY KEY (id, window, key));
        CREATE TABLE receipts (run_id TEXT NOT NULL, seq INTEGER NOT NULL, digest TEXT NOT NULL, prev TEXT,
            body TEXT NOT NULL, PRIMARY KEY (run_id, seq));
        CREATE TABLE runs (run_id TEXT PRIMARY KEY, ord INTEGER NOT NULL, entry TEXT NOT NULL);
        INSERT INTO windows VALUES ('task', 'run-1', 300000, 0, 100000, 0);
        INSERT INTO reservations VALUES ('r1', 'task', 'run-1', 'high-end', 50000, 4e9);
        INSERT INTO reservations VALUES ('r1', 'day', 'd', 'high-end', 50000, 4e9);
        INSERT INTO reservations VALUES ('r2', 'task', 'run-1', 'standard', 20000, 4e9);
        INSERT INTO runs VALUES ('run-1', 1, '{"runId": "run-1", "status": "running"}');
    """)
    db.close()
    day = WindowSpec("day", "d", 5_000_000, 1_000_000, 0)

    async def check() -> None:
        store = SQLiteStore(path)
        task_state, day_state = await store.window_states([W, day])
        assert (task_state.committed, task_state.reserved, task_state.high_end_used) == (300_000, 70_000, 150_000)
        assert (day_state.committed, day_state.reserved) == (0, 50_000)
        await store.settle(Reservation("r1", "high-end", 50_000, (W, day), 4e9), 40_000)
        await store.release(Reservation("r2", "standard", 20_000, (W,), 4e9))
        task_state, day_state = await store.window_states([W, day])
        assert (task_state.committed, task_state.reserved, task_state.high_end_used) == (340_000, 0, 140_000)
        assert (day_state.committed, day_state.reserved) == (40_000, 0)
        assert await store.runs() == [{"runId": "run-1", "status": "running"}]
        await store.aclose()

    anyio.run(check)
    assert sqlite3.connect(path).execute("SELECT value FROM meta").fetchone() == ("2",)


def test_a_newer_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    SQLiteStore(path)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("UPDATE meta SET value = '99' WHERE name = 'schema'")
    db.close()
    with pytest.raises(ConfigurationError, match="written by a newer agentlanes"):
        SQLiteStore(path)


SETTLER = textwrap.dedent("""
    import sys, anyio
    from agentlanes.budget import Reservation, WindowSpec
    from agentlanes.stores import SQLiteStore

    async def main(path, seed):
        store = SQLiteStore(path)
        spec = WindowSpec("task", "killed", 10**15, 0, 0)
        i = int(seed) * 1_000_000
        print("ready", flush=True)
        while True:
            res = await store.reserve([spec], "standard", 1_000, lease_seconds=3600)
            actual = 500 + i % 400
            await store.settle(res, actual)
            print("ack", res.id, actual, flush=True)
            i += 1

    anyio.run(main, *sys.argv[1:])
""")


def test_kill_9_loses_no_acknowledged_settlement(tmp_path: Path) -> None:
    path = tmp_path / "agentlanes.db"
    SQLiteStore(path)
    rng = random.Random(3)
    acked: dict[str, int] = {}
    kills = 10
    for k in range(kills):
        procs = [
            subprocess.Popen([sys.executable, "-c", SETTLER, str(path), str(k * 10 + j)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            for j in range(2)  # two processes share the file, as workers do
        ]
        for p in procs:  # however slow the machine is to start them, kill them while they work
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.3, 0.9))
        for p in procs:
            p.send_signal(signal.SIGKILL)
        for p in procs:
            out, _ = p.communicate()
            for line in out.splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[0] == "ack" and len(parts[1]) == 32 and parts[2].isdigit():
                    acked[parts[1]] = int(parts[2])  # a torn last line was never acknowledged
    assert len(acked) > 200
    db = sqlite3.connect(path)
    charges = dict(db.execute("SELECT id, actual FROM charges").fetchall())
    assert all(charges.get(rid) == actual for rid, actual in acked.items())  # every acknowledged one, as it was
    assert len(charges) - len(acked) <= 2 * kills  # at most the one in flight per killed process
    committed, overrun, reserved = db.execute(
        "SELECT committed, overrun, reserved FROM windows WHERE key = 'killed'"
    ).fetchone()
    holds = db.execute("SELECT count(*), COALESCE(SUM(amount), 0) FROM holds").fetchone()
    db.close()
    assert committed + overrun == sum(charges.values())  # the counters agree with the charges
    assert reserved == holds[1] and holds[0] <= 2 * kills  # only reservations in flight at a kill are held
