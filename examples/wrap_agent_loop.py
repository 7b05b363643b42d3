"""Adopt agentlanes without rewriting your loop.

Here is a small hand-written agent loop: it asks a model for a plan, then for code, runs
a check, and feeds failures back. Wrapping each step in ``run.stage`` is the only
change: every step now runs on the cheapest lane that can safely do it, under budgets,
with deterministic verification and an escalation receipt when it has to escalate.

Run it: ``python examples/wrap_agent_loop.py`` (offline: the models are test doubles).
"""

from __future__ import annotations

import tempfile

import anyio

from agentlanes import Lanes, StageContext
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


# --- wiring it to lanes -------------------------------------------------------------

async def main() -> None:
    standard = ScriptedModel([
        "1. lower-case 2. replace runs of non-alphanumerics with '-' 3. strip '-'",
        "def slugify(s):\n    return s.lower().replace(' ', '-')",           # wrong
        "def slugify(s):\n    return s.lower().replace(', ', '-')",          # still wrong
    ], name="double:standard")
    high_end = FunctionModel(lambda messages, settings: (
        "import re\n\ndef slugify(s):\n    return re.sub(r'[^a-z0-9]+', '-', s.lower()).strip('-')"
    ), name="double:high-end")

    with tempfile.TemporaryDirectory() as home:
        lanes = Lanes({"standard": standard, "high-end": high_end}, signals=SIGNALS, data_dir=home)
        async with lanes.run(task_class="routine-code", risk_class="medium") as run:
            plan = await run.stage("planning", make_plan, "a slugify() helper")
            code = await run.stage_with("execution", write_code, (plan,),
                                        verify=[CallableVerifier(code_works, name="slugify-check")])
        await lanes.aclose()

    result = run.result
    print(code)
    for record in result.records:
        if record.parent is None:
            print(f"{record.name:<10} lanes {[d.lane for d in record.decisions]} attempts {record.attempts} "
                  f"cost {record.cost / 1e6:.6f}")
    for receipt in result.receipts:
        print("receipt", receipt.receipt_id, receipt.body["fromLane"], "->", receipt.body["toLane"],
              receipt.body["reason"])
    print("total", result.cost, result.currency)
    assert [r.lane for r in result.records if r.parent is None] == ["standard", "high-end"]
    assert len(result.receipts) == 1 and result.receipts[0].body["reason"] == "repeated-standard-lane-failure"
    standard.assert_complete()


if __name__ == "__main__":
    anyio.run(main)
