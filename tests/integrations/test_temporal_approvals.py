"""Approvals that wait: a task class that needs a human justification waits on the
workflow's ``approve`` signal; approved, denied and unanswered (time skipping: the
server moves the workflow's clock past the timeout instead of waiting it out)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from agentlanes import Lanes
from agentlanes.integrations.temporal import AgentLanesPlugin, LaneWorkflow, LoopInput
from tests.integrations.temporal_app import LOOPS, lanes_for, temporal_binary

HOUR = 3600.0


@pytest.fixture
async def env() -> AsyncIterator[WorkflowEnvironment]:
    environment = await WorkflowEnvironment.start_time_skipping_v2(
        dev_server_existing_path=temporal_binary(),
        ip="127.0.0.1",
        dev_server_extra_args=["--dynamic-config-value", "frontend.WorkflowTimeSkippingEnabled=true"],
    )
    async with environment:
        yield environment


def worker(env: WorkflowEnvironment, tmp_path: Path) -> tuple[Lanes, Worker, str]:
    """A worker with the plugin (on the environment's own client, which stamps the
    time-skipping configuration on the workflows it starts)."""
    lanes = lanes_for(tmp_path)
    plugin = AgentLanesPlugin(lanes, loops=LOOPS, approval_timeout=4 * HOUR)
    q = f"q-{uuid.uuid4().hex[:8]}"
    return lanes, Worker(env.client, task_queue=q, plugins=[plugin]), q


async def pending(handle: WorkflowHandle[Any, Any]) -> list[dict[str, Any]]:
    for _ in range(200):
        waiting: list[dict[str, Any]] = await handle.query("pending_approvals")
        if waiting:
            return waiting
        await asyncio.sleep(0.05)
    raise AssertionError("the workflow never asked for an approval")


async def test_an_approved_escalation_names_its_approver_in_the_receipt(
    env: WorkflowEnvironment, tmp_path: Path
) -> None:
    lanes, running, q = worker(env, tmp_path)
    client = env.client
    async with running:
        handle = await client.start_workflow(
            LaneWorkflow.run, LoopInput("debug", ["flaky"]), id=f"ok-{q}", task_queue=q
        )
        [asked] = await pending(handle)
        assert (asked["taskClass"], asked["toLane"], asked["stage"]) == ("hard-debugging", "high-end", "execution")
        answer = {"approver": "alice", "approved": True, "justification": "prod is down"}
        await handle.signal("approve", {**answer, "decisionId": asked["decisionId"]})
        summary = await handle.result()
    [run] = summary["runs"]
    assert run["status"] == "succeeded"
    assert run["approvers"] == ["alice"]
    [receipt, _close] = await lanes.store.receipts(run["runId"])
    from agentlanes.receipts import Receipt

    body = Receipt.from_text(receipt.text).body
    assert body["approval"]["approver"] == "alice"
    assert body["approval"]["justification"].startswith("hmac-sha256:")
    assert "prod is down" not in receipt.text


async def test_a_denied_escalation_fails_the_run_and_writes_no_receipt(
    env: WorkflowEnvironment, tmp_path: Path
) -> None:
    lanes, running, q = worker(env, tmp_path)
    client = env.client
    async with running:
        handle = await client.start_workflow(LaneWorkflow.run, LoopInput("debug", ["x"]), id=f"no-{q}", task_queue=q)
        await pending(handle)
        await handle.signal("approve", {"approver": "bob", "approved": False, "justification": "not now"})
        with pytest.raises(WorkflowFailureError) as caught:
            await handle.result()
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "EscalationDenied"
    assert "bob denied it" in cause.message
    assert [r for r in await lanes.store.receipts() if not r.run_id.startswith("@")] == []
    [entry] = await lanes.store.runs()
    assert entry["status"] == "failed"


async def test_an_unanswered_approval_times_out_as_a_denial(env: WorkflowEnvironment, tmp_path: Path) -> None:
    lanes, running, q = worker(env, tmp_path)
    client = env.client
    async with running:
        handle = await client.start_workflow(LaneWorkflow.run, LoopInput("debug", ["x"]), id=f"late-{q}", task_queue=q)
        with pytest.raises(WorkflowFailureError) as caught:
            await handle.result()  # four hours of the workflow's time, skipped
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "EscalationDenied"
    assert "temporal:timeout denied it" in cause.message
    assert [r for r in await lanes.store.receipts() if not r.run_id.startswith("@")] == []


@pytest.mark.parametrize(
    "answer",
    [
        {"approver": "bob", "approved": "false", "justification": "no"},  # a string from a CLI or another SDK
        {"approver": "bob", "approved": 1, "justification": "x"},
        {"approver": "bob", "justification": "x"},  # no verdict at all
        {"approver": "bob", "approved": True, "justificationDigest": "plain text, not a digest"},
        {"approver": "bob", "approved": True, "justification": {"a": 1}},
    ],
)
async def test_an_answer_that_is_not_a_clear_yes_denies_and_signs_nothing(
    env: WorkflowEnvironment, tmp_path: Path, answer: dict[str, Any]
) -> None:
    lanes, running, q = worker(env, tmp_path)
    client = env.client
    async with running:
        handle = await client.start_workflow(LaneWorkflow.run, LoopInput("debug", ["x"]), id=f"odd-{q}", task_queue=q)
        await pending(handle)
        await handle.signal("approve", answer)
        with pytest.raises(WorkflowFailureError) as caught:
            await handle.result()
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "EscalationDenied"
    assert "temporal:invalid-answer denied it" in cause.message
    assert [r for r in await lanes.store.receipts() if not r.run_id.startswith("@")] == []


async def test_an_answer_that_names_no_decision_while_none_is_pending_approves_nothing_later(
    env: WorkflowEnvironment, tmp_path: Path
) -> None:
    lanes, running, q = worker(env, tmp_path)
    client = env.client
    async with running:
        # signal-with-start: the answer is there before the workflow asks anything; it
        # must not become the answer to a question its approver never saw
        handle = await client.start_workflow(
            LaneWorkflow.run,
            LoopInput("debug", ["x"]),
            id=f"early-{q}",
            task_queue=q,
            start_signal="approve",
            start_signal_args=[{"approver": "mallory", "approved": True, "justification": "sure"}],
        )
        await pending(handle)
        with pytest.raises(WorkflowFailureError) as caught:
            await handle.result()  # no real answer: the approval times out (skipped)
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError) and "temporal:timeout denied it" in cause.message
    assert [r for r in await lanes.store.receipts() if not r.run_id.startswith("@")] == []
