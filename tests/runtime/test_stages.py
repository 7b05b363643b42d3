"""Stage semantics (CONTRACT C): routing, de-escalation, escalation, approval, fallback,
budgets, evidence, logging."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import anyio
import pytest

from agentlanes import (
    BudgetExhausted,
    ConfigurationError,
    Escalate,
    EscalationDenied,
    Lanes,
    ModelError,
    RetryStage,
    RouteDeferred,
    RouteInputError,
    StageContext,
    VerificationFailed,
)
from agentlanes.approval import Approval, ApprovalRequest, CallbackApprover
from agentlanes.models import ProviderError
from agentlanes.policy import PolicyBundle, load_document
from agentlanes.router import Router
from agentlanes.runtime import RetryPolicy
from agentlanes.stores import MemoryStore
from agentlanes.testing import FunctionModel, ScriptedModel, TestModel
from agentlanes.verifiers import CallableVerifier, ModelVerifier
from tests.conftest import bundled_json, healthy


def make_lanes(tmp_path: Path, models: dict[str, Any], **kw: Any) -> Lanes:
    kw.setdefault("signals", healthy())
    kw.setdefault("store", MemoryStore())
    kw.setdefault("retry", RetryPolicy(attempts=2, initial_wait=0.001, max_wait=0.01))
    return Lanes(models, data_dir=tmp_path, **kw)


async def ask(ctx: StageContext, prompt: str = "do it") -> str:
    return (await ctx.complete(prompt, max_tokens=64)).text


def always(value: bool) -> CallableVerifier:
    return CallableVerifier(lambda out: value, name="check")


async def test_each_stage_routes_and_binds_its_lane(tmp_path: Path) -> None:
    std, cheap = TestModel(text="std", name="std"), TestModel(text="cheap", name="cheap")
    lanes = make_lanes(tmp_path, {"standard": std, "cheap": cheap})
    async with lanes.run(task_class="routine-code") as run:
        assert await run.stage("planning", ask) == "std"
        assert await run.stage_with("finalization", ask, risk_class="low") == "cheap"
    plan, fin = run.records
    assert (plan.lane, fin.lane) == ("standard", "cheap")
    assert plan.decisions[0].reason == "cheapest-feasible-candidate"
    assert run.result.status == "succeeded"
    assert run.result.cost_micro == plan.cost + fin.cost == 20_000 + 2_000
    assert str(run.result.cost) == "0.022"


async def test_de_escalation_after_planning(tmp_path: Path) -> None:
    hi, std = TestModel(text="plan", name="hi"), TestModel(text="code", name="std")
    approvals: list[ApprovalRequest] = []

    def approve(req: ApprovalRequest) -> Approval:
        approvals.append(req)
        return Approval(True, "alice@example.com", "durable contract choice; needs the strongest model")

    lanes = make_lanes(tmp_path, {"high-end": hi, "standard": std}, approver=CallbackApprover(approve))
    async with lanes.run(task_class="architecture-decision", risk_class="high",
                         escalation_reason="architecture-decision") as run:
        await run.stage("planning", ask)
        # after the plan, the run's reason no longer applies: execution cannot go premium
        with pytest.raises(RouteDeferred) as ei:
            await run.stage("execution", ask)
    assert run.records[0].lane == "high-end"
    decision = ei.value.decision
    assert "premium-lane-requires-escalation-reason" in decision.candidate("high-end").reasons
    [receipt] = run.receipts
    assert receipt.body["fromLane"] == "standard" and receipt.body["toLane"] == "high-end"
    assert receipt.body["reason"] == "architecture-decision"
    assert receipt.body["approval"]["approver"] == "alice@example.com"
    assert receipt.body["approval"]["justification"].startswith("hmac-sha256:")
    assert "durable" not in json.dumps(receipt.body)
    assert approvals[0].to_lane == "high-end" and approvals[0].decision_id == run.records[0].decisions[0].decision_id


async def test_a_stage_may_carry_its_own_reason_after_planning(tmp_path: Path) -> None:
    lanes = make_lanes(tmp_path, {"high-end": TestModel(), "standard": TestModel()},
                       approver=CallbackApprover(lambda r: True, identity="bot"))
    async with lanes.run(task_class="security-review", risk_class="high", escalation_reason="security-review") as run:
        await run.stage("planning", ask)
        await run.stage_with("review", ask, escalation_reason="security-review")
    assert [r.lane for r in run.records] == ["high-end", "high-end"]
    assert len(run.receipts) == 2
    assert [r.seq for r in run.receipts] == [0, 1]
    assert run.receipts[1].prev == run.receipts[0].digest


@pytest.mark.parametrize("approver", [None, CallbackApprover(lambda r: False, identity="bob")])
async def test_escalation_without_approval_is_denied(tmp_path: Path, approver: Any) -> None:
    hi = TestModel()
    lanes = make_lanes(tmp_path, {"high-end": hi}, approver=approver)
    with pytest.raises(EscalationDenied, match="no approver is configured" if approver is None else "bob denied it"):
        async with lanes.run(task_class="hard-debugging", risk_class="high", escalation_reason="hard-debugging") as run:
            await run.stage("planning", ask)
    assert hi.calls == []  # nothing ran on the premium lane
    assert run.receipts == [] and run.result.status == "failed"


async def test_repeated_standard_failure_escalates_with_a_receipt(tmp_path: Path) -> None:
    std = ScriptedModel(["v1", "v2"])
    hi = ScriptedModel(["v3"])
    lanes = make_lanes(tmp_path, {"standard": std, "high-end": hi})
    seen: list[list[str]] = []

    async def attempt(ctx: StageContext) -> str:
        seen.append([r.summary for r in ctx.feedback])
        return await ask(ctx)

    async with lanes.run(task_class="routine-code") as run:
        out = await run.stage_with("execution", attempt, verify=[CallableVerifier(lambda o: (o == "v3", f"got {o}"),
                                                                                  name="is-v3")])
    assert out == "v3"
    record = run.records[0]
    assert [d.lane for d in record.decisions] == ["standard", "standard", "high-end"]
    assert record.decisions[2].request.escalation_reason == "repeated-standard-lane-failure"
    assert record.decisions[2].candidate("standard").reasons == ("escalated-from:standard",)
    assert seen == [[], ["got v1"], ["got v2"]]
    [receipt] = run.receipts
    body = receipt.body
    assert (body["fromLane"], body["toLane"], body["reason"]) == ("standard", "high-end",
                                                                 "repeated-standard-lane-failure")
    assert body["decisionId"] == record.decisions[2].decision_id
    assert len(body["evidenceRefs"]) == 2 and all(r.startswith("hmac-sha256:") for r in body["evidenceRefs"])
    assert body["runId"] == run.run_id and body["stage"] == "execution"
    std.assert_complete()
    hi.assert_complete()


async def test_verification_failure_after_escalation_stops(tmp_path: Path) -> None:
    lanes = make_lanes(tmp_path, {"standard": TestModel(text="bad"), "high-end": TestModel(text="bad")})
    with pytest.raises(VerificationFailed, match="failed verification on 3 attempt") as ei:
        async with lanes.run(task_class="routine-code") as run:
            await run.stage_with("execution", ask, verify=[always(False)])
    assert ei.value.attempts == 3 and ei.value.evidence[0].name == "check"
    assert len(run.receipts) == 1


async def test_retry_and_escalate_signals(tmp_path: Path) -> None:
    lanes = make_lanes(tmp_path, {"cheap": TestModel(text="c"), "standard": TestModel(text="s")})
    calls = 0

    async def flaky(ctx: StageContext) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RetryStage("not yet")
        if ctx.lane == "cheap":
            raise Escalate("conflicting-evidence-resolution")
        return await ask(ctx)

    async with lanes.run(task_class="formatting-rewrite", risk_class="low") as run:
        assert await run.stage("intake", flaky) == "s"
    record = run.records[0]
    assert [d.lane for d in record.decisions] == ["cheap", "cheap", "standard"]
    assert record.decisions[-1].candidate("cheap").reasons[-1] == "escalated-from:cheap"
    [receipt] = run.receipts
    assert (receipt.body["fromLane"], receipt.body["toLane"], receipt.body["reason"]) == (
        "cheap", "standard", "conflicting-evidence-resolution")


async def test_deferred_decision_stops_the_stage_with_its_reasons(tmp_path: Path) -> None:
    model = TestModel()
    lanes = make_lanes(tmp_path, {"standard": model}, signals=healthy(networkAvailable=None))
    with pytest.raises(RouteDeferred, match="missing-signal:networkAvailable") as ei:
        async with lanes.run(task_class="routine-code") as run:
            await run.stage("planning", ask)
    assert ei.value.decision.status == "deferred" and ei.value.stage == "planning"
    assert ei.value.run_id == run.run_id
    assert model.calls == []


async def test_deterministic_stages_run_on_no_model_and_cannot_call_models(tmp_path: Path) -> None:
    lanes = make_lanes(tmp_path, {"standard": TestModel()})

    async def run_tests(ctx: StageContext) -> str:
        assert ctx.lane == "no-model"
        return "ok"

    async with lanes.run(task_class="routine-code", risk_class="high") as run:
        assert await run.stage_with("verification", run_tests, deterministic=True) == "ok"
        with pytest.raises(ConfigurationError, match="runs on the no-model lane"):
            await run.stage_with("tool-use", ask, deterministic=True)
        assert await run.verify("subject", [always(True)])
        assert not await run.verify("subject", [always(False)])
    assert [r.lane for r in run.records] == ["no-model", "no-model", "no-model", "no-model"]


async def test_unbound_lane_and_bad_bindings_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="'turbo': not a lane"):
        Lanes({"turbo": TestModel()})
    with pytest.raises(ConfigurationError, match="no-model lane runs deterministic code"):
        Lanes({"no-model": TestModel()})
    with pytest.raises(ConfigurationError, match="not an agentlanes Model"):
        Lanes({"cheap": object()})  # type: ignore[dict-item]
    lanes = make_lanes(tmp_path, {"cheap": TestModel()})
    with pytest.raises(ConfigurationError, match="routed to lane 'standard', but no model is bound to it"):
        async with lanes.run(task_class="routine-code") as run:
            await run.stage("planning", ask)
    with pytest.raises(RouteInputError, match="Task class 'nope'"):
        async with lanes.run(task_class="nope"):
            pass


async def test_several_models_per_lane_in_preference_order(tmp_path: Path) -> None:
    broken = TestModel(fail_times=10, name="broken", provider="p1")
    spare = TestModel(text="spare", name="spare", provider="p2")
    lanes = make_lanes(tmp_path, {"standard": [broken, spare]})
    async with lanes.run(task_class="routine-code") as run:
        assert await run.stage("planning", ask) == "spare"
        assert await run.stage("planning", ask) == "spare"  # broken is cooling down now
    calls = [(c.model, c.ok) for r in run.records for c in r.calls]
    assert calls == [("broken", False), ("broken", False), ("spare", True), ("spare", True)]
    assert lanes.stats.error_rate("p1") == 1.0 and lanes.stats.error_rate("p2") == 0.0


async def test_fallback_goes_only_to_a_lane_that_is_not_dearer(tmp_path: Path) -> None:
    # log-triage at low risk: local-cheap first; when it fails, cheap (dearer) is refused...
    lanes = make_lanes(tmp_path, {"local-cheap": TestModel(fail_times=10), "cheap": TestModel(text="c")})
    with pytest.raises(ModelError, match="no feasible lane that is not dearer"):
        async with lanes.run(task_class="log-triage", risk_class="low") as run:
            await run.stage("classification", ask)
    # ...but with local-cheap made the dearer lane, falling back to cheap is allowed
    sig = healthy(estimatedLaneCosts={"local-cheap": 0.002, "cheap": 0.002})
    lanes = make_lanes(tmp_path, {"local-cheap": TestModel(fail_times=10), "cheap": TestModel(text="c")},
                       signals=sig)
    async with lanes.run(task_class="log-triage", risk_class="low") as run:
        assert await run.stage("classification", ask) == "c"
    record = run.records[0]
    assert [d.lane for d in record.decisions] == ["local-cheap", "cheap"]
    assert record.decisions[1].candidate("local-cheap").reasons[-1] == "provider-unavailable"


async def test_retries_do_not_retry_non_retryable_errors(tmp_path: Path) -> None:
    bad = ScriptedModel([ProviderError("HTTP 400", retryable=False, status=400)])
    lanes = make_lanes(tmp_path, {"standard": bad}, retry=RetryPolicy(attempts=5, initial_wait=0.001))
    with pytest.raises(ModelError):
        async with lanes.run(task_class="routine-code") as run:
            await run.stage("planning", ask)
    assert len(bad.calls) == 1


def tight_budget(tmp_path: Path, pressure: str, max_spend: float = 0.05) -> Lanes:
    opt = bundled_json("optimizer.json")
    opt["budgetPolicy"]["windows"][0]["maxSpend"] = max_spend
    opt["budgetPolicy"]["onBudgetPressure"] = pressure
    bundle = PolicyBundle.from_loaded(load_document(bundled_json("policy.json")), load_document(opt),
                                      load_document(bundled_json("price-catalog.json")))
    return make_lanes(tmp_path, {"standard": TestModel(), "cheap": TestModel()}, router=Router(bundle))


@pytest.mark.parametrize("pressure", ["downgrade", "defer", "deny"])
async def test_budget_caps_hold_under_every_pressure_policy(tmp_path: Path, pressure: str) -> None:
    lanes = tight_budget(tmp_path, pressure)
    done = 0
    run = lanes.run(task_class="routine-code")

    async def spend() -> None:
        nonlocal done
        async with run:
            for _ in range(10):
                await run.stage("planning", ask)
                done += 1

    with pytest.raises((RouteDeferred, BudgetExhausted)):
        await spend()
    assert done == 2  # two calls at the 0.02 minimum fit in 0.05; the third cannot
    assert run.result.cost_micro <= 50_000
    [task] = [s for s in await lanes.store.window_states(lanes.ledger.specs(run.run_id)) if s.spec.window == "task"]
    assert task.committed <= task.spec.cap and task.reserved == 0


async def test_budget_pressure_downgrades_to_a_cheaper_feasible_lane(tmp_path: Path) -> None:
    lanes = tight_budget(tmp_path, "downgrade", max_spend=0.021)
    async with lanes.run(task_class="routine-code", risk_class="low") as run:
        # intake on cheap (0.002 + tokens) is affordable; the decision itself sees the ledger
        await run.stage("intake", ask)
        await run.stage_with("finalization", ask, risk_class="low")
    assert all(r.lane == "cheap" for r in run.records)


async def test_required_evidence_is_recorded_and_missing_items_reported(tmp_path: Path) -> None:
    lanes = make_lanes(tmp_path, {"standard": TestModel(text="the plan")})
    async with lanes.run(task_class="routine-code") as run:
        await run.stage("planning", ask)

        async def execute(ctx: StageContext) -> str:
            ctx.record_evidence("changedFiles", ["a.py"])
            return await ask(ctx)

        await run.stage("execution", execute)
    plan, execution = run.records
    assert set(plan.evidence) >= {"plan", "riskClass", "escalationReasonIfAny"}
    assert plan.missing_evidence == []
    assert plan.evidence["plan"] == lanes.hasher.digest("the plan")
    assert execution.missing_evidence == ["commands"]


async def test_model_judge_only_when_no_deterministic_verifier(tmp_path: Path) -> None:
    judge_model = ScriptedModel(["PASS looks right"])
    lanes = make_lanes(tmp_path, {"standard": [judge_model]})

    async def produce(ctx: StageContext) -> str:
        return "text"

    async with lanes.run(task_class="routine-code") as run:
        await run.stage_with("execution", produce, verify=[ModelVerifier("Is it right?")])
        await run.stage_with("execution", produce, verify=[ModelVerifier("Is it right?"), always(True)])
    judge_model.assert_complete()  # one judgment: the second stage had a deterministic verifier
    judges = [r for r in run.records if r.name.endswith(".judge")]
    assert len(judges) == 1 and judges[0].stage == "review" and judges[0].lane == "standard"


async def test_cancellation_at_random_points_leaks_no_reservation(tmp_path: Path) -> None:
    store = MemoryStore()
    lanes = make_lanes(tmp_path, {"standard": TestModel(delay=0.002)}, store=store)
    rng = random.Random(3)
    async with lanes.run(task_class="routine-code") as run:
        for _ in range(150):
            with anyio.move_on_after(rng.uniform(0, 0.004)):
                await run.stage("planning", ask)
        specs = lanes.ledger.specs(run.run_id)
    states = await store.window_states(specs)
    assert all(s.reserved == 0 for s in states)
    charged = sum(c.charged for r in run.records for c in r.calls)
    assert all(s.committed == charged for s in states)
    assert any(r.status == "cancelled" for r in run.records)
    assert any(r.status == "succeeded" for r in run.records)


async def test_logs_are_json_with_ids_and_never_content(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    canary = "CANARY-7f3a-secret-prompt"
    for level, expected in (("debug", {"run.start", "stage.routed", "model.call", "stage.succeeded", "run.end"}),
                            ("info", {"run.start", "stage.succeeded", "run.end"})):
        monkeypatch.setenv("AGENTLANES_LOG_LEVEL", level)
        lanes = make_lanes(tmp_path, {"standard": TestModel(text=f"out {canary}")})
        async with lanes.run(task_class="routine-code") as run:
            await run.stage("planning", ask, f"please {canary}")
        err = capsys.readouterr().err
        events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        assert canary not in err
        assert {e["event"] for e in events} == expected
        [done] = [e for e in events if e["event"] == "stage.succeeded"]
        assert (done["run_id"], done["stage"], done["lane"]) == (run.run_id, "planning", "standard")
        assert done["decision_id"] == run.records[0].decisions[0].decision_id
    monkeypatch.setenv("AGENTLANES_LOG_LEVEL", "off")
    async with lanes.run(task_class="routine-code") as run:
        await run.stage("planning", ask)
    assert capsys.readouterr().err == ""


async def test_sqlite_is_the_default_store_under_the_data_dir(tmp_path: Path) -> None:
    lanes = Lanes({"standard": TestModel()}, signals=healthy(), data_dir=tmp_path / "home")
    async with lanes.run(task_class="routine-code") as run:
        await run.stage("planning", ask)
    runs = await lanes.store.runs()
    await lanes.aclose()
    assert (tmp_path / "home" / "agentlanes.db").is_file()
    assert (tmp_path / "home" / "keys" / "content.key").is_file()
    assert runs[0]["runId"] == run.run_id and runs[0]["status"] == "succeeded" and runs[0]["cost"] == "0.02"


async def test_function_model_sync_and_async(tmp_path: Path) -> None:
    async def reply(messages: Any, settings: Any) -> str:
        return messages[-1].content.upper()

    lanes = make_lanes(tmp_path, {"standard": FunctionModel(reply)})
    async with lanes.run(task_class="routine-code") as run:
        assert await run.stage("planning", ask, "abc") == "ABC"


class FakeTTY:
    def __init__(self, text: str) -> None:
        import io

        self._buf = io.StringIO(text)

    def isatty(self) -> bool:
        return True

    def readline(self) -> str:
        return self._buf.readline()


async def test_terminal_approver_asks_and_records_the_justification(tmp_path: Path) -> None:
    import io

    from agentlanes.approval import TerminalApprover

    shown = io.StringIO()
    approver = TerminalApprover(identity="terminal:carol", stdin=FakeTTY("y\nthe race needs a deeper look\n"),  # type: ignore[arg-type]
                                stdout=shown)
    lanes = make_lanes(tmp_path, {"high-end": TestModel()}, approver=approver)
    async with lanes.run(task_class="hard-debugging", risk_class="high", escalation_reason="hard-debugging") as run:
        await run.stage("planning", ask)
    assert "escalate stage 'planning'" in shown.getvalue() and "from standard to high-end" in shown.getvalue()
    approval = run.receipts[0].body["approval"]
    assert approval["approver"] == "terminal:carol"
    assert approval["justification"] == lanes.hasher.digest("the race needs a deeper look")
    declined = TerminalApprover(identity="t", stdin=FakeTTY("n\n"), stdout=io.StringIO())  # type: ignore[arg-type]
    lanes = make_lanes(tmp_path, {"high-end": TestModel()}, approver=declined)
    with pytest.raises(EscalationDenied, match="t denied it"):
        async with lanes.run(task_class="hard-debugging", risk_class="high", escalation_reason="hard-debugging") as run:
            await run.stage("planning", ask)
