"""Budget accounting and receipt chains, against every store."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import anyio
import pytest

from agentlanes import load_bundle
from agentlanes.budget import BudgetLedger, Refusal, Reservation, WindowSpec, from_micro, to_micro, window_key
from agentlanes.stores import Store
from tests.stores.conftest import FakeClock

W = WindowSpec("task", "run-1", cap=1_000_000, high_end_cap=250_000, pro_cap=50_000)


def test_money_is_exact() -> None:
    assert to_micro(0.1) + to_micro(0.2) == to_micro(0.3) == 300_000
    assert to_micro("2.0000005") == 2_000_000  # half-even at the seventh decimal
    assert to_micro(Decimal("0.0000015")) == 2
    assert from_micro(123_456) == Decimal("0.123456")


def test_window_keys_use_utc_boundaries() -> None:
    late_in_tokyo = datetime(2026, 11, 22, 8, 30, tzinfo=timezone(timedelta(hours=9)))  # 23:30 UTC on the 21st
    assert window_key("day", run_id="r", session_id="s", now=late_in_tokyo) == "2026-11-21"
    assert window_key("week", run_id="r", session_id="s", now=late_in_tokyo) == "2026-W47"
    assert window_key("month", run_id="r", session_id="s", now=datetime(2026, 12, 1, 0, 0, tzinfo=UTC)) == "2026-12"
    assert window_key("task", run_id="r", session_id="s", now=late_in_tokyo) == "r"
    assert window_key("session", run_id="r", session_id="s", now=late_in_tokyo) == "s"


async def test_reserve_settle_release(store: Store) -> None:
    a = await store.reserve([W], "standard", 400_000, lease_seconds=60)
    b = await store.reserve([W], "standard", 400_000, lease_seconds=60)
    assert isinstance(a, Reservation) and isinstance(b, Reservation)
    refused = await store.reserve([W], "standard", 300_000, lease_seconds=60)
    assert refused == Refusal("task", "run-1", "cap", 200_000)
    assert await store.settle(a, 100_000) == 100_000
    await store.release(b)
    await store.release(b)  # idempotent
    [state] = await store.window_states([W])
    assert (state.committed, state.reserved, state.remaining, state.overrun) == (100_000, 0, 900_000, 0)


async def test_premium_shares(store: Store) -> None:
    assert isinstance(await store.reserve([W], "high-end", 250_000, lease_seconds=60), Reservation)
    assert await store.reserve([W], "high-end", 1, lease_seconds=60) == Refusal("task", "run-1", "high-end-share", 0)
    assert await store.reserve([W], "pro", 50_001, lease_seconds=60) == Refusal("task", "run-1", "pro-share", 50_000)
    assert isinstance(await store.reserve([W], "standard", 500_000, lease_seconds=60), Reservation)


async def test_all_windows_or_none(store: Store) -> None:
    day = WindowSpec("day", "2026-11-22", cap=300_000, high_end_cap=0, pro_cap=0)
    refused = await store.reserve([W, day], "standard", 400_000, lease_seconds=60)
    assert refused == Refusal("day", "2026-11-22", "cap", 300_000)
    task_state, day_state = await store.window_states([W, day])
    assert task_state.reserved == 0 and day_state.reserved == 0


async def test_settling_above_the_estimate_never_breaks_the_cap(store: Store) -> None:
    first = await store.reserve([W], "standard", 600_000, lease_seconds=60)
    second = await store.reserve([W], "standard", 300_000, lease_seconds=60)
    assert isinstance(first, Reservation) and isinstance(second, Reservation)
    # the real cost is returned; the part the cap cannot hold beside `second` is overrun
    assert await store.settle(first, 800_000) == 800_000
    [state] = await store.window_states([W])
    assert (state.committed, state.reserved, state.overrun) == (700_000, 300_000, 100_000)
    assert state.committed + state.reserved <= W.cap
    # the overrun was spent: once `second` is released, only what is really left is admitted
    await store.release(second)
    [state] = await store.window_states([W])
    assert state.remaining == 200_000
    assert isinstance(await store.reserve([W], "standard", 200_001, lease_seconds=60), Refusal)
    assert isinstance(await store.reserve([W], "standard", 200_000, lease_seconds=60), Reservation)


async def test_a_charge_over_the_cap_is_charged_in_full_in_every_window(store: Store) -> None:
    task = WindowSpec("task", "run-1", cap=2_000_000, high_end_cap=0, pro_cap=0)
    session = WindowSpec("session", "s", cap=20_000_000, high_end_cap=0, pro_cap=0)
    day = WindowSpec("day", "2026-11-22", cap=100_000_000, high_end_cap=0, pro_cap=0)
    res = await store.reserve([task, session, day], "standard", 1_000_000, lease_seconds=60)
    assert isinstance(res, Reservation)
    assert await store.settle(res, 500_000_000) == 500_000_000  # 500 USD, whatever the caps
    states = await store.window_states([task, session, day])
    assert [s.committed + s.overrun for s in states] == [500_000_000] * 3
    assert [(s.committed, s.overrun) for s in states] == [
        (2_000_000, 498_000_000),
        (20_000_000, 480_000_000),
        (100_000_000, 400_000_000),
    ]
    assert [s.remaining for s in states] == [-498_000_000, -480_000_000, -400_000_000]
    assert all(s.reserved == 0 for s in states)


async def test_settlement_is_idempotent_by_reservation_id(store: Store) -> None:
    res = await store.reserve([W], "high-end", 200_000, lease_seconds=60)
    assert isinstance(res, Reservation)
    assert await store.settle(res, 150_000) == 150_000
    assert await store.settle(res, 150_000) == 150_000  # a journaled charge applied again
    await store.release(res)  # after settling: a no-op
    [state] = await store.window_states([W])
    assert (state.committed, state.reserved, state.overrun, state.high_end_used) == (150_000, 0, 0, 150_000)


async def test_a_reservation_asked_again_by_its_id_is_the_same_one(store: Store) -> None:
    first = await store.reserve([W], "high-end", 100_000, lease_seconds=60, reservation_id="a" * 32)
    again = await store.reserve([W], "high-end", 100_000, lease_seconds=60, reservation_id="a" * 32)
    assert isinstance(first, Reservation) and again == first
    [state] = await store.window_states([W])
    assert (state.reserved, state.high_end_used) == (100_000, 100_000)  # held once
    other = await store.reserve([W], "high-end", 100_000, lease_seconds=60, reservation_id="b" * 32)
    assert isinstance(other, Reservation) and other.id == "b" * 32
    await store.settle(first, 80_000)
    await store.release(other)
    [state] = await store.window_states([W])
    assert (state.committed, state.reserved) == (80_000, 0)


async def test_amounts_out_of_range_are_refused_clearly(store: Store) -> None:
    from agentlanes.errors import ConfigurationError

    res = await store.reserve([W], "standard", 1_000, lease_seconds=60)
    assert isinstance(res, Reservation)
    for bad in (-1, 2**63, 1.5):
        with pytest.raises(ConfigurationError, match="settlement"):
            await store.settle(res, bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="reservation"):
            await store.reserve([W], "standard", bad, lease_seconds=60)  # type: ignore[arg-type]
    assert await store.settle(res, 2**63 - 1) == 2**63 - 1  # the largest amount a store holds
    [state] = await store.window_states([W])
    assert state.committed + state.overrun == 2**63 - 1 and state.reserved == 0


async def test_expired_reservations_are_reclaimed_and_late_settlement_still_charges(store: Store,
                                                                                     clock: FakeClock) -> None:
    held = await store.reserve([W], "standard", 900_000, lease_seconds=30)
    assert isinstance(held, Reservation)
    assert isinstance(await store.reserve([W], "standard", 200_000, lease_seconds=30), Refusal)
    clock.now += 31
    [state] = await store.window_states([W])
    assert state.reserved == 0
    later = await store.reserve([W], "standard", 200_000, lease_seconds=30)
    assert isinstance(later, Reservation)
    assert await store.settle(held, 500_000) == 500_000  # the money was spent: it counts
    [state] = await store.window_states([W])
    assert (state.committed, state.reserved) == (500_000, 200_000)


async def test_receipt_chain_per_run(store: Store) -> None:
    def seal(body: dict[str, object]) -> tuple[str, str]:
        text = json.dumps(body, sort_keys=True)
        return f"d{body['seq']}-{body['runId']}", text

    async def add(run: str, n: int) -> None:
        for i in range(n):
            await store.append_receipt(run, {"runId": run, "i": i}, seal)

    async with anyio.create_task_group() as tg:
        tg.start_soon(add, "run-a", 20)
        tg.start_soon(add, "run-b", 20)
    for run in ("run-a", "run-b"):
        chain = await store.receipts(run)
        assert [r.seq for r in chain] == list(range(20))
        assert [r.prev for r in chain] == [None] + [r.digest for r in chain[:-1]]
        assert [json.loads(r.text)["i"] for r in chain] == list(range(20))
    assert len(await store.receipts()) == 40


async def test_run_index(store: Store) -> None:
    await store.record_run({"runId": "r1", "status": "running", "taskClass": "routine-code"})
    await store.record_run({"runId": "r2", "status": "running"})
    await store.record_run({"runId": "r1", "status": "succeeded", "cost": "0.02"})
    runs = await store.runs()
    assert [r["runId"] for r in runs] == ["r1", "r2"]
    assert runs[0] == {"runId": "r1", "status": "succeeded", "taskClass": "routine-code", "cost": "0.02"}


async def test_a_conditional_run_index_write_changes_only_the_entry_it_names(store: Store) -> None:
    lease = {"status": "running", "leaseUntil": "2026-12-02T10:00:00Z"}
    await store.record_run({"runId": "r1", **lease, "taskClass": "routine-code"})
    abandon = {"runId": "r1", "status": "abandoned", "abandonedAt": "2026-12-02T10:05:00Z"}
    assert await store.record_run({"runId": "missing", "status": "abandoned"}, only_if=lease) is False
    # the run renewed its lease since it was read: not the same entry any more
    assert await store.record_run(abandon, only_if={**lease, "leaseUntil": "2026-12-02T09:00:00Z"}) is False
    await store.record_run({"runId": "r1", "status": "succeeded", "cost": "0.02"})  # it ended meanwhile
    assert await store.record_run(abandon, only_if=lease) is False
    [entry] = await store.runs()
    assert entry["status"] == "succeeded" and "abandonedAt" not in entry
    await store.record_run({"runId": "r2", **lease})
    assert await store.record_run({**abandon, "runId": "r2"}, only_if=lease) is True
    assert [r["status"] for r in await store.runs()] == ["succeeded", "abandoned"]


async def test_ledger_over_the_optimizer_windows(store: Store) -> None:
    now = datetime(2026, 11, 22, 12, tzinfo=UTC)
    ledger = BudgetLedger(store, load_bundle().optimizer, session_id="s1", clock=lambda: now)
    specs = ledger.specs("run-9")
    assert [(s.window, s.key, s.cap, s.high_end_cap, s.pro_cap) for s in specs] == [
        ("task", "run-9", 2_000_000, 500_000, 100_000),
        ("session", "s1", 20_000_000, 4_000_000, 600_000),
        ("day", "2026-11-22", 100_000_000, 15_000_000, 2_000_000),
    ]
    res = await ledger.reserve("run-9", "high-end", 250_000)
    assert isinstance(res, Reservation)
    remaining, (high, pro) = await ledger.headroom("run-9", "task")
    assert (remaining, high, pro) == (1.75, 0.25, 0.1)
    await ledger.settle(res, 240_000)
    remaining, (high, _) = await ledger.headroom("run-9", "task")
    assert (remaining, high) == (1.76, 0.26)
    assert isinstance(await ledger.reserve("run-9", "high-end", 260_001), Refusal)
