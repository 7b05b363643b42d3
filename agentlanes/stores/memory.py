"""An in-process store: counters behind one lock."""

from __future__ import annotations

import heapq
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agentlanes.budget import MAX_MICRO, Refusal, Reservation, WindowSpec, WindowState, check_micro
from agentlanes.stores.base import (
    Sealer,
    Store,
    StoredReceipt,
    Unsettled,
    check_admission,
    new_reservation_id,
    settle_amounts,
    with_unsettled,
)

__all__ = ["MemoryStore"]

# Per window instance: committed, overrun, high-end committed, pro committed,
# reserved, high-end reserved, pro reserved.
_C, _O, _HC, _PC, _R, _HR, _PR = range(7)


class MemoryStore(Store):
    """Everything in memory; atomic across tasks and threads of one process.

    No method awaits anything, so none can be cancelled halfway (``cancel_safe``).

    Args:
        clock: seconds since the epoch, for reservation leases (injectable for tests).
        remember_settled: how many settled reservation ids are remembered, so that
            settling one of them again charges nothing (the oldest are forgotten first).
    """

    cancel_safe = True

    def __init__(self, *, clock: Callable[[], float] = time.time, remember_settled: int = 65_536) -> None:
        self._lock = threading.Lock()
        self._expiry: list[tuple[float, str]] = []  # heap: reaping is O(log n), not a scan
        self._clock = clock
        self._windows: dict[tuple[str, str], list[int]] = {}
        self._reservations: dict[str, Reservation] = {}
        self._settled: OrderedDict[str, None] = OrderedDict()
        self._remember = remember_settled
        self._receipts: dict[str, list[StoredReceipt]] = {}
        self._runs: dict[str, dict[str, Any]] = {}

    def _row(self, spec: WindowSpec) -> list[int]:
        row = self._windows.get((spec.window, spec.key))
        if row is None:
            row = self._windows[(spec.window, spec.key)] = [0] * 7
        return row

    def _unreserve(self, res: Reservation) -> None:
        for spec in res.windows:
            row = self._row(spec)
            row[_R] -= res.amount
            if res.lane == "high-end":
                row[_HR] -= res.amount
            elif res.lane == "pro":
                row[_PR] -= res.amount

    def _reap(self) -> None:
        now = self._clock()
        heap = self._expiry
        while heap and heap[0][0] <= now:
            _, rid = heapq.heappop(heap)
            res = self._reservations.pop(rid, None)  # already settled or released: gone
            if res is not None:
                self._unreserve(res)

    def _state(self, spec: WindowSpec) -> WindowState:
        row = self._windows.get((spec.window, spec.key)) or [0] * 7
        return WindowState(spec, row[_C], row[_R], row[_HC] + row[_HR], row[_PC] + row[_PR], row[_O])

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
        check_micro("A reservation", amount)
        rows = self._windows
        with self._lock:
            if self._expiry and self._expiry[0][0] <= self._clock():
                self._reap()
            if reservation_id is not None and reservation_id in self._reservations:
                return self._reservations[reservation_id]  # asked again: the same reservation
            premium = lane == "high-end" or lane == "pro"
            for spec in windows:
                row = rows.get((spec.window, spec.key))
                if (
                    row is not None
                    and not unsettled
                    and not premium
                    and amount <= spec.cap - row[_C] - row[_O] - row[_R]
                ):
                    continue  # the common case, decided without building a state
                state = self._state(spec)
                if unsettled:
                    state = with_unsettled(state, unsettled.get((spec.window, spec.key)))
                refusal = check_admission(state, lane, amount)
                if refusal is not None:
                    return refusal
            rid = reservation_id or new_reservation_id()
            res = Reservation(rid, lane, amount, tuple(windows), self._clock() + lease_seconds)
            self._reservations[res.id] = res
            heapq.heappush(self._expiry, (res.expires_at, res.id))
            for spec in windows:
                row = self._row(spec)
                row[_R] += amount
                if lane == "high-end":
                    row[_HR] += amount
                elif lane == "pro":
                    row[_PR] += amount
            return res

    async def settle(self, reservation: Reservation, actual: int) -> int:
        check_micro("A settlement", actual)
        with self._lock:
            if reservation.id in self._settled:
                return actual
            self._settled[reservation.id] = None
            if len(self._settled) > self._remember:
                self._settled.popitem(last=False)
            if self._reservations.pop(reservation.id, None) is not None:
                self._unreserve(reservation)
            lane = reservation.lane
            for spec in reservation.windows:
                row = self._row(spec)
                if lane == "high-end" or lane == "pro":
                    charged, overrun = settle_amounts(self._state(spec), lane, actual)
                else:  # settle_amounts for a lane without a share, on the row itself
                    charged = min(actual, max(spec.cap - row[_C] - row[_O] - row[_R], 0))
                    overrun = actual - charged
                row[_C] += charged
                row[_O] = min(row[_O] + overrun, MAX_MICRO)  # as in every store: it must fit 64 bits
                if reservation.lane == "high-end":
                    row[_HC] += charged
                elif reservation.lane == "pro":
                    row[_PC] += charged
            return actual

    async def release(self, reservation: Reservation) -> None:
        with self._lock:
            if self._reservations.pop(reservation.id, None) is not None:
                self._unreserve(reservation)

    async def window_states(self, windows: Sequence[WindowSpec]) -> list[WindowState]:
        with self._lock:
            if self._expiry and self._expiry[0][0] <= self._clock():
                self._reap()
            return [self._state(spec) for spec in windows]

    async def append_receipt(self, run_id: str, body: dict[str, Any], seal: Sealer) -> StoredReceipt:
        with self._lock:
            chain = self._receipts.setdefault(run_id, [])
            body = {**body, "seq": len(chain), "prev": chain[-1].digest if chain else None}
            digest, text = seal(body)
            stored = StoredReceipt(run_id, body["seq"], digest, body["prev"], text)
            chain.append(stored)
            return stored

    async def receipts(self, run_id: str | None = None) -> list[StoredReceipt]:
        with self._lock:
            if run_id is not None:
                return list(self._receipts.get(run_id, []))
            return [r for chain in self._receipts.values() for r in chain]

    async def record_run(self, run: Mapping[str, Any], *, only_if: Mapping[str, Any] | None = None) -> bool:
        with self._lock:
            if only_if is not None:
                entry = self._runs.get(str(run["runId"]))
                if entry is None or any(entry.get(k) != v for k, v in only_if.items()):
                    return False
            self._runs.setdefault(str(run["runId"]), {}).update(run)
            return True

    async def runs(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._runs.values()]
