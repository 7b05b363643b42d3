"""The effects port: every door from the stage engine to the world.

The engine (:mod:`agentlanes._engine`) performs no I/O itself. Each model request,
tool, verifier, approval, budget operation, receipt append, clock read and id goes
through one :class:`Effects` object:

* :class:`LiveEffects` does them for real (signal sources, the budget ledger over a
  store, the models, the approver, the receipt signer);
* exact replay serves them from a record (:mod:`agentlanes.replay`);
* a durable-execution backend runs them as activities.

Keep it small: anything else a stage needs goes through the stage context.
"""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio

from agentlanes._runindex import DEFAULT_LEASE, lease_fields, lease_until, repair
from agentlanes.approval import Approval, ApprovalRequest, Approver
from agentlanes.budget import Refusal, Reservation
from agentlanes.findings import Findings, parse_findings
from agentlanes.models.base import Message, Model, ModelResponse, ModelSettings
from agentlanes.receipts import Receipt, close_run
from agentlanes.signals import SignalSnapshot
from agentlanes.verifiers import Verifier, VerifierResult, VerifyContext

if TYPE_CHECKING:
    from agentlanes.ledger import BudgetLedger
    from agentlanes.receipts import ReceiptSigner
    from agentlanes.result import RunState, StageRecord
    from agentlanes.sources import SignalSource
    from agentlanes.stores.base import Store

__all__ = ["Call", "Effects", "LiveEffects", "RouteInputs", "iso_time"]


class RouteInputs(NamedTuple):
    """What a decision needs from the world: the signals, the budget headroom, and the
    neighbours' inputs (sandbox findings, routing ceilings, a personal binding)."""

    signals: SignalSnapshot
    remaining: float
    """What the task window (and every other window) has left, for the router."""
    premium: tuple[float, float] | None
    """What the high-end and pro shares have left, when a ledger says."""
    findings: Any = None
    """The findings that apply (a :class:`~agentlanes.findings.Findings`), if any."""
    ceilings: tuple[Any, ...] = ()
    """Routing ceilings (:class:`~agentlanes.ceiling.Ceiling`) in force."""
    binding: Any = None
    """A binding request or decision (:mod:`agentlanes.binding`), if any."""


class Call(NamedTuple):
    """One attempt of one model request, as the engine hands it to the effects."""

    run: RunState
    record: StageRecord
    step: int
    lane: str
    model: Model
    messages: list[Message]
    settings: ModelSettings
    prompt_digest: str
    prompt_text: str
    """The messages as one text (``role:content`` lines): what ``prompt_digest`` digests."""


def iso_time(ns: int) -> str:
    """``2026-12-02T04:08:31.123Z`` for a time in nanoseconds since the epoch."""
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Effects(ABC):
    """Every I/O call, clock read and id of a run. See the module docstring."""

    @abstractmethod
    async def start_run(self, run: RunState, entry: Mapping[str, Any]) -> None:
        """A run starts: write its index entry."""

    @abstractmethod
    async def end_run(self, run: RunState, entry: Mapping[str, Any]) -> None:
        """A run ended: update its index entry (called in a shielded scope)."""

    @abstractmethod
    async def route_inputs(self, run: RunState, record: StageRecord) -> RouteInputs:
        """The signals and budget headroom for the stage's next decision."""

    @abstractmethod
    async def reserve(self, run: RunState, record: StageRecord, lane: str, amount: int) -> Reservation | Refusal:
        """Reserve ``amount`` micro-units for a call on ``lane`` in every window."""

    @abstractmethod
    async def settle(self, held: Reservation, actual: int) -> int:
        """Replace a reservation with the actual cost; returns what was charged."""

    @abstractmethod
    async def release(self, held: Reservation) -> None:
        """Give a reservation back."""

    @abstractmethod
    async def request(self, call: Call) -> ModelResponse:
        """Send one model request."""

    def stream(self, call: Call) -> AsyncIterator[Any]:
        """Send one model request and yield its reply as it comes (deltas, then the
        complete response)."""
        return call.model.stream(call.messages, call.settings)

    async def external(self, call: Call) -> None:  # noqa: B027 - live calls made elsewhere need nothing
        """A model call made outside agentlanes is about to be charged (``ctx.charge``);
        nothing to do live, a replay matches it with its record."""

    @abstractmethod
    async def verify(
        self, run: RunState, record: StageRecord, verifier: Verifier, subject: Any, context: VerifyContext
    ) -> VerifierResult:
        """Run one deterministic verifier."""

    @abstractmethod
    async def tool(self, run: RunState, record: StageRecord, name: str, fn: Callable[[Any], Any], subject: Any) -> Any:
        """Run one deterministic tool on ``subject``; returns what it returned."""

    @abstractmethod
    async def approve(self, run: RunState, record: StageRecord, request: ApprovalRequest) -> Approval | None:
        """Ask for approval of an escalation; ``None`` when nobody can be asked."""

    @abstractmethod
    async def append_receipt(self, run: RunState, record: StageRecord, body: dict[str, Any]) -> Receipt:
        """Fill in ``createdAt``, chain and sign ``body``, and store it."""

    @property
    def cancel_safe(self) -> bool:
        """True when budget operations cannot be interrupted halfway (no awaits), so the
        engine may skip the shielded scopes it otherwise puts around them."""
        return False

    async def sleep(self, seconds: float) -> None:
        """Wait between retries."""
        await anyio.sleep(seconds)

    def now_ns(self) -> int:
        """The time, in nanoseconds since the epoch."""
        return time.time_ns()

    def new_id(self, prefix: str) -> str:
        """A new id (``run``: a run id)."""
        return f"{prefix}-{uuid.uuid4().hex[:20]}"

    async def aclose(self) -> None:  # noqa: B027 - optional hook; most effects hold nothing
        """Release what the effects hold."""


class LiveEffects(Effects):
    """Effects done for real.

    Args:
        signals: where signal snapshots come from.
        ledger: returns the budget ledger (opened on first use).
        store: returns the store (receipts and the run index).
        approver: asked before escalations that need a human justification.
        signer: returns the receipt signer (its key is loaded on first use).
        run_lease: seconds a run's index entry stays ``running`` without a renewal
            (renewed as stages are routed); a run whose lease has passed and whose
            process is gone is marked abandoned (see :mod:`agentlanes._runindex`).
    """

    def __init__(
        self,
        *,
        signals: SignalSource,
        ledger: Callable[[], BudgetLedger],
        store: Callable[[], Store],
        approver: Approver | None,
        signer: Callable[[], ReceiptSigner],
        findings_source: Callable[[], Any] | None = None,
        run_lease: float = DEFAULT_LEASE,
    ) -> None:
        self._signals = signals
        self._findings_source = findings_source
        self._ledger = ledger
        self._store = store
        self._approver = approver
        self._signer = signer
        self.run_lease = run_lease
        self._renew_at: dict[str, float] = {}  # run id -> when its lease is renewed next (monotonic)
        self._repaired = False

    @property
    def cancel_safe(self) -> bool:
        return self._store().cancel_safe

    async def start_run(self, run: RunState, entry: Mapping[str, Any]) -> None:
        store = self._store()
        if not self._repaired:  # the first run of these effects: runs a dead process left running
            self._repaired = True
            await repair(store)
        await store.record_run({**entry, **lease_fields(time.time(), self.run_lease)})
        self._renew_at[run.run_id] = time.monotonic() + self.run_lease / 2

    async def end_run(self, run: RunState, entry: Mapping[str, Any]) -> None:
        self._renew_at.pop(run.run_id, None)
        await self._store().record_run(entry)
        if run.receipts:
            # anchor the run's receipts: its chain's signed closing record, and an entry
            # in the ledger's own chain (deleting or cutting them is then detected)
            await close_run(self._store(), self._signer(), run.run_id, status=run.status)

    async def route_inputs(self, run: RunState, record: StageRecord) -> RouteInputs:
        renew = self._renew_at.get(run.run_id)
        if renew is not None and time.monotonic() >= renew:  # at most once per half lease
            self._renew_at[run.run_id] = time.monotonic() + self.run_lease / 2
            until = lease_until(time.time(), self.run_lease)
            await self._store().record_run({"runId": run.run_id, "leaseUntil": until})
        signals = await self._signals.snapshot()
        remaining, premium = await self._ledger().headroom(run.run_id, "task")
        findings = run.findings
        if findings is None and self._findings_source is not None:
            found = self._findings_source()
            if isinstance(found, Awaitable):
                found = await found
            # a source that gives nothing fails the stage closed, as data
            findings = parse_findings(found) if not isinstance(found, Findings) else found
        return RouteInputs(signals, remaining, premium, findings, run.ceilings, run.binding)

    async def reserve(self, run: RunState, record: StageRecord, lane: str, amount: int) -> Reservation | Refusal:
        return await self._ledger().reserve(run.run_id, lane, amount)

    async def settle(self, held: Reservation, actual: int) -> int:
        return await self._ledger().settle(held, actual)

    async def release(self, held: Reservation) -> None:
        await self._ledger().release(held)

    async def request(self, call: Call) -> ModelResponse:
        return await call.model.request(call.messages, call.settings)

    async def verify(
        self, run: RunState, record: StageRecord, verifier: Verifier, subject: Any, context: VerifyContext
    ) -> VerifierResult:
        return await verifier.verify(subject, context)

    async def tool(self, run: RunState, record: StageRecord, name: str, fn: Callable[[Any], Any], subject: Any) -> Any:
        out = fn(subject)
        if isinstance(out, Awaitable):
            out = await out
        return out

    async def approve(self, run: RunState, record: StageRecord, request: ApprovalRequest) -> Approval | None:
        return await self._approver(request) if self._approver is not None else None

    async def append_receipt(self, run: RunState, record: StageRecord, body: dict[str, Any]) -> Receipt:
        body["createdAt"] = iso_time(self.now_ns())
        stored = await self._store().append_receipt(run.run_id, body, self._signer().seal)
        return Receipt.from_text(stored.text)
