"""Budgets with atomic reservations (CONTRACT B6).

Money is integer **micro-units** of the optimizer's currency (``1_000_000`` = 1 USD):
never float sums. Every model call first *reserves* its estimated cost in every budget
window at once (``task``, ``session``, ``day`` and any other window the optimizer
defines), atomically in the store, then *settles* with the actual cost or *releases*.
A window admits a reservation only while ``committed + reserved + amount <= cap`` and,
for ``high-end`` / ``pro``, while that lane's use stays within its share of the cap.

Window instances are keyed by the run (``task``), the session (``session``), the UTC
date (``day``), the ISO week (``week``) or the UTC month (``month``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TYPE_CHECKING, NamedTuple

from agentlanes.errors import ConfigurationError
from agentlanes.policy import RoutingOptimizer

if TYPE_CHECKING:
    from agentlanes.stores.base import Store

__all__ = [
    "MICRO",
    "BudgetLedger",
    "Refusal",
    "Reservation",
    "WindowSpec",
    "WindowState",
    "from_micro",
    "to_micro",
]

MICRO = 1_000_000


def to_micro(amount: float | Decimal | str | int) -> int:
    """Exact micro-units of a money amount (half-even at the seventh decimal)."""
    if isinstance(amount, float):
        if amount != amount or amount in (float("inf"), float("-inf")):
            raise ConfigurationError(f"Money amount {amount!r} is not a number.")
        # Fast path for what the router produces (costs rounded to 6 decimals): the
        # product is within 1e-9 of an integer, so rounding it is exact.
        if abs(amount) < 1e9 and amount == round(amount, 6):
            return round(amount * MICRO)
    value = Decimal(str(amount)) * MICRO
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def from_micro(micros: int) -> Decimal:
    """A :class:`~decimal.Decimal` amount from micro-units (exact)."""
    return Decimal(micros) / MICRO


class WindowSpec(NamedTuple):
    """One instance of a budget window, with its caps in micro-units."""

    window: str
    key: str
    cap: int
    high_end_cap: int
    pro_cap: int


class WindowState(NamedTuple):
    """What a window instance holds right now (micro-units)."""

    spec: WindowSpec
    committed: int
    reserved: int
    high_end_used: int
    """high-end committed plus reserved."""
    pro_used: int
    overrun: int
    """Actual cost settled above what the cap could hold (see :meth:`BudgetLedger.settle`)."""

    @property
    def remaining(self) -> int:
        return self.spec.cap - self.committed - self.reserved

    @property
    def high_end_remaining(self) -> int:
        return min(self.remaining, self.spec.high_end_cap - self.high_end_used)

    @property
    def pro_remaining(self) -> int:
        return min(self.remaining, self.spec.pro_cap - self.pro_used)


class Reservation(NamedTuple):
    """Money set aside for one model call, in every window at once."""

    id: str
    lane: str
    amount: int
    windows: tuple[WindowSpec, ...]
    expires_at: float


class Refusal(NamedTuple):
    """Why a reservation was not admitted (the first window that could not hold it)."""

    window: str
    key: str
    reason: str
    """``cap``, ``high-end-share`` or ``pro-share``."""
    available: int


def window_key(window: str, *, run_id: str, session_id: str, now: datetime) -> str:
    """The instance key of ``window`` for a run at ``now`` (UTC boundaries)."""
    now = now.astimezone(UTC)
    if window == "task":
        return run_id
    if window == "session":
        return session_id
    if window == "day":
        return now.strftime("%Y-%m-%d")
    if window == "week":
        year, week, _ = now.isocalendar()
        return f"{year}-W{week:02d}"
    if window == "month":
        return now.strftime("%Y-%m")
    raise ConfigurationError(
        f"Budget window {window!r} has no instance key (windows: task, session, day, week, month)."
    )


class BudgetLedger:
    """The optimizer's budget windows over a store.

    Args:
        store: where reservations and spend live (shared by every worker that shares
            the budget).
        optimizer: supplies the windows, caps and premium shares.
        session_id: the ``session`` window's key (default: new per ledger).
        clock: returns the current time (UTC); injectable for tests.
        lease_seconds: how long a reservation lives if its holder dies before
            settling it; expired reservations are reclaimed.
    """

    def __init__(
        self,
        store: Store,
        optimizer: RoutingOptimizer,
        *,
        session_id: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        lease_seconds: float = 900.0,
    ) -> None:
        self.store = store
        self.session_id = session_id or f"session-{uuid.uuid4().hex[:16]}"
        self.clock = clock
        self.lease_seconds = lease_seconds
        # Caps are fixed for the ledger's life: computed once, exactly.
        self.windows: list[tuple[str, int, int, int]] = []
        for w in optimizer.budget_policy.windows:
            cap = to_micro(w.max_spend)
            high = int((Decimal(cap) * Decimal(str(w.high_end_max_share))).to_integral_value(rounding="ROUND_FLOOR"))
            pro = int((Decimal(cap) * Decimal(str(w.pro_max_share))).to_integral_value(rounding="ROUND_FLOOR"))
            self.windows.append((w.window, cap, high, pro))
        self.currency = optimizer.budget_policy.currency
        self._specs: dict[tuple[str, int], tuple[WindowSpec, ...]] = {}

    def specs(self, run_id: str) -> tuple[WindowSpec, ...]:
        """The window instances a run's spending counts against, now.

        Keys change only at UTC day boundaries (day, week and month keys are all whole
        days), so the specs are cached per run and UTC day.
        """
        now = self.clock().astimezone(UTC)
        cache_key = (run_id, now.toordinal())
        specs = self._specs.get(cache_key)
        if specs is None:
            specs = tuple(
                WindowSpec(
                    window, window_key(window, run_id=run_id, session_id=self.session_id, now=now), cap, high, pro
                )
                for window, cap, high, pro in self.windows
            )
            if len(self._specs) >= 1024:
                self._specs.clear()
            self._specs[cache_key] = specs
        return specs

    async def states(self, run_id: str) -> list[WindowState]:
        """Every window instance of the run, as the store holds it."""
        return await self.store.window_states(self.specs(run_id))

    async def headroom(self, run_id: str, window: str) -> tuple[float, tuple[float, float]]:
        """What the router may spend: the least remaining over all windows, and the
        premium lanes' remaining shares, as floats for the decision."""
        states = await self.states(run_id)
        if not states:
            return 0.0, (0.0, 0.0)
        remaining = min(s.remaining for s in states)
        high = min(s.high_end_remaining for s in states)
        pro = min(s.pro_remaining for s in states)
        # Floats for the router (its rule compares float costs); micro-units divide exactly
        # enough: every value below 2**53 micro-units is represented to the micro-unit.
        return max(remaining, 0) / MICRO, (max(high, 0) / MICRO, max(pro, 0) / MICRO)

    async def reserve(self, run_id: str, lane: str, amount: int) -> Reservation | Refusal:
        """Atomically reserve ``amount`` micro-units for a call on ``lane``."""
        if amount < 0:
            raise ConfigurationError(f"A reservation cannot be negative (got {amount} micro-units).")
        return await self.store.reserve(self.specs(run_id), lane, amount, lease_seconds=self.lease_seconds)

    async def settle(self, reservation: Reservation, actual: int) -> int:
        """Replace a reservation with the actual cost; returns what was charged.

        Actual cost above the reservation is charged as far as each window's cap (and
        premium share) can hold it; the rest is recorded as the window's ``overrun``,
        so money is conserved (``committed + overrun`` is everything settled) and
        ``committed + reserved <= cap`` always holds.
        """
        return await self.store.settle(reservation, max(actual, 0))

    async def release(self, reservation: Reservation) -> None:
        """Give a reservation back (the call failed or was cancelled)."""
        await self.store.release(reservation)
