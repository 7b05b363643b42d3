"""The budget ledger: the optimizer's windows over a store (CONTRACT B6).

:class:`BudgetLedger` turns the optimizer's budget windows into window instances for a
run (``task`` per run, ``session`` per ``Lanes``, ``day`` / ``week`` / ``month`` on UTC
boundaries) and reserves, settles and releases money in all of them at once through a
:class:`~agentlanes.stores.base.Store`. Money values and the admission types live in
:mod:`agentlanes.budget`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from agentlanes.budget import MICRO, Refusal, Reservation, WindowSpec, WindowState, to_micro
from agentlanes.errors import ConfigurationError
from agentlanes.policy import RoutingOptimizer

if TYPE_CHECKING:
    from agentlanes.stores.base import Store

__all__ = ["BudgetLedger", "window_key"]


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
