"""Every store test runs against each store implementation: memory, SQLite, PostgreSQL.

PostgreSQL tests use the server at ``AGENTLANES_TEST_PG`` (default: the local one on
127.0.0.1:5432, database ``test``, which .ci/run starts); each test gets a schema of its
own, dropped afterwards. They are never skipped: an unreachable server fails them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agentlanes.stores import MemoryStore, SQLiteStore, Store

PG_DSN = os.environ.get("AGENTLANES_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def drop_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def pg_schema() -> str:
    return f"al_test_{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["memory", "sqlite", "sqlite-full", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> AsyncIterator[Store]:
    schema = pg_schema()
    if request.param == "postgres":
        from agentlanes.stores.postgres import PostgresStore

        make: Callable[[], Store] = lambda: PostgresStore(PG_DSN, schema=schema, clock=clock)  # noqa: E731
    elif request.param == "sqlite":
        make = lambda: SQLiteStore(tmp_path / "agentlanes.db", clock=clock)  # noqa: E731
    elif request.param == "sqlite-full":  # every write synced, in a worker thread: the other code path
        make = lambda: SQLiteStore(tmp_path / "agentlanes.db", clock=clock, durability="full")  # noqa: E731
    else:
        make = lambda: MemoryStore(clock=clock)  # noqa: E731
    s = make()
    yield s
    await s.aclose()
    if request.param == "postgres":
        await drop_schema(schema)
