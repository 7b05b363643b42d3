"""The budget stores, against baselines measured in the same run.

1. **A stage's store work, one process.** What the engine asks of the ledger per model
   call: ``headroom(run, "task")``, ``reserve(run, lane, estimate)``, ``settle(res,
   actual)``, over the bundled optimizer's windows (task, session, day). Measured for the
   memory store (the baseline: no I/O at all) and the default SQLite store at each
   durability level; printed as microseconds per stage and as a ratio to the memory store.
2. **PostgreSQL, 1 and 8 worker processes** reserving and settling against one contended
   window whose cap admits 90 % of what is asked: reservations per second, overruns and
   exact totals, against a raw-asyncpg baseline doing the same two conditional UPDATEs
   (``reserved = reserved + $1 WHERE committed + reserved + $1 <= cap``, then
   ``committed = committed + $2, reserved = reserved - $1``) from the same number of
   processes, in the same run. Target: >= 2,000/s with 8 workers, or >= 0.8x the baseline.
3. **SQLite, 1 and 8 worker processes** sharing one file, the same loop.

Every figure is the median of several passes, baselines interleaved with what they are
the baseline of (the machine may be shared and noisy). ``--src`` runs the same
measurements against another checkout (for before/after figures).

Usage: python benchmarks/bench_store.py [--quick] [--dsn postgresql://postgres@127.0.0.1:5432/test]
       [--src DIR] [--only stage|postgres|sqlite]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STAGE = textwrap.dedent("""
    import json, sys, tempfile, time, uuid, anyio
    from pathlib import Path
    from agentlanes.budget import Reservation
    from agentlanes.ledger import BudgetLedger
    from agentlanes.policy import load_bundle
    from agentlanes.stores import MemoryStore, SQLiteStore

    def make(kind, home):
        if kind == "memory":
            return MemoryStore()
        level = kind.split(":")[1]
        if level == "default":
            return SQLiteStore(Path(home) / "agentlanes.db")
        return SQLiteStore(Path(home) / "agentlanes.db", durability=level)

    async def main(kind, n):
        n = int(n)
        with tempfile.TemporaryDirectory() as home:
            store = make(kind, home)
            ledger = BudgetLedger(store, load_bundle().optimizer, session_id="bench")
            run = uuid.uuid4().hex
            for _ in range(20):  # warm up: connections, statements, caches
                await ledger.headroom(run, "task")
                res = await ledger.reserve(run, "standard", 2_000)
                await ledger.settle(res, 1_500)
            wall0, cpu0 = time.perf_counter(), time.process_time()
            for i in range(n):
                if i % 20 == 0:
                    run = uuid.uuid4().hex  # a new run (a new task window) every 20 stages
                await ledger.headroom(run, "task")
                res = await ledger.reserve(run, "standard", 2_000)
                assert isinstance(res, Reservation), res
                await ledger.settle(res, 1_500)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            await store.aclose()
        print(json.dumps({"wall_us": wall / n * 1e6, "cpu_us": cpu / n * 1e6}))

    anyio.run(main, *sys.argv[1:])
""")

WORKER = textwrap.dedent("""
    import json, sys, time, anyio

    async def ours(kind, target, n, cap):
        from agentlanes.budget import Reservation, WindowSpec
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
                await store.settle(res, 100)
                charged += 100
        took = time.perf_counter() - t0
        await store.aclose()
        return admitted, charged, took

    async def raw(target, n, cap):
        import asyncpg
        dsn, schema = target.split("#")
        conn = await asyncpg.connect(dsn)
        reserve = (f'UPDATE "{schema}".raw_windows SET reserved = reserved + $1 '
                   'WHERE k = $2 AND committed + reserved + $1 <= cap RETURNING 1')
        settle = (f'UPDATE "{schema}".raw_windows SET committed = committed + $2, reserved = reserved - $1 '
                  'WHERE k = $3')
        await conn.fetchval(f'SELECT count(*) FROM "{schema}".raw_windows')
        print("ready", flush=True)
        sys.stdin.readline()
        t0 = time.perf_counter()
        admitted = charged = 0
        for _ in range(int(n)):
            if await conn.fetchval(reserve, 100, "bench"):
                admitted += 1
                await conn.execute(settle, 100, 100, "bench")
                charged += 100
        took = time.perf_counter() - t0
        await conn.close()
        return admitted, charged, took

    async def main(kind, target, n, cap):
        if kind == "raw":
            result = await raw(target, n, cap)
        else:
            result = await ours(kind, target, n, cap)
        print(json.dumps(dict(zip(("admitted", "charged", "seconds"), result))), flush=True)

    anyio.run(main, *sys.argv[1:])
""")


def env_for(src: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(src), "AGENTLANES_LOG_LEVEL": "off"}


def stage_pass(src: Path, kind: str, n: int) -> dict[str, float] | None:
    proc = subprocess.run([sys.executable, "-c", STAGE, kind, str(n)], cwd=src, env=env_for(src),
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        if "durability" in proc.stderr:  # a checkout without durability levels
            return None
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def bench_stage(src: Path, quick: bool) -> None:
    n = 1000 if quick else 3000
    passes = 3
    kinds = ["memory", "sqlite:default", "sqlite:process", "sqlite:settlements", "sqlite:full"]
    results: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    skipped: set[str] = set()
    for _ in range(passes):
        for kind in kinds:  # interleaved: each pass measures the baseline beside the others
            if kind in skipped:
                continue
            # a synced store is ~100x slower: fewer stages keep the pass short
            r = stage_pass(src, kind, n if kind in ("memory", "sqlite:default", "sqlite:process") else n // 10)
            if r is None:
                skipped.add(kind)
            else:
                results[kind].append(r)
    base = statistics.median(r["wall_us"] for r in results["memory"])
    base_cpu = statistics.median(r["cpu_us"] for r in results["memory"])
    print("== a stage's store work (headroom + reserve + settle, 3 windows), one process, median of "
          f"{passes} passes")
    print(f"{'store':<30} {'wall µs/stage':>14} {'stages/s':>10} {'x memory':>9} {'cpu µs/stage':>13} {'x memory':>9}")
    for kind in kinds:
        if not results[kind]:
            print(f"{kind:<30} (not in this checkout)")
            continue
        wall = statistics.median(r["wall_us"] for r in results[kind])
        cpu = statistics.median(r["cpu_us"] for r in results[kind])
        label = {"memory": "memory (baseline)", "sqlite:default": "sqlite, default settings"}.get(kind) or (
            f"sqlite, durability={kind.partition(':')[2]}")
        print(f"{label:<30} {wall:>14,.0f} {1e6 / wall:>10,.0f} {wall / base:>9.1f} {cpu:>13,.0f} "
              f"{cpu / base_cpu:>9.1f}")


def run_workers(src: Path, kind: str, target: str, workers: int, per_worker: int, cap: int) -> dict[str, float]:
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, kind, target, str(per_worker), str(cap)], cwd=src,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env_for(src))
             for _ in range(workers)]
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        assert line == "ready", f"worker said {line!r}"
    for p in procs:  # start together
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=900)
        assert p.returncode == 0, f"{kind} worker failed"
        results.append(json.loads(out.strip().splitlines()[-1]))
    slowest = max(r["seconds"] for r in results)
    admitted = sum(r["admitted"] for r in results)
    charged = sum(r["charged"] for r in results)
    return {"rate": workers * per_worker / slowest, "admitted": admitted, "charged": charged}


async def _pg(dsn: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def pg(dsn: str, sql: str) -> None:
    import anyio

    anyio.run(_pg, dsn, sql)


def committed(dsn: str, kind: str, schema: str) -> tuple[int, int, int]:
    """(committed, reserved, overrun) of the bench window, as the database holds it."""
    import anyio
    import asyncpg

    async def read() -> tuple[int, int, int]:
        conn = await asyncpg.connect(dsn)
        try:
            if kind == "raw":
                row = await conn.fetchrow(f'SELECT committed, reserved, 0 AS overrun FROM "{schema}".raw_windows')
            else:
                row = await conn.fetchrow(
                    f'SELECT committed, reserved, overrun FROM "{schema}".al_windows WHERE window_key = $1', "bench")
            return int(row["committed"]), int(row["reserved"]), int(row["overrun"])
        finally:
            await conn.close()

    return anyio.run(read)


def bench_postgres(src: Path, dsn: str, quick: bool) -> None:
    per = 400 if quick else 1500
    passes = 3
    print(f"== PostgreSQL: reserve + settle on one contended window, per worker process {per:,}; median of "
          f"{passes} passes")
    print(f"{'':<34} {'workers':>7} {'reservations/s':>15} {'x baseline':>10}  {'overruns':>8}  totals exact")
    for workers in (1, 8):
        cap = int(workers * per * 100 * 0.9)  # 90 % of what is asked fits
        rates: dict[str, list[float]] = {"raw": [], "postgres": []}
        checks: dict[str, tuple[int, bool]] = {}
        for _ in range(passes):
            for kind in ("raw", "postgres"):
                schema = f"al_bench_{uuid.uuid4().hex[:10]}"
                try:
                    if kind == "raw":
                        pg(dsn, f'CREATE SCHEMA "{schema}"; CREATE TABLE "{schema}".raw_windows (k text PRIMARY KEY, '
                                f'cap bigint NOT NULL, committed bigint NOT NULL DEFAULT 0, '
                                f'reserved bigint NOT NULL DEFAULT 0); '
                                f"INSERT INTO \"{schema}\".raw_windows (k, cap) VALUES ('bench', {cap})")
                    r = run_workers(src, kind, f"{dsn}#{schema}", workers, per, cap)
                    done, held, overrun = committed(dsn, kind, schema)
                    over = max(0, done - cap) + overrun
                    exact = done + overrun == r["charged"] == r["admitted"] * 100 and held == 0
                    prev = checks.get(kind, (0, True))
                    checks[kind] = (max(prev[0], over), prev[1] and exact)
                    rates[kind].append(r["rate"])
                finally:
                    pg(dsn, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        base = statistics.median(rates["raw"])
        for kind, label in (("raw", "raw asyncpg, 2 UPDATEs (baseline)"), ("postgres", "PostgresStore")):
            rate = statistics.median(rates[kind])
            over, exact = checks[kind]
            print(f"{label:<34} {workers:>7} {rate:>15,.0f} {rate / base:>10.2f}  {over:>8}  {exact}")
    print("target: >= 2,000 reservations/s with 8 workers, or >= 0.8x the raw-asyncpg baseline; 0 overruns")


def bench_sqlite_processes(src: Path, quick: bool) -> None:
    per = 400 if quick else 1500
    print(f"== SQLite (default settings): reserve + settle on one contended window, {per:,} per worker process")
    for workers in (1, 8):
        cap = int(workers * per * 100 * 0.9)
        with tempfile.TemporaryDirectory() as tmp:
            r = run_workers(src, "sqlite", str(Path(tmp) / "bench.db"), workers, per, cap)
        over = max(0, int(r["charged"]) - cap)
        print(f"sqlite {workers} worker(s): {r['rate']:>8,.0f} reservations/s  admitted {int(r['admitted']):,} of "
              f"{workers * per:,}  overruns {over}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dsn", default=os.environ.get("AGENTLANES_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--src", type=Path, default=ROOT, help="the checkout to measure (default: this one)")
    parser.add_argument("--only", choices=["stage", "postgres", "sqlite"])
    args = parser.parse_args()
    src = args.src.resolve()
    print(f"measuring {src}  ({time.strftime('%Y-%m-%d %H:%M:%S')}, {os.cpu_count()} CPUs)")
    if args.only in (None, "stage"):
        bench_stage(src, args.quick)
    if args.only in (None, "postgres"):
        bench_postgres(src, args.dsn, args.quick)
    if args.only in (None, "sqlite"):
        bench_sqlite_processes(src, args.quick)


if __name__ == "__main__":
    main()
