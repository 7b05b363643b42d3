"""The neighbours' inputs in runs (CONTRACT Part D): findings per stage, routing
ceilings, a personal binding; recorded with each decision, replayed and re-decided by
counterfactual replay; a run's evidence exported for agentplane and guardrail-fabric."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agentlanes import EscalationDenied, Lanes, RouteDeferred, StageContext, cli
from agentlanes.approval import Approval, CallbackApprover
from agentlanes.history import counterfactual
from agentlanes.replay import replay
from agentlanes.router import Router
from agentlanes.testing import TestModel
from agentlanes.tracefile import load_record
from agentlanes.verifiers import CallableVerifier, ModelVerifier
from tests.conftest import healthy, requires_upstream, upstream_json

pytestmark = requires_upstream


def findings(**metadata: str) -> dict[str, Any]:
    return {"findings": [{"type": "pii.email", "label": "email address", "count": 2, "confidence": "high",
                          "severity": "medium"}], "metadata": metadata}


async def ask(ctx: StageContext) -> str:
    return (await ctx.complete("summarise the mailbox")).text


def lanes_for(home: Path, **kw: Any) -> Lanes:
    models = {"local-cheap": TestModel(text="local", name="local"), "cheap": TestModel(text="hosted", name="hosted"),
              "standard": TestModel(text="std", name="std")}
    return Lanes(models, signals=healthy(), data_dir=home, **kw)


async def main_with_findings(lanes: Lanes) -> object:
    async with lanes.run(task_class="log-triage", risk_class="low") as run:
        return await run.stage("classification", ask)


async def test_findings_that_require_a_local_model_keep_the_prompt_local(tmp_path: Path) -> None:
    seen: list[int] = []

    def source() -> dict[str, Any]:
        seen.append(1)
        return findings(**{"anonymize.requires_local_model": "true", "anonymize.sensitivity": "confidential"})

    lanes = lanes_for(tmp_path, findings_source=source)
    assert await main_with_findings(lanes) == "local"
    await lanes.aclose()
    [trace] = (tmp_path / "traces").iterdir()
    record = load_record(trace)
    [decision] = [s for s in record.steps if s.kind == "decision"]
    request = decision.data["request"]
    assert request["neighbourInputs"]["findings"]["matchedKeys"] == ["anonymize.requires_local_model",
                                                                    "anonymize.sensitivity"]
    assert seen == [1]
    # exact replay decides again from the recorded findings (no source is asked)
    report = await replay(trace, entry=main_with_findings, data_dir=tmp_path)
    assert report.complete and seen == [1]
    # counterfactual replay carries them too: the same documents change nothing
    again = counterfactual([trace], Router())
    assert again.decisions == 1 and again.changes == []


async def test_a_findings_source_that_gives_nothing_fails_the_stage_closed(tmp_path: Path) -> None:
    lanes = lanes_for(tmp_path, findings_source=lambda: None)
    with pytest.raises(RouteDeferred, match="invalid-findings"):
        await main_with_findings(lanes)


async def test_a_routing_ceiling_caps_every_decision_and_its_warnings_reach_receipts(tmp_path: Path) -> None:
    ceiling = upstream_json("examples/runtime-state-routing-policy.failed.json")  # cheap at most, report only
    lanes = lanes_for(tmp_path, ceilings=[ceiling])

    async with lanes.run(task_class="log-triage", risk_class="low") as run:
        assert await run.stage("classification", ask) == "local"
        with pytest.raises(RouteDeferred, match="ceiling:autonomy:report_only"):
            await run.stage("execution", ask)
    first = run.records[0].decisions[0]
    assert "ceiling:model-lane:cheap" in {r for c in first.candidates for r in c.reasons}
    assert list(first.warnings) == ["runtime_validation_failed", "runtime_parity_not_certified"]


async def test_human_review_required_asks_before_the_stage_runs(tmp_path: Path) -> None:
    ceiling = upstream_json("examples/svf-receipt-state-routing-policy.default.json")
    ceiling = json.loads(json.dumps(ceiling))
    ceiling["routing_consequence"].update({"autonomy_ceiling": "human_review_required",
                                           "model_lane_ceiling": "standard", "deterministic_verification_required":
                                           False})
    asked: list[str] = []

    def approve(request: Any) -> Approval:
        asked.append(request.stage)
        return Approval(request.stage == "allowed", "rev@example.com", "looked at it")

    model = TestModel(text="done")
    lanes = Lanes({"standard": model}, signals=healthy(), data_dir=tmp_path, ceilings=[ceiling],
                  approver=CallbackApprover(approve))
    async with lanes.run(task_class="routine-code") as run:
        assert await run.stage_with("execution", ask, name="allowed") == "done"
        with pytest.raises(EscalationDenied, match="a routing ceiling requires human review of execution stages"):
            await run.stage_with("execution", ask, name="refused")
    assert asked == ["allowed", "refused"]
    assert len(model.calls) == 1  # the refused stage called nothing
    assert [a.approved for r in run.records for a in r.approvals] == [True, False]


async def test_deterministic_verification_required_refuses_model_judges(tmp_path: Path) -> None:
    ceiling = upstream_json("examples/environment-state-routing-policy.observed.json")
    lanes = lanes_for(tmp_path, ceilings=[ceiling])
    async with lanes.run(task_class="routine-code") as run:
        with pytest.raises(RouteDeferred, match="ceiling:deterministic-verification-required"):
            await run.stage_with("planning", ask, verify=[ModelVerifier("is it good?")])
        # a deterministic verifier is fine
        assert await run.stage_with("planning", ask, verify=[CallableVerifier(lambda o: True)]) == "std"


async def test_a_binding_to_a_local_target_keeps_stages_local(tmp_path: Path) -> None:
    from agentlanes.binding import BindingRequest

    binding = BindingRequest(binding=upstream_json("examples/local-personal-route-binding.llama32.json"),
                             task="router", now="2026-06-01T00:00:00Z")
    lanes = lanes_for(tmp_path, binding=binding)
    async with lanes.run(task_class="log-triage", risk_class="low") as run:
        assert await run.stage("classification", ask) == "local"
    reasons = {r for c in run.records[0].decisions[0].candidates for r in c.reasons}
    assert "binding:local-only" in reasons


def test_a_recorded_runs_evidence_validates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    assert cli.main(["demo", "--data-dir", str(home)]) == 0
    capsys.readouterr()
    run_id = next((home / "traces").iterdir()).name.split(".")[0]
    outputs = {}
    for fmt in ("agentplane-lane-receipts", "guardrail-decisions", "evidence-journal"):
        assert cli.main(["evidence", "export", run_id, "--data-dir", str(home), "--format", fmt]) == 0
        outputs[fmt] = capsys.readouterr().out
    receipts = [json.loads(line) for line in outputs["agentplane-lane-receipts"].splitlines()]
    decisions = [s for s in load_record(home / "traces" / f"{run_id}.otlp.jsonl").steps if s.kind == "decision"]
    assert len(receipts) == len(decisions)
    escalated = [r for r in receipts if r["lane_decision_outcome"] == "escalated"]
    assert len(escalated) == 1 and f"/{run_id}/receipt/0#sha256:" in escalated[0]["escalation_receipt_ref"]
    for fmt, text in outputs.items():
        path = tmp_path / f"{fmt}.jsonl"
        path.write_text(text)
        if fmt == "agentplane-lane-receipts":
            assert cli.main(["evidence", "check-receipts", str(path)]) == 0
        if fmt == "evidence-journal":
            assert cli.main(["evidence", "verify-journal", str(path)]) == 0
    # the same run, decided again, gives the same documents (deterministic ids)
    capsys.readouterr()
    assert cli.main(["evidence", "export", run_id, "--data-dir", str(home), "--format", "guardrail-decisions"]) == 0
    assert capsys.readouterr().out == outputs["guardrail-decisions"]


def test_evidence_export_refuses_other_documents(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import ROOT

    home = tmp_path / "home"
    assert cli.main(["demo", "--data-dir", str(home)]) == 0
    capsys.readouterr()
    run_id = next((home / "traces").iterdir()).name.split(".")[0]
    policy = json.loads((ROOT / "policies" / "policy.json").read_text())
    policy["escalationPolicy"]["repeatedFailureThreshold"] = 3
    other = tmp_path / "p.json"
    other.write_text(json.dumps(policy))
    status = cli.main(["evidence", "export", run_id, "--data-dir", str(home), "--format", "guardrail-decisions",
                       "--policy", str(other)])
    assert status != 0 and "pass the policy, optimizer and price catalog the run used" in capsys.readouterr().err

