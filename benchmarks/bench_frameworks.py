"""Throughput of framework agents on lanes, against the same agents on the bare client.

Prints figures, asserts nothing; the baseline is measured in the same run: every round
measures both arms, one after the other, and the medians over the rounds are compared
(a noisy machine's drift hits both alike):

* PydanticAI: ``agent.run`` (one request, no tools) with PydanticAI's own
  ``OpenAIChatModel`` on the server (bare), versus with ``LaneModel(ctx)`` inside one
  stage, the lane bound to agentlanes' ``OpenAIChatModel`` on the same server (lanes:
  routing once per stage, then per request a reservation, settlement, the local record
  and spans).
* OpenAI Agents SDK: ``Runner.run`` with the SDK's ``OpenAIChatCompletionsModel``
  (bare) versus ``RunConfig(model_provider=LaneModelProvider(ctx))`` (lanes); the
  SDK's tracing is off in both.

The server is a minimal OpenAI-compatible chat-completions server (asyncio, keep-alive,
one fixed reply) in a separate process on 127.0.0.1, so the client side is what is
measured. Issue 9's target: at most 10 % of the bare throughput
lost at concurrency 8 and 64.

Usage: python benchmarks/bench_frameworks.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agentlanes import Lanes, StageContext  # noqa: E402
from agentlanes.models.openai import OpenAIChatModel  # noqa: E402
from agentlanes.stores import MemoryStore  # noqa: E402

SIGNALS = json.loads((ROOT / "examples/signals/healthy-local.json").read_text())

SERVER = r"""
import asyncio, json, socket, sys

REPLY = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "test-model",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 1, "total_tokens": 12},
}).encode()
HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(REPLY)).encode() + b"\r\n\r\n")


async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            writer.write(HEAD + REPLY)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"http://127.0.0.1:{port}/v1", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
"""


def roomy_router() -> Any:
    """The default documents with caps large enough for every benchmark call."""
    from agentlanes import Router
    from agentlanes.policy import PolicyBundle, load_document

    opt = json.loads((ROOT / "policies/optimizer.json").read_text())
    for window in opt["budgetPolicy"]["windows"]:
        window["maxSpend"] = 1e9
    return Router(
        PolicyBundle.from_loaded(
            load_document(ROOT / "policies/policy.json"),
            load_document(opt),
            load_document(ROOT / "policies/price-catalog.json"),
        )
    )


async def timed(requests: int, concurrency: int, one: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """``(requests per second, client CPU milliseconds per request)`` for ``requests``
    calls of ``one``, ``concurrency`` at a time."""
    per_worker = requests // concurrency
    started, cpu = time.perf_counter(), time.process_time()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):

            async def worker() -> None:
                for _ in range(per_worker):
                    await one()

            tg.start_soon(worker)
    n = per_worker * concurrency
    return n / (time.perf_counter() - started), (time.process_time() - cpu) * 1000 / n


async def on_lanes(base_url: str, home: str, requests: int, concurrency: int, make: Any) -> tuple[float, float]:
    """Throughput of ``make(ctx)()`` calls inside one stage on a lane bound to the server."""
    lanes = Lanes(
        {"standard": OpenAIChatModel("test-model", base_url=base_url, api_key="k")},
        router=roomy_router(),
        signals=SIGNALS,
        store=MemoryStore(),
        data_dir=home,
        log=False,
    )
    try:
        async with lanes.run(task_class="routine-code") as run:

            async def stage(ctx: StageContext) -> tuple[float, float]:
                return await timed(requests, concurrency, make(ctx))

            return await run.stage("execution", stage)
    finally:
        await lanes.aclose()


Measure = Callable[[int, int], Awaitable[tuple[float, float]]]


async def pydantic_ai_round(base_url: str, home: str, requests: int, concurrency: int, order: tuple[str, ...]) -> Any:
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel as PydanticOpenAI
    from pydantic_ai.providers.openai import OpenAIProvider

    from agentlanes.integrations.pydantic_ai import LaneModel

    agent = Agent(instructions="Answer briefly.")
    bare_model = PydanticOpenAI("test-model", provider=OpenAIProvider(base_url=base_url, api_key="k"))

    async def bare() -> Any:
        return await agent.run("hi", model=bare_model)

    def lane_call(ctx: StageContext) -> Callable[[], Awaitable[Any]]:
        model = LaneModel(ctx)

        async def call() -> Any:
            return await agent.run("hi", model=model)

        return call

    arms: dict[str, Measure] = {
        "bare": lambda n, c: timed(n, c, bare),
        "lanes": lambda n, c: on_lanes(base_url, home, n, c, lane_call),
    }
    return {arm: await arms[arm](requests, concurrency) for arm in order}


async def agents_round(base_url: str, home: str, requests: int, concurrency: int, order: tuple[str, ...]) -> Any:
    from agents import Agent, OpenAIChatCompletionsModel, RunConfig, Runner
    from openai import AsyncOpenAI

    from agentlanes.integrations.openai_agents import LaneModelProvider

    agent = Agent(name="bench", instructions="Answer briefly.")
    client = AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0)
    bare_config = RunConfig(model=OpenAIChatCompletionsModel("test-model", client), tracing_disabled=True)

    async def bare() -> Any:
        return await Runner.run(agent, "hi", run_config=bare_config)

    def lane_call(ctx: StageContext) -> Callable[[], Awaitable[Any]]:
        config = RunConfig(model_provider=LaneModelProvider(ctx), tracing_disabled=True)

        async def call() -> Any:
            return await Runner.run(agent, "hi", run_config=config)

        return call

    arms: dict[str, Measure] = {
        "bare": lambda n, c: timed(n, c, bare),
        "lanes": lambda n, c: on_lanes(base_url, home, n, c, lane_call),
    }
    try:
        return {arm: await arms[arm](requests, concurrency) for arm in order}
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and rounds")
    args = parser.parse_args()
    requests, rounds = (128, 2) if args.quick else (256, 8)
    os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        home = tempfile.mkdtemp(prefix="agentlanes-bench-")
        print(
            f"server in a separate process at {base_url}; {requests} requests per arm and round, {rounds} rounds "
            "(arm order alternating); medians of req/s and of client CPU ms per request"
        )
        for name, one_round in (("PydanticAI agent.run", pydantic_ai_round), ("Agents SDK Runner.run", agents_round)):
            for concurrency in (8, 64):
                anyio.run(one_round, base_url, home, 64, concurrency, ("bare", "lanes"))  # warm-up
                seen: dict[str, list[tuple[float, float]]] = {"bare": [], "lanes": []}
                for r in range(rounds):
                    order = ("bare", "lanes") if r % 2 == 0 else ("lanes", "bare")
                    for arm, figure in anyio.run(one_round, base_url, home, requests, concurrency, order).items():
                        seen[arm].append(figure)
                rate = {arm: statistics.median(f[0] for f in v) for arm, v in seen.items()}
                cpu = {arm: statistics.median(f[1] for f in v) for arm, v in seen.items()}
                print(
                    f"{name}, {concurrency} concurrent: bare {rate['bare']:.0f} req/s, on lanes {rate['lanes']:.0f} "
                    f"req/s ({rate['lanes'] / rate['bare']:.2f}x); client CPU per request: bare "
                    f"{cpu['bare']:.2f} ms, on lanes {cpu['lanes']:.2f} ms ({cpu['lanes'] / cpu['bare']:.2f}x)"
                )
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
