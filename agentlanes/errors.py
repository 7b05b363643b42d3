"""Errors that say whose fault it is.

::

    AgentLanesError
    ├── ConfigurationError      your mistake, found at load or call time
    │   ├── PolicyError         a broken document; .source and .pointer name where
    │   └── RouteInputError     a request the documents cannot answer (unknown stage...)
    ├── RunError                something went wrong during a run (.run_id, .stage)
    │   ├── RouteDeferred       .decision carries the full decision and its reasons
    │   ├── EscalationDenied    an escalation needed approval and did not get it
    │   ├── BudgetExhausted     the budget could not hold the call (.refusal)
    │   ├── ModelError          a model call failed after retries; __cause__ is the provider's
    │   ├── VerificationFailed  the stage's output never verified (.evidence)
    │   ├── StoreError          the budget store failed; the message says what was admitted
    │   │   ├── StoreUnavailable   it did not answer in time (down, cut off, locked)
    │   │   └── UnsettledCharge    a call was made but its cost is not in the store yet
    │   │                          (.amount, .reservation_id, .journal)
    │   └── RecordError         the run's local record (trace, bodies) could not be written
    │                           (.path); the run stops and is marked failed
    └── ReplayDivergence        a replay differs from its record (.index, .expected, .actual)

Control-flow signals raised by stage code (:class:`RetryStage`, :class:`Escalate`) are
not errors and sit outside the tree.

Messages are full sentences that carry the bad value and what is allowed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from agentlanes.budget import Refusal
    from agentlanes.decision import RouteDecision
    from agentlanes.verifiers import VerifierResult

__all__ = [
    "AgentLanesError",
    "BudgetExhausted",
    "ConfigurationError",
    "Escalate",
    "EscalationDenied",
    "ModelError",
    "PolicyError",
    "RecordError",
    "ReplayDivergence",
    "RetryStage",
    "RouteDeferred",
    "RouteInputError",
    "RunError",
    "StoreError",
    "StoreUnavailable",
    "UnsettledCharge",
    "VerificationFailed",
]


class AgentLanesError(Exception):
    """Base class of every error agentlanes raises on purpose."""


class ConfigurationError(AgentLanesError):
    """The caller's configuration or input is wrong; fix it and call again."""


class PolicyError(ConfigurationError):
    """A routing document is broken.

    Attributes:
        source: the file (or ``<memory>``) the document came from.
        pointer: RFC 6901 JSON pointer to the offending value, ``""`` for the root.
        problems: every problem found, as ``(pointer, message)`` pairs; the first one
            is also the error's message.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str = "<memory>",
        pointer: str = "",
        problems: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.source = source
        self.pointer = pointer
        self.problems: list[tuple[str, str]] = problems if problems is not None else [(pointer, message)]


class RouteInputError(ConfigurationError):
    """A route request names something the documents do not define."""


class RunError(AgentLanesError):
    """Something went wrong while a run was executing.

    Attributes:
        run_id: the run, when known.
        stage: the stage, when known.
    """

    def __init__(self, message: str, *, run_id: str | None = None, stage: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.stage = stage


class RouteDeferred(RunError):
    """The router admitted no lane for a stage (status ``deferred`` or ``denied``).

    Attributes:
        decision: the full decision, with every candidate and its reasons.
    """

    def __init__(self, decision: RouteDecision, *, run_id: str | None = None, stage: str | None = None) -> None:
        reasons = ", ".join(decision.reasons) or decision.reason
        refused: list[str] = []
        for candidate in decision.candidates:
            for why in candidate.reasons:
                if why not in refused:
                    refused.append(why)
        why_text = f"; the lanes were refused for: {', '.join(refused[:12])}" if refused else ""
        super().__init__(
            f"Stage {decision.stage!r} was {decision.status} by the router ({reasons}{why_text}); "
            "no lane may run it under the current policy and signals.",
            run_id=run_id,
            stage=stage if stage is not None else decision.stage,
        )
        self.decision = decision


class EscalationDenied(RunError):
    """An escalation needed human approval and was denied (or no approver is set).

    Attributes:
        decision: the decision that selected the premium lane.
        approver: who denied it (``None`` when no approver is configured).
    """

    def __init__(self, message: str, *, decision: RouteDecision, approver: str | None, run_id: str, stage: str) -> None:
        super().__init__(message, run_id=run_id, stage=stage)
        self.decision = decision
        self.approver = approver


class BudgetExhausted(RunError):
    """No budget window could hold a call, and the optimizer says defer or deny.

    Attributes:
        refusal: the window that refused and what it had left (micro-units).
    """

    def __init__(self, message: str, *, refusal: Refusal, run_id: str, stage: str) -> None:
        super().__init__(message, run_id=run_id, stage=stage)
        self.refusal = refusal


class ModelError(RunError):
    """A model call failed after its retries and fallbacks; ``__cause__`` is the
    provider's last error.

    Attributes:
        retryable: whether the provider's last error was one that trying again (or
            another model) might fix; ``False`` for a request the server refused (4xx).
    """

    def __init__(
        self, message: str, *, run_id: str | None = None, stage: str | None = None, retryable: bool = True
    ) -> None:
        super().__init__(message, run_id=run_id, stage=stage)
        self.retryable = retryable


class VerificationFailed(RunError):
    """A stage's output failed verification on every attempt it was allowed.

    Attributes:
        evidence: the verifier results of the last attempt.
        attempts: how many attempts ran.
    """

    def __init__(self, message: str, *, evidence: list[VerifierResult], attempts: int, run_id: str, stage: str) -> None:
        super().__init__(message, run_id=run_id, stage=stage)
        self.evidence = evidence
        self.attempts = attempts


class StoreError(RunError):
    """The store that holds budgets, receipts and the run index failed.

    The message says what happened (which store, what the database said) and what it
    means for the money: whether anything was admitted, charged or left held.
    ``__cause__`` is the database driver's error.
    """


class StoreUnavailable(StoreError):
    """The store did not answer in time: the database is down or unreachable, the
    connection was cut, or another process held the SQLite file's lock too long."""


class UnsettledCharge(StoreError):
    """A model call was admitted and made, but the store could not record its cost.

    The charge is kept in the ledger's journal (when it has one) and applied to the
    store, exactly once, as soon as the store answers again; until then it counts against
    the caps of the windows it belongs to.

    Attributes:
        amount: what the call cost, in micro-units of the budget currency.
        reservation_id: the reservation the charge settles.
        journal: the journal file that holds the charge, or ``None`` when it could not be
            written (then the charge is recorded nowhere but in this error).
    """

    def __init__(
        self,
        message: str,
        *,
        amount: int,
        reservation_id: str,
        journal: Path | None,
        run_id: str | None = None,
        stage: str | None = None,
    ) -> None:
        super().__init__(message, run_id=run_id, stage=stage)
        self.amount = amount
        self.reservation_id = reservation_id
        self.journal = journal


class RecordError(RunError):
    """The run's local record (its trace file or the bodies replay needs) could not be
    written: a full disk, a directory that turned read-only, a name no encoder can
    write. The stage that was ending does not return its result (it could not be
    recorded), no later stage of the run starts, and the run is marked failed.

    Attributes:
        path: the file that could not be written.
    """

    def __init__(self, message: str, *, path: str, run_id: str | None = None, stage: str | None = None) -> None:
        super().__init__(message, run_id=run_id, stage=stage)
        self.path = path


class ReplayDivergence(AgentLanesError):
    """A replayed run did something its record did not.

    Attributes:
        index: the step (0-based) where it diverged.
        expected: what the record holds there.
        actual: what happened instead.
    """

    def __init__(self, message: str, *, index: int, expected: object, actual: object) -> None:
        super().__init__(message)
        self.index = index
        self.expected = expected
        self.actual = actual


class RetryStage(Exception):
    """Raised by stage code: this attempt failed; try the stage again with ``feedback``.

    Counts as a failed attempt (so repeated failures escalate like failing verifiers).
    """

    def __init__(self, feedback: str = "") -> None:
        super().__init__(feedback)
        self.feedback = feedback


class Escalate(Exception):
    """Raised by stage code: run this stage again on a higher lane, for ``reason`` (one
    of the policy's allowed escalation reasons). Produces a receipt."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
