"""Required evidence (CONTRACT Part C), as pure rules.

Each chain stage of the policy names the evidence a stage of that kind must record
(``chainStages[].requiredEvidence``). Items the caller gives are digested; items the
runtime knows itself (the task class, the routing reason, the verifiers that ran...)
are filled in; what is still missing is reported, never invented.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from agentlanes.decision import RouteDecision
from agentlanes.verifiers import VerifierResult

__all__ = ["as_text", "fill", "known_item"]


def as_text(value: Any) -> str | bytes:
    """What is digested for an evidence value: text as is, anything else its repr."""
    return value if isinstance(value, (str, bytes)) else repr(value)


def known_item(
    item: str,
    *,
    task_class: str,
    risk_class: str,
    reason: str | None,
    status: str,
    decisions: Sequence[RouteDecision],
    verifications: Iterable[Sequence[VerifierResult]],
) -> str | None:
    """The value of a required-evidence item the runtime knows without being told, or
    ``None`` when it cannot know it."""
    if item == "taskClass":
        return task_class
    if item == "riskClass":
        return risk_class
    if item == "escalationReasonIfAny":
        return reason or "none"
    if item == "status":
        return status
    if decisions:
        first, last = decisions[0], decisions[-1]
        if item == "initialLane":
            return first.lane or ""
        if item == "routingReason":
            return last.reason
        if item == "reviewLane":
            return last.lane or ""
        if item == "policyDecision":
            return last.decision_id
    if item in ("tests", "linters"):
        names = sorted({r.name for batch in verifications for r in batch})
        return ",".join(names) if names else None
    return None


def fill(
    evidence: dict[str, str],
    *,
    given: Mapping[str, Any] | None,
    required: Iterable[str],
    known: Callable[[str], str | None],
    digest: Callable[[str | bytes], str],
) -> list[str]:
    """Record ``given`` items (digested; items already recorded win), fill the
    ``required`` items the runtime knows, and return those still missing."""
    for key, value in (given or {}).items():
        if key not in evidence:
            evidence[key] = digest(as_text(value))
    missing = []
    for item in required:
        if item in evidence:
            continue
        value = known(item)
        if value is None:
            missing.append(item)
        else:
            evidence[item] = digest(value)
    return missing
