"""Escalation receipts: one per escalation and per use of a premium lane.

A receipt body is canonical JSON (sorted keys, no spaces, UTF-8) naming the run, stage,
task class, risk class, from-lane → to-lane, reason, evidence references, the decision
id, and the approver with a digest of the justification where the task class
``requiresHumanJustification``. The store appends it to the run's chain, filling in
``seq`` and ``prev`` (the previous receipt's digest), and keeps the sealed text.

Schema versions of the receipt body:
``agentlanes.escalation-receipt/1``: first version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agentlanes.policy import canonical_json

__all__ = ["RECEIPT_SCHEMA", "Receipt", "receipt_body", "seal_plain"]

RECEIPT_SCHEMA = "agentlanes.escalation-receipt/1"


def receipt_body(
    *,
    run_id: str,
    stage: str,
    task_class: str,
    risk_class: str,
    from_lane: str | None,
    to_lane: str,
    reason: str,
    decision_id: str,
    evidence_refs: Sequence[str],
    approver: str | None,
    justification_digest: str | None,
    created_at: str,
) -> dict[str, Any]:
    """The body of a receipt, before the store chains it."""
    return {
        "schemaVersion": RECEIPT_SCHEMA,
        "kind": "EscalationReceipt",
        "runId": run_id,
        "stage": stage,
        "taskClass": task_class,
        "riskClass": risk_class,
        "fromLane": from_lane,
        "toLane": to_lane,
        "reason": reason,
        "decisionId": decision_id,
        "evidenceRefs": list(evidence_refs),
        "approval": None if approver is None else {"approver": approver, "justification": justification_digest},
        "createdAt": created_at,
    }


def seal_plain(body: dict[str, Any]) -> tuple[str, str]:
    """Digest and stored text of a chained body (no signature)."""
    digest = "sha256:" + hashlib.sha256(canonical_json(body)).hexdigest()
    return digest, canonical_json({"digest": digest, "receipt": body}).decode("utf-8")


@dataclass(frozen=True)
class Receipt:
    """A stored receipt, as a run reports it."""

    run_id: str
    seq: int
    digest: str
    prev: str | None
    body: dict[str, Any]

    @property
    def receipt_id(self) -> str:
        return f"{self.run_id}/receipt/{self.seq}"

    @classmethod
    def from_text(cls, run_id: str, seq: int, digest: str, prev: str | None, text: str) -> Receipt:
        record = json.loads(text)
        return cls(run_id, seq, digest, prev, record["receipt"])
