"""PostgreSQL under concurrency and faults: many processes, one cap; a killed worker's
reservations reclaimed after the lease; the database gone mid-run; concurrent receipts."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from agentlanes import Lanes, StageContext, cli
from agentlanes.budget import Reservation, WindowSpec
from agentlanes.receipts import ReceiptSigner
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
    """A TCP proxy on 127.0.0.1 in front of PostgreSQL, which the test can cut."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.alive = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self.alive:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.alive:
                client.close()
                return
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
