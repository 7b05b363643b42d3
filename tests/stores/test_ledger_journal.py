"""Money is never lost: a settlement the store cannot record is journaled, counted
against the caps, and applied exactly once when the store answers again; invalid costs
settle at the reserved amount; amounts beyond range are agentlanes errors."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentlanes import load_bundle
from agentlanes.budget import MAX_MICRO, Refusal, Reservation, WindowSpec, WindowState, to_micro
from agentlanes.errors import ConfigurationError, StoreError, StoreUnavailable, UnsettledCharge
from agentlanes.ledger import BudgetLedger
from agentlanes.stores import MemoryStore, SQLiteStore, Store
from agentlanes.stores.base import Sealer, StoredReceipt, Unsettled

NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)


class FlakyStore(Store):
    """A real store whose settlements fail while ``down`` (after the store committed
    them, when ``commit_then_fail``: the answer was lost, not the charge)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.down = False
        self.commit_then_fail = False
        self.settle_calls = 0

    @property
    def identity(self) -> str:
        return self.inner.identity

    async def reserve(
        self,
        windows: Sequence[WindowSpec],
        lane: str,
        amount: int,
        *,
        lease_seconds: float,
        unsettled: Unsettled | None = None,
    ) -> Reservation | Refusal:
        return await self.inner.reserve(windows, lane, amount, lease_seconds=lease_seconds, unsettled=unsettled)

    async def settle(self, reservation: Reservation, actual: int) -> int:
        self.settle_calls += 1
        if self.down:
            if self.commit_then_fail:
                await self.inner.settle(reservation, actual)
            raise StoreUnavailable("The test store did not answer; the charge was not recorded.")
        return await self.inner.settle(reservation, actual)

    async def release(self, reservation: Reservation) -> None:
        await self.inner.release(reservation)

    async def window_states(self, windows: Sequence[WindowSpec]) -> list[WindowState]:
        return await self.inner.window_states(windows)

    async def append_receipt(self, run_id: str, body: dict[str, Any], seal: Sealer) -> StoredReceipt:
        return await self.inner.append_receipt(run_id, body, seal)

    async def receipts(self, run_id: str | None = None) -> list[StoredReceipt]:
        return await self.inner.receipts(run_id)

    async def record_run(self, run: Any) -> None:
        await self.inner.record_run(run)

    async def runs(self) -> list[dict[str, Any]]:
        return await self.inner.runs()


def ledger_over(store: Store, journal: Path | None) -> BudgetLedger:
    return BudgetLedger(store, load_bundle().optimizer, session_id="s1", clock=lambda: NOW, journal_dir=journal)


async def spent(ledger: BudgetLedger, run: str) -> list[int]:
    return [s.committed + s.overrun for s in await ledger.states(run)]


async def test_a_settlement_the_store_cannot_record_is_journaled_counted_and_applied_once(
    store: Store, tmp_path: Path
) -> None:
    flaky = FlakyStore(store)
    journal = tmp_path / "journal"
    ledger = ledger_over(flaky, journal)
    res = await ledger.reserve("run-1", "standard", 300_000)
    assert isinstance(res, Reservation)
    flaky.down = True
    with pytest.raises(UnsettledCharge, match=r"admitted and cost 1\.25 USD \(1250000 micro-units\)") as ei:
        await ledger.settle(res, 1_250_000)
    err = ei.value
    assert (err.amount, err.reservation_id) == (1_250_000, res.id)
    assert err.journal is not None and err.journal.parent == journal and str(err.journal) in str(err)
    assert "the charge was not recorded" in str(err)  # the store's own words are kept
    # durable and private
    assert stat.S_IMODE(os.stat(journal).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(err.journal).st_mode) == 0o600
    entry = json.loads(err.journal.read_text())
    assert (entry["reservation"], entry["actual"], entry["lane"]) == (res.id, 1_250_000, "standard")
    assert [x.reservation.id for x in ledger.unsettled] == [res.id]
    # counted against the caps while the store is still down: task cap 2.00, 1.25 spent
    # (and the 0.30 reservation, still held in the store until the charge replaces it)
    remaining, _ = await ledger.headroom("run-1", "task")
    assert remaining == 0.45
    assert isinstance(await ledger.reserve("run-1", "standard", 450_001), Refusal)
    small = await ledger.reserve("run-1", "standard", 100_000)
    assert isinstance(small, Reservation)
    await ledger.release(small)
    assert await spent(ledger, "run-1") == [0, 0, 0]  # not in the store yet
    # the store answers again: the next call applies it, once
    flaky.down = False
    remaining, _ = await ledger.headroom("run-1", "task")
    assert remaining == 0.75
    assert await spent(ledger, "run-1") == [1_250_000] * 3
    assert ledger.unsettled == () and not err.journal.exists()
    [task, *_] = await ledger.states("run-1")
    assert task.reserved == 0
    await ledger.headroom("run-1", "task")
    assert await spent(ledger, "run-1") == [1_250_000] * 3


async def test_a_charge_applied_before_the_answer_was_lost_is_not_charged_twice(store: Store, tmp_path: Path) -> None:
    flaky = FlakyStore(store)
    ledger = ledger_over(flaky, tmp_path / "journal")
    res = await ledger.reserve("run-1", "high-end", 200_000)
    assert isinstance(res, Reservation)
    flaky.down = flaky.commit_then_fail = True  # the store committed; its answer never came
    with pytest.raises(UnsettledCharge):
        await ledger.settle(res, 180_000)
    assert await spent(ledger, "run-1") == [180_000] * 3
    flaky.down = False
    await ledger.headroom("run-1", "task")  # applies the journaled charge: a no-op in the store
    assert await spent(ledger, "run-1") == [180_000] * 3
    assert ledger.unsettled == ()


async def test_another_process_applies_a_journal_left_by_a_dead_one(store: Store, tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    flaky = FlakyStore(store)
    first = ledger_over(flaky, journal)
    res = await first.reserve("run-1", "standard", 100_000)
    assert isinstance(res, Reservation)
    flaky.down = flaky.commit_then_fail = True  # ...and the process dies while applying it
    with pytest.raises(UnsettledCharge):
        await first.settle(res, 90_000)
    second = ledger_over(store, journal)  # a new process over the same store and journal
    assert [c.reservation.id for c in second.unsettled] == [res.id]
    assert isinstance(await second.reserve("run-2", "standard", 1_000), Reservation)
    assert second.unsettled == () and list(journal.iterdir()) == []
    assert await spent(second, "run-1") == [90_000] * 3  # exactly once


async def test_journal_entries_of_another_store_are_left_alone(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    a, b = FlakyStore(MemoryStore()), MemoryStore()
    ledger_a = ledger_over(a, journal)
    res = await ledger_a.reserve("run-1", "standard", 1_000)
    assert isinstance(res, Reservation)
    a.down = True
    with pytest.raises(UnsettledCharge):
        await ledger_a.settle(res, 1_000)
    ledger_b = ledger_over(b, journal)
    assert ledger_b.unsettled == ()
    await ledger_b.headroom("run-1", "task")
    assert len(list(journal.iterdir())) == 1


async def test_without_a_journal_the_error_says_the_charge_is_recorded_nowhere() -> None:
    flaky = FlakyStore(MemoryStore())
    ledger = ledger_over(flaky, None)
    res = await ledger.reserve("run-1", "standard", 1_000)
    assert isinstance(res, Reservation)
    flaky.down = True
    with pytest.raises(UnsettledCharge, match="recorded nowhere but in this error") as ei:
        await ledger.settle(res, 2_000)
    assert ei.value.journal is None and ei.value.amount == 2_000


async def test_an_unwritable_journal_is_said_plainly(tmp_path: Path) -> None:
    (tmp_path / "journal").write_text("a file where the journal directory should be")
    flaky = FlakyStore(MemoryStore())
    ledger = ledger_over(flaky, tmp_path / "journal")
    res = await ledger.reserve("run-1", "standard", 1_000)
    assert isinstance(res, Reservation)
    flaky.down = True
    with pytest.raises(UnsettledCharge, match="could not be written either") as ei:
        await ledger.settle(res, 2_000)
    assert ei.value.journal is None


@pytest.mark.parametrize("bad", [-1, 2**63, 10**30, 1.5, float("inf"), float("nan"), None, "12"])
async def test_an_invalid_cost_settles_at_the_reserved_amount(store: Store, bad: Any) -> None:
    ledger = ledger_over(store, None)
    res = await ledger.reserve("run-1", "standard", 40_000)
    assert isinstance(res, Reservation)
    with pytest.raises(ConfigurationError, match=r"settled at its reserved amount instead \(0\.04 USD\)"):
        await ledger.settle(res, bad)
    states = await ledger.states("run-1")
    assert [(s.committed, s.reserved) for s in states] == [(40_000, 0)] * 3  # never left held


async def test_settle_reserved_charges_the_estimate(store: Store) -> None:
    ledger = ledger_over(store, None)
    res = await ledger.reserve("run-1", "pro", 50_000)
    assert isinstance(res, Reservation)
    assert await ledger.settle_reserved(res) == 50_000
    assert [(s.committed, s.reserved, s.pro_used) for s in await ledger.states("run-1")] == [(50_000, 0, 50_000)] * 3


async def test_a_charge_over_every_cap_is_the_real_cost_in_every_window(store: Store) -> None:
    ledger = ledger_over(store, None)
    res = await ledger.reserve("run-1", "standard", 1_000_000)
    assert isinstance(res, Reservation)
    assert await ledger.settle(res, to_micro(500)) == 500_000_000  # 500 USD: the run reports 500
    states = await ledger.states("run-1")
    assert [s.committed + s.overrun for s in states] == [500_000_000] * 3
    assert [s.committed for s in states] == [2_000_000, 20_000_000, 100_000_000]  # each cap holds its part
    remaining, (high, pro) = await ledger.headroom("run-1", "task")
    assert (remaining, high, pro) == (0.0, 0.0, 0.0)
    assert isinstance(await ledger.reserve("run-2", "standard", 1), Refusal)  # session and day are spent


@given(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.decimals(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(2**80), max_value=2**80),
        st.text(max_size=40),
        st.from_regex(r"-?[0-9]{0,30}(\.[0-9]{0,30})?(e-?[0-9]{1,12})?", fullmatch=True),
    )
)
@settings(max_examples=400, deadline=None)
def test_to_micro_answers_any_input_with_an_amount_or_an_agentlanes_error(value: Any) -> None:
    try:
        micros = to_micro(value)
    except ConfigurationError as exc:
        message = str(exc)
        micros = None
    if micros is None:
        assert message.startswith("Money amount")
        return
    assert isinstance(micros, int) and -MAX_MICRO <= micros <= MAX_MICRO
    if isinstance(value, int | Decimal):
        assert abs(Decimal(micros) - Decimal(value) * 1_000_000) <= Decimal("0.51")


async def test_sqlite_full_disk_journals_the_charge_and_applies_it_once_there_is_room(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "agentlanes.db")
    ledger = ledger_over(store, tmp_path / "journal")
    held: dict[str, Reservation] = {}
    for i in range(400):
        res = await ledger.reserve(f"run-{i}", "standard", 1_000)
        assert isinstance(res, Reservation)
        held[f"run-{i}"] = res
    db = store._conn(0)  # the event loop's connection: every call here runs on it
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full: no page more
    settled = 0
    failure: UnsettledCharge | None = None
    for run, res in held.items():
        try:
            await ledger.settle(res, 700)
            settled += 1
        except UnsettledCharge as exc:
            failure, failed_run = exc, run
            break
    assert failure is not None, "the store never filled up"
    assert "is full" in str(failure) and "the charge was not recorded" in str(failure)
    assert isinstance(failure.__cause__, StoreError)
    assert failure.journal is not None and failure.journal.exists()
    # reads still work while it is full, and count the journaled charge beside the held reservation
    remaining, _ = await ledger.headroom(failed_run, "task")
    assert remaining == 1.9983 and len(ledger.unsettled) == 1
    # admission either counts it or fails closed: never admits as if it were not spent
    try:
        answer: object = await ledger.reserve(failed_run, "standard", 1_998_301)
    except StoreError as exc:
        answer = exc
    assert isinstance(answer, Refusal) or "nothing was admitted" in str(answer)
    db.execute("PRAGMA max_page_count = 1073741823")  # room again
    remaining, _ = await ledger.headroom(failed_run, "task")
    assert remaining == 1.9993
    assert ledger.unsettled == () and not failure.journal.exists()
    day = next(s for s in await ledger.states("run-0") if s.spec.window == "day")
    assert day.committed == (settled + 1) * 700  # every settlement, the journaled one once
    assert day.reserved == (len(held) - settled - 1) * 1_000
    await store.aclose()


class OlderStore(FlakyStore):
    """A store written before `unsettled` existed."""

    async def reserve(  # type: ignore[override]
        self, windows: Sequence[WindowSpec], lane: str, amount: int, *, lease_seconds: float
    ) -> Reservation | Refusal:
        return await self.inner.reserve(windows, lane, amount, lease_seconds=lease_seconds)


async def test_a_store_that_cannot_count_journaled_charges_admits_nothing_until_they_are_applied(
    tmp_path: Path,
) -> None:
    older = OlderStore(MemoryStore())
    ledger = ledger_over(older, tmp_path / "journal")
    res = await ledger.reserve("run-1", "standard", 1_000)
    assert isinstance(res, Reservation)
    older.down = True
    with pytest.raises(UnsettledCharge):
        await ledger.settle(res, 1_000)
    with pytest.raises(StoreUnavailable, match=r"1 journaled charge\(s\) \(0\.001 USD\).*nothing was admitted"):
        await ledger.reserve("run-1", "standard", 1_000)
    older.down = False
    assert isinstance(await ledger.reserve("run-1", "standard", 1_000), Reservation)
    assert ledger.unsettled == ()
