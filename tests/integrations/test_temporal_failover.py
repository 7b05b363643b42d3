"""A worker killed mid-stage (SIGKILL, while its model call is in flight) and another
worker finishing the workflow: exact budget totals in the PostgreSQL store and one
verifiable receipt chain, one receipt for the one escalation."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.client import Client

from agentlanes.budget import to_micro
from agentlanes.integrations.temporal import LaneWorkflow, LoopInput
from agentlanes.receipts import Receipt, data_dir_public_key, verify_records
from agentlanes.stores.postgres import PostgresStore
from agentlanes.verifiers import CallableVerifier
from tests.integrations.temporal_app import PG_DSN, execute, is_right, lanes_for, plan
from tests.stores.conftest import drop_schema

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    name = f"al_test_{uuid.uuid4().hex[:12]}"
    yield name
    await drop_schema(name)


async def start_worker(address: str, queue: str, schema: str, home: Path, mode: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integrations.temporal_app",
            "worker",
            address,
            queue,
            PG_DSN,
            schema,
            str(home),
            mode,
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = await asyncio.to_thread(proc.stdout.readline)
    assert line.strip() == "ready", f"the worker did not start (exit status {proc.poll()})"
    return proc


async def test_a_worker_killed_mid_stage_leaves_exact_totals_and_one_receipt(
    temporal_address: str, tmp_path: Path, schema: str
) -> None:
    home = tmp_path / "shared"  # both workers: the same signing and content keys
    queue = f"q-{uuid.uuid4().hex[:8]}"
    doomed = await start_worker(temporal_address, queue, schema, home, "block")
    survivor = None
    try:
        client = await Client.connect(temporal_address)
        handle = await client.start_workflow(
            LaneWorkflow.run, LoopInput("fix", ["total() drops the last item"]), id=f"kill-{queue}", task_queue=queue
        )
        marker = home / "high-end-started"
        for _ in range(600):  # the escalated call is in flight on the doomed worker
            if marker.exists():
                break
            await asyncio.sleep(0.05)
        assert marker.read_text() == str(doomed.pid)
        survivor = await start_worker(temporal_address, queue, schema, home, "normal")
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
        summary = await asyncio.wait_for(handle.result(), 120)
    finally:
        for proc in (doomed, survivor):
            if proc is None:
                continue
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()

    [run] = summary["runs"]
    assert run["status"] == "succeeded"
    assert summary["output"]["verified"] is True
    assert [(s["name"], s["lane"]) for s in run["stages"]][1] == ("execution", "high-end")

    store = PostgresStore(PG_DSN, schema=schema)
    try:
        lanes = lanes_for(home, store)
        [task] = [s for s in await store.window_states(lanes.ledger.specs(run["runId"])) if s.spec.window == "task"]
        receipts = await store.receipts(run["runId"])
        everything = await store.receipts()
    finally:
        await store.aclose()

    # the same loop in-process, on the same models: what the run must have cost
    local = lanes_for(tmp_path / "local")
    async with local.run(task_class="routine-code") as same:
        planned = await same.stage("planning", plan, "total() drops the last item")
        await same.stage_with("execution", execute, [planned], verify=[CallableVerifier(is_right)])
    assert run["cost"] == str(same.result.cost)
    assert task.committed + task.overrun == to_micro(run["cost"])  # charged once, the killed call included
    assert task.reserved == 0  # nothing left held

    kinds = [Receipt.from_text(r.text).kind for r in receipts]
    assert kinds == ["EscalationReceipt", "RunClose"]  # one receipt for the one escalation
    report = verify_records([r.text for r in everything], data_dir_public_key(home / "keys"))
    assert report.ok, report
