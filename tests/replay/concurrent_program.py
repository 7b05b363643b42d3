"""A loop that runs three stages at once (an anyio task group), for the replay tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio

from agentlanes import Lanes, StageContext
from agentlanes.testing import FunctionModel
from tests.replay.loop_program import SIGNALS


async def review(ctx: StageContext, part: str) -> str:
    await anyio.sleep(0.001 * (3 - int(part[-1])))  # finish out of order
    template = os.environ.get("CONCURRENT_PROMPT", "Review {part}")
    return (await ctx.complete(template.format(part=part), max_tokens=64)).text


async def main(lanes: Lanes) -> object:
    results: dict[str, str] = {}
    async with lanes.run(task_class="routine-code") as run:

        async def one(part: str) -> None:
            results[part] = await run.stage_with("execution", review, (part,), name="review")

        async with anyio.create_task_group() as tg:
            for part in ("part1", "part2", "part3"):
                tg.start_soon(one, part)
        run.output = sorted(results.items())
    return results


def models() -> dict[str, Any]:
    return {"standard": FunctionModel(lambda messages, settings: f"ok: {messages[-1].content}", name="reviewer")}


async def record(home: Path) -> str:
    lanes = Lanes(models(), signals=SIGNALS, data_dir=home)
    try:
        await main(lanes)
    finally:
        await lanes.aclose()
    return sorted(p.name.split(".")[0] for p in (home / "traces").iterdir())[-1]
