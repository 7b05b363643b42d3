"""A hand-written agent loop wrapped in ``run.stage`` (no declared chain), used by the
replay tests: ``main(lanes)`` is what the recorded program called with its Lanes, and
what ``agentlanes replay RUN --entry tests/replay/loop_program.py:main`` calls again.

``record(home)`` runs it for real (offline doubles) and returns the run id.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from agentlanes import Lanes, StageContext
from agentlanes.testing import FunctionModel, ScriptedModel
from agentlanes.verifiers import CallableVerifier

SIGNALS = {
    "localModelProfileAvailable": False, "localServiceHealthy": False,
    "batteryState": "normal", "thermalState": "normal", "memoryAvailableBytes": 8 * 2**30,
    "networkAvailable": True, "providerQuotaKnown": True, "providerQuotaRemainingShare": 0.9,
    "providerErrorRate": 0.0, "providerLatencyP95Ms": 800,
    "estimatedInputTokens": 1500, "estimatedOutputTokens": 500,
}
# Tests change the program through these variables (read when it runs): a prompt, a
# verifier, the goal.


async def make_plan(ctx: StageContext, goal: str) -> str:
    prompt = os.environ.get("LOOP_PROMPT", "Write a short plan for: {goal}")
    return (await ctx.complete(prompt.format(goal=goal))).text


async def write_code(ctx: StageContext, plan: str) -> str:
    prompt = f"Write a Python function for this plan:\n{plan}"
    if ctx.feedback:
        prompt += f"\n\nThe last attempt failed:\n{ctx.feedback_text}"
    return (await ctx.complete(prompt, max_tokens=300)).text


def code_works_strictly(source: str) -> tuple[bool, str]:
    ok, why = code_works(source)
    return ok and "re.sub" in source, why


def code_works(source: str) -> tuple[bool, str]:
    namespace: dict[str, Any] = {}
    try:
        exec(source, namespace)
        ok = namespace["slugify"]("Hello, World!") == "hello-world"
    except Exception as exc:
        return False, f"{type(exc).__name__}"
    return ok, "slugify works" if ok else "wrong result"


async def main(lanes: Lanes) -> object:
    check = code_works_strictly if os.environ.get("LOOP_CHECK") == "strict" else code_works
    async with lanes.run(task_class="routine-code", risk_class="medium") as run:
        plan = await run.stage("planning", make_plan, os.environ.get("LOOP_GOAL", "a slugify() helper"))
        code = await run.stage_with(
            "execution", write_code, (plan,), verify=[CallableVerifier(check, name="slugify-check")]
        )
        run.output = code
    return code


def models() -> dict[str, Any]:
    standard = ScriptedModel([
        "1. lower-case 2. replace runs of non-alphanumerics with '-' 3. strip '-'",
        "def slugify(s):\n    return s.lower().replace(' ', '-')",
        "def slugify(s):\n    return s.lower().replace(', ', '-')",
    ], name="double:standard")
    high_end = FunctionModel(lambda messages, settings: (
        "import re\n\ndef slugify(s):\n    return re.sub(r'[^a-z0-9]+', '-', s.lower()).strip('-')"
    ), name="double:high-end")
    return {"standard": standard, "high-end": high_end}


async def record(home: Path, **lanes_kw: Any) -> str:
    lanes = Lanes(models(), signals=SIGNALS, data_dir=home, **lanes_kw)
    try:
        await main(lanes)
    finally:
        await lanes.aclose()
    runs = [p.name.split(".")[0] for p in (home / "traces").iterdir()]
    return sorted(runs)[-1]
