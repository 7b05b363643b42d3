"""PostgreSQL under concurrency and faults: many processes, one cap; a killed worker's
reservations reclaimed after the lease; the database gone mid-run; concurrent receipts."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from agentlanes import Lanes, StageContext, cli, load_bundle
from agentlanes.budget import Refusal, Reservation, WindowSpec
from agentlanes.errors import ConfigurationError, StoreError, UnsettledCharge
from agentlanes.ledger import BudgetLedger
from agentlanes.receipts import ReceiptSigner
from agentlanes.stores import open_store
from agentlanes.stores.postgres import MIGRATIONS, PostgresStore, StoreUnavailable
from agentlanes.testing import TestModel
from tests.conftest import ROOT, healthy
from tests.stores.conftest import PG_DSN, drop_schema, pg_schema


@pytest.fixture
def schema() -> Iterator[str]:
    name = pg_schema()
    yield name
    anyio.run(drop_schema, name)


def run_workers(code: str, args: list[list[str]], timeout: float = 240) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AGENTLANES_LOG_LEVEL": "off"}
    procs = [subprocess.Popen([sys.executable, "-c", code, *a], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for a in args]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err[-2000:]
        outs.append(out)
    return outs


RESERVER = textwrap.dedent("""
    import json, sys, anyio
    from agentlanes.budget import Reservation, WindowSpec
    from agentlanes.stores.postgres import PostgresStore

    async def main(dsn, schema, n):
        store = PostgresStore(dsn, schema=schema)
        spec = WindowSpec("task", "shared", 5_000_000, 0, 0)
        admitted = charged = 0
        for _ in range(int(n)):
            res = await store.reserve([spec], "standard", 1000, lease_seconds=600)
            if isinstance(res, Reservation):
                admitted += 1
                charged += await store.settle(res, 1000)
        await store.aclose()
        print(json.dumps({"admitted": admitted, "charged": charged}))

    anyio.run(main, *sys.argv[1:])
""")


def test_four_processes_2500_reservations_each_one_cap(schema: str) -> None:
    async def prepare() -> None:
        store = PostgresStore(PG_DSN, schema=schema)
        await store.window_states([])  # migrate once up front (workers would race to it safely anyway)
        await store.aclose()

    anyio.run(prepare)
    outs = run_workers(RESERVER, [[PG_DSN, schema, "2500"]] * 4)
    results = [json.loads(o) for o in outs]
    assert sum(r["admitted"] for r in results) == 5000  # 10,000 asked; exactly the cap admitted

    async def check() -> None:
        store = PostgresStore(PG_DSN, schema=schema)
        [state] = await store.window_states([WindowSpec("task", "shared", 5_000_000, 0, 0)])
        await store.aclose()
        assert (state.committed, state.reserved, state.overrun) == (5_000_000, 0, 0)
        assert sum(r["charged"] for r in results) == state.committed

    anyio.run(check)


def test_workers_starting_at_once_migrate_once(schema: str) -> None:
    code = textwrap.dedent("""
        import sys, anyio
        from agentlanes.stores.postgres import PostgresStore
        async def main(dsn, schema):
            store = PostgresStore(dsn, schema=schema)
            await store.runs()
            await store.aclose()
        anyio.run(main, *sys.argv[1:])
    """)
    run_workers(code, [[PG_DSN, schema]] * 6)

    async def versions() -> list[int]:
        import asyncpg

        conn = await asyncpg.connect(PG_DSN)
        try:
            return [r["version"] for r in await conn.fetch(f'SELECT version FROM "{schema}".al_migrations')]
        finally:
            await conn.close()

    assert anyio.run(versions) == [v for v, _, _ in MIGRATIONS]


HOLDER = textwrap.dedent("""
    import sys, time, anyio
    from agentlanes.budget import Reservation, WindowSpec
    from agentlanes.stores.postgres import PostgresStore

    async def main(dsn, schema):
        store = PostgresStore(dsn, schema=schema)
        spec = WindowSpec("task", "leased", 1_000_000, 0, 0)
        for _ in range(5):
            res = await store.reserve([spec], "standard", 100_000, lease_seconds=2.0)
            assert isinstance(res, Reservation)
        print("held", flush=True)
        await anyio.sleep(3600)

    anyio.run(main, *sys.argv[1:])
""")


def test_a_killed_workers_reservations_are_reclaimed_after_the_lease(schema: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, PG_DSN, schema], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    spec = WindowSpec("task", "leased", 1_000_000, 0, 0)

    async def reserved() -> int:
        store = PostgresStore(PG_DSN, schema=schema)
        try:
            [state] = await store.window_states([spec])
            return state.reserved
        finally:
            await store.aclose()

    assert anyio.run(reserved) == 500_000  # still held: the lease has not run out
    time.sleep(2.5)
    assert anyio.run(reserved) == 0  # reclaimed, nothing leaked


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of PostgreSQL, which the test can cut (for good,
    or until it is resumed: while paused it cuts every connection it is given)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.alive = True
        self.paused = False
        threading.Thread(target=self._accept, daemon=True).start()

    def pause(self) -> None:
        self.paused = True
        self._drop_all()

    def resume(self) -> None:
        self.paused = False

    def _drop_all(self) -> None:
        conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while self.alive:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.alive:
                client.close()
                return
            if self.paused:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def cut(self) -> None:
        self.alive = False
        self.listener.close()
        for s in self.conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass


async def test_the_database_gone_mid_run_admits_nothing(schema: str, tmp_path: Path) -> None:
    proxy = Proxy(("127.0.0.1", 5432))
    dsn = PG_DSN.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    store = PostgresStore(dsn, schema=schema, timeout=2.0)
    spec = WindowSpec("task", "gone", 10_000_000, 0, 0)
    admitted_before = 0
    for _ in range(5):
        assert isinstance(await store.reserve([spec], "standard", 1000, lease_seconds=60), Reservation)
        admitted_before += 1
    proxy.cut()
    for _ in range(5):  # every attempt fails closed: nothing is admitted
        with pytest.raises(StoreUnavailable, match="nothing was admitted") as ei:
            await store.reserve([spec], "standard", 1000, lease_seconds=60)
        assert "postgres@" not in str(ei.value)  # no credentials in messages
    assert admitted_before == 5
    # through the runtime: the stage fails closed before any model call
    model = TestModel()
    lanes = Lanes({"standard": model}, signals=healthy(), store=store, data_dir=tmp_path)
    with pytest.raises(StoreUnavailable):
        async with lanes.run(task_class="routine-code") as run:
            await run.stage("planning", lambda ctx: ctx.complete("x"))
    assert model.calls == []
    await store.aclose()


WRITER = textwrap.dedent("""
    import sys, anyio
    from pathlib import Path
    from agentlanes.receipts import ReceiptSigner, receipt_body
    from agentlanes.stores.postgres import PostgresStore

    async def main(dsn, schema, home, worker):
        signer = ReceiptSigner(Path(home) / "keys")
        store = PostgresStore(dsn, schema=schema)
        async def write(run):
            for i in range(15):
                body = receipt_body(run_id=run, stage="s", task_class="routine-code", risk_class="medium",
                                    from_lane="standard", to_lane="high-end", reason="hard-debugging",
                                    decision_id=f"d-{worker}-{i}", evidence_refs=[], approver=None,
                                    justification_digest=None, created_at="2026-11-22T00:00:00Z")
                await store.append_receipt(run, body, signer.seal)
        async with anyio.create_task_group() as tg:
            for run in ("run-shared-1", "run-shared-2"):
                tg.start_soon(write, run)
        await store.aclose()

    anyio.run(main, *sys.argv[1:])
""")


def test_receipts_from_several_workers_form_one_verifiable_chain_per_run(schema: str, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ReceiptSigner(tmp_path / "keys")
    run_workers(WRITER, [[PG_DSN, schema, str(tmp_path), str(w)] for w in range(4)])
    monkeypatch.setenv("AGENTLANES_STORE", PG_DSN)
    monkeypatch.setenv("AGENTLANES_STORE_SCHEMA", schema)
    assert cli.main(["receipts", "verify", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ok: 120 receipt(s) in 2 run chain(s) verified" in out


async def test_lanes_take_the_store_from_the_environment(schema: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTLANES_STORE", PG_DSN)
    monkeypatch.setenv("AGENTLANES_STORE_SCHEMA", schema)
    lanes = Lanes({"standard": TestModel()}, signals=healthy(), data_dir=tmp_path)

    async def ask(ctx: StageContext) -> str:
        return (await ctx.complete("x")).text

    async with lanes.run(task_class="routine-code") as run:
        await run.stage("planning", ask)
    assert isinstance(lanes.store, PostgresStore)
    assert [r["runId"] for r in await lanes.store.runs()] == [run.run_id]
    await lanes.aclose()


@pytest.mark.parametrize(
    ("value", "seconds"), [(None, 5.0), ("12.5", 12.5), ("0", None), ("soon", None), ("nan", None)]
)
def test_the_call_timeout_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     value: str | None, seconds: float | None) -> None:
    monkeypatch.setenv("AGENTLANES_STORE", PG_DSN)
    if value is not None:
        monkeypatch.setenv("AGENTLANES_STORE_TIMEOUT", value)
    if seconds is None:
        with pytest.raises(ConfigurationError, match=rf"AGENTLANES_STORE_TIMEOUT='{value}' is not a number of seconds"):
            open_store(None, tmp_path)
    else:
        store = open_store(None, tmp_path)
        assert isinstance(store, PostgresStore) and store.timeout == seconds


async def test_a_settlement_cut_off_is_journaled_and_applied_once_when_the_database_returns(
    schema: str, tmp_path: Path
) -> None:
    proxy = Proxy(("127.0.0.1", 5432))
    dsn = PG_DSN.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    store = PostgresStore(dsn, schema=schema, timeout=2.0)
    ledger = BudgetLedger(store, load_bundle().optimizer, session_id="s1", journal_dir=tmp_path / "journal")
    res = await ledger.reserve("run-1", "standard", 30_000)
    assert isinstance(res, Reservation)
    proxy.pause()  # the model answered; the database is gone
    with pytest.raises(UnsettledCharge, match=r"admitted and cost 0\.025 USD.*journaled at") as ei:
        await ledger.settle(res, 25_000)
    assert isinstance(ei.value.__cause__, StoreUnavailable)
    assert ei.value.journal is not None and ei.value.journal.exists()
    with pytest.raises(StoreUnavailable, match="nothing was admitted"):
        await ledger.reserve("run-1", "standard", 1_000)
    proxy.resume()
    await anyio.sleep(1.1)  # calls fail fast for a second after a connection failure
    remaining, _ = await ledger.headroom("run-1", "task")
    assert remaining == 2.0 - 0.025
    assert ledger.unsettled == () and not ei.value.journal.exists()
    states = await ledger.states("run-1")
    assert [(s.committed, s.reserved) for s in states] == [(25_000, 0)] * 3
    await store.aclose()
    proxy.cut()


@pytest.mark.slow
async def test_ten_thousand_concurrent_runs_on_a_pool_of_four(schema: str) -> None:
    """Waiting for a connection is backpressure: every run ends admitted or refused,
    never with a raw asyncpg error; cancelled runs leave nothing held; the money adds up."""
    store = PostgresStore(PG_DSN, schema=schema, pool_size=4)
    ledger = BudgetLedger(store, load_bundle().optimizer, session_id="load")
    rng = random.Random(11)
    charged = 0
    outcomes = {"settled": 0, "released": 0, "refused": 0, "cancelled": 0}

    async def run(i: int) -> None:
        nonlocal charged
        fate = rng.random()
        with anyio.move_on_after(rng.uniform(0.001, 2.0) if fate < 0.15 else math.inf) as scope:
            run_id = f"run-{i}"
            if i % 10 == 0:
                await ledger.headroom(run_id, "task")
            if fate < 0.05:  # a caller that does not shield its reservation
                held = await ledger.reserve(run_id, "standard", 5_000)
            else:
                with anyio.CancelScope(shield=True):
                    held = await ledger.reserve(run_id, "standard", 5_000)
            if isinstance(held, Refusal):
                outcomes["refused"] += 1
                return
            try:
                await anyio.sleep(rng.uniform(0, 0.01))  # the model call
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await ledger.release(held)
                raise
            if fate < 0.3:
                with anyio.CancelScope(shield=True):
                    await ledger.release(held)
                outcomes["released"] += 1
                return
            actual = rng.randint(0, 6_000)
            with anyio.CancelScope(shield=True):
                assert await ledger.settle(held, actual) == actual
            charged += actual
            outcomes["settled"] += 1
        if scope.cancelled_caught:
            outcomes["cancelled"] += 1

    async with anyio.create_task_group() as tg:
        for i in range(10_000):
            tg.start_soon(run, i)
    session = next(s for s in await ledger.states("any") if s.spec.window == "session")
    day = next(s for s in await ledger.states("any") if s.spec.window == "day")
    for state in (session, day):
        assert state.reserved == 0  # nothing held after every run ended
        assert state.committed + state.overrun == charged  # every charge, once
    assert session.committed <= session.spec.cap
    assert outcomes["settled"] > 1000 and outcomes["refused"] > 1000 and outcomes["cancelled"] > 100, outcomes

    async def held_rows() -> int:
        import asyncpg

        conn = await asyncpg.connect(PG_DSN)
        try:
            return int(await conn.fetchval(f'SELECT count(*) FROM "{schema}".al_holds'))
        finally:
            await conn.close()

    assert await held_rows() == 0
    await store.aclose()


async def test_waiting_for_a_connection_is_backpressure_and_never_breaks_the_pool(schema: str) -> None:
    store = PostgresStore(PG_DSN, schema=schema, pool_size=1, timeout=0.5)
    spec = WindowSpec("task", "wait", 10_000_000, 0, 0)
    await store.window_states([spec])
    used: set[int] = set()

    async def hog(conn: Any) -> None:  # the only connection, busy for 1.2 s (each statement < timeout)
        used.add(await conn.fetchval("SELECT pg_backend_pid()"))
        for _ in range(4):
            await conn.execute("SELECT pg_sleep(0.3)")

    admitted = 0

    async def reserve_and_settle() -> None:
        nonlocal admitted
        res = await store.reserve([spec], "standard", 1_000, lease_seconds=60)
        assert isinstance(res, Reservation)
        await store.settle(res, 1_000)
        admitted += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(store._with_conn, "read", hog)
        await anyio.sleep(0.05)
        for _ in range(50):  # they wait longer than `timeout` for the connection: that is fine
            tg.start_soon(reserve_and_settle)
    assert admitted == 50
    # an acquire timeout, when asked for, fails that call only
    store.acquire_timeout = 0.1
    async with anyio.create_task_group() as tg:
        tg.start_soon(store._with_conn, "read", hog)
        await anyio.sleep(0.05)
        with pytest.raises(StoreUnavailable, match=r"stayed busy for 0\.1 s; nothing was admitted"):
            await store.reserve([spec], "standard", 1_000, lease_seconds=60)
    [state] = await store.window_states([spec])
    assert (state.committed, state.reserved) == (50_000, 0)
    await store._with_conn("read", hog)
    assert len(used) == 1  # one connection all along: no wait ever tore it down
    await store.aclose()


async def test_database_errors_are_agentlanes_errors(schema: str) -> None:
    missing = PostgresStore(PG_DSN.rsplit("/", 1)[0] + "/no_such_database_here", schema=schema, timeout=2.0)
    with pytest.raises(StoreError, match="nothing was admitted") as ei:
        await missing.reserve([WindowSpec("task", "x", 1, 0, 0)], "standard", 1, lease_seconds=1)
    assert "InvalidCatalogNameError" in str(ei.value)
    await missing.aclose()
    with pytest.raises(ConfigurationError, match="statement_cache_size='off'"):
        PostgresStore(PG_DSN + "?statement_cache_size=off", schema=schema)
    store = PostgresStore(PG_DSN + "?statement_cache_size=0", schema=schema)
    assert store.statement_cache_size == 0 and "statement_cache_size" not in store.dsn
    assert isinstance(await store.reserve([WindowSpec("task", "x", 10, 0, 0)], "standard", 1, lease_seconds=9),
                      Reservation)
    await store.aclose()


async def test_the_schema_is_created_and_used_explicitly_never_public(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_DSN)
    try:
        before = await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        store = PostgresStore(PG_DSN, schema=schema)
        await store.record_run({"runId": "r"})
        await store.aclose()
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1",
                                                             schema)}
        assert {"al_windows", "al_holds", "al_charges", "al_receipts", "al_runs", "al_migrations"} <= tables
        assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == before
    finally:
        await conn.close()


async def test_a_version_2_schema_migrates_forward_with_its_reservations_and_spend(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_DSN)
    try:
        async with conn.transaction():  # what an agentlanes of migration 2 left behind
            await conn.execute(f'CREATE SCHEMA "{schema}"')
            await conn.execute(f'SET LOCAL search_path TO "{schema}"')
            await conn.execute("CREATE TABLE al_migrations (version integer PRIMARY KEY, name text NOT NULL, "
                               "applied_at timestamptz NOT NULL DEFAULT now())")
            for version, name, sql in MIGRATIONS[:2]:
                await conn.execute(sql)
                await conn.execute("INSERT INTO al_migrations (version, name) VALUES ($1, $2)", version, name)
            windows = json.dumps([{"w": "task", "k": "old", "cap": 1_000_000, "high": 250_000, "pro": 0},
                                  {"w": "day", "k": "d", "cap": 5_000_000, "high": 1_000_000, "pro": 0}])
            for rid, lane in (("a", "standard"), ("b", "high-end"), ("c", "standard")):
                answer = await conn.fetchval("SELECT al_reserve($1, $2, 100000, 600, NULL, $3::jsonb)", rid, lane,
                                             windows)
                assert json.loads(answer)["ok"]
            await conn.fetchval("SELECT al_settle('a', 'standard', 70000, $1::jsonb)", windows)
    finally:
        await conn.close()
    store = PostgresStore(PG_DSN, schema=schema)
    specs = [WindowSpec("task", "old", 1_000_000, 250_000, 0), WindowSpec("day", "d", 5_000_000, 1_000_000, 0)]
    task, day = await store.window_states(specs)
    assert (task.committed, task.reserved, task.high_end_used) == (70_000, 200_000, 100_000)
    assert (day.committed, day.reserved) == (70_000, 200_000)
    # the reservations made before the migration settle and release as any other
    await store.settle(Reservation("b", "high-end", 100_000, tuple(specs), 0.0), 90_000)
    await store.release(Reservation("c", "standard", 100_000, tuple(specs), 0.0))
    task, day = await store.window_states(specs)
    assert (task.committed, task.reserved, task.high_end_used) == (160_000, 0, 90_000)
    assert (day.committed, day.reserved) == (160_000, 0)
    await store.aclose()


async def test_a_charge_whose_roll_up_was_interrupted_is_rolled_up_once_by_the_sweep(schema: str) -> None:
    import asyncpg

    spec = WindowSpec("task", "swept", 1_000_000, 0, 0)
    store = PostgresStore(PG_DSN, schema=schema)
    res = await store.reserve([spec], "standard", 100_000, lease_seconds=600)
    assert isinstance(res, Reservation)
    await store.aclose()
    conn = await asyncpg.connect(PG_DSN)
    try:  # the charge committed, then the server died before rolling it up
        await conn.execute(
            f'INSERT INTO "{schema}".al_charges (id, lane, actual, names, keys, caps, highs, pros, at) '
            "VALUES ($1, 'standard', 80000, '{task}', '{swept}', '{1000000}', '{0}', '{0}', now() - interval '1 min')",
            res.id,
        )
        await conn.execute(f'INSERT INTO "{schema}".al_unapplied (id) VALUES ($1)', res.id)
    finally:
        await conn.close()
    store = PostgresStore(PG_DSN, schema=schema)  # a worker starts: it sweeps
    [state] = await store.window_states([spec])
    assert (state.committed, state.reserved) == (80_000, 0)
    assert await store.settle(res, 80_000) == 80_000  # the journal applies it again: nothing more
    await store.release(res)
    [state] = await store.window_states([spec])
    assert (state.committed, state.reserved) == (80_000, 0)
    await store.aclose()


@pytest.mark.parametrize("value", ["²", "-1", "ten", "1.5"])
def test_a_statement_cache_size_that_is_no_whole_number_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("AGENTLANES_STORE", PG_DSN)
    monkeypatch.setenv("AGENTLANES_STORE_STATEMENT_CACHE_SIZE", value)
    with pytest.raises(ConfigurationError, match=r"AGENTLANES_STORE_STATEMENT_CACHE_SIZE=.* is not a whole number"):
        open_store(None, tmp_path)
