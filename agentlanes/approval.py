"""Human approval for escalations of task classes that ``requiresHumanJustification``.

An approver is any async callable ``(ApprovalRequest) -> Approval``. With none
configured, such escalations are **denied**.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import IO, Protocol

import anyio.to_thread

__all__ = ["Approval", "ApprovalRequest", "Approver", "CallbackApprover", "TerminalApprover"]


@dataclass(frozen=True)
class ApprovalRequest:
    """What an approver is asked to approve."""

    run_id: str
    stage: str
    task_class: str
    risk_class: str
    from_lane: str
    to_lane: str
    reason: str
    decision_id: str
    estimated_cost: float


@dataclass(frozen=True)
class Approval:
    """An approver's answer; ``approver`` and ``justification`` go into the receipt
    (the justification as a keyed digest unless content capture is on)."""

    approved: bool
    approver: str
    justification: str
    justification_digest: str | None = None
    """Set when the approver hands over only the keyed digest of the justification
    (a replayed approval; a remote approver whose text stays elsewhere)."""


class Approver(Protocol):
    async def __call__(self, request: ApprovalRequest) -> Approval: ...


class CallbackApprover:
    """Adapts ``fn(request) -> Approval | bool`` (sync or async); a bool is wrapped with
    ``identity`` and a fixed justification."""

    def __init__(
        self,
        fn: Callable[[ApprovalRequest], Approval | bool | Awaitable[Approval | bool]],
        *,
        identity: str = "callback",
    ) -> None:
        self.fn = fn
        self.identity = identity

    async def __call__(self, request: ApprovalRequest) -> Approval:
        out = self.fn(request)
        if inspect.isawaitable(out):
            out = await out
        if isinstance(out, Approval):
            return out
        return Approval(bool(out), self.identity, "approved by callback" if out else "denied by callback")


class TerminalApprover:
    """Asks a person at the terminal; denies when there is no terminal to ask."""

    def __init__(
        self, *, identity: str | None = None, stdin: IO[str] | None = None, stdout: IO[str] | None = None
    ) -> None:
        import getpass

        self.identity = identity or f"terminal:{getpass.getuser()}"
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stderr

    async def __call__(self, request: ApprovalRequest) -> Approval:
        if not self.stdin.isatty() and self.stdin is sys.stdin:
            return Approval(False, self.identity, "no terminal to ask")

        def ask() -> Approval:
            out = self.stdout
            out.write(
                f"\nagentlanes: run {request.run_id} wants to escalate stage {request.stage!r} "
                f"({request.task_class}, risk {request.risk_class}) from {request.from_lane} to {request.to_lane}\n"
                f"  reason: {request.reason}; estimated cost {request.estimated_cost:.6f}\n"
                "  approve? [y/N] "
            )
            out.flush()
            answer = self.stdin.readline().strip().lower()
            if answer not in ("y", "yes"):
                return Approval(False, self.identity, "declined at the terminal")
            out.write("  justification: ")
            out.flush()
            return Approval(True, self.identity, self.stdin.readline().strip() or "approved at the terminal")

        return await anyio.to_thread.run_sync(ask)
