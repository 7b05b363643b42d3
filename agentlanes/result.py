"""What runs leave behind in memory: call, stage and run records.

A :class:`StageRecord` holds every decision, call, verification and receipt of one
stage; :class:`RunResult` is a finished run. These are the engine's working records and
what users read after a run; the span emitter and the local recorder turn them into
spans and trace lines.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from agentlanes.budget import from_micro
from agentlanes.decision import RouteDecision
from agentlanes.models.base import Usage
from agentlanes.receipts import Receipt
from agentlanes.verifiers import VerifierResult

__all__ = ["CallRecord", "RunResult", "StageRecord"]


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
    """Only kept when content capture is on."""
    output_text: str | None = None


@dataclass
class StageRecord:
    """What happened in one stage: every decision, call, verification and receipt."""

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
    started: float = 0.0
    ended: float = 0.0
    parent: str | None = None
    output_digest: str | None = None
    children: list[StageRecord] = field(default_factory=list)
    """Sub-stages (tool, verification, judge) this stage ran, in order."""
    started_ns: int = field(default_factory=time.time_ns)
    result_steps: list[int] = field(default_factory=list)
    """Step number of each verifier result, in order (see ``Run._next_step``)."""
    """Premium headroom the ledger gave each decision (by decision id), for the trace."""
    emitted: bool = False

    @property
    def ended_ns(self) -> int:
        return self.started_ns + int(self.duration * 1e9)

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
        return max(0.0, self.ended - self.started)


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
