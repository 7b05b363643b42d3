"""Runs work on trio as on asyncio (anyio's two backends): a stage, and a model call
that outlives its deadline (the deadline is asyncio's own on asyncio, anyio's here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from agentlanes import Lanes, ModelError, StageContext
from agentlanes.runtime import RetryPolicy
from agentlanes.stores import MemoryStore
from agentlanes.testing import FunctionModel, TestModel
from tests.conftest import ROOT

SIGNALS = json.loads((ROOT / "examples/signals/healthy-local.json").read_text())


async def ask(ctx: StageContext) -> str:
    return (await ctx.complete("hi")).text


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_stage_and_a_call_past_its_deadline(tmp_path: Path, backend: str) -> None:
    async def slow(messages: Any, settings: Any) -> str:
        await anyio.sleep(30)
        return "late"

    async def main() -> tuple[str, BaseException | None, float]:
        lanes = Lanes({"standard": TestModel(text="ok")}, signals=SIGNALS, store=MemoryStore(), data_dir=tmp_path)
        async with lanes.run(task_class="routine-code") as run:
            out = await run.stage("execution", ask)
        late = Lanes(
            {"standard": FunctionModel(slow)},
            signals=SIGNALS,
            store=MemoryStore(),
            data_dir=tmp_path,
            call_timeout=0.05,
            retry=RetryPolicy(attempts=1),
        )
        error: BaseException | None = None
        started = anyio.current_time()
        try:
            async with late.run(task_class="routine-code") as run:
                await run.stage("execution", ask)
        except ModelError as exc:
            error = exc
        return out, error, anyio.current_time() - started

    out, error, took = anyio.run(main, backend=backend)
    assert out == "ok"
    assert isinstance(error, ModelError) and "no answer within 0.05s" in str(error)
    assert took < 10  # the deadline cut the 30 s call short
