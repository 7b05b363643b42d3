"""The budget ledger: the optimizer's windows over a store (CONTRACT B6).

:class:`BudgetLedger` turns the optimizer's budget windows into window instances for a
run (``task`` per run, ``session`` per ``Lanes``, ``day`` / ``week`` / ``month`` on UTC
boundaries) and reserves, settles and releases money in all of them at once through a
:class:`~agentlanes.stores.base.Store`. Money values and the admission types live in
:mod:`agentlanes.budget`.

**Money is never lost.** A call that reached the model is always charged. When the store
cannot record a settlement (the database unreachable, a connection cut, a full disk),
the ledger writes the charge to its journal (``journal_dir``): one small JSON-lines
file per charge, written to a temporary name, synced, and renamed into place, mode 0600
in a 0700 directory. Each journaled charge is applied to the store by the next ledger
call that finds the store answering (before a headroom read, an admission or a release;
after a settlement of its own), by whichever process sharing the journal gets there
first; store settlement is idempotent by reservation id, so a charge is applied exactly
once even if a process dies while applying it. Until then the charge counts against the
caps of the windows it belongs to (:meth:`BudgetLedger.headroom` and admission both
subtract it), and the error raised (:class:`~agentlanes.errors.
UnsettledCharge`) says the call was admitted, what it cost and where it is journaled.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.to_thread

from agentlanes._private import private_dir
from agentlanes.budget import (
    MAX_MICRO,
    MICRO,
    Refusal,
    Reservation,
    WindowSpec,
    WindowState,
    check_micro,
    from_micro,
    to_micro,
)
from agentlanes.errors import AgentLanesError, ConfigurationError, StoreUnavailable, UnsettledCharge
from agentlanes.policy import RoutingOptimizer
from agentlanes.stores.base import with_unsettled

if TYPE_CHECKING:
    from agentlanes.stores.base import Store

__all__ = ["BudgetLedger", "JournaledCharge", "window_key"]

_JOURNAL_VERSION: Final = 1
_JOURNAL_PREFIX: Final = "charge-"
_JOURNAL_SUFFIX: Final = ".jsonl"
_JOURNAL_MAX_BYTES: Final = 64 * 1024  # one entry is well under 1 KiB
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


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


@dataclass(frozen=True)
class JournaledCharge:
    """A charge the store could not record yet, kept in the ledger's journal.

    Attributes:
        reservation: the reservation it settles (with its windows).
        actual: what the call cost, in micro-units.
        path: the journal file that holds it.
    """

    reservation: Reservation
    actual: int
    path: Path


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
        journal_dir: where charges the store could not record are kept until it can
            (created 0700 when first needed; the runtime uses ``<data-dir>/journal``).
            ``None``: no journal, and a settlement the store cannot record is lost but
            for the :class:`~agentlanes.errors.UnsettledCharge` that reports it.
    """

    def __init__(
        self,
        store: Store,
        optimizer: RoutingOptimizer,
        *,
        session_id: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        lease_seconds: float = 900.0,
        journal_dir: str | Path | None = None,
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
        self._specs: dict[tuple[str, int, str], tuple[WindowSpec, ...]] = {}
        self.journal_dir = Path(journal_dir) if journal_dir is not None else None
        self._pending: dict[str, JournaledCharge] = {}
        self._journal_seen: int | None = None  # the journal directory's mtime when last read
        self._drain_lock: anyio.Lock | None = None
        self._store_identity = store.identity
        # stores written before `unsettled` existed: admission then fails closed instead
        self._store_counts_unsettled = "unsettled" in inspect.signature(store.reserve).parameters
        self._store_takes_ids = "reservation_id" in inspect.signature(store.reserve).parameters
        if self.journal_dir is not None:
            self._rescan()

    def specs(self, run_id: str, *, session_id: str | None = None) -> tuple[WindowSpec, ...]:
        """The window instances a run's spending counts against, now (``session_id``:
        another session than the ledger's own, e.g. a durable workflow's).

        Keys change only at UTC day boundaries (day, week and month keys are all whole
        days), so the specs are cached per run and UTC day.
        """
        now = self.clock().astimezone(UTC)
        session = session_id or self.session_id
        cache_key = (run_id, now.toordinal(), session)
        specs = self._specs.get(cache_key)
        if specs is None:
            specs = tuple(
                WindowSpec(window, window_key(window, run_id=run_id, session_id=session, now=now), cap, high, pro)
                for window, cap, high, pro in self.windows
            )
            if len(self._specs) >= 1024:
                self._specs.clear()
            self._specs[cache_key] = specs
        return specs

    @property
    def unsettled(self) -> tuple[JournaledCharge, ...]:
        """Journaled charges not yet applied to the store (this ledger's and those it
        found in the journal), oldest first."""
        return tuple(self._pending.values())

    async def states(self, run_id: str, *, session_id: str | None = None) -> list[WindowState]:
        """Every window instance of the run, as the store holds it (journaled charges
        not yet applied are not in it: see :attr:`unsettled`)."""
        return await self.store.window_states(self.specs(run_id, session_id=session_id))

    async def headroom(
        self, run_id: str, window: str, *, session_id: str | None = None
    ) -> tuple[float, tuple[float, float]]:
        """What the router may spend: the least remaining over all windows, and the
        premium lanes' remaining shares, as floats for the decision. Journaled charges
        not yet in the store count as spent."""
        await self._catch_up(scan=False)  # advisory; the reservation that follows scans
        states = await self.states(run_id, session_id=session_id)
        if not states:
            return 0.0, (0.0, 0.0)
        if self._pending:
            states = self._with_unsettled(states)
        remaining = high = pro = MAX_MICRO
        for state in states:  # one pass: this runs before every decision
            spec = state.spec
            left = spec.cap - state.committed - state.overrun - state.reserved
            if left < remaining:
                remaining = left
            if spec.high_end_cap - state.high_end_used < high:
                high = spec.high_end_cap - state.high_end_used
            if spec.pro_cap - state.pro_used < pro:
                pro = spec.pro_cap - state.pro_used
        high = min(high, remaining)  # a share never exceeds what the windows hold
        pro = min(pro, remaining)
        # Floats for the router (its rule compares float costs); micro-units divide exactly
        # enough: every value below 2**53 micro-units is represented to the micro-unit.
        return max(remaining, 0) / MICRO, (max(high, 0) / MICRO, max(pro, 0) / MICRO)

    async def reserve(
        self,
        run_id: str,
        lane: str,
        amount: int,
        *,
        reservation_id: str | None = None,
        session_id: str | None = None,
    ) -> Reservation | Refusal:
        """Atomically reserve ``amount`` micro-units for a call on ``lane`` in every
        window, counting journaled charges not yet in the store as spent.

        ``reservation_id``: asking again with the same id returns the reservation still
        held instead of reserving twice (see :meth:`Store.reserve`)."""
        check_micro("A reservation", amount)
        await self._catch_up()
        specs = self.specs(run_id, session_id=session_id)
        if reservation_id is None and not self._pending:  # the common case: nothing more to say
            return await self.store.reserve(specs, lane, amount, lease_seconds=self.lease_seconds)
        more: dict[str, Any] = {}
        if reservation_id is not None:
            if not self._store_takes_ids:
                raise ConfigurationError(
                    f"{type(self.store).__name__}.reserve takes no `reservation_id`, so a reservation cannot be "
                    "asked for again without reserving twice; update the store, or reserve without an id."
                )
            more["reservation_id"] = reservation_id
        unsettled = self._unsettled_in(specs) if self._pending else None
        if unsettled:
            if not self._store_counts_unsettled:
                total = sum(c.actual for c in self._pending.values())
                raise StoreUnavailable(
                    f"{len(self._pending)} journaled charge(s) ({from_micro(total)} {self.currency}) could not be "
                    f"applied to the store yet, and {type(self.store).__name__}.reserve cannot count them "
                    "(it takes no `unsettled` argument); nothing was admitted until they are applied."
                )
            more["unsettled"] = unsettled
        return await self.store.reserve(specs, lane, amount, lease_seconds=self.lease_seconds, **more)

    async def settle(self, reservation: Reservation, actual: int) -> int:
        """Replace a reservation with the actual cost; returns ``actual``, the real cost.

        The call was made, so the money is charged in full in every window: the part
        each window's cap (and premium share) can hold is committed and the rest is
        recorded as that window's ``overrun``, so every window's ``committed + overrun``
        grows by exactly ``actual`` and ``committed + reserved <= cap`` always holds.

        Raises:
            ConfigurationError: ``actual`` is not whole micro-units in ``0..MAX_MICRO``
                (a cost that is not finite, negative or beyond range); the reservation is
                settled at its reserved amount instead, so it is never left held.
            UnsettledCharge: the store could not record the charge; it is journaled
                (see the module docstring) and the error says where.
        """
        try:
            check_micro("A settlement", actual)
        except ConfigurationError as bad:
            await self.settle_reserved(reservation)
            raise ConfigurationError(
                f"{bad} The reservation was settled at its reserved amount instead "
                f"({from_micro(reservation.amount)} {self.currency})."
            ) from None
        return await self._settle(reservation, actual)

    async def settle_reserved(self, reservation: Reservation) -> int:
        """Settle a reservation at its reserved amount: for a call that was made but
        whose cost cannot be known (usage that is missing or invalid). Returns the
        amount charged; raises like :meth:`settle`."""
        return await self._settle(reservation, reservation.amount)

    async def release(self, reservation: Reservation) -> None:
        """Give a reservation back (the call failed or was cancelled)."""
        await self._catch_up(scan=False)
        await self.store.release(reservation)

    # -------------------------------------------------------------- settlement and journal

    async def _settle(self, reservation: Reservation, actual: int) -> int:
        try:
            await self.store.settle(reservation, actual)
        except Exception as exc:  # whatever failed, the money was spent: keep it
            raise await self._journal(reservation, actual, exc) from exc
        await self._catch_up(scan=False)  # the store answers: apply what waits in the journal
        return actual

    async def _journal(self, reservation: Reservation, actual: int, exc: Exception) -> AgentLanesError:
        cost = f"{from_micro(actual)} {self.currency} ({actual} micro-units)"
        reason = str(exc) if isinstance(exc, AgentLanesError) else f"{type(exc).__name__}: {exc}"
        admitted = f"A model call was admitted and cost {cost}, but the store could not record the charge ({reason})"
        if self.journal_dir is None:
            return UnsettledCharge(
                f"{admitted}. This ledger has no journal (BudgetLedger(journal_dir=...)), so the charge is recorded "
                "nowhere but in this error.",
                amount=actual,
                reservation_id=reservation.id,
                journal=None,
            )
        entry = {
            "v": _JOURNAL_VERSION,
            "store": self._store_identity,
            "reservation": reservation.id,
            "lane": reservation.lane,
            "reserved": reservation.amount,
            "actual": actual,
            "windows": [list(spec) for spec in reservation.windows],
            "expires": reservation.expires_at,
            "at": datetime.now(UTC).isoformat(),
            "error": reason[:1000],
        }
        try:
            path = await anyio.to_thread.run_sync(self._write_entry, reservation.id, entry)
        except OSError as werr:
            return UnsettledCharge(
                f"{admitted}, and its journal {self.journal_dir} could not be written either ({werr}); the charge is "
                "recorded nowhere but in this error.",
                amount=actual,
                reservation_id=reservation.id,
                journal=None,
            )
        self._pending[reservation.id] = JournaledCharge(reservation, actual, path)
        return UnsettledCharge(
            f"{admitted}. The charge is journaled at {path} and will be applied to the store, exactly once, as soon "
            "as the store answers again; until then it counts against the budget's caps.",
            amount=actual,
            reservation_id=reservation.id,
            journal=path,
        )

    def _write_entry(self, reservation_id: str, entry: dict[str, Any]) -> Path:
        """Write one journal entry durably: a temporary file, synced, renamed into place,
        and the directory synced."""
        assert self.journal_dir is not None
        directory = self.journal_dir
        private_dir(directory)
        name = _journal_name(reservation_id)
        path = directory / name
        tmp = directory / f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        data = (json.dumps(entry, separators=(",", ":"), sort_keys=True) + "\n").encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(directory)
        return path

    def _rescan(self) -> None:
        """Read journal entries this ledger does not know yet (its own, or another
        process's sharing the directory), when the directory changed since last time."""
        directory = self.journal_dir
        if directory is None:
            return
        try:
            mtime = os.stat(directory).st_mtime_ns
        except OSError:
            return  # no journal yet
        if mtime == self._journal_seen:
            return
        self._journal_seen = mtime
        try:
            names = [
                e.name
                for e in os.scandir(directory)
                if e.name.startswith(_JOURNAL_PREFIX) and e.name.endswith(_JOURNAL_SUFFIX)
            ]
        except OSError:
            return
        known = {c.path.name for c in self._pending.values()}
        for name in sorted(names):
            if name not in known:
                charge = self._read_entry(directory / name)
                if charge is not None and charge.reservation.id not in self._pending:
                    self._pending[charge.reservation.id] = charge

    def _read_entry(self, path: Path) -> JournaledCharge | None:
        """One journal entry, or ``None`` for a file that is not a valid entry of this
        ledger's store (another store's entries are left for a ledger over that store)."""
        try:
            with open(path, "rb") as f:
                data = f.read(_JOURNAL_MAX_BYTES + 1)
            if len(data) > _JOURNAL_MAX_BYTES:
                return None
            entry = json.loads(data.decode())
        except (OSError, ValueError):
            return None
        try:
            if entry["v"] != _JOURNAL_VERSION or entry["store"] != self._store_identity:
                return None
            windows = tuple(_window_spec(w) for w in entry["windows"])
            reservation = Reservation(
                _text(entry["reservation"]),
                _text(entry["lane"]),
                check_micro("A journaled reservation", entry["reserved"]),
                windows,
                float(entry["expires"]),
            )
            actual = check_micro("A journaled charge", entry["actual"])
        except (KeyError, TypeError, ValueError, ConfigurationError):
            return None
        return JournaledCharge(reservation, actual, path)

    async def _catch_up(self, *, scan: bool = True) -> None:
        """Apply journaled charges to the store if there are any (a failure leaves them
        journaled, counted against the caps, for the next call). ``scan`` first looks
        for entries other processes wrote (one ``stat`` of the directory): admission
        must see them; a settlement or release only applies those already known, so a
        stage's bookkeeping stats the journal once, when it reserves."""
        if self.journal_dir is None:
            return
        if scan:
            self._rescan()
        if not self._pending:
            return
        if self._drain_lock is None:
            self._drain_lock = anyio.Lock()
        async with self._drain_lock:
            for charge in list(self._pending.values()):
                try:
                    await self.store.settle(charge.reservation, charge.actual)
                except Exception:  # still unreachable (or this entry cannot go in yet): keep it
                    return
                self._pending.pop(charge.reservation.id, None)
                with contextlib.suppress(OSError):
                    os.unlink(charge.path)  # another process may have applied and removed it

    def _unsettled_in(self, specs: Iterable[WindowSpec]) -> dict[tuple[str, str], tuple[int, int, int]]:
        """Journaled charges not in the store yet, per window of ``specs``: (all, high-end,
        pro) micro-units."""
        wanted = {(s.window, s.key) for s in specs}
        out: dict[tuple[str, str], tuple[int, int, int]] = {}
        for charge in self._pending.values():
            lane, actual = charge.reservation.lane, charge.actual
            for spec in charge.reservation.windows:
                key = (spec.window, spec.key)
                if key in wanted:
                    a, h, p = out.get(key, (0, 0, 0))
                    out[key] = (
                        min(a + actual, MAX_MICRO),
                        min(h + (actual if lane == "high-end" else 0), MAX_MICRO),
                        min(p + (actual if lane == "pro" else 0), MAX_MICRO),
                    )
        return out

    def _with_unsettled(self, states: Sequence[WindowState]) -> list[WindowState]:
        extra = self._unsettled_in(s.spec for s in states)
        return [with_unsettled(s, extra.get((s.spec.window, s.spec.key))) for s in states]


def _journal_name(reservation_id: str) -> str:
    safe = reservation_id if _SAFE_ID.fullmatch(reservation_id) else hashlib.sha256(reservation_id.encode()).hexdigest()
    return f"{_JOURNAL_PREFIX}{safe}{_JOURNAL_SUFFIX}"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError("not a string")
    return value


def _window_spec(value: object) -> WindowSpec:
    if not isinstance(value, list) or len(value) != 5:
        raise TypeError("not a window")
    window, key, cap, high, pro = value
    return WindowSpec(
        _text(window),
        _text(key),
        check_micro("A journaled cap", cap),
        check_micro("A journaled cap", high),
        check_micro("A journaled cap", pro),
    )
