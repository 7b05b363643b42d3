"""The store interface, and the accounting rules every store applies."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from random import getrandbits as _getrandbits
from typing import Any, TypeAlias

from agentlanes.budget import Refusal, Reservation, WindowSpec, WindowState

__all__ = [
    "Sealer",
    "Store",
    "StoredReceipt",
    "Unsettled",
    "check_admission",
    "new_reservation_id",
    "settle_amounts",
    "with_unsettled",
]

Unsettled: TypeAlias = Mapping[tuple[str, str], tuple[int, int, int]]
"""Money spent but not in the store yet (journaled charges), per window ``(window, key)``:
``(all lanes, high-end, pro)`` micro-units. It counts against the caps as committed spend."""


def with_unsettled(state: WindowState, extra: tuple[int, int, int] | None) -> WindowState:
    """``state`` with unsettled spend ``(all, high-end, pro)`` counted as committed."""
    if extra is None:
        return state
    a, h, p = extra
    return state._replace(
        committed=state.committed + a, high_end_used=state.high_end_used + h, pro_used=state.pro_used + p
    )


def new_reservation_id() -> str:
    """32 hex digits: the time in nanoseconds, then 64 random bits. Ids made later sort
    later, so a store's index takes them at its end instead of at random places."""
    # 64 random bits from the process's generator (seeded from the OS, reseeded in a
    # forked child): unique, not secret, and without a system call per reservation.
    return f"{time.time_ns():016x}{_getrandbits(64):016x}"


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
    """The admission rule shared by every store (run inside its atomic section): the
    window must hold ``amount`` beside everything spent (committed and overrun) and
    reserved, and a premium lane must stay within its share."""
    spec = state.spec
    available = state.remaining
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
    """(committed, overrun) for settling ``actual`` in a window whose state excludes the
    reservation being settled: the part the cap and premium share can hold is committed,
    the rest is overrun, so ``committed + overrun == actual`` in every window."""
    spec = state_without.spec
    room = state_without.remaining
    if lane == "high-end":
        room = min(room, spec.high_end_cap - state_without.high_end_used)
    elif lane == "pro":
        room = min(room, spec.pro_cap - state_without.pro_used)
    charged = min(actual, max(room, 0))
    return charged, actual - charged


class Store(ABC):
    """Budgets, receipts and runs. Every method is atomic on its own.

    Failures are :class:`~agentlanes.errors.StoreError` (or its subclass
    :class:`~agentlanes.errors.StoreUnavailable`), whose message says what the failure
    means for the money; no database driver's exception escapes a store.

    Attributes:
        cancel_safe: true when no method yields to the event loop, so a cancellation
            can never interrupt one halfway; the runtime then skips the shielded scopes
            it otherwise puts around reserve and settle.
    """

    cancel_safe: bool = False

    @property
    def identity(self) -> str:
        """Names the budget this store holds (its file or database and schema, never
        credentials): a ledger's journal applies a charge only to the store it was made in."""
        return f"{type(self).__name__}@{id(self):x}"

    @abstractmethod
    async def reserve(
        self,
        windows: Sequence[WindowSpec],
        lane: str,
        amount: int,
        *,
        lease_seconds: float,
        unsettled: Unsettled | None = None,
        reservation_id: str | None = None,
    ) -> Reservation | Refusal:
        """Admit ``amount`` in every window at once, or refuse without holding anything.

        ``unsettled``: money already spent that the store does not hold yet (a ledger's
        journaled charges), counted against each window's cap and shares. The ledger
        passes it only when it has such charges for these windows.

        ``reservation_id``: the reservation's id, from a caller that may ask again for
        the same reservation (a durable-execution activity retried after its worker
        died): while a reservation of that id is held, it is returned and nothing more
        is reserved. Default: a new id.
        """

    @abstractmethod
    async def settle(self, reservation: Reservation, actual: int) -> int:
        """Replace the reservation with ``actual``; returns ``actual``.

        Every window's ``committed + overrun`` grows by exactly ``actual``: the part its
        cap (and premium share) can hold is committed, the rest is recorded as overrun.
        Works even after the lease expired and the reservation was reclaimed (the money
        was spent). Idempotent by reservation id: settling the same reservation again
        (a journaled charge applied after a settlement whose answer was lost) charges
        nothing more.
        """

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
    async def record_run(self, run: Mapping[str, Any], *, only_if: Mapping[str, Any] | None = None) -> bool:
        """Insert or update a run's index entry (keyed by ``runId``; the fields given
        replace those of the entry). With ``only_if``, only an existing entry whose
        fields equal those given is updated, atomically (how a run is marked abandoned
        without overwriting how it ended meanwhile). Whether it was written."""

    @abstractmethod
    async def runs(self) -> list[dict[str, Any]]:
        """Every run's index entry, oldest first."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, nothing to close by default
        """Release connections."""
