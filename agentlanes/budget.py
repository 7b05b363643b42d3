"""Budgets with atomic reservations (CONTRACT B6).

Money is integer **micro-units** of the optimizer's currency (``1_000_000`` = 1 USD):
never float sums. Every model call first *reserves* its estimated cost in every budget
window at once (``task``, ``session``, ``day`` and any other window the optimizer
defines), atomically in the store, then *settles* with the actual cost or *releases*.
A window admits a reservation only while ``committed + reserved + amount <= cap`` and,
for ``high-end`` / ``pro``, while that lane's use stays within its share of the cap.

Window instances are keyed by the run (``task``), the session (``session``), the UTC
date (``day``), the ISO week (``week``) or the UTC month (``month``).

Every amount a store holds fits a signed 64-bit integer (:data:`MAX_MICRO`, about 9.2
trillion currency units); :func:`to_micro` refuses anything beyond it, and anything that
is not a finite number, with a :class:`~agentlanes.errors.ConfigurationError`.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, DecimalException
from typing import NamedTuple

from agentlanes.errors import ConfigurationError

__all__ = [
    "MAX_MICRO",
    "MICRO",
    "Refusal",
    "Reservation",
    "WindowSpec",
    "WindowState",
    "check_micro",
    "from_micro",
    "to_micro",
]

MICRO = 1_000_000


MAX_MICRO = 2**63 - 1
"""The largest amount a store can hold, in micro-units (a signed 64-bit integer)."""

_FLOAT_FAST_LIMIT = 1e9


def to_micro(amount: float | Decimal | str | int) -> int:
    """Exact micro-units of a money amount (half-even at the seventh decimal).

    Raises:
        ConfigurationError: ``amount`` is not a finite number, or its magnitude is beyond
            :data:`MAX_MICRO` micro-units.
    """
    if isinstance(amount, float):
        # Fast path for what the router produces (costs rounded to 6 decimals): the
        # product is within 1e-9 of an integer, so rounding it is exact.
        if -_FLOAT_FAST_LIMIT < amount < _FLOAT_FAST_LIMIT and amount == round(amount, 6):
            return round(amount * MICRO)
        if amount != amount or amount in (float("inf"), float("-inf")):
            raise ConfigurationError(f"Money amount {amount!r} is not a finite number.")
    if isinstance(amount, bool) or not isinstance(amount, float | Decimal | str | int):
        raise ConfigurationError(f"Money amount {amount!r} is not a number (give a float, int, Decimal or str).")
    if isinstance(amount, int):
        micros = amount * MICRO
    else:
        try:
            value = Decimal(amount.strip() if isinstance(amount, str) else str(amount))
            if not value.is_finite():
                raise ConfigurationError(f"Money amount {amount!r} is not a finite number.")
            if value and value.adjusted() > 12:  # 1e13 or more: beyond range (checked before any arithmetic)
                raise ConfigurationError(_out_of_range(amount))
            micros = int((value * MICRO).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
        except DecimalException:
            raise ConfigurationError(f"Money amount {amount!r} is not a number.") from None
    if not -MAX_MICRO <= micros <= MAX_MICRO:
        raise ConfigurationError(_out_of_range(amount))
    return micros


def _out_of_range(amount: object) -> str:
    text = repr(amount)
    if len(text) > 40:
        text = text[:37] + "..."
    return (
        f"Money amount {text} is beyond what a budget can hold (at most {MAX_MICRO} micro-units, "
        f"{Decimal(MAX_MICRO) / MICRO} currency units)."
    )


def check_micro(what: str, micros: object) -> int:
    """``micros`` if it is an ``int`` in ``0..MAX_MICRO``; else a clear
    :class:`~agentlanes.errors.ConfigurationError` naming ``what`` (e.g. "A settlement")."""
    if isinstance(micros, bool) or not isinstance(micros, int):
        raise ConfigurationError(f"{what} must be whole micro-units (an int), not {micros!r}.")
    if micros < 0:
        raise ConfigurationError(f"{what} cannot be negative (got {micros} micro-units).")
    if micros > MAX_MICRO:
        raise ConfigurationError(
            f"{what} of {micros} micro-units is beyond what a store can hold (at most {MAX_MICRO})."
        )
    return micros


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
    """Actual cost settled above what the cap could hold (see :meth:`BudgetLedger.settle`).

    ``committed + overrun`` is everything settled in the window; the overrun counts
    against the cap like committed spend (it was spent), so it shrinks :attr:`remaining`.
    """

    @property
    def remaining(self) -> int:
        """What can still be admitted: the cap less everything spent and reserved."""
        return self.spec.cap - self.committed - self.overrun - self.reserved

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
