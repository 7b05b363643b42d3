"""The PostgreSQL store behind a real PgBouncer (Debian's ``pgbouncer``, which .ci/run
installs), in session and in transaction pooling. Each test starts its own PgBouncer on a
free loopback port with a configuration written to its tmp_path, pointing at the test
server. Never skipped: a missing pgbouncer fails with how to install it."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from agentlanes import load_bundle
from agentlanes.budget import Refusal, Reservation
from agentlanes.errors import StoreError
from agentlanes.ledger import BudgetLedger
from agentlanes.stores import open_store
from agentlanes.stores.postgres import PostgresStore
from tests.stores.conftest import PG_DSN, drop_schema, pg_schema

PGBOUNCER = shutil.which("pgbouncer") or next(
    (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PgBouncer:
    def __init__(self, tmp: Path, mode: str, *, server_connections: int = 4) -> None:
        if PGBOUNCER is None:
            pytest.fail("pgbouncer is not installed: apt-get install -y pgbouncer (.ci/run does it).")
        self.port = free_port()
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "users.txt").write_text('"postgres" ""\n')
        config = tmp / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            "test = host=127.0.0.1 port=5432 dbname=test user=postgres\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {tmp / 'users.txt'}\n"
            f"pool_mode = {mode}\nmax_client_conn = 500\ndefault_pool_size = {server_connections}\n"
            "server_lifetime = 3600\nlogfile =\npidfile =\n"
        )
        command = [PGBOUNCER, str(config)]
        if os.geteuid() == 0:  # PgBouncer refuses to run as root: as postgres, once it read its config
            command[1:1] = ["-u", pwd.getpwnam("postgres").pw_name]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read() if self.proc.stdout else ""
                pytest.fail(f"pgbouncer exited: {out[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail("pgbouncer did not start listening within 10 s")
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/test"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


@pytest.fixture(params=["session", "transaction"])
def bouncer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, PgBouncer]]:
    b = PgBouncer(tmp_path / "pgbouncer", request.param)
    yield request.param, b
    b.stop()


@pytest.fixture
def schema() -> Iterator[str]:
    name = pg_schema()
    yield name
    anyio.run(drop_schema, name)


async def public_tables() -> int:
    import asyncpg

    conn = await asyncpg.connect(PG_DSN)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"))
    finally:
        await conn.close()


async def test_the_store_works_behind_pgbouncer(bouncer: tuple[str, PgBouncer], schema: str) -> None:
    mode, b = bouncer
    before = await public_tables()
    cache = "?statement_cache_size=0" if mode == "transaction" else ""
    store = PostgresStore(b.dsn + cache, schema=schema, pool_size=4)
    ledger = BudgetLedger(store, load_bundle().optimizer, session_id="bounced")
    charged = 0

    async def run(i: int) -> None:
        nonlocal charged
        run_id = f"run-{i}"
        for _ in range(5):
            await ledger.headroom(run_id, "task")
            held = await ledger.reserve(run_id, "high-end" if i % 4 == 0 else "standard", 20_000)
            if isinstance(held, Refusal):
                continue
            if i % 3 == 0:
                await ledger.release(held)
            else:
                cost = await ledger.settle(held, 15_000)
                charged += cost  # (not `charged += await ...`: that reads `charged` before awaiting)

    async with anyio.create_task_group() as tg:
        for i in range(40):
            tg.start_soon(run, i)
    session = next(s for s in await ledger.states("x") if s.spec.window == "session")
    assert (session.committed + session.overrun, session.reserved) == (charged, 0) and charged > 0

    def seal(body: dict[str, object]) -> tuple[str, str]:
        return f"d{body['seq']}", str(body)

    async def receipts(run: str) -> None:
        for i in range(10):
            await store.append_receipt(run, {"runId": run, "i": i}, seal)

    async with anyio.create_task_group() as tg:
        for run in ("a", "b", "c"):
            tg.start_soon(receipts, run)
    assert [r.seq for r in await store.receipts("b")] == list(range(10))
    await store.record_run({"runId": "r1", "status": "running"})
    await store.record_run({"runId": "r1", "status": "succeeded"})
    assert await store.runs() == [{"runId": "r1", "status": "succeeded"}]
    await store.aclose()
    assert await public_tables() == before  # the schema is used explicitly: nothing lands in public


async def test_transaction_pooling_takes_the_statement_cache_setting_from_the_environment(
    schema: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = PgBouncer(tmp_path / "pgbouncer", "transaction")
    try:
        monkeypatch.setenv("AGENTLANES_STORE", b.dsn)
        monkeypatch.setenv("AGENTLANES_STORE_SCHEMA", schema)
        monkeypatch.setenv("AGENTLANES_STORE_STATEMENT_CACHE_SIZE", "0")
        # PgBouncer 1.18 opens its server connections one at a time and, on a loaded
        # 2-core CI machine, a call once waited over the 5 s default for one: the
        # timeout is taken from the environment too, like everything an operator sets
        monkeypatch.setenv("AGENTLANES_STORE_TIMEOUT", "30")
        store = open_store(None, tmp_path)
        assert isinstance(store, PostgresStore) and (store.statement_cache_size, store.timeout) == (0, 30.0)
        ledger = BudgetLedger(store, load_bundle().optimizer)

        async def work(i: int) -> None:
            for _ in range(10):
                held = await ledger.reserve(f"run-{i}", "standard", 1_000)
                assert isinstance(held, Reservation)
                await ledger.settle(held, 900)

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(work, i)
        day = next(s for s in await ledger.states("x") if s.spec.window == "day")
        assert (day.committed, day.reserved) == (80 * 900, 0)
        await store.aclose()
    finally:
        b.stop()


async def test_transaction_pooling_with_the_statement_cache_on_says_how_to_fix_it(
    schema: str, tmp_path: Path
) -> None:
    import asyncpg

    # Two server connections, reused last-in first-out: the store prepares its statements
    # on one while another client holds the other, then is given the other one.
    b = PgBouncer(tmp_path / "pgbouncer", "transaction", server_connections=2)
    try:
        other = await asyncpg.connect(b.dsn, statement_cache_size=0)
        store = PostgresStore(b.dsn, schema=schema, pool_size=1)
        specs = BudgetLedger(store, load_bundle().optimizer).specs("r")
        tx = other.transaction()
        await tx.start()  # holds one server connection
        held = await store.reserve(specs, "standard", 1, lease_seconds=60)  # prepared on the other
        assert isinstance(held, Reservation)
        await tx.commit()  # now the most recently freed server is one the store prepared nothing on
        with pytest.raises(StoreError, match="statement_cache_size=0") as ei:
            await store.reserve(specs, "standard", 1, lease_seconds=60)
        assert "nothing was admitted" in str(ei.value)
        await other.close()
        await store.aclose()
    finally:
        b.stop()
