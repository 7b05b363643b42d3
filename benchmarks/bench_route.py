"""Routing benchmark: warm decision latency and batch throughput.

Prints figures, asserts nothing. Baselines are measured in the same run (these
machines are shared and noisy), so the ratios are what to read:

* ``naive``: a deliberately naive pure-Python evaluation of the same nine rules,
  written here: lookups built once, every rule re-evaluated per lane per call, a
  small dict per candidate, no decision id. Target: agentlanes within 2x of it.
* ``dict-walk``: a straightforward implementation that walks the raw documents on every
  decision (re-indexes taskClasses, chainStages, riskFloors, windows and the catalog's
  lists, builds the full decision payload, digests it). Target: agentlanes >= 25x faster.

Usage: python benchmarks/bench_route.py [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agentlanes import Router, RouteRequest
from agentlanes.cli import _run_batch

ROOT = Path(__file__).resolve().parents[1]
POLICY = json.loads((ROOT / "policies/policy.json").read_text())
OPTIMIZER = json.loads((ROOT / "policies/optimizer.json").read_text())
CATALOG = json.loads((ROOT / "policies/price-catalog.json").read_text())
SIGNALS = json.loads((ROOT / "examples/signals/healthy-local.json").read_text())
RANK = {"no-model": 0, "local-cheap": 1, "cheap": 2, "standard": 3, "high-end": 4, "pro": 5}


# ----------------------------------------------------------------- naive baseline
# Both baselines implement all nine rules of CONTRACT Part A (plus B1 and B3), the
# requested-lane evaluation and the tie-breaker sort; main() checks that they agree with
# agentlanes on every candidate before timing anything.

PREMIUM = ("high-end", "pro")
HOSTED = ("cheap", "standard", "high-end", "pro")


class Naive:
    """Lookups built once; every rule re-evaluated per lane per call; dicts per candidate."""

    def __init__(self) -> None:
        self.tasks = {t["taskClass"]: t for t in POLICY["taskClasses"]}
        self.stages = {s["stage"]: s for s in POLICY["chainStages"]}
        self.floors = {f["riskClass"]: f for f in OPTIMIZER["qualityPolicy"]["riskFloors"]}
        self.windows = {w["window"]: w for w in OPTIMIZER["budgetPolicy"]["windows"]}
        self.reasons = set(POLICY["escalationPolicy"]["allowedReasons"])
        self.prices = {}
        for lane in CATALOG["lanes"]:
            prof = next(p for p in lane["profiles"] if p["profileRef"] == lane["defaultProfileRef"])
            self.prices[lane["laneId"]] = (lane["costModel"], prof["pricing"])

    def cost(self, lane: str, r: dict[str, Any]) -> float:
        model, p = self.prices[lane]
        if model == "none":
            return 0.0
        runtime = r.get("estimatedLocalRuntimeMinutes", 0)
        amount = (p["requestBaseCost"] + r["estimatedInputTokens"] * p["inputPerMillion"] / 1e6
                  + r["estimatedOutputTokens"] * p["outputPerMillion"] / 1e6
                  + r.get("estimatedCacheReadTokens", 0) * p.get("cacheReadPerMillion", 0) / 1e6
                  + r.get("estimatedToolCalls", 0) * p.get("toolCallCost", 0)
                  + runtime * p.get("localRuntimeCostPerMinute", 0)
                  + r.get("estimatedLocalEnergyMinutes", runtime) * p.get("localEnergyCostPerMinute", 0))
        return round(max(amount, p["minCost"]), 6)

    def decide(self, q: dict[str, Any], r: dict[str, Any]) -> Any:
        task, stg = self.tasks[q["taskClass"]], self.stages[q["stage"]]
        floor, win = self.floors[q["riskClass"]], self.windows[q["budgetWindow"]]
        la, ha = OPTIMIZER["resourcePolicy"]["localAdmission"], OPTIMIZER["resourcePolicy"]["hostedAdmission"]
        reason = q["escalationReason"]
        escalated = bool(reason) and reason in self.reasons
        waive = q["deterministic"] and q["stage"] in ("verification", "tool-use", "retrieval")

        def evaluate(lane: str) -> dict[str, Any]:
            reasons = []
            if RANK[lane] < RANK[floor["minimumLane"]] and not (waive and lane == "no-model"):
                reasons.append("below-quality-floor:" + floor["minimumLane"])
            if not escalated and RANK[lane] > RANK[stg["maxLaneWithoutEscalation"]]:
                reasons.append("stage-max-without-escalation:" + stg["maxLaneWithoutEscalation"])
            if lane not in [task["defaultLane"], *task["allowedEscalationLanes"], stg["defaultLane"]]:
                reasons.append("not-allowed-for-task-class")
            if lane in PREMIUM:
                if not reason:
                    reasons.append("premium-lane-requires-escalation-reason")
                elif not escalated:
                    reasons.append("invalid-escalation-reason")
            if lane == "local-cheap":
                if not r["localModelProfileAvailable"]:
                    reasons.append("local-model-profile-unavailable")
                if not r["localServiceHealthy"]:
                    reasons.append("local-service-unhealthy")
                if la["denyWhenThermalCritical"] and r["thermalState"] == "critical":
                    reasons.append("thermal-critical")
                if la["denyWhenBatteryCritical"] and r["batteryState"] == "critical":
                    reasons.append("battery-critical")
                if r["memoryAvailableBytes"] < la["minMemoryAvailableBytes"]:
                    reasons.append("insufficient-local-memory")
            if lane in HOSTED:
                if ha["requiresNetwork"] and not r["networkAvailable"]:
                    reasons.append("network-unavailable")
                if ha["denyWhenQuotaUnknown"] and not r["providerQuotaKnown"]:
                    reasons.append("provider-quota-unknown")
                if ha["denyWhenProviderUnhealthy"] and r["providerErrorRate"] > ha["maxProviderErrorRate"]:
                    reasons.append("provider-error-rate-too-high")
                if r["providerLatencyP95Ms"] > ha["maxProviderLatencyP95Ms"]:
                    reasons.append("provider-latency-too-high")
            if lane in PREMIUM:
                share = r["providerQuotaRemainingShare"]
                if share < 0:
                    reasons.append("provider-quota-share-missing")
                if share < OPTIMIZER["budgetPolicy"]["premiumReserveShare"]:
                    reasons.append("premium-reserve-below-threshold")
            cost = self.cost(lane, r)
            if cost > q["budgetRemaining"]:
                reasons.append("budget-insufficient")
            if lane == "high-end" and win["highEndMaxShare"] <= 0:
                reasons.append("high-end-share-zero")
            if lane == "pro" and win["proMaxShare"] <= 0:
                reasons.append("pro-share-zero")
            return {"lane": lane, "feasible": not reasons, "estimatedCost": cost, "reasons": reasons}

        cands = [evaluate(lane) for lane in OPTIMIZER["selectionPolicy"]["candidateOrder"]]
        requested = evaluate(q["requestedLane"]) if q["requestedLane"] else None
        feasible = [c for c in cands if c["feasible"]]
        feasible.sort(key=lambda c: (c["estimatedCost"], 0 if c["lane"] in ("no-model", "local-cheap") else 1,
                                     0, 0, RANK[c["lane"]], 0, RANK[c["lane"]]))
        return (feasible[0]["lane"] if feasible else None), cands, requested


# ------------------------------------------------------------- dict-walk baseline


def _index(items: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {str(item.get(key, "")): item for item in items if item.get(key)}


def dict_walk(policy: dict[str, Any], optimizer: dict[str, Any], catalog: dict[str, Any], r: dict[str, Any],
              q: dict[str, Any]) -> dict[str, Any]:
    """Re-reads every list it needs from the raw documents, per decision, per lane."""
    task = _index(policy.get("taskClasses", []), "taskClass")[q["taskClass"]]
    stg = _index(policy.get("chainStages", []), "stage")[q["stage"]]
    floor = _index(optimizer.get("qualityPolicy", {}).get("riskFloors", []), "riskClass")[q["riskClass"]]
    win = _index(optimizer.get("budgetPolicy", {}).get("windows", []), "window")[q["budgetWindow"]]
    reason = q["escalationReason"]

    def evaluate(lane: str) -> dict[str, Any]:
        reasons = []
        allowed = set(policy.get("escalationPolicy", {}).get("allowedReasons", []))
        escalated = bool(reason) and reason in allowed
        waive = q["deterministic"] and q["stage"] in ("verification", "tool-use", "retrieval") and lane == "no-model"
        if RANK[lane] < RANK[floor["minimumLane"]] and not waive:
            reasons.append(f"below-quality-floor:{floor['minimumLane']}")
        if not escalated and RANK[lane] > RANK[stg["maxLaneWithoutEscalation"]]:
            reasons.append(f"stage-max-without-escalation:{stg['maxLaneWithoutEscalation']}")
        if lane not in {task["defaultLane"], *task.get("allowedEscalationLanes", [])} and lane != stg["defaultLane"]:
            reasons.append("not-allowed-for-task-class")
        if lane in {"high-end", "pro"}:
            if not reason:
                reasons.append("premium-lane-requires-escalation-reason")
            elif not escalated:
                reasons.append("invalid-escalation-reason")
        la = optimizer.get("resourcePolicy", {}).get("localAdmission", {})
        if lane == "local-cheap":
            if not r.get("localModelProfileAvailable"):
                reasons.append("local-model-profile-unavailable")
            if not r.get("localServiceHealthy"):
                reasons.append("local-service-unhealthy")
            if la.get("denyWhenThermalCritical") and r.get("thermalState") == "critical":
                reasons.append("thermal-critical")
            if la.get("denyWhenBatteryCritical") and r.get("batteryState") == "critical":
                reasons.append("battery-critical")
            if int(r.get("memoryAvailableBytes", 0)) < int(la.get("minMemoryAvailableBytes", 0)):
                reasons.append("insufficient-local-memory")
        ha = optimizer.get("resourcePolicy", {}).get("hostedAdmission", {})
        if lane in {"cheap", "standard", "high-end", "pro"}:
            if ha.get("requiresNetwork") and not r.get("networkAvailable"):
                reasons.append("network-unavailable")
            if ha.get("denyWhenQuotaUnknown") and not r.get("providerQuotaKnown"):
                reasons.append("provider-quota-unknown")
            if ha.get("denyWhenProviderUnhealthy") and float(r.get("providerErrorRate", 1)) > float(
                    ha.get("maxProviderErrorRate", 1)):
                reasons.append("provider-error-rate-too-high")
            if float(r.get("providerLatencyP95Ms", 1e12)) > float(ha.get("maxProviderLatencyP95Ms", 1e12)):
                reasons.append("provider-latency-too-high")
        if lane in {"high-end", "pro"}:
            share = float(r.get("providerQuotaRemainingShare", -1.0))
            if share < 0:
                reasons.append("provider-quota-share-missing")
            if share < float(optimizer.get("budgetPolicy", {}).get("premiumReserveShare", 0.0)):
                reasons.append("premium-reserve-below-threshold")
        entry = _index(catalog.get("lanes", []), "laneId")[lane]
        prof = _index(entry.get("profiles", []), "profileRef")[entry["defaultProfileRef"]]["pricing"]
        runtime = float(r.get("estimatedLocalRuntimeMinutes", 0))
        cost = 0.0 if entry["costModel"] == "none" else round(max(
            prof.get("requestBaseCost", 0) + r["estimatedInputTokens"] * prof.get("inputPerMillion", 0) / 1e6
            + r["estimatedOutputTokens"] * prof.get("outputPerMillion", 0) / 1e6
            + r.get("estimatedCacheReadTokens", 0) * prof.get("cacheReadPerMillion", 0) / 1e6
            + r.get("estimatedToolCalls", 0) * prof.get("toolCallCost", 0)
            + runtime * prof.get("localRuntimeCostPerMinute", 0)
            + float(r.get("estimatedLocalEnergyMinutes", runtime)) * prof.get("localEnergyCostPerMinute", 0),
            prof.get("minCost", 0)), 6)
        if cost > q["budgetRemaining"]:
            reasons.append("budget-insufficient")
        if lane == "high-end" and win.get("highEndMaxShare", 1) <= 0:
            reasons.append("high-end-share-zero")
        if lane == "pro" and win.get("proMaxShare", 1) <= 0:
            reasons.append("pro-share-zero")
        return {"lane": lane, "feasible": not reasons, "estimatedCost": cost, "reasons": reasons or ["feasible"]}

    cands = [evaluate(lane) for lane in optimizer.get("selectionPolicy", {}).get("candidateOrder", [])]
    requested = evaluate(q["requestedLane"]) if q["requestedLane"] else None
    feasible = sorted((c for c in cands if c["feasible"]),
                      key=lambda c: (c["estimatedCost"], 0 if c["lane"] in ("no-model", "local-cheap") else 1,
                                     RANK[c["lane"]]))
    sel = feasible[0] if feasible else None
    payload = {
        "policyRef": policy.get("policyId"), "optimizerRef": optimizer.get("optimizerId"),
        "input": {k: q[k] for k in ("taskClass", "stage", "riskClass", "requestedLane", "escalationReason",
                                    "budgetWindow", "budgetRemaining")},
        "selected": {"lane": sel["lane"] if sel else None, "estimatedCost": sel["estimatedCost"] if sel else None},
        "resources": dict(sorted(r.items())), "requestedEvaluation": requested, "candidateSet": cands,
    }
    payload["decisionId"] = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]
    return payload


# ---------------------------------------------------------------------- measuring


def sample(fn: Any, n: int) -> list[float]:
    clock = time.perf_counter_ns
    out = []
    for _ in range(n):
        t0 = clock()
        fn()
        out.append(clock() - t0)
    return out


def summary(ns: list[float]) -> tuple[float, float]:
    ns = sorted(ns)
    return statistics.median(ns) / 1000, ns[int(len(ns) * 0.99)] / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (for CI smoke runs)")
    args = parser.parse_args()
    n = 2000 if args.quick else 20000
    rounds = 3 if args.quick else 7

    router = Router()
    naive = Naive()
    # A mix of requests, each with a different budget each time it comes round, so
    # no implementation is timed on one repeated input.
    shapes = [
        ("routine-code", "planning", "medium", None, None, False),
        ("log-triage", "classification", "low", None, "cheap", False),
        ("formatting-rewrite", "intake", "low", None, None, False),
        ("architecture-decision", "planning", "high", "architecture-decision", None, False),
        ("routine-code", "verification", "high", None, None, True),
        ("hard-debugging", "execution", "high", "not-a-reason", "high-end", False),
        ("security-review", "review", "critical", "security-review", None, False),
        ("routine-code", "execution", "medium", None, "pro", False),
    ]
    queries = []
    for i in range(64):
        t, st, rk, reason, asked, det = shapes[i % len(shapes)]
        queries.append({"taskClass": t, "stage": st, "riskClass": rk, "escalationReason": reason,
                        "requestedLane": asked, "budgetWindow": "task", "budgetRemaining": 2.0 - i * 0.025,
                        "deterministic": det})
    requests = [RouteRequest(task_class=q["taskClass"], stage=q["stage"], risk_class=q["riskClass"],
                             escalation_reason=q["escalationReason"], requested_lane=q["requestedLane"],
                             budget_remaining=q["budgetRemaining"], deterministic=q["deterministic"],
                             signals=SIGNALS) for q in queries]
    for q, req in zip(queries, requests, strict=True):  # same rules, same answers
        ours = router.decide(req)
        lane, cands, requested = naive.decide(q, SIGNALS)
        walked = dict_walk(POLICY, OPTIMIZER, CATALOG, SIGNALS, q)
        expected = [(c.lane, c.feasible, c.estimated_cost, list(c.reasons)) for c in ours.candidates]
        assert ours.lane == lane == walked["selected"]["lane"], q
        assert expected == [(c["lane"], c["feasible"], c["estimatedCost"], c["reasons"]) for c in cands], q
        assert expected == [(c["lane"], c["feasible"], c["estimatedCost"],
                             [] if c["reasons"] == ["feasible"] else c["reasons"]) for c in walked["candidateSet"]]
        assert (requested is None) == (ours.requested is None)

    decide = router.decide
    naive_decide = naive.decide
    pairs = list(zip(queries, requests, strict=True))

    def pass_agentlanes() -> None:
        for _q, req in pairs:
            decide(req)

    def pass_naive() -> None:
        for q, _req in pairs:
            naive_decide(q, SIGNALS)

    def pass_dict_walk() -> None:
        for q, _req in pairs:
            dict_walk(POLICY, OPTIMIZER, CATALOG, SIGNALS, q)

    # Medians: tight passes over the 64-request mix, divided by 64, so that no
    # harness code (closures, timers) is counted as any implementation's cost.
    passes = {"agentlanes": pass_agentlanes, "naive": pass_naive, "dict-walk": pass_dict_walk}
    per_pass: dict[str, list[float]] = {k: [] for k in passes}
    for _ in range(rounds):  # interleaved, so drifting machine load hits all three alike
        for name, fn in passes.items():
            scale = 1 if name != "dict-walk" else 10
            count = max(5, n // (len(pairs) * rounds * scale))
            per_pass[name] += sample(fn, count)
    med = {k: statistics.median(v) / len(pairs) / 1000 for k, v in per_pass.items()}

    # Tails: individually timed calls (each includes ~0.1 us of timer overhead).
    singles = {
        "agentlanes": [lambda r=req: decide(r) for _q, req in pairs],
        "naive": [lambda q=q: naive_decide(q, SIGNALS) for q, _r in pairs],
        "dict-walk": [lambda q=q: dict_walk(POLICY, OPTIMIZER, CATALOG, SIGNALS, q) for q, _r in pairs],
    }
    p99: dict[str, float] = {}
    for name, fns in singles.items():
        reps = max(2, n // len(fns) // (1 if name != "dict-walk" else 10))
        p99[name] = summary([t for f in fns for t in sample(f, reps)])[1]

    print(f"python {sys.version.split()[0]}, warm decisions on the default documents "
          f"(6 candidates, {len(shapes)} request shapes x varying budgets; all three agree on every candidate)")
    for name in passes:
        print(f"  {name:<11} median {med[name]:8.2f} us   p99 {p99[name]:8.2f} us")
    print(f"  agentlanes / naive      = {med['agentlanes'] / med['naive']:.2f}x  (target <= 2x)")
    print(f"  dict-walk / agentlanes  = {med['dict-walk'] / med['agentlanes']:.1f}x  (target >= 25x)")

    # Deciding from a raw mapping: building the request and checking the signals included.
    raw = sample(lambda: router.decide(RouteRequest(task_class="routine-code", stage="planning", signals=SIGNALS)),
                 n // 4)
    print(f"  incl. RouteRequest + signal check from a dict: median {summary(raw)[0]:.2f} us")

    # Batch mode, in process: JSON parsing, routing, rendering and writing every line.
    with tempfile.TemporaryDirectory() as tmp:
        res_path = Path(tmp) / "signals.json"
        res_path.write_text(json.dumps(SIGNALS))
        tasks = [("routine-code", "planning", "medium"), ("log-triage", "classification", "low"),
                 ("formatting-rewrite", "intake", "low"), ("routine-code", "verification", "high")]
        lines = []
        count = 5000 if args.quick else 40000
        for i in range(count):
            t, s, r = tasks[i % len(tasks)]
            req: dict[str, Any] = {"taskClass": t, "stage": s, "riskClass": r,
                                   "budgetRemaining": 2.0 - (i % 50) * 0.01}
            req["resources"] = SIGNALS if i % 2 else str(res_path)
            if s == "verification":
                req["deterministic"] = True
            lines.append(json.dumps(req))
        for fmt in ("native", "upstream"):
            out = io.StringIO()
            t0 = time.perf_counter()
            _run_batch(iter(lines), out, fmt)
            dt = time.perf_counter() - t0
            produced = out.getvalue().count("\n")
            assert produced == count and '"error"' not in out.getvalue()[:1000]
            print(f"batch --format {fmt:<8} {count / dt:10,.0f} decisions/s  (in process, JSON in and out; "
                  "half inline signals, half a signals file)  target >= 10,000/s")


if __name__ == "__main__":
    main()
