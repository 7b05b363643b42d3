"""The pure parts of the stage engine: the escalation state machine and the evidence
rules, driven directly (no run, no I/O)."""

from __future__ import annotations

from typing import Any

import pytest

from agentlanes import _evidence
from agentlanes._escalation import REPEATED_FAILURE, Escalation, Next, PendingReceipt, exclude_up_to
from agentlanes.router import Router
from agentlanes.verifiers import VerifierResult
from tests.conftest import healthy


def test_exclude_up_to_names_every_model_lane_at_or_below() -> None:
    assert exclude_up_to("standard", "why") == (("local-cheap", "why"), ("cheap", "why"), ("standard", "why"))
    assert exclude_up_to("no-model", "why") == ()


def test_premium_lanes_owe_a_receipt_from_the_stage_default() -> None:
    esc = Escalation(threshold=2, reason="architecture-decision")
    assert esc.receipt_for("standard", "standard") is None
    assert esc.receipt_for("high-end", "standard") == PendingReceipt("standard", "architecture-decision", ())
    assert Escalation(2).receipt_for("pro", None) == PendingReceipt(None, "", ())


def test_repeated_standard_failure_escalates_once_then_gives_up() -> None:
    esc = Escalation(threshold=2)
    esc.attempt_started()
    assert not esc.escalates_next("cheap") and not esc.escalates_next("standard")
    assert esc.failed("standard") is Next.RETRY
    esc.attempt_started()
    assert esc.escalates_next("standard")
    assert esc.failed("standard", ["ref1", "ref2"]) is Next.ESCALATE
    assert esc.reason == REPEATED_FAILURE and esc.escalated
    assert esc.pending == PendingReceipt("standard", REPEATED_FAILURE, ("ref1", "ref2"))
    assert dict(esc.excluded) == {"local-cheap": "escalated-from:standard", "cheap": "escalated-from:standard",
                                  "standard": "escalated-from:standard"}
    assert esc.receipt_for("high-end", "standard") == esc.pending
    esc.receipt_written()
    assert esc.pending is None and esc.lane_attempts == 0
    esc.attempt_started()
    assert esc.failed("high-end") is Next.GIVE_UP  # escalated once: no second escalation


def test_other_lanes_retry_up_to_the_threshold() -> None:
    esc = Escalation(threshold=3)
    outcomes = []
    for _ in range(3):
        esc.attempt_started()
        outcomes.append(esc.failed("cheap"))
    assert outcomes == [Next.RETRY, Next.RETRY, Next.GIVE_UP]
    assert esc.standard_failures == 0 and not esc.escalated


def test_stage_code_escalation_excludes_the_current_lane_and_resets_attempts() -> None:
    esc = Escalation(threshold=2)
    esc.attempt_started()
    esc.escalate("standard", "conflicting-evidence-resolution")
    assert esc.reason == "conflicting-evidence-resolution" and esc.lane_attempts == 0
    assert esc.pending == PendingReceipt("standard", "conflicting-evidence-resolution", ())
    assert ("standard", "escalated-from:standard") in esc.excluded
    assert not esc.escalated  # repeated-failure escalation is still available afterwards


@pytest.mark.parametrize("threshold", [1, 2, 5])
def test_the_threshold_counts_standard_failures_across_lane_changes(threshold: int) -> None:
    esc = Escalation(threshold=threshold)
    results = []
    for _ in range(threshold):
        esc.attempt_started()
        results.append(esc.failed("standard"))
    assert results[-1] is Next.ESCALATE and all(r is Next.RETRY for r in results[:-1])


def _decision(stage: str = "planning") -> Any:
    return Router().route(task_class="routine-code", stage=stage, signals=healthy())


def test_evidence_fills_what_the_runtime_knows_and_reports_the_rest() -> None:
    decision = _decision()
    evidence: dict[str, str] = {"given-first": "kept"}

    def known(item: str) -> str | None:
        return _evidence.known_item(
            item, task_class="routine-code", risk_class="medium", reason=None, status="succeeded",
            decisions=[decision], verifications=[[VerifierResult("pytest", True, "command", "ok")]],
        )

    missing = _evidence.fill(
        evidence,
        given={"given-first": "other", "diff": b"bytes"},
        required=["taskClass", "escalationReasonIfAny", "initialLane", "policyDecision", "tests", "approvalRef"],
        known=known,
        digest=lambda v: f"d({v!r})",
    )
    assert missing == ["approvalRef"]
    assert evidence == {
        "given-first": "kept",  # recorded items win
        "diff": "d(b'bytes')",
        "taskClass": "d('routine-code')",
        "escalationReasonIfAny": "d('none')",
        "initialLane": "d('standard')",
        "policyDecision": f"d({decision.decision_id!r})",
        "tests": "d('pytest')",
    }


def test_evidence_never_invents_what_it_cannot_know() -> None:
    def known(item: str) -> str | None:
        return _evidence.known_item(item, task_class="t", risk_class="r", reason="x", status="failed", decisions=[],
                                    verifications=[])

    assert [known(i) for i in ("initialLane", "routingReason", "tests", "linters", "approvalRef")] == [None] * 5
    assert known("escalationReasonIfAny") == "x" and known("status") == "failed"
    assert _evidence.as_text(3) == "3" and _evidence.as_text("a") == "a"
