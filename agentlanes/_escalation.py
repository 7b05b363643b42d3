"""The escalation state of one stage, as a pure state machine (CONTRACT Part C).

A stage starts with the escalation reason in force for it (its own, or the run's until
the planning stage has finished when ``deescalateAfterPlan`` holds). Each attempt is
routed with :attr:`Escalation.reason` and :attr:`Escalation.excluded`; the machine
then hears what happened and says what to do next:

* a decision → :meth:`Escalation.receipt_for`: whether a receipt is owed first (every
  premium lane, and every escalation);
* stage code raised ``Escalate(reason)`` → :meth:`Escalation.escalate`: exclude every
  lane up to the current one and route again with that reason;
* an attempt failed → :meth:`Escalation.failed`: ``RETRY`` on the same lane,
  ``ESCALATE`` after ``repeatedFailureThreshold`` failures on ``standard`` (reason
  ``repeated-standard-lane-failure``, the receipt naming the failed attempts), or
  ``GIVE_UP``.

No I/O, no clock: unit tests drive it directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from agentlanes.lanes import PREMIUM_LANES, RANK

__all__ = ["REPEATED_FAILURE", "Escalation", "Next", "PendingReceipt", "exclude_up_to"]

REPEATED_FAILURE = "repeated-standard-lane-failure"


class Next(Enum):
    """What the stage does after a failed attempt."""

    RETRY = "retry"
    ESCALATE = "escalate"
    GIVE_UP = "give-up"


class PendingReceipt(NamedTuple):
    """A receipt owed before the next attempt runs."""

    from_lane: str | None
    reason: str
    evidence_refs: tuple[str, ...]


def exclude_up_to(lane: str, why: str) -> tuple[tuple[str, str], ...]:
    """Every model lane ranked at or below ``lane``, each excluded with ``why``."""
    top = RANK[lane]
    return tuple((name, why) for name, rank in RANK.items() if rank <= top and name != "no-model")


@dataclass
class Escalation:
    """One stage's escalation state.

    Attributes:
        threshold: the policy's ``repeatedFailureThreshold``.
        reason: the escalation reason routing uses now (``None``: no escalation).
        excluded: lanes the router must not pick, each with the reason it records.
        pending: a receipt owed before the next attempt.
        escalated: the stage escalated after repeated standard-lane failure (it
            escalates that way at most once).
        standard_failures: failed attempts on ``standard`` so far.
        lane_attempts: attempts since the stage last changed lane by escalation.
    """

    threshold: int
    reason: str | None = None
    excluded: tuple[tuple[str, str], ...] = ()
    pending: PendingReceipt | None = None
    escalated: bool = False
    standard_failures: int = 0
    lane_attempts: int = 0

    def receipt_for(self, lane: str, default_lane: str | None) -> PendingReceipt | None:
        """The receipt owed before running on ``lane``: the pending escalation's, or, for
        a premium lane, one from the stage's default lane with the reason in force."""
        if self.pending is not None:
            return self.pending
        if lane in PREMIUM_LANES:
            return PendingReceipt(default_lane, self.reason or "", ())
        return None

    def receipt_written(self) -> None:
        self.pending = None

    def attempt_started(self) -> None:
        self.lane_attempts += 1

    def escalate(self, lane: str, reason: str) -> None:
        """Stage code asked to escalate from ``lane`` for ``reason`` (already checked
        against the policy's allowed reasons)."""
        self.excluded = exclude_up_to(lane, f"escalated-from:{lane}")
        self.reason = reason
        self.pending = PendingReceipt(lane, reason, ())
        self.lane_attempts = 0

    def failed(self, lane: str, evidence_refs: Sequence[str] = ()) -> Next:
        """An attempt on ``lane`` failed; ``evidence_refs`` are digests of the recent
        failures, named by the receipt if this failure escalates."""
        if lane == "standard":
            self.standard_failures += 1
        if not self.escalated and lane == "standard" and self.standard_failures >= self.threshold:
            self.escalated = True
            self.reason = REPEATED_FAILURE
            self.excluded = exclude_up_to("standard", "escalated-from:standard")
            self.pending = PendingReceipt("standard", REPEATED_FAILURE, tuple(evidence_refs))
            self.lane_attempts = 0
            return Next.ESCALATE
        if self.escalated or self.lane_attempts >= self.threshold:
            return Next.GIVE_UP
        return Next.RETRY

    def escalates_next(self, lane: str) -> bool:
        """Whether a failure on ``lane`` now would escalate (so the caller knows to
        gather evidence refs first)."""
        return not self.escalated and lane == "standard" and self.standard_failures + 1 >= self.threshold
