"""The store interface, and the accounting rules every store applies."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentlanes.budget import Refusal, Reservation, WindowSpec, WindowState

__all__ = ["Sealer", "Store", "StoredReceipt", "check_admission", "settle_amounts"]


@dataclass(frozen=True)
class StoredReceipt:
    """A receipt as the ledger holds it.

    Attributes:
        run_id: the run it belongs to.
        seq: its position in the run's chain, from 0.
        digest: digest of its canonical body.
        prev: the previous receipt's digest in the run's chain (``None`` for the first).
        text: the stored record, exactly as written (JSON).
    """

    run_id: str
    seq: int
    digest: str
    prev: str | None
    text: str


Sealer = Callable[[dict[str, Any]], tuple[str, str]]
"""Turns a receipt body (with ``seq`` and ``prev`` filled in) into ``(digest, text)``."""


def check_admission(state: WindowState, lane: str, amount: int) -> Refusal | None:
    """The admission rule shared by every store (run inside its atomic section)."""
    spec = state.spec
    available = spec.cap - state.committed - state.reserved
    if amount > available:
        return Refusal(spec.window, spec.key, "cap", max(available, 0))
    if lane == "high-end":
        room = spec.high_end_cap - state.high_end_used
        if amount > room:
            return Refusal(spec.window, spec.key, "high-end-share", max(room, 0))
    if lane == "pro":
        room = spec.pro_cap - state.pro_used
        if amount > room:
            return Refusal(spec.window, spec.key, "pro-share", max(room, 0))
    return None


def settle_amounts(state_without: WindowState, lane: str, actual: int) -> tuple[int, int]:
    """(charged, overrun) for settling ``actual`` in a window whose state excludes the
    reservation being settled: charge what the cap and premium share can hold."""
    spec = state_without.spec
    room = spec.cap - state_without.committed - state_without.reserved
    if lane == "high-end":
        room = min(room, spec.high_end_cap - state_without.high_end_used)
    elif lane == "pro":
        room = min(room, spec.pro_cap - state_without.pro_used)
    charged = min(actual, max(room, 0))
    return charged, actual - charged


class Store(ABC):
    """Budgets, receipts and runs. Every method is atomic on its own.

    Attributes:
        cancel_safe: true when no method yields to the event loop, so a cancellation
            can never interrupt one halfway; the runtime then skips the shielded scopes
            it otherwise puts around reserve and settle.
    """

    cancel_safe: bool = False

    @abstractmethod
    async def reserve(
        self, windows: Sequence[WindowSpec], lane: str, amount: int, *, lease_seconds: float
    ) -> Reservation | Refusal:
        """Admit ``amount`` in every window at once, or refuse without holding anything."""

    @abstractmethod
    async def settle(self, reservation: Reservation, actual: int) -> int:
        """Replace the reservation with ``actual``; returns what was charged. Works even
        after the lease expired and the reservation was reclaimed (the money was spent)."""

    @abstractmethod
    async def release(self, reservation: Reservation) -> None:
        """Drop a reservation; a no-op if it is already gone."""

    @abstractmethod
    async def window_states(self, windows: Sequence[WindowSpec]) -> list[WindowState]:
        """The current state of each window instance (empty windows included)."""

    @abstractmethod
    async def append_receipt(self, run_id: str, body: dict[str, Any], seal: Sealer) -> StoredReceipt:
        """Append to the run's chain: sets ``seq`` and ``prev`` in ``body`` atomically."""

    @abstractmethod
    async def receipts(self, run_id: str | None = None) -> list[StoredReceipt]:
        """Receipts in chain order (per run, runs in first-receipt order)."""

    @abstractmethod
    async def record_run(self, run: Mapping[str, Any]) -> None:
        """Insert or update a run's index entry (keyed by ``runId``)."""

    @abstractmethod
    async def runs(self) -> list[dict[str, Any]]:
        """Every run's index entry, oldest first."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, nothing to close by default
        """Release connections."""
