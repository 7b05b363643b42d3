"""Typed run events, and the processors that consume them.

The stage engine performs no I/O of its own and knows nothing of spans, logs or files:
it tells what happened by handing one event at a time to each of the run's
:class:`RunProcessor` objects, in order, on the task that runs the stage. Span
emission, the local record, logging, the ``observer`` callback and replay checks are
all processors; the engine never knows which ones are attached.

Events are small named tuples (built on the hot path); the records they carry
(:class:`~agentlanes.result.StageRecord`, :class:`~agentlanes.result.CallRecord`) are
the engine's own working records, so a processor reads them and never changes them.

A processor must not block and must not raise: an exporter catches its own errors. An
exception from a processor fails the run (that is how a replay check stops it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from agentlanes.budget import Refusal
    from agentlanes.decision import RouteDecision
    from agentlanes.receipts import Receipt
    from agentlanes.result import CallRecord, CheckRecord, RunState, StageRecord, ToolRecord
    from agentlanes.verifiers import VerifierResult

__all__ = [
    "ApprovalAnswered",
    "AttemptFailed",
    "BudgetRefused",
    "CallEnded",
    "ChargeJournaled",
    "Decided",
    "Escalated",
    "Escalating",
    "EvidenceMissing",
    "InputsRecorded",
    "ModelCooled",
    "Rerouted",
    "RunEnded",
    "RunEvent",
    "RunProcessor",
    "RunStarted",
    "StageEnded",
    "StageStarted",
    "ToolEnded",
    "Verified",
    "wanted",
]


class RunStarted(NamedTuple):
    """A run entered ``async with lanes.run(...)`` (its index entry is written)."""

    run: RunState


class InputsRecorded(NamedTuple):
    """The run's inputs, kept for exact replay: ``text`` is the canonical JSON, which
    only the local record keeps (as a body named by ``digest``)."""

    run: RunState
    digest: str
    text: str


class StageStarted(NamedTuple):
    """A stage (or a sub-stage of ``parent``) started."""

    run: RunState
    record: StageRecord
    parent: StageRecord | None = None


class Decided(NamedTuple):
    """The router decided (``record.decisions[-1]`` is ``decision``)."""

    run: RunState
    record: StageRecord
    decision: RouteDecision
    step: int


class BudgetRefused(NamedTuple):
    """No budget window could hold a call's reservation."""

    run: RunState
    record: StageRecord
    lane: str
    refusal: Refusal
    estimate: int
    step: int


class CallEnded(NamedTuple):
    """One attempt of one model call ended (``call.ok`` says how). ``prompt_text`` and
    ``output_text`` are the bodies, for the local record only; nothing else keeps them."""

    run: RunState
    record: StageRecord
    call: CallRecord
    prompt_text: str
    output_text: str | None


class ChargeJournaled(NamedTuple):
    """A call's charge could not be recorded by the store; the ledger kept it in its
    journal (``journal``, a file) and applies it when the store answers again."""

    run: RunState
    record: StageRecord
    call: CallRecord
    amount: int
    journal: str
    why: str


class ModelCooled(NamedTuple):
    """A model failed all its retries and is skipped for ``seconds``."""

    run: RunState
    record: StageRecord
    lane: str
    model: str
    seconds: float


class Rerouted(NamedTuple):
    """A lane's models were exhausted (or its budget could not hold the call) and the
    stage moved to ``to_lane``."""

    run: RunState
    record: StageRecord
    from_lane: str
    to_lane: str
    why: str
    decision: RouteDecision


class ToolEnded(NamedTuple):
    run: RunState
    record: StageRecord
    tool: ToolRecord
    output_text: str | None


class Verified(NamedTuple):
    """One deterministic verifier's verdict, with its step, identity and digest."""

    run: RunState
    record: StageRecord
    check: CheckRecord


class ApprovalAnswered(NamedTuple):
    run: RunState
    record: StageRecord
    approved: bool
    approver: str | None
    step: int


class Escalating(NamedTuple):
    """Stage code raised :class:`~agentlanes.errors.Escalate` (checked reason)."""

    run: RunState
    record: StageRecord
    from_lane: str
    reason: str


class Escalated(NamedTuple):
    """A receipt was written for an escalation or a premium lane."""

    run: RunState
    record: StageRecord
    receipt: Receipt
    step: int


class AttemptFailed(NamedTuple):
    """An attempt failed verification (or asked to retry); ``failed`` are the failing results."""

    run: RunState
    record: StageRecord
    lane: str
    failed: tuple[VerifierResult, ...]


class EvidenceMissing(NamedTuple):
    run: RunState
    record: StageRecord
    missing: tuple[str, ...]


class StageEnded(NamedTuple):
    """A stage (or sub-stage: ``record.parent`` is set) finished, whatever its status."""

    run: RunState
    record: StageRecord


class RunEnded(NamedTuple):
    """The run left its ``async with`` block; ``error`` is what ended it, if anything."""

    run: RunState
    error: BaseException | None


RunEvent = (
    RunStarted
    | InputsRecorded
    | StageStarted
    | Decided
    | BudgetRefused
    | CallEnded
    | ChargeJournaled
    | ModelCooled
    | Rerouted
    | ToolEnded
    | Verified
    | ApprovalAnswered
    | Escalating
    | Escalated
    | AttemptFailed
    | EvidenceMissing
    | StageEnded
    | RunEnded
)


class RunProcessor(Protocol):
    """Fed every run event, synchronously and in order, on the task that runs the
    stage; must not block. An exception from a processor fails the run.

    A processor may have an ``event_types`` attribute: the event classes it wants
    (``None``, or no such attribute: all of them). The engine then calls it only for
    those, which keeps a stage's bookkeeping from paying for events nobody reads."""

    def on_event(self, event: Any) -> None: ...


def wanted(processor: Any) -> frozenset[type] | None:
    """The event classes ``processor`` asks for (``None``: every event)."""
    types = getattr(processor, "event_types", None)
    return None if types is None else frozenset(types)
