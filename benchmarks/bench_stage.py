"""What a stage costs, against baselines measured in the same run.

Prints figures and asserts nothing. Every figure is a median of 3 or more passes
(``--quick``: fewer, shorter passes), interleaved so that a noisy machine slows the
baseline and the thing measured alike; wall time and this process's CPU time (every
thread) are both shown.

1. Stage overhead in OTel-span units: ``run.stage`` whose model is a no-op double, minus
   a bare call of that double, divided by one OpenTelemetry SDK span with 10 attributes
   (started as current and ended, on a TracerProvider with a processor that drops it):
   tracing off (no spans, no record), record only, tracing on (``Lanes``' defaults),
   each with the memory store and with the default store (SQLite in ``data_dir``).
   Targets: tracing on, memory store <= 3 spans; tracing on, default store, wall no
   slower than a PydanticAI run.
2. Peers, a whole agent run on a canned model: PydanticAI ``Agent.run`` with its
   ``TestModel`` and the OpenAI Agents SDK ``Runner.run`` with a scripted ``Model``
   (its tracing disabled), as ratios to the agentlanes default-store stage.
3. Throughput against a fast OpenAI-compatible server in its own process
   (``_fastserver.py``, 127.0.0.1): requests/s at concurrency 8 and 64 through the bare
   ``openai.AsyncOpenAI`` client (the baseline), ``OpenAIChatModel.request`` alone, a
   stage calling ``ctx.complete`` (memory and default store), a stage using
   ``ctx.openai_client()``, and PydanticAI alone and through ``LaneModel(ctx)``; "lost"
   is the share of the baseline's requests/s that is gone. Target: <= 10 % with tracing
   on. Time to first token through ``ctx.stream`` vs the bare client's stream (target
   <= 1.1x).
4. Memory per in-flight stage (tracemalloc, N stages parked in their model call) vs a
   bare anyio task awaiting an event. Target: <= 2x.

Options: ``--quick`` (shorter), ``--smoke`` (tiny counts: every code path in seconds,
for the test that keeps this script working; its figures mean nothing), ``--json PATH``
(all figures as one JSON document as well; ``-``: on stdout instead of the report),
``--compare REV`` (section 1's stage overhead for this tree and git revision REV, checked out in a
temporary worktree, in alternating subprocesses that each measure their own span),
``--profile memory|default`` (cProfile, in CPU time, of the tracing-on stage with that
store: top 25 by own time, and agentlanes' functions by cumulative time).

Peers and PydanticAI need ``pip install -e '.[bench]'``; without them their lines say so.

Usage: python benchmarks/bench_stage.py [--quick] [--smoke] [--json PATH] [--compare REV] [--profile STORE]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# --compare runs this script in a subprocess against another checkout: its agentlanes
# (and its policies) are imported instead of this tree's; the measuring code is this one.
TREE = Path(os.environ.get("AGENTLANES_BENCH_TREE", str(ROOT)))
sys.path.insert(0, str(TREE))
sys.path.insert(1, str(Path(__file__).resolve().parent))

import argparse  # noqa: E402
import atexit  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from collections.abc import Awaitable, Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from functools import partial  # noqa: E402
from typing import Any  # noqa: E402

import anyio  # noqa: E402

from agentlanes import Lanes, StageContext  # noqa: E402
from agentlanes.models import Message, ModelSettings  # noqa: E402
from agentlanes.stores import MemoryStore  # noqa: E402
from agentlanes.testing import TestModel  # noqa: E402

SIGNALS = json.loads((TREE / "examples/signals/healthy-local.json").read_text())
SPAN_ATTRIBUTES = {f"bench.attribute.{i}": ("value", i, i * 0.5, i % 2 == 0)[i % 4] for i in range(10)}
LEVELS: dict[str, dict[str, bool]] = {
    "tracing off": {"tracing": False, "record": False},
    "record only": {"tracing": False, "record": True},
    "tracing on": {},  # Lanes' defaults: spans, the local trace, the content store, records
}
LEVEL_NOTES = {
    "tracing off": "no spans, no record",
    "record only": "local trace and content store, no OTel spans",
    "tracing on": "Lanes' defaults",
}
STORES = ("memory", "default")
MESSAGES = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True)
class Params:
    rounds: int  # passes of section 1 and 2
    case_seconds: float  # per case per pass (calibrated count of calls)
    min_calls: int
    passes: int  # throughput passes
    pass_seconds: float
    ttft_calls: int  # per pass
    in_flight: int  # stages parked at once for the memory figure
    profile_calls: int
    concurrency: tuple[int, ...] = (8, 64)


FULL = Params(
    rounds=5,
    case_seconds=1.0,
    min_calls=20,
    passes=5,
    pass_seconds=1.5,
    ttft_calls=150,
    in_flight=2000,
    profile_calls=2000,
)
QUICK = Params(
    rounds=3,
    case_seconds=0.25,
    min_calls=10,
    passes=3,
    pass_seconds=0.6,
    ttft_calls=40,
    in_flight=500,
    profile_calls=500,
)
# Smoke: one call per worker per pass, a single pass: every path runs, nothing is measured.
SMOKE = Params(
    rounds=3,
    case_seconds=0.005,
    min_calls=2,
    passes=1,
    pass_seconds=0.0,
    ttft_calls=3,
    in_flight=20,
    profile_calls=20,
    concurrency=(2, 3),
)


def roomy_router() -> Any:
    """The default documents with caps large enough for millions of benchmark calls."""
    from agentlanes import Router
    from agentlanes.policy import PolicyBundle, load_document

    opt = json.loads((TREE / "policies/optimizer.json").read_text())
    for window in opt["budgetPolicy"]["windows"]:
        window["maxSpend"] = 1e9
    return Router(
        PolicyBundle.from_loaded(
            load_document(TREE / "policies/policy.json"),
            load_document(opt),
            load_document(TREE / "policies/price-catalog.json"),
        )
    )


ROUTER = roomy_router()


# Every Lanes gets a data directory under one per-process directory, removed at exit
# (a full run writes hundreds of megabytes of traces and content).
SCRATCH = tempfile.mkdtemp(prefix="agentlanes-bench-")
atexit.register(shutil.rmtree, SCRATCH, True)


def make_lanes(models: dict[str, Any], store: str, **level: bool) -> Lanes:
    """Lanes on a fresh data directory; ``store="default"`` passes no store (SQLite there)."""
    kwargs: dict[str, Any] = dict(level)
    if "record" in kwargs and "record" not in Lanes.__init__.__code__.co_varnames:  # an older tree
        raise LookupError("this tree's Lanes has no record= setting")
    if store == "memory":
        kwargs["store"] = MemoryStore()
    return Lanes(models, signals=SIGNALS, data_dir=tempfile.mkdtemp(dir=SCRATCH), router=ROUTER, **kwargs)


async def ask(ctx: StageContext) -> str:
    return (await ctx.complete("hi", max_tokens=16)).text


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --------------------------------------------------------------------------------------
# 1 and 2: stage overhead in span units, peers
# --------------------------------------------------------------------------------------


class SpanBaseline:
    """One OpenTelemetry SDK span with 10 attributes, started as current and ended, on a
    real TracerProvider whose only processor exports to nowhere."""

    def __init__(self) -> None:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

        class Drop(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(Drop()))
        self.tracer = self.provider.get_tracer("bench")

    def run(self, n: int) -> tuple[float, float]:
        tracer = self.tracer
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            with tracer.start_as_current_span("chat bench", attributes=SPAN_ATTRIBUTES):
                pass
        return (time.perf_counter() - t0) / n * 1e6, (time.process_time() - c0) / n * 1e6


async def timed(op: Callable[[], Awaitable[Any]], n: int) -> tuple[float, float]:
    """Wall and CPU microseconds per call of ``op``, over ``n`` sequential calls."""
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        await op()
    return (time.perf_counter() - t0) / n * 1e6, (time.process_time() - c0) / n * 1e6


async def calibrate(op: Callable[[], Awaitable[Any]], p: Params) -> int:
    """Warm ``op`` up (caches, plans, key files, connections) and return how many calls
    fill ``p.case_seconds``."""
    await op()
    t0, calls = time.perf_counter(), 0
    while calls < 3 or time.perf_counter() - t0 < p.case_seconds / 4:
        await op()
        calls += 1
    per_call = (time.perf_counter() - t0) / calls
    return max(p.min_calls, int(p.case_seconds / per_call))


def pydantic_ai_peer() -> Callable[[], Awaitable[Any]] | str:
    try:
        from pydantic_ai import Agent
        from pydantic_ai.models.test import TestModel as PydanticTestModel
    except ImportError:
        return "not installed (pip install -e '.[bench]')"
    agent = Agent(PydanticTestModel(custom_output_text="ok"))
    return partial(agent.run, "hi")


def openai_agents_peer() -> Callable[[], Awaitable[Any]] | str:
    try:
        from agents import Agent, ModelResponse, Runner, Usage, set_tracing_disabled
        from agents.models.interface import Model
        from openai.types.responses import ResponseOutputMessage, ResponseOutputText
    except ImportError:
        return "not installed (pip install -e '.[bench]')"
    set_tracing_disabled(True)  # no trace export (it would go to OpenAI's endpoint)

    class Canned(Model):
        """A scripted model: every request gets the same assistant message."""

        async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
            text = ResponseOutputText(text="ok", type="output_text", annotations=[], logprobs=[])
            message = ResponseOutputMessage(
                id="msg-bench", type="message", role="assistant", status="completed", content=[text]
            )
            return ModelResponse(
                output=[message],
                usage=Usage(requests=1, input_tokens=9, output_tokens=1, total_tokens=10),
                response_id=None,
            )

        async def stream_response(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            raise NotImplementedError("the benchmark runs Runner.run only")
            yield

    agent = Agent(name="bench", instructions="Answer.", model=Canned())
    return partial(Runner.run, agent, "hi")


async def stage_costs(p: Params, peers: bool = True) -> dict[str, Any]:
    """Section 1 and 2: wall and CPU per call of every case, medians of interleaved rounds."""
    span = SpanBaseline()
    model = TestModel(text="ok")
    msgs, settings = [Message("user", "hi")], ModelSettings(max_tokens=16)
    cases: dict[str, Callable[[], Awaitable[Any]]] = {"bare": partial(model.request, msgs, settings)}
    skipped: dict[str, str] = {}
    cleanup: list[Callable[[], None]] = [model.calls.clear, model.settings.clear]
    async with contextlib.AsyncExitStack() as stack:
        for store in STORES:
            for level, kwargs in LEVELS.items():
                double = TestModel(text="ok")
                try:
                    lanes = make_lanes({"standard": double}, store, **kwargs)
                except LookupError as exc:
                    skipped[f"{level}/{store}"] = str(exc)
                    continue
                stack.push_async_callback(lanes.aclose)
                run = await stack.enter_async_context(lanes.run(task_class="routine-code"))
                cases[f"{level}/{store}"] = partial(run.stage, "planning", ask)
                cleanup += [run.records.clear, double.calls.clear, double.settings.clear]
        if peers:
            for name, make in (("pydantic_ai", pydantic_ai_peer), ("openai_agents", openai_agents_peer)):
                made = make()
                if isinstance(made, str):
                    skipped[name] = made
                else:
                    cases[name] = made
        counts = {name: await calibrate(op, p) for name, op in cases.items()}
        span.run(max(p.min_calls, 200))
        span_calls = max(p.min_calls, int(p.case_seconds / (span.run(200)[0] / 1e6)))
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in [*cases, "span"]}
        for _ in range(p.rounds):
            samples["span"].append(span.run(span_calls))
            for name, op in cases.items():
                samples[name].append(await timed(op, counts[name]))
            for clear in cleanup:
                clear()
    span.provider.shutdown()
    out: dict[str, Any] = {
        name: {
            "wall_us": median([s[0] for s in values]),
            "cpu_us": median([s[1] for s in values]),
            "calls_per_pass": counts.get(name, span_calls),
            "passes": len(values),
        }
        for name, values in samples.items()
    }
    for name, why in skipped.items():
        out[name] = {"skipped": why}
    return out


def overhead_report(costs: dict[str, Any]) -> dict[str, Any]:
    """Added cost over the bare call, in microseconds and in spans; targets."""
    span, bare = costs["span"], costs["bare"]
    rows: dict[str, Any] = {}
    for store in STORES:
        for level in LEVELS:
            case = costs.get(f"{level}/{store}", {})
            if "wall_us" not in case:
                rows[f"{level}/{store}"] = case
                continue
            row = {"stage_wall_us": case["wall_us"], "stage_cpu_us": case["cpu_us"]}
            for clock in ("wall", "cpu"):
                added = case[f"{clock}_us"] - bare[f"{clock}_us"]
                row[f"added_{clock}_us"] = added
                row[f"added_{clock}_spans"] = added / span[f"{clock}_us"]
            rows[f"{level}/{store}"] = row
    return rows


def print_overhead(costs: dict[str, Any], rows: dict[str, Any]) -> None:
    span, bare = costs["span"], costs["bare"]
    print(
        f"1. Stage overhead: run.stage on a no-op model minus a bare call of it, in units of one OTel SDK span "
        f"(medians of {span['passes']} interleaved passes)"
    )
    for label, row in (("one OTel SDK span, 10 attributes (the unit)", span), ("bare no-op model call", bare)):
        print(f"   {label:<44} CPU {row['cpu_us']:8.1f} us   wall {row['wall_us']:8.1f} us")
    for store in STORES:
        label = "memory store" if store == "memory" else "default store (SQLite in data_dir)"
        print(f"   {label}:")
        for level in LEVELS:
            row = rows[f"{level}/{store}"]
            name = f"{level} ({LEVEL_NOTES[level]})"
            if "skipped" in row:
                print(f"     {name:<58} {row['skipped']}")
                continue
            target = ""
            if level == "tracing on" and store == "memory":
                target = f"  target <= 3 spans: {'met' if row['added_cpu_spans'] <= 3 else 'MISSED'} (CPU)"
            print(
                f"     {name:<58} added CPU {row['added_cpu_us']:8.1f} us = {row['added_cpu_spans']:6.1f} spans;"
                f"  wall {row['added_wall_us']:8.1f} us = {row['added_wall_spans']:6.1f} spans{target}"
            )


PEERS = {
    "pydantic_ai": "PydanticAI Agent.run (TestModel)",
    "openai_agents": "OpenAI Agents Runner.run (scripted Model)",
}


def peer_report(costs: dict[str, Any]) -> dict[str, Any]:
    """Each peer's run, and the agentlanes stage (tracing on, default store) as a multiple of it."""
    ours = costs.get("tracing on/default", {})
    out: dict[str, Any] = {}
    for name in PEERS:
        peer = costs.get(name, {"skipped": "not measured"})
        if "wall_us" in peer and "wall_us" in ours:
            peer = {
                **peer,
                **{f"stage_over_peer_{clock}": ours[f"{clock}_us"] / peer[f"{clock}_us"] for clock in ("wall", "cpu")},
            }
        out[name] = peer
    return out


def print_peers(costs: dict[str, Any], peers: dict[str, Any]) -> None:
    ours = costs.get("tracing on/default", {})
    print("2. Peers: one whole agent run on a canned model, vs one agentlanes stage (tracing on, default store)")
    if "wall_us" in ours:
        print(
            f"   {'agentlanes run.stage, tracing on, default store':<49} CPU {ours['cpu_us'] / 1000:7.2f} ms   "
            f"wall {ours['wall_us'] / 1000:7.2f} ms"
        )
    for name, label in PEERS.items():
        peer = peers[name]
        if "stage_over_peer_wall" not in peer:
            print(f"   {label:<49} {peer.get('skipped', 'not measured')}")
            continue
        wall, cpu = peer["stage_over_peer_wall"], peer["stage_over_peer_cpu"]
        target = f"  target <= 1.0x wall: {'met' if wall <= 1 else 'MISSED'}" if name == "pydantic_ai" else ""
        print(
            f"   {label:<49} CPU {peer['cpu_us'] / 1000:7.2f} ms   wall {peer['wall_us'] / 1000:7.2f} ms;  "
            f"the stage is {cpu:.2f}x its CPU, {wall:.2f}x its wall{target}"
        )


# --------------------------------------------------------------------------------------
# 3: throughput and time to first token against a server in its own process
# --------------------------------------------------------------------------------------


async def throughput_pass(op: Callable[[], Awaitable[Any]], concurrency: int, seconds: float) -> tuple[float, float]:
    """Requests/s and CPU microseconds per request: ``concurrency`` workers calling ``op``
    until the deadline (at least once each; the calls in flight then are waited for and
    counted)."""
    done = 0
    end = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while True:  # at least one call per worker
            await op()
            done += 1
            if time.perf_counter() >= end:
                return

    t0, c0 = time.perf_counter(), time.process_time()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return done / (time.perf_counter() - t0), (time.process_time() - c0) / max(done, 1) * 1e6


THROUGHPUT_CASES = {
    "bare": "bare AsyncOpenAI client (baseline)",
    "model": "OpenAIChatModel.request alone (no stage)",
    "stage/memory": "stage + ctx.complete, tracing on, memory store",
    "stage/default": "stage + ctx.complete, tracing on, default store",
    "client/memory": "stage + ctx.openai_client(), tracing on, memory store",
    "pydantic_ai": "PydanticAI alone (its OpenAIChatModel)",
    "pydantic_ai/lane": "PydanticAI through LaneModel(ctx), tracing on, memory store",
}
TARGETED = ("stage/memory", "stage/default", "client/memory")


async def throughput(base_url: str, p: Params) -> dict[str, Any]:
    import openai

    from agentlanes.models import TextDelta
    from agentlanes.models.openai import OpenAIChatModel

    bare = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
    model = OpenAIChatModel("bench-model", base_url=base_url, api_key="bench")
    msgs, settings = [Message("user", "hi")], ModelSettings(max_tokens=16)
    cases: dict[str, Callable[[], Awaitable[Any]]] = {
        "bare": partial(bare.chat.completions.create, model="bench-model", messages=MESSAGES, max_tokens=16),
        "model": partial(model.request, msgs, settings),
    }
    skipped: dict[str, str] = {}
    runs: dict[str, Any] = {}

    async def own_client(ctx: StageContext) -> str | None:
        client = ctx.openai_client()
        completion = await client.chat.completions.create(model="any", messages=MESSAGES, max_tokens=16)
        return completion.choices[0].message.content

    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(bare.close)
        for store in STORES:
            lanes = make_lanes({"standard": OpenAIChatModel("bench-model", base_url=base_url, api_key="bench")}, store)
            stack.push_async_callback(lanes.aclose)
            runs[store] = await stack.enter_async_context(lanes.run(task_class="routine-code"))
        cases["stage/memory"] = partial(runs["memory"].stage, "planning", ask)
        cases["stage/default"] = partial(runs["default"].stage, "planning", ask)
        cases["client/memory"] = partial(runs["memory"].stage, "planning", own_client)
        try:
            from pydantic_ai import Agent
            from pydantic_ai.models.openai import OpenAIChatModel as PydanticOpenAI
            from pydantic_ai.providers.openai import OpenAIProvider
        except ImportError:
            skipped["pydantic_ai"] = skipped["pydantic_ai/lane"] = "not installed (pip install -e '.[bench]')"
        else:
            pydantic_client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
            stack.push_async_callback(pydantic_client.close)
            own = Agent(PydanticOpenAI("bench-model", provider=OpenAIProvider(openai_client=pydantic_client)))
            cases["pydantic_ai"] = partial(own.run, "hi", model_settings={"max_tokens": 16})
            if (
                importlib.util.find_spec("agentlanes.integrations") is None
                or importlib.util.find_spec("agentlanes.integrations.pydantic_ai") is None
            ):
                skipped["pydantic_ai/lane"] = "not in this checkout (agentlanes.integrations.pydantic_ai)"
            else:
                from agentlanes.integrations.pydantic_ai import LaneModel

                on_lane = Agent()

                async def pydantic_on_lane(ctx: StageContext) -> str:
                    result = await on_lane.run("hi", model=LaneModel(ctx), model_settings={"max_tokens": 16})
                    return result.output

                cases["pydantic_ai/lane"] = partial(runs["memory"].stage, "planning", pydantic_on_lane)

        results: dict[str, Any] = {}
        for concurrency in p.concurrency:
            for op in cases.values():  # warm: connections, plans, caches
                if p.pass_seconds:
                    await throughput_pass(op, concurrency, min(0.3, p.pass_seconds))
            samples: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
            for _ in range(p.passes):
                for name, op in cases.items():
                    samples[name].append(await throughput_pass(op, concurrency, p.pass_seconds))
                for run in runs.values():
                    run.records.clear()
            # "lost" pairs each pass with the baseline's pass just before it (drift on a
            # shared machine cancels), then takes the median over passes. In requests/s,
            # and in CPU per request: what throughput would be lost where this process's
            # CPU is the limit (the steadier figure when other processes take the cores).
            bare_passes = samples["bare"]
            for name, values in samples.items():
                results[f"{name}@{concurrency}"] = {
                    "requests_per_s": median([s[0] for s in values]),
                    "cpu_us_per_request": median([s[1] for s in values]),
                    "lost_pct": median([(1 - s[0] / b[0]) * 100 for s, b in zip(values, bare_passes, strict=True)]),
                    "lost_cpu_pct": median([(1 - b[1] / s[1]) * 100 for s, b in zip(values, bare_passes, strict=True)]),
                }
            if "pydantic_ai" in cases and "pydantic_ai/lane" in cases:
                alone = results[f"pydantic_ai@{concurrency}"]["requests_per_s"]
                lane = results[f"pydantic_ai/lane@{concurrency}"]
                lane["ratio_to_pydantic_ai"] = lane["requests_per_s"] / alone

        # Time to first token, one request at a time: from the call (the stage's, for
        # ctx.stream: routing and reservation count) to the first text delta.
        first: list[float] = []

        async def streamed(ctx: StageContext, t0: float) -> None:
            async with ctx.stream("hi", max_tokens=16) as stream:
                async for event in stream:
                    if not first and isinstance(event, TextDelta):
                        first.append(time.perf_counter() - t0)

        async def bare_stream() -> float:
            t0, ttft = time.perf_counter(), 0.0
            chunks = await bare.chat.completions.create(
                model="bench-model",
                messages=MESSAGES,
                max_tokens=16,
                stream=True,
                stream_options={"include_usage": True},
            )
            async for chunk in chunks:
                if not ttft and chunk.choices and chunk.choices[0].delta.content:
                    ttft = time.perf_counter() - t0
            return ttft

        async def stage_stream(store: str) -> float:
            first.clear()
            await runs[store].stage("planning", streamed, time.perf_counter())
            return first[0]

        streams: dict[str, Callable[[], Awaitable[float]]] = {
            "bare": bare_stream,
            "stage/memory": partial(stage_stream, "memory"),
            "stage/default": partial(stage_stream, "default"),
        }
        for op in streams.values():
            for _ in range(3):
                await op()
        ttft: dict[str, list[float]] = {name: [] for name in streams}
        for _ in range(p.passes):
            per: dict[str, list[float]] = {name: [] for name in streams}
            for _ in range(p.ttft_calls):
                for name, op in streams.items():
                    per[name].append(await op())
            for name, values in per.items():
                ttft[name].append(median(values))
            for run in runs.values():
                run.records.clear()
        base_ttft = median(ttft["bare"])
        results["ttft"] = {
            name: {"ms": median(values) * 1000, "ratio": median(values) / base_ttft} for name, values in ttft.items()
        }
    for name, why in skipped.items():
        results[name] = {"skipped": why}
    return results


def print_throughput(res: dict[str, Any], p: Params) -> None:
    print(
        f"3. Throughput against an OpenAI-compatible server in its own process (127.0.0.1), medians of "
        f"{p.passes} interleaved passes of {p.pass_seconds:g} s; CPU = this process's per request; lost = share of "
        "the bare client's requests/s (and of 1/its CPU per request) that is gone, paired per pass"
    )
    for concurrency in p.concurrency:
        print(f"   concurrency {concurrency}:")
        for name, label in THROUGHPUT_CASES.items():
            if name in res:
                print(f"     {label:<62} {res[name]['skipped']}")
                continue
            row = res[f"{name}@{concurrency}"]
            lost = "" if name == "bare" else f"  lost {row['lost_pct']:5.1f} % ({row['lost_cpu_pct']:5.1f} % by CPU)"
            if name in TARGETED:
                met = row["lost_pct"] <= 10 and row["lost_cpu_pct"] <= 10
                lost += f" target <= 10 %: {'met' if met else 'MISSED'}"
            if "ratio_to_pydantic_ai" in row:
                lost += f"; {row['ratio_to_pydantic_ai']:.2f}x PydanticAI alone"
            print(
                f"     {label:<62} {row['requests_per_s']:7.0f} req/s  CPU {row['cpu_us_per_request'] / 1000:5.2f} ms"
                f"{lost}"
            )
    t = res["ttft"]
    print(f"   time to first token, one request at a time, median of {p.passes} passes of {p.ttft_calls}:")
    print(f"     {'bare AsyncOpenAI stream (baseline)':<62} {t['bare']['ms']:7.2f} ms")
    for name, label in (
        ("stage/memory", "ctx.stream in a stage, tracing on, memory store"),
        ("stage/default", "ctx.stream in a stage, tracing on, default store"),
    ):
        ratio = t[name]["ratio"]
        print(
            f"     {label:<62} {t[name]['ms']:7.2f} ms = {ratio:.2f}x (target <= 1.1x: "
            f"{'met' if ratio <= 1.1 else 'MISSED'})"
        )


# --------------------------------------------------------------------------------------
# 4: memory per in-flight stage
# --------------------------------------------------------------------------------------


async def in_flight(count: int) -> dict[str, float]:
    """tracemalloc's growth per parked unit: ``count`` bare anyio tasks awaiting an event,
    then ``count`` stages (tracing on, memory store) parked in their model call."""

    async def bare_tasks() -> float:
        release, parked = anyio.Event(), anyio.Event()
        waiting = 0

        async def one() -> None:
            nonlocal waiting
            waiting += 1
            if waiting == count:
                parked.set()
            await release.wait()

        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            async with anyio.create_task_group() as tg:
                for _ in range(count):
                    tg.start_soon(one)
                await parked.wait()
                grown = tracemalloc.get_traced_memory()[0] - base
                release.set()
        finally:
            tracemalloc.stop()
        return grown / count

    gate: dict[str, Any] = {}

    class Parked(TestModel):
        async def request(self, messages: Any, settings: Any) -> Any:
            if gate:
                gate["waiting"] += 1
                if gate["waiting"] == count:
                    gate["parked"].set()
                await gate["release"].wait()
            return await super().request(messages, settings)

    model = Parked(text="ok")
    lanes = make_lanes({"standard": model}, "memory")
    try:
        async with lanes.run(task_class="routine-code") as run:
            for _ in range(20):  # warm: plans, key file, logger, trace file
                await run.stage("planning", ask)
            run.records.clear()
            model.calls.clear()
            model.settings.clear()
            gate.update(waiting=0, parked=anyio.Event(), release=anyio.Event())
            gc.collect()
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                async with anyio.create_task_group() as tg:
                    for _ in range(count):
                        tg.start_soon(partial(run.stage, "planning", ask))
                    await gate["parked"].wait()
                    grown = tracemalloc.get_traced_memory()[0] - base
                    gate["release"].set()
            finally:
                tracemalloc.stop()
            if len(run.records) != count or any(r.status != "succeeded" for r in run.records):
                raise RuntimeError("the parked stages did not all succeed")
    finally:
        await lanes.aclose()
    bare = await bare_tasks()
    return {"stage_bytes": grown / count, "bare_task_bytes": bare, "ratio": grown / count / bare, "count": count}


def print_memory(mem: dict[str, float]) -> None:
    print(f"4. Memory in flight (tracemalloc, {mem['count']:.0f} at once)")
    print(f"   bare anyio task awaiting an event (baseline)                   {mem['bare_task_bytes'] / 1024:6.1f} KiB")
    print(
        f"   stage parked in its model call (tracing on, memory store)      {mem['stage_bytes'] / 1024:6.1f} KiB = "
        f"{mem['ratio']:.1f}x (target <= 2x: {'met' if mem['ratio'] <= 2 else 'MISSED'})"
    )


# --------------------------------------------------------------------------------------
# --compare, --profile, main
# --------------------------------------------------------------------------------------


def compare(rev: str, p: Params, as_json: bool) -> dict[str, Any]:
    """Section 1 for this tree and for ``rev``, in alternating subprocesses."""
    repeats = 2 if p is not FULL else 3
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(other), rev], check=True, capture_output=True
        )
        try:
            trees = {"this tree": ROOT, rev: other}
            figures: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
            mode = "--smoke" if p is SMOKE else "--quick" if p is QUICK else ""
            for _ in range(repeats):
                for name, tree in trees.items():
                    env = {**os.environ, "AGENTLANES_BENCH_TREE": str(tree)}
                    args = [sys.executable, __file__, "--child-overhead", *([mode] if mode else [])]
                    out = subprocess.run(args, check=True, capture_output=True, text=True, env=env).stdout
                    figures[name].append(json.loads(out))
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)], check=False, capture_output=True
            )
    result: dict[str, Any] = {}
    for name, runs in figures.items():
        result[name] = {}
        for key in runs[0]:
            rows = [r[key] for r in runs]
            if "skipped" in rows[0]:
                result[name][key] = rows[0]
            else:
                result[name][key] = {k: median([r[k] for r in rows]) for k in rows[0]}
    if not as_json:
        print(
            f"stage overhead, this tree vs {rev}: medians of {repeats} alternating subprocesses, each measuring "
            "its own OTel span"
        )
        for store in STORES:
            for level in LEVELS:
                for name in figures:
                    row = result[name].get(f"{level}/{store}", {"skipped": "not measured"})
                    label = f"{level}, {store} store"
                    if "skipped" in row:
                        print(f"  {label:<28} {name:<12} {row['skipped']}")
                        continue
                    print(
                        f"  {label:<28} {name:<12} added CPU {row['added_cpu_us']:8.1f} us = "
                        f"{row['added_cpu_spans']:6.1f} spans;  wall {row['added_wall_us']:8.1f} us = "
                        f"{row['added_wall_spans']:6.1f} spans"
                    )
    return result


def profile(store: str, p: Params) -> None:
    import cProfile
    import pstats

    async def main() -> None:
        lanes = make_lanes({"standard": TestModel(text="ok")}, store)
        async with lanes.run(task_class="routine-code") as run:
            for _ in range(50):
                await run.stage("planning", ask)
            profiler = cProfile.Profile(time.process_time)  # CPU: other processes' time is not ours
            profiler.enable()
            for _ in range(p.profile_calls):
                await run.stage("planning", ask)
            profiler.disable()
        await lanes.aclose()
        print(f"cProfile (CPU time): {p.profile_calls} stages, tracing on, {store} store; top 25 by own time")
        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(25)
        print("agentlanes' own functions, top 25 by cumulative time")
        stats.sort_stats("cumtime").print_stats("agentlanes/", 25)

    anyio.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter passes")
    parser.add_argument("--smoke", action="store_true", help="tiny counts: every code path, figures meaningless")
    parser.add_argument(
        "--json", metavar="PATH", help="also write all figures as JSON to PATH ('-': stdout, no report)"
    )
    parser.add_argument("--compare", metavar="REV", help="section 1 for this tree and git revision REV")
    parser.add_argument("--profile", choices=STORES, help="cProfile the tracing-on stage with this store")
    parser.add_argument("--child-overhead", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    p = SMOKE if args.smoke else QUICK if args.quick else FULL
    os.environ["AGENTLANES_LOG_LEVEL"] = "info"  # the per-stage log line is part of the cost...
    sink = open(os.devnull, "w")  # noqa: SIM115 - ...but not the terminal's (a real write per line)
    quiet = args.json == "-"

    def emit(figures: dict[str, Any]) -> None:
        if args.json == "-":
            print(json.dumps(figures, indent=2))
        elif args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")

    if args.profile:
        with contextlib.redirect_stderr(sink):
            profile(args.profile, p)
        return
    if args.child_overhead:
        with contextlib.redirect_stderr(sink):
            costs = anyio.run(stage_costs, p, False)
        print(json.dumps(overhead_report(costs)))
        return
    if args.compare:
        emit({"compare": {"rev": args.compare, **compare(args.compare, p, quiet)}})
        return
    from _fastserver import FastServer

    figures: dict[str, Any] = {
        "python": sys.version.split()[0],
        "mode": "smoke" if args.smoke else "quick" if args.quick else "full",
        "cpus": os.cpu_count(),
        "concurrency": p.concurrency,
        "load_average_before": os.getloadavg()[0],
    }
    if not quiet:
        print(
            f"python {figures['python']}, {figures['cpus']} CPUs, load average {figures['load_average_before']:.1f} "
            f"(other processes share the cores: wall figures stretch, CPU figures hold); {figures['mode']} run",
            flush=True,
        )
    with contextlib.redirect_stderr(sink):
        costs = anyio.run(stage_costs, p)
    figures["span"], figures["bare_call"] = costs["span"], costs["bare"]
    figures["stage_overhead"] = overhead_report(costs)
    figures["peers"] = peer_report(costs)
    if not quiet:
        print_overhead(costs, figures["stage_overhead"])
        print_peers(costs, figures["peers"])
        sys.stdout.flush()
    with FastServer() as base_url, contextlib.redirect_stderr(sink):
        figures["throughput"] = anyio.run(throughput, base_url, p)
    if not quiet:
        print_throughput(figures["throughput"], p)
        sys.stdout.flush()
    with contextlib.redirect_stderr(sink):
        figures["memory"] = anyio.run(in_flight, p.in_flight)
    figures["load_average_after"] = os.getloadavg()[0]
    if not quiet:
        print_memory(figures["memory"])
        print(f"load average at the end: {figures['load_average_after']:.1f}")
    emit(figures)


if __name__ == "__main__":
    main()
