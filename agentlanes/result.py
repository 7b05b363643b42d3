"""What runs leave behind in memory: call, stage and run records.

A :class:`StageRecord` holds every decision, call, verification and receipt of one
stage; :class:`RunResult` is a finished run. These are the engine's working records and
what users read after a run; the span emitter and the local recorder turn them into
spans and trace lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

from agentlanes.budget import from_micro
from agentlanes.decision import RouteDecision
from agentlanes.models.base import Usage
from agentlanes.receipts import Receipt
from agentlanes.verifiers import VerifierResult

__all__ = [
    "ApprovalRecord",
    "CallRecord",
    "CheckRecord",
    "RefusalRecord",
    "RunResult",
    "RunState",
    "StageRecord",
    "ToolRecord",
]


@dataclass
class CallRecord:
    """One attempt of one model call."""

    lane: str
    model: str
    provider: str
    attempt: int
    reserved: int
    """Micro-units reserved before the call."""
    charged: int
    """Micro-units charged after it (0 when released)."""
    usage: Usage | None
    ok: bool
    duration: float
    error: str | None = None
    status: int | None = None
    usage_estimated: bool = False
    prompt_digest: str | None = None
    output_digest: str | None = None
    response_model: str | None = None
    max_tokens: int = 0
    started_ns: int = 0
    step: int = 0
    retryable: bool = False
    prompt_text: str | None = None
    """Only kept when content capture is on (the messages, in the GenAI conventions' shape)."""
    output_text: str | None = None
    """Only kept when content capture is on."""
    streamed: bool = False
    finish_reason: str | None = None
    output_format: str | None = None
    """How the output body is kept: ``None`` for plain text, else the response format
    (see :func:`agentlanes.models.base.response_body`)."""
    tool_calls: int = 0
    """How many tool calls the reply asked for."""
    tool_definitions: str | None = None
    """Only kept when content capture is on: the tools offered, as ``gen_ai.tool.definitions``."""


class ToolRecord(NamedTuple):
    """A deterministic tool a stage ran (on ``no-model``): its name, outcome, step and
    the keyed digest of its result (its JSON, or its repr when it is not JSON)."""

    name: str
    ok: bool
    step: int
    output_digest: str | None
    error: str | None
    started_ns: int
    ended_ns: int


class CheckRecord(NamedTuple):
    """One deterministic verifier's result, as recorded."""

    result: VerifierResult
    step: int
    identity: str
    """What the verifier checks: canonical JSON of its kind and keyed digests of its definition."""
    digest: str
    """Keyed digest of the result's summary and output (the body replay serves back)."""


class RefusalRecord(NamedTuple):
    """A reservation no budget window could hold."""

    lane: str
    window: str
    reason: str
    available: int
    estimate: int
    step: int


class ApprovalRecord(NamedTuple):
    """An approver's answer to an escalation (the justification only as a digest)."""

    approved: bool
    approver: str | None
    justification_digest: str | None
    step: int


@dataclass(eq=False)
class StageRecord:
    """What happened in one stage: every decision, call, verification and receipt.

    Every recorded step (decision, refusal, call, tool, verifier result, approval,
    receipt) carries its step number in the run, which is the order the local record
    keeps and exact replay checks.
    """

    name: str
    stage: str
    decisions: list[RouteDecision] = field(default_factory=list)
    calls: list[CallRecord] = field(default_factory=list)
    verifications: list[list[VerifierResult]] = field(default_factory=list)
    receipts: list[Receipt] = field(default_factory=list)
    evidence: dict[str, str] = field(default_factory=dict)
    """Required-evidence item → keyed digest of its value."""
    missing_evidence: list[str] = field(default_factory=list)
    attempts: int = 0
    status: str = "running"
    error: str | None = None
    """The type name of the error that ended the stage (never its text)."""
    parent: str | None = None
    output_digest: str | None = None
    children: list[StageRecord] = field(default_factory=list)
    """Sub-stages (tool, verification, judge) this stage ran, in order."""
    started_ns: int = 0
    ended_ns: int = 0
    key: str = ""
    """The stage's place in its run: ``name#n`` (the n-th stage of that name under the
    same parent), prefixed with the parent's key for sub-stages. Exact replay matches
    stages by key, so concurrent stages replay too."""
    decision_steps: list[int] = field(default_factory=list)
    premium: list[tuple[float, float] | None] = field(default_factory=list)
    """Premium headroom the ledger gave each decision (parallel to ``decisions``)."""
    checks: list[CheckRecord] = field(default_factory=list)
    """Every deterministic verifier result of this stage, with its step, identity and digest."""
    receipt_steps: list[int] = field(default_factory=list)
    refusals: list[RefusalRecord] = field(default_factory=list)
    approvals: list[ApprovalRecord] = field(default_factory=list)
    tools: list[ToolRecord] = field(default_factory=list)
    emitted: bool = False

    @property
    def result_steps(self) -> list[int]:
        """Step number of each verifier result, in order."""
        return [c.step for c in self.checks]

    @property
    def lane(self) -> str | None:
        """The lane of the last decision."""
        return self.decisions[-1].lane if self.decisions else None

    @property
    def cost(self) -> int:
        """Micro-units charged in this stage."""
        return sum(c.charged for c in self.calls)

    @property
    def duration(self) -> float:
        """Seconds the stage took (0 while it runs)."""
        return max(0.0, (self.ended_ns - self.started_ns) / 1e9)


@dataclass(frozen=True)
class RunResult:
    """A finished run."""

    run_id: str
    status: str
    output: Any
    records: tuple[StageRecord, ...]
    receipts: tuple[Receipt, ...]
    cost_micro: int
    currency: str

    @property
    def cost(self) -> Decimal:
        """Total charged, exactly, in the optimizer's currency."""
        return from_micro(self.cost_micro)


@dataclass(eq=False)
class RunState:
    """A run as the engine keeps it while it runs (what processors read).

    Attributes:
        run_id / task_class / risk_class / escalation_reason: the run's.
        chain: the declared chain's reference, when one runs (recorded; never imported
            back from a record).
        variables: values for ``{name}`` placeholders in command verifiers.
        status: ``created``, ``running``, ``succeeded``, ``failed`` or ``cancelled``.
        records: every stage record, in the order stages started.
        receipts: every receipt the run wrote.
        steps: the number of recorded steps so far.
        planned: the planning stage has finished (de-escalation applies after it).
    """

    run_id: str
    task_class: str
    risk_class: str
    escalation_reason: str | None
    chain: str | None
    variables: dict[str, str]
    currency: str
    status: str = "created"
    output: Any = None
    records: list[StageRecord] = field(default_factory=list)
    receipts: list[Receipt] = field(default_factory=list)
    started_at: str = ""
    started_ns: int = 0
    ended_ns: int = 0
    error: str | None = None
    input_digest: str | None = None
    output_digest: str | None = None
    trace_path: Path | None = None
    steps: int = 0
    planned: bool = False
    documents: dict[str, str] | None = None
    """The routing documents' ids and digests (recorded, so a replay under other
    documents says so)."""
    findings: Any = None
    """Sandbox findings that apply to every stage of the run (``Lanes(findings_source=...)``
    supplies them per stage otherwise)."""
    ceilings: tuple[Any, ...] = ()
    """Routing ceilings in force for the run."""
    binding: Any = None
    """A local + personal binding request for the run's decisions."""
    approved: set[str] = field(default_factory=set)
    """Keys of stages whose ceiling-required approval was given."""

    @property
    def cost_micro(self) -> int:
        return sum(r.cost for r in self.records)

    def next_step(self) -> int:
        """Number the run's next recorded step (what the local record orders by)."""
        self.steps += 1
        return self.steps

    def result(self) -> RunResult:
        return RunResult(
            self.run_id,
            self.status,
            self.output,
            tuple(self.records),
            tuple(self.receipts),
            self.cost_micro,
            self.currency,
        )
