"""Reservations per second against a shared PostgreSQL store, 1 and 8 concurrent workers.

Each worker is its own process (its own connection pool), reserving and settling in a
loop against one window whose cap admits most but not all of what is asked, so the cap
is contended. Prints reservations/s and checks 0 overruns and exact totals; the SQLite
store is measured in the same run as the baseline. Target: >= 2,000/s with 8 workers.

Usage: python benchmarks/bench_store.py [--quick] [--dsn postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent("""
    import json, sys, time, anyio
    from agentlanes.budget import Reservation, WindowSpec

    async def main(kind, target, n, cap):
        if kind == "postgres":
            from agentlanes.stores.postgres import PostgresStore
            dsn, schema = target.split("#")
            store = PostgresStore(dsn, schema=schema)
        else:
            from agentlanes.stores import SQLiteStore
            store = SQLiteStore(target)
        spec = WindowSpec("task", "bench", int(cap), 0, 0)
        await store.window_states([spec])  # connect and migrate before the clock starts
        print("ready", flush=True)
        sys.stdin.readline()
        t0 = time.perf_counter()
        admitted = charged = 0
        for _ in range(int(n)):
            res = await store.reserve([spec], "standard", 100, lease_seconds=600)
            if isinstance(res, Reservation):
                admitted += 1
                charged += await store.settle(res, 100)
        took = time.perf_counter() - t0
        await store.aclose()
        print(json.dumps({"admitted": admitted, "charged": charged, "seconds": took}), flush=True)

    anyio.run(main, *sys.argv[1:])
""")


def run(kind: str, target: str, workers: int, per_worker: int) -> dict[str, float]:
    cap = int(workers * per_worker * 100 * 0.9)  # 90 % of what is asked fits
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AGENTLANES_LOG_LEVEL": "off"}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, kind, target, str(per_worker), str(cap)], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(workers)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    t0 = time.perf_counter()
    for p in procs:  # start together
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        results.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.perf_counter() - t0
    admitted = sum(r["admitted"] for r in results)
    charged = sum(r["charged"] for r in results)
    overruns = max(0, charged - cap)
    return {"rate": workers * per_worker / wall, "admitted": admitted, "cap_units": cap // 100,
            "overruns": overruns, "exact": charged == admitted * 100}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dsn", default=os.environ.get("AGENTLANES_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()
    per = 500 if args.quick else 2500
    schema = f"al_bench_{uuid.uuid4().hex[:10]}"
    try:
        for workers in (1, 8):
            pg = run("postgres", f"{args.dsn}#{schema}_{workers}", workers, per)
            with tempfile.TemporaryDirectory() as tmp:
                lite = run("sqlite", str(Path(tmp) / "bench.db"), workers, per)
            for name, r in (("postgres", pg), ("sqlite (baseline)", lite)):
                print(f"{name:<18} {workers} worker(s): {r['rate']:8,.0f} reservations/s  admitted "
                      f"{r['admitted']:,} of {workers * per:,} (cap {r['cap_units']:,})  overruns {r['overruns']}  "
                      f"totals exact: {r['exact']}")
    finally:
        import anyio
        import asyncpg

        async def drop() -> None:
            conn = await asyncpg.connect(args.dsn)
            try:
                for workers in (1, 8):
                    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}_{workers}" CASCADE')
            finally:
                await conn.close()

        anyio.run(drop)
    print("target: >= 2,000 reservations/s with 8 workers on PostgreSQL, 0 overruns")


if __name__ == "__main__":
    main()
