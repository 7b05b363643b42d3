"""CONTRACT D4: evidence for the neighbours.

agentplane's fixtures load and pass (or are rejected by) agentlanes' own validator; every
``ModelRoutingLaneDecisionReceipt`` and ``sourceos.guardrail.decision.v0.1`` agentlanes
emits over the routing grid validates against the upstream schemas and agentplane's
gates; the evidence journal follows agentplane's chain rules.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agentlanes import Router, RouteRequest, load_bundle
from agentlanes.binding import BindingRequest
from agentlanes.errors import ConfigurationError
from agentlanes.evidence import (
    COST_CLASS_MAP,
    GENESIS_DIGEST,
    LANE_MAP,
    STAGE_MAP,
    TASK_CLASS_MAP,
    DecisionFacts,
    JournalWriter,
    StageEvidence,
    check_lane_receipt,
    evidence_lines,
    guardrail_decisions,
    lane_receipt,
    verify_journal,
)
from agentlanes.lanes import PREMIUM_LANES
from tests.conftest import UPSTREAM, bundled_json, healthy, requires_upstream, upstream_json
from tests.contracts.test_upstream import GRID, SIGNAL_SETS, _request

pytestmark = requires_upstream

import jsonschema  # noqa: E402 - a core dependency

FIXTURES = UPSTREAM / "agentplane" / "tests" / "fixtures" / "model-routing"
RECEIPT_SCHEMA = "agentplane/schemas/model-routing-lane-decision-receipt.schema.v0.1.json"
GUARDRAIL_SCHEMA = "guardrail-fabric/schemas/sourceos.guardrail.decision.v0.1.schema.json"
NOW = "2026-06-01T00:00:00Z"


def schema_validator(relative: str) -> Any:
    schema = upstream_json(relative)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


RECEIPTS = schema_validator(RECEIPT_SCHEMA)
GUARDRAILS = schema_validator(GUARDRAIL_SCHEMA)


def schema_errors(validator: Any, doc: Any) -> list[str]:
    return [e.message for e in validator.iter_errors(doc)]


# ------------------------------------------------------------ agentplane fixtures


def fixtures(kind: str) -> list[Path]:
    return sorted(FIXTURES.glob(f"{kind}.*.json"))


def test_fixtures_are_there() -> None:
    assert len(fixtures("valid")) == 4 and len(fixtures("reject")) == 2


@pytest.mark.parametrize("path", fixtures("valid"), ids=lambda p: p.name)
def test_valid_fixtures_pass(path: Path) -> None:
    doc = json.loads(path.read_text())
    assert check_lane_receipt(doc) == []
    assert schema_errors(RECEIPTS, doc) == []


@pytest.mark.parametrize("path", fixtures("reject"), ids=lambda p: p.name)
def test_reject_fixtures_are_rejected(path: Path) -> None:
    doc = json.loads(path.read_text())
    assert check_lane_receipt(doc) != []
    # also for the reason the fixture names, not only for its _reject_reason member
    doc.pop("_reject_reason")
    problems = check_lane_receipt(doc)
    assert problems != []
    if "escalation" in path.name:
        assert any("escalation_receipt_ref" in p for p in problems)
    else:
        assert any("kind" in p for p in problems)


def _fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


GATE_BREAKS = {
    "denied leaves high_end selected": ("valid.denied-high-end-no-escalation",
                                        {"selected_lane": "high_end", "escalation_receipt_ref": "r",
                                         "de_escalation_required_after_stage": True}),
    "premium without receipt ref": ("valid.escalated-high-end-planning", {"escalation_receipt_ref": ""}),
    "premium without de-escalation flag": ("valid.escalated-high-end-planning",
                                           {"de_escalation_required_after_stage": None}),
    "model_primary verification": ("valid.verification-no-model", {"verification_mode": "model_primary"}),
    "model-assisted verification on standard": ("valid.verification-no-model",
                                                {"selected_lane": "standard", "verification_mode": "model_assisted"}),
    "unknown lane": ("valid.lane-selected-standard", {"selected_lane": "turbo"}),
    "unknown task class": ("valid.lane-selected-standard", {"task_class": "code-review"}),
    "empty non-claims": ("valid.lane-selected-standard", {"non_claims": []}),
    "bad issued_at": ("valid.lane-selected-standard", {"issued_at": "yesterday"}),
    "extra field": ("valid.lane-selected-standard", {"raw_prompt": "hello"}),
    "missing policy ref": ("valid.lane-selected-standard", {"policy_decision_ref": None}),
}


@pytest.mark.parametrize("name", GATE_BREAKS)
def test_gate_breaks_are_rejected(name: str) -> None:
    base, change = GATE_BREAKS[name]
    doc = _fixture(base)
    for key, value in change.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    assert check_lane_receipt(doc) != []


def test_verification_above_lightweight_without_a_mode_passes_like_agentplane() -> None:
    doc = _fixture("valid.verification-no-model")
    doc.update(selected_lane="standard", cost_class="standard")
    doc.pop("verification_mode")
    assert check_lane_receipt(doc) == []
    doc["verification_mode"] = "mechanical_tools_only"
    assert check_lane_receipt(doc) == []


# ------------------------------------------------------------ mapping


def test_mapping_tables_are_the_contracts() -> None:
    assert LANE_MAP == {"no-model": "no_model", "local-cheap": "lightweight", "cheap": "lightweight",
                        "standard": "standard", "high-end": "high_end", "pro": "pro"}
    assert COST_CLASS_MAP == {"no-model": "minimal", "local-cheap": "minimal", "cheap": "minimal",
                              "standard": "standard", "high-end": "high", "pro": "pro"}
    assert dict(STAGE_MAP) == {
        "intake": "planning", "classification": "planning", "planning": "planning", "retrieval": "execution",
        "execution": "execution", "tool-use": "execution", "verification": "verification", "review": "reflection",
        "finalization": "synthesis"}
    assert TASK_CLASS_MAP == {
        "formatting-rewrite": "summarization", "log-triage": "classification", "routine-code": "code_generation",
        "multi-repo-migration": "code_generation", "architecture-decision": "reasoning",
        "hard-debugging": "reasoning", "high-stakes-synthesis": "reasoning", "security-review": "code_review"}
    schema = upstream_json(RECEIPT_SCHEMA)["properties"]
    lanes = set(upstream_json(RECEIPT_SCHEMA)["$defs"]["RoutingLane"]["enum"])
    assert set(LANE_MAP.values()) <= lanes
    assert set(COST_CLASS_MAP.values()) <= set(schema["cost_class"]["enum"])
    assert set(STAGE_MAP.values()) <= set(schema["chain_stage"]["enum"])
    assert set(TASK_CLASS_MAP.values()) <= set(schema["task_class"]["enum"])


def _ctx(**kw: Any) -> StageEvidence:
    kw.setdefault("run_id", "run-1")
    kw.setdefault("issued_at", NOW)
    return StageEvidence(**kw)


def _custom_task_router() -> Router:
    pol = bundled_json("policy.json")
    extra = copy.deepcopy(pol["taskClasses"][2])
    extra["taskClass"] = "data-cleanup"
    pol["taskClasses"].append(extra)
    return Router(load_bundle(pol))


def test_other_task_classes_need_a_user_mapping() -> None:
    d = _custom_task_router().route(task_class="data-cleanup", stage="planning", signals=healthy())
    with pytest.raises(ConfigurationError, match=r"Task class 'data-cleanup' has no agentplane task class in "
                                                 r"agentlanes.mapping/1; pass a mapping"):
        lane_receipt(d, _ctx())
    doc = lane_receipt(d, _ctx(), task_classes={"data-cleanup": "data_extraction"})
    assert doc["task_class"] == "data_extraction" and check_lane_receipt(doc) == []
    with pytest.raises(ConfigurationError, match=r"mapped to 'cleanup', which is not an agentplane task class"):
        lane_receipt(d, _ctx(), task_classes={"data-cleanup": "cleanup"})
    assert guardrail_decisions(d, _ctx())  # guardrail-fabric has no task-class vocabulary to map


def test_a_running_premium_lane_needs_an_escalation_receipt() -> None:
    d = Router().route(task_class="architecture-decision", stage="planning", risk_class="high",
                       escalation_reason="architecture-decision", signals=healthy())
    assert d.lane == "high-end"
    with pytest.raises(ConfigurationError, match=r"runs premium lane 'high-end' but its stage context names no "
                                                 r"escalation receipt"):
        lane_receipt(d, _ctx())
    doc = lane_receipt(d, _ctx(escalation_receipt_id="run-1/receipt/1", escalation_receipt_digest="sha256:ab"))
    assert (doc["lane_decision_outcome"], doc["selected_lane"], doc["cost_class"]) == ("escalated", "high_end", "high")
    assert doc["escalation_receipt_ref"] == "agentlanes://escalation-receipt/run-1/receipt/1#sha256:ab"
    assert doc["de_escalation_required_after_stage"] is True
    assert doc["escalation_reason"] == "architecture-decision"
    assert check_lane_receipt(doc) == [] and schema_errors(RECEIPTS, doc) == []
    # awaiting or refused approval: nothing runs, no receipt needed
    for approval, outcome in (("pending", "deferred"), ("denied", "denied")):
        doc = lane_receipt(d, _ctx(approval=approval))
        assert (doc["lane_decision_outcome"], doc["selected_lane"]) == (outcome, "no_model")
        assert doc["requested_lane"] == "high_end" and check_lane_receipt(doc) == []


def test_receipt_fields() -> None:
    d = Router().route(task_class="routine-code", stage="planning", requested_lane="high-end", signals=healthy())
    doc = lane_receipt(d, _ctx(prompt_digest="hmac-sha256:" + "a" * 64))
    assert doc["kind"] == "ModelRoutingLaneDecisionReceipt"
    assert (doc["chain_stage"], doc["task_class"]) == ("planning", "code_generation")
    assert (doc["requested_lane"], doc["selected_lane"], doc["lane_decision_outcome"]) == (
        "high_end", "standard", "downgraded")
    assert "requested-lane-not-optimal-or-feasible:high-end" in doc["downgrade_reason"]
    assert doc["prompt_evidence_policy"] == "hash_only" and doc["prompt_hash_ref"] == "hmac-sha256:" + "a" * 64
    assert doc["context_tool_posture"] == "tools_governed" and "verification_mode" not in doc
    assert doc["model_router_policy_ref"] == f"model-router://policy/{d.meta.policy_ref}"
    assert doc["policy_decision_ref"] == guardrail_decisions(d, _ctx())[-1]["decisionId"]
    assert any("raw prompts" in c for c in doc["non_claims"])
    assert any("agentlanes.mapping/1" in c for c in doc["non_claims"])
    assert f"agentlanes://route-decision/{d.decision_id}" in doc["upstream_anchors"]
    assert doc["issued_at"] == NOW and doc["run_ref"] == "agentlanes://run/run-1"


@pytest.mark.parametrize(("deterministic", "judge", "lane", "mode"), [
    (True, False, "no-model", "mechanical_tools_only"),
    (False, True, "local-cheap", "model_assisted"),
    (False, True, "standard", None),
])
def test_verification_modes(deterministic: bool, judge: bool, lane: str, mode: str | None) -> None:
    risk = {"no-model": "medium", "local-cheap": "low", "standard": "medium"}[lane]
    d = Router().route(task_class="log-triage" if lane == "local-cheap" else "routine-code", stage="verification",
                       risk_class=risk, deterministic=deterministic, signals=healthy())
    assert d.lane == lane
    doc = lane_receipt(d, _ctx(deterministic_verifiers=deterministic, model_judge=judge))
    assert doc["chain_stage"] == "verification" and doc["context_tool_posture"] == "tools_read_only"
    assert doc.get("verification_mode") == mode
    assert check_lane_receipt(doc) == [] and schema_errors(RECEIPTS, doc) == []


# ------------------------------------------------------------ guardrail outcomes


def _outcomes(docs: list[dict[str, Any]]) -> list[tuple[str, str, bool, bool]]:
    return [(g["decision"], g["severity"], g["effects"]["agentMayContinue"], g["effects"]["requiresHumanApproval"])
            for g in docs]


def test_guardrail_outcomes() -> None:
    r = Router()
    sel = r.route(task_class="routine-code", stage="planning", signals=healthy())
    assert _outcomes(guardrail_decisions(sel, _ctx())) == [("allow", "info", True, False)]
    down = r.route(task_class="routine-code", stage="planning", requested_lane="high-end", signals=healthy())
    assert _outcomes(guardrail_decisions(down, _ctx())) == [("allow_with_context", "low", True, False)]
    esc = r.route(task_class="architecture-decision", stage="planning", risk_class="high",
                  escalation_reason="architecture-decision", signals=healthy())
    assert _outcomes(guardrail_decisions(esc, _ctx())) == [("escalate", "medium", False, True)]
    assert _outcomes(guardrail_decisions(esc, _ctx(approval="granted"))) == [("escalate", "medium", True, True)]
    assert _outcomes(guardrail_decisions(esc, _ctx(approval="pending"))) == [
        ("escalate", "medium", False, True), ("defer", "medium", False, True)]
    assert _outcomes(guardrail_decisions(esc, _ctx(approval="denied"))) == [
        ("escalate", "medium", False, True), ("deny", "high", False, True)]
    routine_esc = r.route(task_class="routine-code", stage="planning", risk_class="high",
                          escalation_reason="hard-debugging", requested_lane="high-end", signals=healthy())
    assert routine_esc.lane == "high-end"
    assert _outcomes(guardrail_decisions(routine_esc, _ctx())) == [("escalate", "medium", True, False)]
    deferred = r.route(task_class="architecture-decision", stage="planning", risk_class="high", signals=healthy())
    assert _outcomes(guardrail_decisions(deferred, _ctx())) == [("defer", "medium", False, False)]
    failed = r.route(task_class="routine-code", stage="planning", signals=healthy(networkAvailable=None))
    assert _outcomes(guardrail_decisions(failed, _ctx())) == [("defer", "high", False, False)]
    pol = bundled_json("policy.json")
    pol["enforcement"]["onViolation"] = "deny"
    denied = Router(load_bundle(pol)).route(task_class="routine-code", stage="planning", signals={})
    assert denied.status == "denied"
    assert _outcomes(guardrail_decisions(denied, _ctx())) == [("deny", "high", False, False)]  # failed closed
    review = r.decide(RouteRequest(task_class="routine-code", stage="execution", signals=healthy(),
                                   ceilings=[upstream_json("examples/runtime-state-routing-policy.allocated.json")]))
    assert review.approval_required
    assert _outcomes(guardrail_decisions(review, _ctx())) == [("escalate", "medium", False, True)]
    docs = guardrail_decisions(review, _ctx())
    assert docs[0]["evidence"]["preservedWarnings"] == ["runtime_parity_not_certified"]


def test_guardrail_ids_are_digests_of_the_decision_and_outcome() -> None:
    d = Router().route(task_class="architecture-decision", stage="planning", risk_class="high",
                       escalation_reason="architecture-decision", signals=healthy())
    a = guardrail_decisions(d, _ctx(approval="pending"))
    b = guardrail_decisions(d, _ctx(approval="pending", run_id="other", issued_at="2027-01-01T00:00:00Z"))
    assert [x["decisionId"] for x in a] == [x["decisionId"] for x in b]
    assert len({x["decisionId"] for x in a}) == 2
    want = "guardrail:decision:agentlanes:" + hashlib.sha256(f"{d.decision_id}|escalate".encode()).hexdigest()[:32]
    assert a[0]["decisionId"] == want
    for doc in a:
        assert doc["scope"] == "runtime" and doc["evidence"]["actionClass"] == "model"
        assert doc["evidence"]["routeDecisionId"] == d.decision_id


# ------------------------------------------------------------ the grid


BINDING = upstream_json("examples/local-personal-route-binding.llama32.json")
CONTRACT = upstream_json("model-governance-ledger/examples/personal-tuning-contract.local-llama32-user.json")
CEILING_DOCS = [upstream_json(f"examples/{p.name}") for p in sorted((UPSTREAM / "examples").glob("*routing-policy.*"))
                if "routing_consequence" in p.read_text()]
NEIGHBOURS: list[dict[str, Any]] = [
    {},
    {"findings": {"findings": [], "metadata": {"anonymize.requires_local_model": "true"}}},
    {"findings": {"findings": [], "metadata": {"sensitivity": "confidential"}}},
    {"findings": {"findings": "broken", "metadata": {}}},
    {"ceilings": [CEILING_DOCS[0]]},
    {"ceilings": CEILING_DOCS},
    {"ceilings": [{"routing_consequence": {}}]},
    {"binding": BindingRequest(binding=BINDING, task="office-assist", contract=CONTRACT, now=NOW,
                               ledger_approved=True)},
    {"binding": BindingRequest(binding=BINDING, task="complex-reasoning", contract=CONTRACT, now=NOW,
                               egress_approval="policy://egress/1")},
    {"binding": BindingRequest(binding=BINDING, task="nothing", now=NOW)},
]
APPROVALS: list[Any] = [None, "pending", "granted", "denied"]


def grid_records(router: Router, step: int = 7) -> list[tuple[Any, StageEvidence]]:
    """Decisions over the routing grid (every signal set, task class, stage, risk...), half
    of them shaped by one of the neighbours' inputs, each with a stage context."""
    signals = {name: make() for name, make in SIGNAL_SETS.items()}
    records = []
    for i, row in enumerate(GRID[::step]):
        neighbours = NEIGHBOURS[(i // 2) % len(NEIGHBOURS)] if i % 2 else {}
        req = _request(row, signals[row[5]])
        d = router.decide(RouteRequest(**{**req.__dict__, **neighbours}))
        premium = d.lane in PREMIUM_LANES
        ctx = StageEvidence(
            run_id=f"run-{i % 7}",
            issued_at=f"2026-06-01T00:{i % 60:02d}:00Z",
            stage="verification" if row[1] == "verification" and i % 11 == 0 else None,
            deterministic_verifiers=row[7],
            model_judge=not row[7] and i % 2 == 0,
            escalation_receipt_id=f"run-{i % 7}/receipt/{i}" if premium else None,
            escalation_receipt_digest="sha256:" + "c" * 64 if premium and i % 3 else None,
            prompt_digest=None if i % 4 == 0 else "hmac-sha256:" + hashlib.sha256(str(i).encode()).hexdigest(),
            approval=APPROVALS[i % len(APPROVALS)] if premium else None,
        )
        records.append((d, ctx))
    return records


@pytest.fixture(scope="module")
def records() -> list[tuple[Any, StageEvidence]]:
    pol = bundled_json("policy.json")
    pol["enforcement"]["onViolation"] = "deny"  # bad signals give denied decisions
    return grid_records(Router()) + grid_records(Router(load_bundle(pol)), step=11)


def test_every_emitted_receipt_validates(records: list[tuple[Any, StageEvidence]]) -> None:
    outcomes: Counter[str] = Counter()
    for d, ctx in records:
        doc = lane_receipt(d, ctx)
        assert schema_errors(RECEIPTS, doc) == [], (d.to_native(), doc)
        assert check_lane_receipt(doc) == [], doc
        assert lane_receipt(d, ctx) == doc  # deterministic
        outcomes[doc["lane_decision_outcome"]] += 1
        for warning in d.warnings:
            assert any(warning in c for c in doc["non_claims"])
    assert set(outcomes) == {"lane_selected", "downgraded", "escalated", "deferred", "denied"}, outcomes


def test_every_emitted_guardrail_decision_validates(records: list[tuple[Any, StageEvidence]]) -> None:
    seen: Counter[str] = Counter()
    for d, ctx in records:
        docs = guardrail_decisions(d, ctx)
        assert docs and len({g["decisionId"] for g in docs}) == len(docs)
        for doc in docs:
            assert schema_errors(GUARDRAILS, doc) == [], doc
            assert doc["evidence"]["actionClass"] == "model" and doc["scope"] == "runtime"
            seen[f"{doc['decision']}/{doc['severity']}"] += 1
        assert guardrail_decisions(d, ctx) == docs
    assert {"allow/info", "allow_with_context/low", "escalate/medium", "defer/medium", "defer/high",
            "deny/high"} <= set(seen), seen


def test_native_form_gives_the_same_evidence(records: list[tuple[Any, StageEvidence]]) -> None:
    router = Router()
    tasks = router.meta.tasks
    for d, ctx in records[::5]:
        native = json.loads(json.dumps(d.to_native()))
        facts = DecisionFacts.from_native(native, tasks=tasks)
        assert facts == DecisionFacts.of(d)
        assert lane_receipt(facts, ctx) == lane_receipt(d, ctx)
        assert guardrail_decisions(native, ctx)[0]["decisionId"] == guardrail_decisions(d, ctx)[0]["decisionId"]


def test_native_form_must_be_a_decision() -> None:
    with pytest.raises(ConfigurationError, match="Not a native agentlanes route decision"):
        DecisionFacts.from_native({"kind": "AgentExecutionRouteDecision"})


def test_evidence_lines_in_each_format(records: list[tuple[Any, StageEvidence]]) -> None:
    receipts = list(evidence_lines(records, "agentplane-lane-receipts"))
    guardrails = list(evidence_lines(records, "guardrail-decisions"))
    journal = list(evidence_lines(records, "evidence-journal"))
    assert len(receipts) == len(records)
    assert len(journal) == len(receipts) + len(guardrails)
    assert all(check_lane_receipt(json.loads(line)) == [] for line in receipts)
    report = verify_journal(journal)
    assert report.verified and report.records == len(journal)
    assert [json.loads(line)["event"] for line in journal[:2]] == [
        json.loads(receipts[0]), json.loads(guardrails[0])]
    assert list(evidence_lines(records, "evidence-journal")) == journal  # replay reproduces it
    with pytest.raises(ConfigurationError, match="Evidence format 'pdf' is not one of"):
        list(evidence_lines(records, "pdf"))


# ------------------------------------------------------------ journal


def independent_chain(lines: list[str]) -> bool:
    """CONTRACT D4's journal rules, read independently of agentlanes.evidence."""
    previous = "0" * 64
    for line in lines:
        rec = json.loads(line)
        assert line == json.dumps(rec, sort_keys=True, separators=(",", ":"))
        if rec["previousDigest"] != "sha256:" + previous:
            return False
        canon = json.dumps(rec["event"], sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        evidence = hashlib.sha256(canon.encode()).hexdigest()
        if rec["evidenceDigest"] != "sha256:" + evidence:
            return False
        chain = hashlib.sha256((previous + evidence).encode()).hexdigest()
        if rec["chainDigest"] != "sha256:" + chain:
            return False
        previous = chain
    return True


def _journal(events: list[dict[str, Any]]) -> list[str]:
    writer = JournalWriter()
    return [writer.append(e, appended_at=NOW) for e in events]


EVENTS = [{"kind": "a", "n": 1, "text": "caf\u00e9 \u2713"}, {"kind": "b", "nested": {"z": 1, "a": [1, 2]}},
          {"kind": "c", "f": 0.1}]


def test_journal_follows_the_chain_rules() -> None:
    lines = _journal(EVENTS)
    assert independent_chain(lines)
    first = json.loads(lines[0])
    assert first["previousDigest"] == GENESIS_DIGEST == "sha256:" + "0" * 64
    assert "\\u00e9" in lines[0]  # ASCII escapes
    assert verify_journal(lines).verified
    assert verify_journal(line + "\n" for line in lines).verified
    assert verify_journal(["", *lines, ""]).records == 3


def test_a_journal_written_by_another_writer_verifies() -> None:
    previous = "0" * 64
    lines = []
    for event in EVENTS:
        evidence = hashlib.sha256(json.dumps(event, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        chain = hashlib.sha256(f"{previous}{evidence}".encode()).hexdigest()
        lines.append(json.dumps({"appendedAt": NOW, "chainDigest": f"sha256:{chain}",
                                 "evidenceDigest": f"sha256:{evidence}", "event": event,
                                 "previousDigest": f"sha256:{previous}"}, sort_keys=True, separators=(",", ":")))
        previous = chain
    report = verify_journal(lines)
    assert report.verified and report.tip == f"sha256:{previous}"


@pytest.mark.parametrize(("tamper", "problem", "index"), [
    (lambda ls: [ls[0], ls[2]], "previousDigest mismatch", 1),
    (lambda ls: [ls[1], ls[0], ls[2]], "previousDigest mismatch", 0),
    (lambda ls: [ls[0].replace('"n":1', '"n":2'), *ls[1:]], "evidenceDigest mismatch", 0),
    (lambda ls: [ls[0], ls[1][:-1] + " }", ls[2]], "not written with sorted keys", 1),
    (lambda ls: [ls[0], ls[1], ls[2].replace("chainDigest", "chain")], "is not exactly", 2),
    (lambda ls: [ls[0], "not json", ls[2]], "not JSON", 1),
])
def test_journal_tampering_is_found(tamper: Any, problem: str, index: int) -> None:
    report = verify_journal(tamper(_journal(EVENTS)))
    assert not report.verified and problem in (report.problem or "") and report.index == index


def test_journal_chain_digest_tampering_is_found() -> None:
    lines = _journal(EVENTS)
    rec = json.loads(lines[1])
    rec["chainDigest"] = "sha256:" + "f" * 64
    lines[1] = json.dumps(rec, sort_keys=True, separators=(",", ":"))
    report = verify_journal(lines)
    assert (report.verified, report.problem, report.records) == (False, "chainDigest mismatch", 1)


def test_journal_continues_from_a_tip() -> None:
    lines = _journal(EVENTS)
    tip = verify_journal(lines).tip
    more = JournalWriter(tip).append({"kind": "d"}, appended_at=NOW)
    assert verify_journal([*lines, more]).verified


def test_stage_context_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="stage context time issued_at 'soon' is not usable"):
        StageEvidence(run_id="r", issued_at="soon")
    with pytest.raises(ConfigurationError, match="Stage 'thinking' in a stage context is not a chain stage"):
        StageEvidence(run_id="r", issued_at=NOW, stage="thinking")
    ctx = StageEvidence(run_id="r", issued_at="2026-06-01T02:00:00+02:00")
    assert ctx.issued_at == NOW
    assert StageEvidence.from_json(ctx.to_json()) == ctx
    with pytest.raises(ConfigurationError, match="Unknown stage-context key 'colour'"):
        StageEvidence.from_json({"colour": 1}, run_id="r", issued_at=NOW)
