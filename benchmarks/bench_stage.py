"""Per-stage SDK overhead, loopback throughput, and memory per in-flight stage.

Prints figures, asserts nothing; baselines are measured in the same run:

* overhead: one ``run.stage`` (route + reservation + settle + log + records) whose
  model is a no-op double, minus a bare call of that double; compared with the cost of
  one OpenTelemetry SDK span (started and ended on a real TracerProvider).
  Target (with tracing on, once spans land): at most two spans' worth.
* loopback: requests/s to an OpenAI-compatible server on 127.0.0.1, direct through
  ``OpenAIChatModel`` versus through ``run.stage``, same concurrency. Target: <= 5 % lost.
* memory: 10,000 stages in flight at once (each awaiting its model), tracemalloc peak
  per stage, and the wall time to run them all.

* ``--compare REV``: the same per-stage overhead, in CPU time, for this tree and for
  git revision ``REV`` (checked out in a temporary worktree), in alternating
  subprocesses, each with its own OTel span measured in the same process: the figures
  for a change's "before and after" on a noisy machine.

Usage: python benchmarks/bench_stage.py [--quick] [--compare REV]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agentlanes import Lanes, StageContext  # noqa: E402
from agentlanes.models import Message, ModelSettings  # noqa: E402
from agentlanes.stores import MemoryStore  # noqa: E402
from agentlanes.testing import TestModel  # noqa: E402

SIGNALS = json.loads((ROOT / "examples/signals/healthy-local.json").read_text())


def roomy_router() -> Any:
    """The default documents with caps large enough for millions of benchmark calls."""
    from agentlanes import Router
    from agentlanes.policy import PolicyBundle, load_document

    opt = json.loads((ROOT / "policies/optimizer.json").read_text())
    for window in opt["budgetPolicy"]["windows"]:
        window["maxSpend"] = 1e9
    return Router(PolicyBundle.from_loaded(load_document(ROOT / "policies/policy.json"), load_document(opt),
                                           load_document(ROOT / "policies/price-catalog.json")))


ROUTER = roomy_router()


async def ask(ctx: StageContext) -> str:
    return (await ctx.complete("hi", max_tokens=16)).text


def per_call_us(total_s: float, n: int) -> float:
    return total_s / n * 1e6


async def overhead(n: int, rounds: int, tracing: bool, record: bool = True) -> dict[str, float]:
    import tempfile

    model = TestModel(text="ok")
    lanes = Lanes({"standard": model}, signals=SIGNALS, store=MemoryStore(), data_dir=tempfile.mkdtemp(),
                  router=ROUTER, tracing=tracing, record=record)
    msgs = [Message("user", "hi")]
    settings = ModelSettings(max_tokens=16)
    stage_s: list[float] = []
    bare_s: list[float] = []
    async with lanes.run(task_class="routine-code") as run:
        for _ in range(50):  # warm caches (plans, key file, structlog)
            await run.stage("planning", ask)
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(n):
                await model.request(msgs, settings)
            bare_s.append(per_call_us(time.perf_counter() - t0, n))
            run.records.clear()
            model.calls.clear()
            t0 = time.perf_counter()
            for _ in range(n):
                await run.stage("planning", ask)
            stage_s.append(per_call_us(time.perf_counter() - t0, n))
    return {"bare": statistics.median(bare_s), "stage": statistics.median(stage_s)}


def otel_span_us(n: int, rounds: int) -> float:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Drop()))
    tracer = provider.get_tracer("bench")
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            with tracer.start_as_current_span("stage") as span:
                span.set_attribute("agentlanes.lane", "standard")
        out.append(per_call_us(time.perf_counter() - t0, n))
    provider.shutdown()
    return statistics.median(out)


async def loopback(requests: int, concurrency: int) -> dict[str, float]:
    from agentlanes.models.openai import OpenAIChatModel
    from tests.openai_server import ScriptedOpenAIServer

    with ScriptedOpenAIServer() as server:
        model = OpenAIChatModel("test-model", base_url=server.base_url)
        lanes = Lanes({"standard": model}, signals=SIGNALS, store=MemoryStore(), data_dir="/tmp/agentlanes-bench",
                  router=ROUTER)
        msgs = [Message("user", "hi")]

        async def direct_worker(k: int) -> None:
            for _ in range(k):
                await model.request(msgs, ModelSettings(max_tokens=16))

        async with lanes.run(task_class="routine-code") as run:

            async def staged_worker(k: int) -> None:
                for _ in range(k):
                    await run.stage("planning", ask)

            results: dict[str, list[float]] = {"direct": [], "staged": []}
            per = requests // concurrency
            for _ in range(3):
                for name, worker in (("direct", direct_worker), ("staged", staged_worker)):
                    t0 = time.perf_counter()
                    async with anyio.create_task_group() as tg:
                        for _ in range(concurrency):
                            tg.start_soon(worker, per)
                    results[name].append(per * concurrency / (time.perf_counter() - t0))
                run.records.clear()
    return {k: statistics.median(v) for k, v in results.items()}


async def in_flight(count: int) -> dict[str, float]:
    release = anyio.Event()

    class Waiting(TestModel):
        async def request(self, messages: Any, settings: Any) -> Any:
            await release.wait()
            return await super().request(messages, settings)

    lanes = Lanes({"standard": Waiting(text="ok")}, signals=SIGNALS, store=MemoryStore(),
                  data_dir="/tmp/agentlanes-bench", router=ROUTER)
    started = anyio.Event()
    entered = 0

    async def one(run: Any) -> None:
        nonlocal entered
        entered += 1
        if entered == count:
            started.set()
        await run.stage("planning", ask)

    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    async with lanes.run(task_class="routine-code") as run, anyio.create_task_group() as tg:
        for _ in range(count):
            tg.start_soon(one, run)
        await started.wait()
        for _ in range(200):  # let every stage reach its model call
            await anyio.sleep(0)
        current = tracemalloc.get_traced_memory()[0]
        release.set()
    elapsed = time.perf_counter() - t0
    tracemalloc.stop()
    assert all(r.status == "succeeded" for r in run.records) and len(run.records) == count
    return {"bytes_per_stage": (current - base) / count, "seconds": elapsed}


# Run in a subprocess with a tree on sys.path: CPU microseconds per stage (median of
# rounds), and of one OTel span in the same process. Works against older trees too
# (they may not know Lanes(record=...)).
_CPU_OVERHEAD = """
import contextlib, io, os, statistics, sys, tempfile, time
root, tracing, record, n = sys.argv[1], sys.argv[2] == "on", sys.argv[3] == "on", int(sys.argv[4])
sys.path.insert(0, root)
os.environ["AGENTLANES_LOG_LEVEL"] = "info"
import anyio
from agentlanes import Lanes
from agentlanes.stores import MemoryStore
from agentlanes.testing import TestModel
sys.path.insert(0, os.path.join(root, "benchmarks"))
import bench_stage as b

async def main():
    kw = {"tracing": tracing}
    if "record" in Lanes.__init__.__code__.co_varnames:
        kw["record"] = record
    lanes = Lanes({"standard": TestModel(text="ok")}, signals=b.SIGNALS, store=MemoryStore(),
                  data_dir=tempfile.mkdtemp(), router=b.ROUTER, **kw)
    out = []
    async with lanes.run(task_class="routine-code") as run:
        for _ in range(50):
            await run.stage("planning", b.ask)
        for _ in range(5):
            t = time.process_time()
            for _ in range(n):
                await run.stage("planning", b.ask)
            out.append((time.process_time() - t) / n * 1e6)
            run.records.clear()
    return statistics.median(out)

with contextlib.redirect_stderr(io.StringIO()):
    stage = anyio.run(main)
print(stage, b.otel_span_us(n * 5, 5))
"""


def compare(rev: str, quick: bool) -> None:
    import subprocess
    import tempfile

    n = 200 if quick else 600
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(other), rev], check=True,
                       capture_output=True)
        try:
            print(f"per-stage CPU overhead, this tree vs {rev} (alternating subprocesses; OTel span units in the "
                  "same process):")
            for tracing, record, label in (("off", "off", "no spans, no record"), ("off", "on", "record only"),
                                           ("on", "on", "spans and record (the default)")):
                rows: dict[str, list[tuple[float, float]]] = {"this tree": [], rev: []}
                for _ in range(2 if quick else 3):
                    for name, tree in (("this tree", ROOT), (rev, other)):
                        out = subprocess.run([sys.executable, "-c", _CPU_OVERHEAD, str(tree), tracing, record, str(n)],
                                             check=True, capture_output=True, text=True).stdout.split()
                        rows[name].append((float(out[0]), float(out[1])))
                for name, values in rows.items():
                    stage = statistics.median(v[0] for v in values)
                    spans = statistics.median(v[0] / v[1] for v in values)
                    print(f"  {label:<32} {name:<12} {stage:8.1f} us = {spans:5.1f} spans")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)], check=False,
                           capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--compare", metavar="REV", help="also measure git revision REV in the same run")
    args = parser.parse_args()
    if args.compare:
        compare(args.compare, args.quick)
        return
    n, rounds = (300, 3) if args.quick else (2000, 5)
    os.environ["AGENTLANES_LOG_LEVEL"] = "info"  # logging is part of the overhead...
    with contextlib.redirect_stderr(io.StringIO()) as sink:  # ...but not the terminal's
        figures = anyio.run(overhead, n, rounds, False, False)
        recorded = anyio.run(overhead, n, rounds, False, True)
        traced = anyio.run(overhead, n, rounds, True)
        span = otel_span_us(n * 5, rounds)
        loop = anyio.run(loopback, 600 if args.quick else 3000, 8)
        mem = anyio.run(in_flight, 2000 if args.quick else 10_000)
    sink.truncate(0)
    added = figures["stage"] - figures["bare"]
    added_recorded = recorded["stage"] - recorded["bare"]
    added_traced = traced["stage"] - traced["bare"]
    print(f"python {sys.version.split()[0]}; per-stage SDK overhead (route, reserve, settle, log, records):")
    print(f"  bare no-op model call       {figures['bare']:8.1f} us")
    print(f"  run.stage, no spans, no record {figures['stage']:8.1f} us  added {added:6.1f} us = "
          f"{added / span:.1f} spans")
    print(f"  run.stage, record only      {recorded['stage']:8.1f} us  added {added_recorded:6.1f} us = "
          f"{added_recorded / span:.1f} spans (local OTLP/JSON trace and content store, no spans)")
    print(f"  run.stage, tracing on       {traced['stage']:8.1f} us  added {added_traced:6.1f} us = "
          f"{added_traced / span:.1f} spans (stage + chat spans, local OTLP/JSON trace, content store)")
    print(f"  one OpenTelemetry SDK span  {span:8.1f} us  (measured now; target: added <= 2 spans)")
    lost = 1 - loop["staged"] / loop["direct"]
    print(f"loopback OpenAI-compatible server, 8 concurrent: direct {loop['direct']:.0f} req/s, "
          f"through stages {loop['staged']:.0f} req/s, lost {lost * 100:.1f}% (target <= 5%)")
    print(f"in flight: {mem['bytes_per_stage'] / 1024:.1f} KiB per stage awaiting its model; "
          f"{2000 if args.quick else 10_000} concurrent stages ran in {mem['seconds']:.2f} s")


if __name__ == "__main__":
    main()
