"""The model-call layers when the first attempt fails: ``call`` makes the lane's first
model's first attempt directly and enters the layers (lanes, models, retries) only on a
failure, which they must carry on from exactly as if they had made that attempt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agentlanes import Lanes, ModelError, StageContext
from agentlanes.events import ModelCooled
from agentlanes.models import ModelResponse, ProviderError, Usage
from agentlanes.runtime import RetryPolicy
from agentlanes.stores import MemoryStore
from agentlanes.testing import ScriptedModel, TestModel
from tests.conftest import healthy


class Seen:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def on_event(self, event: Any) -> None:
        self.events.append(event)


def make(tmp_path: Path, models: dict[str, Any], **kw: Any) -> tuple[Lanes, Seen]:
    seen = Seen()
    kw.setdefault("signals", healthy())
    lanes = Lanes(
        models,
        data_dir=tmp_path,
        store=MemoryStore(),
        retry=RetryPolicy(attempts=3, initial_wait=0.001, max_wait=0.01),
        processors=[seen],
        **kw,
    )
    return lanes, seen


async def ask(ctx: StageContext) -> str:
    return (await ctx.complete("do it", max_tokens=16)).text


def attempts(run: Any) -> list[tuple[str, int, bool]]:
    return [(c.model, c.attempt, c.ok) for r in run.records for c in r.calls]


async def test_a_retryable_first_failure_is_retried_on_the_same_model(tmp_path: Path) -> None:
    model = ScriptedModel([ProviderError("overloaded", retryable=True), ProviderError("again", retryable=True), "ok"],
                          name="m")
    lanes, _ = make(tmp_path, {"standard": model})
    async with lanes.run(task_class="routine-code") as run:
        assert await run.stage("planning", ask) == "ok"
    assert attempts(run) == [("m", 1, False), ("m", 2, False), ("m", 3, True)]


async def test_a_refused_first_attempt_is_not_retried_nor_sent_elsewhere(tmp_path: Path) -> None:
    first = ScriptedModel([ProviderError("bad request", retryable=False, status=400)], name="first")
    second = TestModel(text="never", name="second")
    lanes, seen = make(tmp_path, {"standard": [first, second]})
    with pytest.raises(ModelError, match=r"first failed: bad request .*after 1 attempt") as caught:
        async with lanes.run(task_class="routine-code") as run:
            await run.stage("planning", ask)
    assert not caught.value.retryable and second.calls == []
    assert attempts(run) == [("first", 1, False)]
    assert not [e for e in seen.events if isinstance(e, ModelCooled)]


async def test_a_first_model_that_spends_its_retries_cools_and_the_next_one_answers(tmp_path: Path) -> None:
    down = [ProviderError("down", retryable=True)] * 3
    first = ScriptedModel(list(down), name="first")
    second = ScriptedModel(["from second", "again from second"], name="second")
    lanes, seen = make(tmp_path, {"standard": [first, second]})
    async with lanes.run(task_class="routine-code") as run:
        assert await run.stage("planning", ask) == "from second"
        # the first model cools down: the next stage goes straight to the second
        assert await run.stage("planning", ask) == "again from second"
    assert attempts(run) == [("first", 1, False), ("first", 2, False), ("first", 3, False), ("second", 1, True),
                             ("second", 1, True)]
    assert [(e.lane, e.model) for e in seen.events if isinstance(e, ModelCooled)] == [("standard", "first")]


async def test_a_model_error_on_the_first_attempt_cools_that_model_like_a_spent_one(tmp_path: Path) -> None:
    # usage that is no token count: the call is charged its reservation and fails as a ModelError
    first = ScriptedModel([ModelResponse("x", Usage(2**62, 1), "first")], name="first")
    second = TestModel(text="fine", name="second")
    lanes, seen = make(tmp_path, {"standard": [first, second]})
    async with lanes.run(task_class="routine-code") as run:
        assert await run.stage("planning", ask) == "fine"
    assert attempts(run) == [("first", 1, False), ("second", 1, True)]
    assert [e.model for e in seen.events if isinstance(e, ModelCooled)] == ["first"]


async def test_a_lane_whose_models_all_fail_falls_back_to_a_lane_that_is_not_dearer(tmp_path: Path) -> None:
    broken = ScriptedModel([ProviderError("down", retryable=True)] * 3, name="local")
    cheap = TestModel(text="cheap answer", name="cheap")
    same_price = healthy(estimatedLaneCosts={"local-cheap": 0.002, "cheap": 0.002})
    lanes, _ = make(tmp_path, {"local-cheap": broken, "cheap": cheap}, signals=same_price)
    async with lanes.run(task_class="log-triage", risk_class="low") as run:
        assert await run.stage("classification", ask) == "cheap answer"
    [record] = run.records
    assert [d.lane for d in record.decisions] == ["local-cheap", "cheap"]
    assert attempts(run) == [("local", 1, False), ("local", 2, False), ("local", 3, False), ("cheap", 1, True)]


async def test_a_first_attempt_retries_on_its_own_lane_after_another_call_moved_the_stage(tmp_path: Path) -> None:
    import anyio

    from agentlanes.testing import FunctionModel

    tries = {"slow": 0}

    async def local(messages: Any, settings: Any = None) -> str:
        if "slow" in str(messages):
            tries["slow"] += 1
            if tries["slow"] == 1:
                await anyio.sleep(0.2)  # in flight while the other call falls back to cheap
                raise ProviderError("overloaded", retryable=True)
            return "slow answer from local"
        raise ProviderError("down", retryable=True)

    same_price = healthy(estimatedLaneCosts={"local-cheap": 0.002, "cheap": 0.002})
    lanes, _ = make(tmp_path, {"local-cheap": FunctionModel(local, name="local"),
                               "cheap": TestModel(text="cheap answer", name="cheap")}, signals=same_price)

    async def both(ctx: StageContext) -> dict[str, str]:
        out: dict[str, str] = {}

        async def one(prompt: str) -> None:
            out[prompt] = (await ctx.complete(prompt, max_tokens=16)).text

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, "slow")
            tg.start_soon(one, "fast")
        return out

    async with lanes.run(task_class="log-triage", risk_class="low") as run:
        assert await run.stage("classification", both) == {"fast": "cheap answer", "slow": "slow answer from local"}
    calls = [(c.lane, c.model, c.attempt, c.ok) for r in run.records for c in r.calls]
    # the slow call's retry is on the lane its model serves, priced and counted there
    assert ("local-cheap", "local", 2, True) in calls
    assert all(lane == "local-cheap" for lane, model, _, _ in calls if model == "local")
