"""Concurrent reservations never overrun a cap: tasks in one process, and processes
sharing one SQLite file."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio

from agentlanes.budget import Reservation, WindowSpec
from agentlanes.stores import MemoryStore, SQLiteStore
from tests.conftest import ROOT


async def test_ten_thousand_concurrent_reservations_never_overrun() -> None:
    store = MemoryStore()
    cap = 2_000_000
    spec = WindowSpec("task", "run", cap, 500_000, 100_000)
    rng = random.Random(7)
    plans = [(rng.choice(["cheap", "standard", "high-end", "pro"]), rng.randint(1, 1500), rng.random(),
              rng.randint(0, 5)) for _ in range(10_000)]
    settled = 0
    admitted = 0
    worst = 0
    done = anyio.Event()

    async def worker(lane: str, amount: int, fate: float, pauses: int) -> None:
        nonlocal settled, admitted
        res = await store.reserve([spec], lane, amount, lease_seconds=600)
        if not isinstance(res, Reservation):
            return
        admitted += 1
        for _ in range(pauses):
            await anyio.sleep(0)
        if fate < 0.7:
            actual = int(amount * fate / 0.7)
            await store.settle(res, actual)
            settled += actual
        else:
            await store.release(res)

    async def monitor() -> None:
        nonlocal worst
        while not done.is_set():
            [state] = await store.window_states([spec])
            worst = max(worst, state.committed + state.reserved)
            assert state.high_end_used <= spec.high_end_cap and state.pro_used <= spec.pro_cap
            await anyio.sleep(0)

    async with anyio.create_task_group() as outer:
        outer.start_soon(monitor)
        async with anyio.create_task_group() as tg:
            for plan in plans:
                tg.start_soon(worker, *plan)
        done.set()
    [state] = await store.window_states([spec])
    assert worst <= cap
    assert state.reserved == 0
    assert state.overrun == 0
    assert state.committed == settled <= cap
    assert admitted > 1000  # the cap was really contended


WORKER = textwrap.dedent("""
    import json, sys, anyio
    from agentlanes.budget import Reservation, WindowSpec
    from agentlanes.stores import SQLiteStore

    async def main(path, n):
        store = SQLiteStore(path)
        spec = WindowSpec("task", "shared", 1_500_000, 0, 0)
        admitted = 0
        for _ in range(n):
            res = await store.reserve([spec], "standard", 1000, lease_seconds=600)
            if isinstance(res, Reservation):
                admitted += 1
                await store.settle(res, 1000)
        print(json.dumps({"admitted": admitted}))

    anyio.run(main, sys.argv[1], int(sys.argv[2]))
""")


def test_four_processes_share_one_sqlite_cap(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    SQLiteStore(db)  # create the schema once
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(db), "500"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    admitted = 0
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        admitted += json.loads(out)["admitted"]
    state = anyio.run(lambda: SQLiteStore(db).window_states([WindowSpec("task", "shared", 1_500_000, 0, 0)]))[0]
    assert admitted == 1500  # 2,000 asked, exactly the cap admitted
    assert (state.committed, state.reserved, state.overrun) == (1_500_000, 0, 0)
