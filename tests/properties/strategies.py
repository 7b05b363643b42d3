"""Hypothesis strategies for route requests and resource signals."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

LANES = ["no-model", "local-cheap", "cheap", "standard", "high-end", "pro"]
TASKS = ["formatting-rewrite", "log-triage", "routine-code", "architecture-decision", "hard-debugging",
         "security-review", "multi-repo-migration", "high-stakes-synthesis"]
STAGES = ["intake", "classification", "retrieval", "planning", "execution", "tool-use", "verification",
          "review", "finalization"]
REASONS = ["architecture-decision", "hard-debugging", "repeated-standard-lane-failure", "release-gate-review"]

VALID: dict[str, st.SearchStrategy[Any]] = {
    "localModelProfileAvailable": st.booleans(),
    "localServiceHealthy": st.booleans(),
    "batteryState": st.sampled_from(["normal", "low", "critical", "charging"]),
    "thermalState": st.sampled_from(["normal", "fair", "serious", "critical"]),
    "memoryAvailableBytes": st.integers(0, 2**35),
    "networkAvailable": st.booleans(),
    "providerQuotaKnown": st.booleans(),
    "providerQuotaRemainingShare": st.one_of(st.just(-1.0), st.floats(-1, 1)),
    "providerErrorRate": st.floats(0, 1),
    "providerLatencyP95Ms": st.integers(0, 60000),
    "estimatedInputTokens": st.integers(0, 400000),
    "estimatedOutputTokens": st.integers(0, 100000),
}

WRONG = st.one_of(st.none(), st.text(max_size=5), st.lists(st.integers(), max_size=2),
                  st.just(float("nan")), st.just(-5), st.just("false"), st.just(True))


@st.composite
def signals(draw: st.DrawFn, valid: bool = True) -> dict[str, Any]:
    out = {name: draw(strategy) for name, strategy in VALID.items()}
    if draw(st.booleans()):
        out["estimatedLaneCosts"] = draw(st.dictionaries(st.sampled_from(LANES), st.floats(0, 3), max_size=3))
    if draw(st.booleans()):
        out["estimatedToolCalls"] = draw(st.integers(0, 20))
    if draw(st.booleans()):
        out["estimatedLocalRuntimeMinutes"] = draw(st.floats(0, 30))
    if not valid:
        for name in draw(st.lists(st.sampled_from(list(VALID)), max_size=3, unique=True)):
            if draw(st.booleans()):
                out.pop(name)
            else:
                out[name] = draw(WRONG)
    return out


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "task_class": draw(st.sampled_from(TASKS)),
        "stage": draw(st.sampled_from(STAGES)),
        "risk_class": draw(st.sampled_from(["low", "medium", "high", "critical"])),
        "requested_lane": draw(st.one_of(st.none(), st.sampled_from(LANES))),
        "escalation_reason": draw(st.one_of(st.none(), st.sampled_from(REASONS), st.just("not-allowed"))),
        "budget_window": draw(st.sampled_from(["task", "session", "day"])),
        "budget_remaining": draw(st.floats(0, 5)),
        "deterministic": draw(st.booleans()),
    }
