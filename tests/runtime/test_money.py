"""Money through a run when the store fails: a charge the store cannot record is
journaled and the stage keeps its answer; the next run applies it exactly once; a
price out of range charges the reservation; nothing is ever left reserved."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from agentlanes import BudgetExhausted, Lanes, ModelError, StageContext
from agentlanes.budget import Reservation
from agentlanes.errors import StoreUnavailable, UnsettledCharge
from agentlanes.models import ModelResponse, Usage
from agentlanes.stores import SQLiteStore
from agentlanes.testing import FunctionModel, TestModel
from tests.conftest import healthy
from tests.stores.test_ledger_journal import FlakyStore


def make(tmp_path: Path, store: Any, model: Any = None) -> Lanes:
    model = model or TestModel(text="done")
    lanes = ("local-cheap", "cheap", "standard", "high-end", "pro")
    return Lanes(dict.fromkeys(lanes, model), data_dir=tmp_path, store=store, signals=healthy())


async def windows(lanes: Lanes, run_id: str) -> dict[str, tuple[int, int]]:
    return {
        s.spec.window: (s.committed + s.overrun, s.reserved)
        for s in await lanes.store.window_states(lanes.ledger.specs(run_id))
    }


async def ask(ctx: StageContext, prompt: str) -> str:
    return (await ctx.complete(prompt)).text


async def test_a_charge_the_store_cannot_record_is_journaled_and_the_stage_keeps_its_answer(tmp_path: Path) -> None:
    store = FlakyStore(SQLiteStore(tmp_path / "budget.db"))
    lanes = make(tmp_path, store)
    store.down = True
    async with lanes.run(task_class="routine-code") as run:
        answer = await run.stage("execution", ask, "write it")
    assert answer == "done"  # the model answered and was paid for: the answer is kept
    [call] = run.result.records[-1].calls
    assert call.ok and call.charged > 0
    journal = tmp_path / "journal"
    [entry] = list(journal.iterdir())
    assert stat.S_IMODE(journal.stat().st_mode) == 0o700
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert json.loads(entry.read_text().splitlines()[0])["actual"] == call.charged

    # the store answers again: the next run's first ledger call applies the charge, once
    store.down = False
    async with lanes.run(task_class="routine-code") as second:
        await second.stage("execution", ask, "again")
    assert not list(journal.iterdir())
    [second_call] = second.result.records[-1].calls
    assert (await windows(lanes, run.run_id))["session"] == (call.charged + second_call.charged, 0)


async def test_a_journaled_charge_is_logged_as_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = FlakyStore(SQLiteStore(tmp_path / "budget.db"))
    lanes = make(tmp_path, store)
    store.down = True
    async with lanes.run(task_class="routine-code") as run:
        await run.stage("execution", ask, "write it")
    err = capsys.readouterr().err
    assert "budget.charge_journaled" in err and str(tmp_path / "journal") in err


async def test_a_charge_recorded_nowhere_fails_the_stage_with_the_amount(tmp_path: Path) -> None:
    store = FlakyStore(SQLiteStore(tmp_path / "budget.db"))
    lanes = make(tmp_path, store)
    (tmp_path / "journal").write_text("not a directory")  # the journal cannot be written either
    store.down = True
    with pytest.raises(UnsettledCharge) as caught:
        async with lanes.run(task_class="routine-code") as run:
            await run.stage("execution", ask, "write it")
    exc = caught.value
    assert exc.amount > 0 and exc.journal is None and exc.run_id == run.run_id
    assert "recorded nowhere but in this error" in str(exc)
    [call] = run.result.records[-1].calls
    assert call.charged == exc.amount


async def test_an_enormous_reported_usage_is_charged_in_full_and_holds_nothing(tmp_path: Path) -> None:
    def huge(messages: Any, settings: Any) -> ModelResponse:
        return ModelResponse("ok", Usage(2**40, 2**40), "huge")

    lanes = make(tmp_path, SQLiteStore(tmp_path / "budget.db"), FunctionModel(huge))
    async with lanes.run(task_class="routine-code") as run:
        await run.stage("execution", ask, "write it")
    [call] = run.result.records[-1].calls
    assert call.charged > call.reserved > 0  # the call was made: charged what it reports, beyond the cap
    state = await windows(lanes, run.run_id)
    assert state["task"] == (call.charged, 0)


async def test_usage_beyond_any_count_charges_the_reservation_and_fails_the_stage(tmp_path: Path) -> None:
    def broken(messages: Any, settings: Any) -> ModelResponse:
        return ModelResponse("ok", Usage(2**62, 1), "broken")

    lanes = make(tmp_path, SQLiteStore(tmp_path / "budget.db"), FunctionModel(broken))
    with pytest.raises(ModelError, match="not a token count"):
        async with lanes.run(task_class="routine-code") as run:
            await run.stage("execution", ask, "write it")
    calls = [c for r in run.result.records for c in r.calls]
    assert calls and all(c.charged == c.reserved > 0 for c in calls)
    assert all(reserved == 0 for _, reserved in (await windows(lanes, run.run_id)).values())


async def test_an_enormous_external_charge_is_refused_without_building_anything(tmp_path: Path) -> None:
    lanes = make(tmp_path, SQLiteStore(tmp_path / "budget.db"))

    async def external(ctx: StageContext) -> None:
        async with ctx.charge(input_tokens=2**39, output_tokens=10) as charge:
            charge.usage(1, 1)

    with pytest.raises(BudgetExhausted, match=r"ctx.charge"):
        async with lanes.run(task_class="routine-code") as run:
            await run.stage("execution", external)
    assert all(reserved == 0 for _, reserved in (await windows(lanes, run.run_id)).values())


async def test_a_store_down_at_reservation_admits_nothing(tmp_path: Path) -> None:
    class DeadReserve(FlakyStore):
        async def reserve(self, *a: Any, **kw: Any) -> Reservation:  # type: ignore[override]
            raise StoreUnavailable("The test store did not answer.")

    model = FunctionModel(lambda messages, settings: "never")
    lanes = make(tmp_path, DeadReserve(SQLiteStore(tmp_path / "budget.db")), model)
    with pytest.raises(StoreUnavailable):
        async with lanes.run(task_class="routine-code") as run:
            await run.stage("execution", ask, "write it")
    assert model.calls == []  # fail closed: nothing was sent


def test_lanes_given_one_model_instead_of_a_mapping_says_how_to_bind_it(tmp_path: Path) -> None:
    from agentlanes import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"mapping of lane to model.*Lanes\(\{'cheap': model"):
        Lanes(TestModel(text="x"), data_dir=tmp_path)  # type: ignore[arg-type]
