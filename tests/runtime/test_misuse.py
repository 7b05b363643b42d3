"""Misuse fails loudly: a clear ConfigurationError naming the bad value and the fix,
raised before anything is routed, spent or signed."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentlanes import ConfigurationError, Escalate, Lanes, StageContext
from agentlanes.stores import MemoryStore
from agentlanes.testing import TestModel
from agentlanes.verifiers import CallableVerifier
from tests.conftest import healthy


def make(tmp_path: Path) -> tuple[Lanes, MemoryStore, TestModel]:
    store = MemoryStore()
    model = TestModel(text="done")
    lanes = Lanes({"standard": model, "high-end": TestModel(text="hi")}, signals=healthy(), store=store,
                  data_dir=tmp_path)
    return lanes, store, model


async def plan(ctx: StageContext, goal: str = "x") -> str:
    return (await ctx.complete(goal)).text


async def nothing_spent(lanes: Lanes, store: MemoryStore, model: TestModel, run_id: str) -> None:
    assert model.calls == []
    states = await store.window_states(lanes.ledger.specs(run_id))
    assert all(s.committed == 0 and s.reserved == 0 for s in states)
    assert await store.receipts() == []


async def test_a_stage_outside_its_run(tmp_path: Path) -> None:
    lanes, _, model = make(tmp_path)
    run = lanes.run(task_class="routine-code")
    with pytest.raises(ConfigurationError, match=r"run.stage\('planning', ...\) was called before `async with"):
        await run.stage("planning", plan)
    async with run:
        await run.stage("planning", plan)
    model.calls.clear()
    with pytest.raises(ConfigurationError, match=r"was called after `async with lanes.run\(...\) as run:`"):
        await run.stage("planning", plan)
    with pytest.raises(ConfigurationError, match="record_inputs"):
        run.record_inputs({"task": "x"})
    assert model.calls == []


async def test_a_sync_function_as_a_stage(tmp_path: Path) -> None:
    lanes, store, model = make(tmp_path)

    def plan_sync(ctx: StageContext) -> str:
        return "x"

    async with lanes.run(task_class="routine-code") as run:
        with pytest.raises(ConfigurationError, match=r"'test_a_sync_function_as_a_stage.<locals>.plan_sync' is a "
                                                     r"plain function; a stage function must be `async def plan_sync"):
            await run.stage("planning", plan_sync)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="must be an async function, got 42"):
            await run.stage("planning", 42)  # type: ignore[arg-type]
    await nothing_spent(lanes, store, model, run.run_id)
    assert run.records == []


async def test_a_verifier_that_is_not_a_verifier(tmp_path: Path) -> None:
    lanes, _, model = make(tmp_path)

    def check(out: str) -> bool:
        return True

    async with lanes.run(task_class="routine-code") as run:
        with pytest.raises(ConfigurationError, match=r"verify=\[...\] holds <function .*check.*which is not a "
                                                     r"Verifier; wrap a function in CallableVerifier\(fn\)"):
            await run.stage_with("planning", plan, verify=[check])  # type: ignore[list-item]
        with pytest.raises(ConfigurationError, match="not a Verifier"):
            await run.verify("x", [check])  # type: ignore[list-item]
        # one Verifier (not in a list) is accepted
        assert await run.stage_with("planning", plan, verify=CallableVerifier(check)) == "done"
    assert len(model.calls) == 1


@pytest.mark.parametrize("where", ["run", "stage", "raise"])
async def test_an_escalation_reason_the_policy_does_not_allow(tmp_path: Path, where: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    lanes, store, model = make(tmp_path)
    canary = "because-CANARY-7f3a"

    async def escalate(ctx: StageContext) -> str:
        raise Escalate(canary)

    expect = rf"escalation reason '{canary}' is not one the policy allows \(allowed: .*architecture-decision.*\)"
    run = lanes.run(task_class="routine-code", escalation_reason=canary if where == "run" else None)

    async def go() -> None:
        async with run:
            if where == "stage":
                await run.stage_with("planning", plan, escalation_reason=canary)
            elif where == "raise":
                await run.stage("planning", escalate)

    with pytest.raises(ConfigurationError, match=expect):
        await go()
    await nothing_spent(lanes, store, model, run.run_id)
    # the free text never reaches a record, a span or a log
    logs = capsys.readouterr().err
    traces = "".join(p.read_text() for p in (tmp_path / "traces").glob("*")) if (tmp_path / "traces").exists() else ""
    assert canary not in logs and canary not in traces


async def test_arguments_the_stage_function_does_not_take(tmp_path: Path) -> None:
    lanes, *_ = make(tmp_path)

    async def one_arg(ctx: StageContext, goal: str) -> str:
        return goal

    async with lanes.run(task_class="routine-code") as run:
        with pytest.raises(ConfigurationError, match=r"cannot be called with the stage context plus 2 positional and 0 "
                                                     r"keyword argument\(s\): too many positional arguments"):
            await run.stage("planning", one_arg, "a", "b")  # type: ignore[call-arg]
        with pytest.raises(ConfigurationError, match="missing a required argument: 'goal'"):
            await run.stage("planning", one_arg)  # type: ignore[call-arg]
        with pytest.raises(ConfigurationError, match="unexpected keyword argument 'colour'"):
            await run.stage("planning", one_arg, "a", colour="red")  # type: ignore[call-arg]
        assert await run.stage("planning", one_arg, "fine") == "fine"
    assert run.records[-1].status == "succeeded" and len(run.records) == 1


async def test_a_bad_run_id_and_a_second_enter(tmp_path: Path) -> None:
    lanes, *_ = make(tmp_path)
    with pytest.raises(ConfigurationError, match=r"Run id '../etc' may hold only letters, digits"):
        lanes.run(task_class="routine-code", run_id="../etc")
    run = lanes.run(task_class="routine-code")
    async with run:
        pass
    with pytest.raises(ConfigurationError, match="was already entered"):
        async with run:
            pass


async def test_a_tool_that_is_not_callable(tmp_path: Path) -> None:
    lanes, store, model = make(tmp_path)
    async with lanes.run(task_class="routine-code") as run:
        with pytest.raises(ConfigurationError, match="tool= must be a function applied to the output, got 'write'"):
            await run.stage_with("execution", plan, tool="write")  # type: ignore[arg-type]
    await nothing_spent(lanes, store, model, run.run_id)

