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

from decimal import ROUND_HALF_EVEN, Decimal
from typing import NamedTuple

from agentlanes.errors import ConfigurationError

__all__ = [
    "MICRO",
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


def __getattr__(name: str) -> object:
    # The ledger moved to agentlanes.ledger; old imports keep working.
    if name in ("BudgetLedger", "window_key"):
        from agentlanes import ledger

        return getattr(ledger, name)
    raise AttributeError(f"module 'agentlanes.budget' has no attribute {name!r}")
