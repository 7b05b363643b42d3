"""An independent, deliberately plain reading of CONTRACT.md Parts A and B.

It walks the raw JSON documents on every call and shares no code with agentlanes, so
that property tests can compare whole decisions against it. It is slow on purpose;
correctness is all it is for.
"""

from __future__ import annotations

import math
from typing import Any

RANKS = ["no-model", "local-cheap", "cheap", "standard", "high-end", "pro"]
PREMIUM = ["high-end", "pro"]
HOSTED = ["cheap", "standard", "high-end", "pro"]
TWELVE = [
    "localModelProfileAvailable", "localServiceHealthy", "batteryState", "thermalState",
    "memoryAvailableBytes", "networkAvailable", "providerQuotaKnown", "providerQuotaRemainingShare",
    "providerErrorRate", "providerLatencyP95Ms", "estimatedInputTokens", "estimatedOutputTokens",
]


class InputError(Exception):
    pass


def _is_num(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def _signal_ok(name: str, v: Any) -> bool:
    if name in ("localModelProfileAvailable", "localServiceHealthy", "networkAvailable", "providerQuotaKnown"):
        return isinstance(v, bool)
    if name in ("batteryState", "thermalState"):
        return isinstance(v, str) and len(v) > 0
    if name == "providerQuotaRemainingShare":
        return _is_num(v) and v <= 1
    if name == "providerErrorRate":
        return _is_num(v) and 0 <= v <= 1
    if name == "estimatedLaneCosts":
        return isinstance(v, dict) and all(k in RANKS and _is_num(x) and x >= 0 for k, x in v.items())
    return _is_num(v) and v >= 0


def signal_problems(resources: dict[str, Any], optimizer: dict[str, Any]) -> list[str]:
    problems = []
    for name in TWELVE:
        if name not in resources or resources[name] is None:
            problems.append("missing-signal:" + name)
        elif not _signal_ok(name, resources[name]):
            problems.append("invalid-signal:" + name)
    for name in ["estimatedCacheReadTokens", "estimatedToolCalls", "estimatedLocalRuntimeMinutes",
                 "estimatedLocalEnergyMinutes", "estimatedLaneCosts"]:
        if name in resources and not _signal_ok(name, resources[name]):
            problems.append("invalid-signal:" + name)
    for name in optimizer["resourcePolicy"]["requiredSignals"]:
        if name not in TWELVE and (name not in resources or resources[name] is None):
            problems.append("missing-signal:" + name)
    return sorted(set(problems))


def cost(catalog: dict[str, Any], lane: str, res: dict[str, Any]) -> float:
    over = res.get("estimatedLaneCosts")
    if isinstance(over, dict) and lane in over and _is_num(over[lane]):
        return round(float(over[lane]), 6)
    entry = next(e for e in catalog["lanes"] if e["laneId"] == lane)
    prof = next((p for p in entry["profiles"] if p["profileRef"] == entry["defaultProfileRef"]), entry["profiles"][0])
    if entry["costModel"] == "none":
        return 0.0
    pr = prof["pricing"]

    def n(key: str) -> float:
        v = res.get(key, 0)
        return float(v) if _is_num(v) else 0.0

    runtime = n("estimatedLocalRuntimeMinutes")
    energy = n("estimatedLocalEnergyMinutes") if "estimatedLocalEnergyMinutes" in res else runtime
    amount = (pr.get("requestBaseCost", 0) + n("estimatedInputTokens") * pr.get("inputPerMillion", 0) / 1e6
              + n("estimatedOutputTokens") * pr.get("outputPerMillion", 0) / 1e6
              + n("estimatedCacheReadTokens") * pr.get("cacheReadPerMillion", 0) / 1e6
              + n("estimatedToolCalls") * pr.get("toolCallCost", 0)
              + runtime * pr.get("localRuntimeCostPerMinute", 0) + energy * pr.get("localEnergyCostPerMinute", 0))
    return round(max(amount, pr.get("minCost", 0)), 6)


def decide(policy: dict[str, Any], optimizer: dict[str, Any], catalog: dict[str, Any], res: dict[str, Any], *,
           task_class: str, stage: str, risk_class: str = "medium", requested_lane: str | None = None,
           escalation_reason: str | None = None, budget_window: str = "task", budget_remaining: float = 2.0,
           deterministic: bool = False) -> dict[str, Any]:
    task = next((t for t in policy["taskClasses"] if t["taskClass"] == task_class), None)
    stg = next((s for s in policy["chainStages"] if s["stage"] == stage), None)
    floor = next((f for f in optimizer["qualityPolicy"]["riskFloors"] if f["riskClass"] == risk_class), None)
    window = next((w for w in optimizer["budgetPolicy"]["windows"] if w["window"] == budget_window), None)
    if task is None or stg is None or floor is None or window is None:
        raise InputError("unknown name")
    if requested_lane is not None and requested_lane not in RANKS:
        raise InputError("unknown lane")
    problems = signal_problems(res, optimizer)
    valid_reason = escalation_reason in policy["escalationPolicy"]["allowedReasons"]
    escalated = bool(escalation_reason) and valid_reason
    local = optimizer["resourcePolicy"]["localAdmission"]
    hosted = optimizer["resourcePolicy"]["hostedAdmission"]
    reserve = optimizer["budgetPolicy"].get("premiumReserveShare", 0)

    def evaluate(lane: str) -> dict[str, Any]:
        r: list[str] = []
        waived = deterministic and stage in ("verification", "tool-use", "retrieval") and lane == "no-model"
        if RANKS.index(lane) < RANKS.index(floor["minimumLane"]) and not waived:
            r.append("below-quality-floor:" + floor["minimumLane"])
        if not escalated and RANKS.index(lane) > RANKS.index(stg["maxLaneWithoutEscalation"]):
            r.append("stage-max-without-escalation:" + stg["maxLaneWithoutEscalation"])
        if lane not in [task["defaultLane"], *task["allowedEscalationLanes"]] and lane != stg["defaultLane"]:
            r.append("not-allowed-for-task-class")
        if lane in PREMIUM:
            if not escalation_reason:
                r.append("premium-lane-requires-escalation-reason")
            elif not valid_reason:
                r.append("invalid-escalation-reason")
        c = cost(catalog, lane, res)
        if problems:
            w = []
            if lane == "high-end" and window["highEndMaxShare"] <= 0:
                w.append("high-end-share-zero")
            if lane == "pro" and window["proMaxShare"] <= 0:
                w.append("pro-share-zero")
            return {"lane": lane, "feasible": False, "estimatedCost": c, "reasons": problems + r + w}
        if lane == "local-cheap":
            if not res["localModelProfileAvailable"]:
                r.append("local-model-profile-unavailable")
            if not res["localServiceHealthy"]:
                r.append("local-service-unhealthy")
            if local["denyWhenThermalCritical"] and res["thermalState"] == "critical":
                r.append("thermal-critical")
            if local["denyWhenBatteryCritical"] and res["batteryState"] == "critical":
                r.append("battery-critical")
            if res["memoryAvailableBytes"] < local["minMemoryAvailableBytes"]:
                r.append("insufficient-local-memory")
        if lane in HOSTED:
            if hosted["requiresNetwork"] and not res["networkAvailable"]:
                r.append("network-unavailable")
            if hosted["denyWhenQuotaUnknown"] and not res["providerQuotaKnown"]:
                r.append("provider-quota-unknown")
            if (hosted["denyWhenProviderUnhealthy"] and "maxProviderErrorRate" in hosted
                    and res["providerErrorRate"] > hosted["maxProviderErrorRate"]):
                r.append("provider-error-rate-too-high")
            if "maxProviderLatencyP95Ms" in hosted and res["providerLatencyP95Ms"] > hosted["maxProviderLatencyP95Ms"]:
                r.append("provider-latency-too-high")
        if lane in PREMIUM:
            if res["providerQuotaRemainingShare"] < 0:
                r.append("provider-quota-share-missing")
            if res["providerQuotaRemainingShare"] < reserve:
                r.append("premium-reserve-below-threshold")
        if c > budget_remaining:
            r.append("budget-insufficient")
        if lane == "high-end" and window["highEndMaxShare"] <= 0:
            r.append("high-end-share-zero")
        if lane == "pro" and window["proMaxShare"] <= 0:
            r.append("pro-share-zero")
        return {"lane": lane, "feasible": not r, "estimatedCost": c, "reasons": r}

    cands = [evaluate(lane) for lane in optimizer["selectionPolicy"]["candidateOrder"]]
    req_eval = evaluate(requested_lane) if requested_lane else None

    def sort_key(c: dict[str, Any]) -> list[float]:
        key: list[float] = []
        for tb in optimizer["selectionPolicy"]["tieBreakers"]:
            if tb == "lower-cost":
                key.append(c["estimatedCost"])
            elif tb == "local-first":
                key.append(0 if c["lane"] in ("no-model", "local-cheap") else 1)
            elif tb == "lower-latency":
                key.append(RANKS.index(c["lane"]))
            else:
                key.append(0)
        return [*key, RANKS.index(c["lane"])]

    feasible = sorted((c for c in cands if c["feasible"]), key=sort_key)
    if problems:
        status = "denied" if policy["enforcement"]["onViolation"] == "deny" else "deferred"
        return {"status": status, "lane": None, "reason": problems[0], "candidates": cands, "requested": req_eval}
    if not feasible:
        return {"status": "deferred", "lane": None, "reason": "no-feasible-candidate", "candidates": cands,
                "requested": req_eval}
    sel = feasible[0]["lane"]
    if requested_lane and requested_lane != sel:
        status = "downgraded" if RANKS.index(sel) < RANKS.index(requested_lane) else "selected"
        reason = "requested-lane-not-optimal-or-feasible:" + requested_lane
    else:
        status, reason = "selected", "cheapest-feasible-candidate"
    return {"status": status, "lane": sel, "reason": reason, "candidates": cands, "requested": req_eval}
