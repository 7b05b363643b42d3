"""Adopt agentlanes without rewriting your loop, and replay what it did.

Here is a small hand-written agent loop: it asks a model for a plan, then for code, runs
a check, and feeds failures back. Wrapping each step in ``run.stage`` is the only
change: every step now runs on the cheapest lane that can safely do it, under budgets,
with deterministic verification and an escalation receipt when it has to escalate.

Keep the loop in a function that takes the ``Lanes`` (``main`` below): the run is
recorded, and ``agentlanes replay RUN --entry examples/wrap_agent_loop.py:main`` runs
the same code again with every model reply, verifier result and signal served from the
record, and says where (if anywhere) it now does something else.

Run it: ``python examples/wrap_agent_loop.py`` (offline: the models are test doubles).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import anyio

from agentlanes import Lanes, StageContext
from agentlanes.replay import replay
from agentlanes.testing import FunctionModel, ScriptedModel
from agentlanes.verifiers import CallableVerifier

SIGNALS = {
    "localModelProfileAvailable": False, "localServiceHealthy": False,  # no local model here
    "batteryState": "normal", "thermalState": "normal", "memoryAvailableBytes": 8 * 2**30,
    "networkAvailable": True, "providerQuotaKnown": True, "providerQuotaRemainingShare": 0.9,
    "providerErrorRate": 0.0, "providerLatencyP95Ms": 800,
    "estimatedInputTokens": 1500, "estimatedOutputTokens": 500,
}


# --- the user's own loop steps: plain async functions that take a model -------------

async def make_plan(ctx: StageContext, goal: str) -> str:
    reply = await ctx.complete(f"Write a short plan for: {goal}")
    return reply.text


async def write_code(ctx: StageContext, plan: str) -> str:
    prompt = f"Write a Python function for this plan:\n{plan}"
    if ctx.feedback:  # what the check said last time
        prompt += f"\n\nThe last attempt failed:\n{ctx.feedback_text}"
    return (await ctx.complete(prompt)).text


def code_works(source: str) -> tuple[bool, str]:
    namespace: dict[str, object] = {}
    try:
        exec(source, namespace)
        slugify = namespace["slugify"]
        ok = slugify("Hello, World!") == "hello-world"  # type: ignore[operator]
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return ok, "slugify('Hello, World!') == 'hello-world'" if ok else "wrong result"


# --- the loop, wired to lanes: what gets recorded and replayed ---------------------

async def main(lanes: Lanes) -> str:
    async with lanes.run(task_class="routine-code", risk_class="medium") as run:
        plan = await run.stage("planning", make_plan, "a slugify() helper")
        code = await run.stage_with("execution", write_code, (plan,),
                                    verify=[CallableVerifier(code_works, name="slugify-check")])
        run.output = code
    result = run.result
    for record in result.records:
        if record.parent is None:
            print(f"{record.name:<10} lanes {[d.lane for d in record.decisions]} attempts {record.attempts} "
                  f"cost {record.cost / 1e6:.6f}")
    for receipt in result.receipts:
        print("receipt", receipt.receipt_id, receipt.body["fromLane"], "->", receipt.body["toLane"],
              receipt.body["reason"])
    print("total", result.cost, result.currency)
    return code


async def record_and_replay(home: Path) -> None:
    standard = ScriptedModel([
        "1. lower-case 2. replace runs of non-alphanumerics with '-' 3. strip '-'",
        "def slugify(s):\n    return s.lower().replace(' ', '-')",           # wrong
        "def slugify(s):\n    return s.lower().replace(', ', '-')",          # still wrong
    ], name="double:standard")
    high_end = FunctionModel(lambda messages, settings: (
        "import re\n\ndef slugify(s):\n    return re.sub(r'[^a-z0-9]+', '-', s.lower()).strip('-')"
    ), name="double:high-end")

    lanes = Lanes({"standard": standard, "high-end": high_end}, signals=SIGNALS, data_dir=home)
    code = await main(lanes)
    await lanes.aclose()
    print(code)
    standard.assert_complete()
    [trace] = (home / "traces").iterdir()

    # The same code again, every effect served from the record: no model is called.
    report = await replay(trace, entry=main, data_dir=home)
    print(f"replayed {report.run_id}: {report.steps} steps identical to the record")
    assert report.complete and report.steps > 10


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        anyio.run(record_and_replay, Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tmp))
