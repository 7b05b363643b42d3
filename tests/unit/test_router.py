"""The router against CONTRACT Part A (every rule) and Part B (departures)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from agentlanes import PolicyBundle, RouteInputError, Router, RouteRequest, load_bundle
from agentlanes.policy import load_document
from tests.conftest import bundled_json, healthy


@pytest.fixture(scope="module")
def router() -> Router:
    return Router()


def decide(router: Router, signals: dict[str, Any] | None = None, **kw: Any):
    return router.decide(RouteRequest(signals=signals if signals is not None else healthy(), **kw))


def reasons_of(decision: Any, lane: str) -> tuple[str, ...]:
    cand = decision.candidate(lane)
    assert cand is not None
    return tuple(cand.reasons)


def custom_router(policy: dict[str, Any] | None = None, optimizer: dict[str, Any] | None = None,
                  catalog: dict[str, Any] | None = None) -> Router:
    return Router(
        PolicyBundle.from_loaded(
            load_document(policy or bundled_json("policy.json")),
            load_document(optimizer or bundled_json("optimizer.json")),
            load_document(catalog or bundled_json("price-catalog.json")),
        )
    )


# ------------------------------------------------------------- worked examples


def test_costs_with_the_demo_catalog(router: Router) -> None:
    d = decide(router, task_class="routine-code", stage="planning")
    assert [c.estimated_cost for c in d.candidates] == [0, 0.0005, 0.002, 0.02, 0.25, 0.5]


def test_formatting_rewrite_intake_low_is_cheap(router: Router) -> None:
    d = decide(router, task_class="formatting-rewrite", stage="intake", risk_class="low")
    assert (d.status, d.lane, d.estimated_cost) == ("selected", "cheap", 0.002)
    assert "below-quality-floor:local-cheap" in reasons_of(d, "no-model")
    assert reasons_of(d, "local-cheap") == ("not-allowed-for-task-class",)


def test_log_triage_classification_low_is_local_cheap(router: Router) -> None:
    d = decide(router, task_class="log-triage", stage="classification", risk_class="low")
    assert (d.status, d.lane, d.estimated_cost) == ("selected", "local-cheap", 0.0005)


def test_routine_code_planning_medium_is_standard(router: Router) -> None:
    d = decide(router, task_class="routine-code", stage="planning")
    assert (d.status, d.lane, d.estimated_cost, d.reason) == ("selected", "standard", 0.02,
                                                              "cheapest-feasible-candidate")


def test_architecture_decision_needs_a_reason(router: Router) -> None:
    d = decide(router, task_class="architecture-decision", stage="planning", risk_class="high")
    assert (d.status, d.lane, d.reason) == ("deferred", None, "no-feasible-candidate")
    assert reasons_of(d, "high-end") == (
        "stage-max-without-escalation:standard",
        "premium-lane-requires-escalation-reason",
    )
    d = decide(router, task_class="architecture-decision", stage="planning", risk_class="high",
               escalation_reason="architecture-decision")
    assert (d.status, d.lane, d.estimated_cost) == ("selected", "high-end", 0.25)


# ------------------------------------------------------------- rules 1..9


def test_rule1_quality_floor(router: Router) -> None:
    d = decide(router, task_class="routine-code", stage="execution", risk_class="critical",
               escalation_reason="hard-debugging")
    for lane in ("no-model", "local-cheap", "cheap", "standard", "high-end"):
        assert "below-quality-floor:pro" in reasons_of(d, lane)


def test_rule2_stage_cap_lifts_only_with_escalation(router: Router) -> None:
    d = decide(router, task_class="routine-code", stage="classification", risk_class="low")
    assert "stage-max-without-escalation:cheap" in reasons_of(d, "standard")
    d = decide(router, task_class="routine-code", stage="classification", risk_class="low",
               escalation_reason="hard-debugging")
    assert not any(r.startswith("stage-max") for c in d.candidates for r in c.reasons)


def test_rule3_task_class_lanes_plus_stage_default(router: Router) -> None:
    d = decide(router, task_class="routine-code", stage="planning", risk_class="low")
    assert reasons_of(d, "cheap") == ("not-allowed-for-task-class",)
    # the stage's default lane is allowed even when the task class does not list it
    d = decide(router, task_class="routine-code", stage="intake", risk_class="low")
    assert d.lane == "cheap"


def test_rule4_premium_reason(router: Router) -> None:
    d = decide(router, task_class="routine-code", stage="review", risk_class="high")
    assert "premium-lane-requires-escalation-reason" in reasons_of(d, "high-end")
    d = decide(router, task_class="routine-code", stage="review", risk_class="high", escalation_reason="because")
    assert "invalid-escalation-reason" in reasons_of(d, "high-end")
    assert "invalid-escalation-reason" in reasons_of(d, "pro")
    assert "invalid-escalation-reason" not in reasons_of(d, "standard")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"localModelProfileAvailable": False}, "local-model-profile-unavailable"),
        ({"localServiceHealthy": False}, "local-service-unhealthy"),
        ({"thermalState": "critical"}, "thermal-critical"),
        ({"batteryState": "critical"}, "battery-critical"),
        ({"memoryAvailableBytes": 2147483647}, "insufficient-local-memory"),
    ],
)
def test_rule5_local_admission(router: Router, change: dict[str, Any], reason: str) -> None:
    d = decide(router, healthy(**change), task_class="log-triage", stage="classification", risk_class="low")
    assert reasons_of(d, "local-cheap") == (reason,)
    assert d.lane == "cheap"
    assert reason not in reasons_of(d, "cheap")


def test_rule5_memory_equal_to_minimum_is_enough(router: Router) -> None:
    d = decide(router, healthy(memoryAvailableBytes=2147483648), task_class="log-triage",
               stage="classification", risk_class="low")
    assert d.lane == "local-cheap"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"networkAvailable": False}, "network-unavailable"),
        ({"providerQuotaKnown": False}, "provider-quota-unknown"),
        ({"providerErrorRate": 0.06}, "provider-error-rate-too-high"),
        ({"providerLatencyP95Ms": 30001}, "provider-latency-too-high"),
    ],
)
def test_rule6_hosted_admission(router: Router, change: dict[str, Any], reason: str) -> None:
    d = decide(router, healthy(**change), task_class="routine-code", stage="planning")
    for lane in ("cheap", "standard", "high-end", "pro"):
        assert reason in reasons_of(d, lane)
    assert reason not in reasons_of(d, "local-cheap")
    assert (d.status, d.lane) == ("deferred", None)


def test_rule6_limits_are_inclusive(router: Router) -> None:
    d = decide(router, healthy(providerErrorRate=0.05, providerLatencyP95Ms=30000),
               task_class="routine-code", stage="planning")
    assert d.lane == "standard"


def test_rule7_premium_quota(router: Router) -> None:
    kw = {"task_class": "architecture-decision", "stage": "planning", "risk_class": "high",
          "escalation_reason": "architecture-decision"}
    d = decide(router, healthy(providerQuotaRemainingShare=-1.0), **kw)
    assert reasons_of(d, "high-end") == ("provider-quota-share-missing", "premium-reserve-below-threshold")
    d = decide(router, healthy(providerQuotaRemainingShare=0.3), **kw)
    assert reasons_of(d, "high-end") == ("premium-reserve-below-threshold",)
    assert d.status == "deferred"
    d = decide(router, healthy(providerQuotaRemainingShare=0.35), **kw)
    assert d.lane == "high-end"


def test_rule8_budget_equal_is_affordable(router: Router) -> None:
    d = decide(router, task_class="routine-code", stage="planning", budget_remaining=0.02)
    assert d.lane == "standard"
    d = decide(router, task_class="routine-code", stage="planning", budget_remaining=0.019999)
    assert reasons_of(d, "standard") == ("budget-insufficient",)
    assert d.status == "deferred"


def test_rule9_window_shares() -> None:
    opt = bundled_json("optimizer.json")
    opt["budgetPolicy"]["windows"][0]["highEndMaxShare"] = 0
    opt["budgetPolicy"]["windows"][0]["proMaxShare"] = 0
    r = custom_router(optimizer=opt)
    d = decide(r, task_class="architecture-decision", stage="planning", risk_class="high",
               escalation_reason="architecture-decision")
    assert reasons_of(d, "high-end")[-1] == "high-end-share-zero"
    assert reasons_of(d, "pro")[-1] == "pro-share-zero"
    assert d.status == "deferred"
    # the session window still has shares
    d = decide(r, task_class="architecture-decision", stage="planning", risk_class="high",
               escalation_reason="architecture-decision", budget_window="session")
    assert d.lane == "high-end"


def test_all_rules_fire_together_in_contract_order(router: Router) -> None:
    d = decide(router, healthy(networkAvailable=False, providerQuotaRemainingShare=0.1),
               task_class="formatting-rewrite", stage="classification", risk_class="critical",
               budget_remaining=0.1)
    assert reasons_of(d, "high-end") == (
        "below-quality-floor:pro",
        "stage-max-without-escalation:cheap",
        "not-allowed-for-task-class",
        "premium-lane-requires-escalation-reason",
        "network-unavailable",
        "premium-reserve-below-threshold",
        "budget-insufficient",
    )
    assert reasons_of(d, "no-model")[0] == "below-quality-floor:pro"


# ------------------------------------------------------------- selection


def test_tie_breakers_lower_cost_then_local_first() -> None:
    # local-cheap made as dear as cheap: local-first breaks the tie in its favour
    r = custom_router()
    d = decide(r, healthy(estimatedLaneCosts={"local-cheap": 0.002, "cheap": 0.002}),
               task_class="log-triage", stage="classification", risk_class="low")
    assert d.lane == "local-cheap"
    d = decide(r, healthy(estimatedLaneCosts={"local-cheap": 0.003}),
               task_class="log-triage", stage="classification", risk_class="low")
    assert d.lane == "cheap"


def test_tie_breaker_order_is_the_optimizers() -> None:
    opt = bundled_json("optimizer.json")
    opt["selectionPolicy"]["tieBreakers"] = ["local-first", "lower-cost"]
    r = custom_router(optimizer=opt)
    d = decide(r, healthy(estimatedLaneCosts={"local-cheap": 0.003}),
               task_class="log-triage", stage="classification", risk_class="low")
    assert d.lane == "local-cheap"


def test_local_expensive_catalog_prefers_cheap_hosted() -> None:
    cat = bundled_json("price-catalog.json")
    cat["lanes"][1]["profiles"][0]["pricing"]["minCost"] = 0.05
    r = custom_router(catalog=cat)
    d = decide(r, task_class="log-triage", stage="classification", risk_class="low")
    assert d.lane == "cheap"


def test_requested_lane_downgraded(router: Router) -> None:
    d = decide(router, task_class="log-triage", stage="classification", risk_class="low", requested_lane="cheap")
    assert (d.status, d.lane, d.reason) == ("downgraded", "local-cheap",
                                            "requested-lane-not-optimal-or-feasible:cheap")
    assert d.requested is not None and d.requested.feasible
    assert d.upgrade is None


def test_requested_lane_upgrade_is_flagged_with_cause(router: Router) -> None:
    d = decide(router, task_class="routine-code", stage="planning", requested_lane="cheap")
    assert (d.status, d.lane) == ("selected", "standard")
    assert d.upgrade is not None
    assert (d.upgrade.requested, d.upgrade.selected) == ("cheap", "standard")
    assert "below-quality-floor:standard" in d.upgrade.causes
    native = d.to_native()
    assert native["upgrade"]["causes"] == list(d.upgrade.causes)


def test_requested_lane_chosen_when_it_is_the_best(router: Router) -> None:
    d = decide(router, task_class="routine-code", stage="planning", requested_lane="standard")
    assert (d.status, d.reason) == ("selected", "cheapest-feasible-candidate")


def test_requested_lane_outside_candidate_order_is_evaluated() -> None:
    opt = bundled_json("optimizer.json")
    opt["selectionPolicy"]["candidateOrder"] = ["no-model", "local-cheap", "cheap", "standard"]
    r = custom_router(optimizer=opt)
    d = decide(r, task_class="architecture-decision", stage="planning", risk_class="high",
               escalation_reason="architecture-decision", requested_lane="high-end")
    assert d.requested is not None and d.requested.lane == "high-end" and d.requested.feasible
    assert len(d.candidates) == 4
    assert d.status == "deferred"  # high-end is not a candidate, so it cannot be selected


# ------------------------------------------------------------- Part B


def test_b1_invalid_reason_keeps_the_stage_cap(router: Router) -> None:
    d = decide(router, task_class="routine-code", stage="classification", risk_class="low",
               escalation_reason="vibes")
    assert "stage-max-without-escalation:cheap" in reasons_of(d, "standard")
    assert d.escalation_valid is False
    assert d.to_native()["escalation"] == {"reason": "vibes", "valid": False, "inForce": False}


@pytest.mark.parametrize(
    ("signals", "reason"),
    [
        (healthy(networkAvailable=None), "missing-signal:networkAvailable"),
        ({**healthy(), "networkAvailable": None}, "missing-signal:networkAvailable"),
        (healthy(networkAvailable="false"), "invalid-signal:networkAvailable"),
        (healthy(memoryAvailableBytes="16G"), "invalid-signal:memoryAvailableBytes"),
        (healthy(memoryAvailableBytes=True), "invalid-signal:memoryAvailableBytes"),
        (healthy(providerErrorRate=1.5), "invalid-signal:providerErrorRate"),
        (healthy(providerQuotaRemainingShare=float("nan")), "invalid-signal:providerQuotaRemainingShare"),
        (healthy(estimatedInputTokens=-1), "invalid-signal:estimatedInputTokens"),
        (healthy(thermalState=3), "invalid-signal:thermalState"),
        (healthy(estimatedLaneCosts={"turbo": 1}), "invalid-signal:estimatedLaneCosts"),
        ({**healthy(), "estimatedToolCalls": None}, "invalid-signal:estimatedToolCalls"),
    ],
)
def test_b2_bad_signals_fail_closed(router: Router, signals: dict[str, Any], reason: str) -> None:
    d = decide(router, signals, task_class="routine-code", stage="planning")
    assert (d.status, d.lane, d.reason) == ("deferred", None, reason)
    assert reason in d.reasons
    assert not any(c.feasible for c in d.candidates)
    assert all(reason in c.reasons for c in d.candidates)


def test_b2_every_missing_signal_is_named(router: Router) -> None:
    d = decide(router, {}, task_class="routine-code", stage="planning")
    assert d.status == "deferred"
    assert len(d.reasons) == 12 and all(r.startswith("missing-signal:") for r in d.reasons)


def test_b2_optimizer_may_require_more_signals() -> None:
    opt = bundled_json("optimizer.json")
    opt["resourcePolicy"]["requiredSignals"].append("gpuTemperature")
    r = custom_router(optimizer=opt)
    d = decide(r, task_class="routine-code", stage="planning")
    assert d.reason == "missing-signal:gpuTemperature"
    d = decide(r, healthy(gpuTemperature=40), task_class="routine-code", stage="planning")
    assert d.lane == "standard"


def test_b2_denied_where_the_policy_says_deny() -> None:
    pol = bundled_json("policy.json")
    pol["enforcement"]["onViolation"] = "deny"
    r = custom_router(policy=pol)
    d = decide(r, healthy(networkAvailable=None), task_class="routine-code", stage="planning")
    assert (d.status, d.lane) == ("denied", None)


def test_b2_signals_that_are_not_a_mapping(router: Router) -> None:
    from agentlanes.signals import SignalSnapshot

    snap = SignalSnapshot([1, 2])  # type: ignore[arg-type]
    assert "invalid-signal:resources" in snap.problems
    d = router.decide(RouteRequest(task_class="routine-code", stage="planning", signals=snap))
    assert d.status == "deferred"


@pytest.mark.parametrize("stage", ["verification", "tool-use", "retrieval"])
def test_b3_deterministic_stages_route_to_no_model(router: Router, stage: str) -> None:
    d = decide(router, task_class="routine-code", stage=stage, risk_class="high")
    assert d.lane != "no-model"
    d = decide(router, task_class="routine-code", stage=stage, risk_class="high", deterministic=True)
    assert (d.status, d.lane, d.estimated_cost) == ("selected", "no-model", 0.0)
    assert d.to_native()["quality"]["metByDeterministicCheck"] is True


def test_b3_only_for_deterministic_stages(router: Router) -> None:
    d = decide(router, task_class="routine-code", stage="planning", deterministic=True)
    assert d.lane == "standard"


def test_b5_decision_id_is_a_digest_of_inputs(router: Router) -> None:
    a = decide(router, task_class="routine-code", stage="planning")
    b = decide(Router(load_bundle()), task_class="routine-code", stage="planning")
    assert a.decision_id == b.decision_id
    assert a.decision_id.startswith("urn:agentlanes:route-decision:")
    c = decide(router, healthy(providerLatencyP95Ms=1201), task_class="routine-code", stage="planning")
    assert c.decision_id != a.decision_id
    d = decide(router, task_class="routine-code", stage="planning", budget_remaining=1.5)
    assert d.decision_id != a.decision_id
    e = decide(router, task_class="routine-code", stage="planning", escalation_reason="x")
    f = decide(router, task_class="routine-code", stage="planning", escalation_reason="y")
    assert e.decision_id != f.decision_id
    up1 = a.to_upstream(created_at="2026-01-01T00:00:00Z")
    up2 = a.to_upstream()
    assert up1["decisionId"] == up2["decisionId"] == a.decision_id


def test_b6_ledger_remaining_lowers_the_budget(router: Router) -> None:
    req = RouteRequest(task_class="routine-code", stage="planning", signals=healthy())
    d = router.decide(req, ledger_remaining=0.01)
    assert d.status == "deferred" and d.budget_remaining == 0.01
    assert reasons_of(d, "standard") == ("budget-insufficient",)
    d = router.decide(req, ledger_remaining=50.0)
    assert d.lane == "standard" and d.budget_remaining == 2.0


# ------------------------------------------------------------- input errors


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"task_class": "juggling", "stage": "planning"}, r"Task class 'juggling' is not defined.*routine-code"),
        ({"task_class": "routine-code", "stage": "dreaming"}, r"Stage 'dreaming' is not a chain stage.*planning"),
        ({"task_class": "routine-code", "stage": "planning", "risk_class": "extreme"},
         r"Risk class 'extreme' has no risk floor.*low, medium, high, critical"),
        ({"task_class": "routine-code", "stage": "planning", "budget_window": "week"},
         r"Budget window 'week' is not defined.*task, session, day"),
        ({"task_class": "routine-code", "stage": "planning", "requested_lane": "turbo"},
         r"Requested lane 'turbo' is not a lane \(lanes: no-model, local-cheap"),
    ],
)
def test_input_errors_name_the_bad_value(router: Router, kw: dict[str, Any], match: str) -> None:
    with pytest.raises(RouteInputError, match=match):
        decide(router, **kw)


def test_plans_are_reused_but_budget_still_decides(router: Router) -> None:
    snap = RouteRequest(task_class="routine-code", stage="planning", signals=healthy()).signals
    rich = router.decide(RouteRequest(task_class="routine-code", stage="planning", signals=snap))
    poor = router.decide(RouteRequest(task_class="routine-code", stage="planning", signals=snap,
                                      budget_remaining=0.0))
    assert rich.lane == "standard" and poor.lane is None
    assert rich.candidates[3] is not poor.candidates[3]


def test_upstream_defaults_and_documents_do_not_leak_between_routers() -> None:
    pol = copy.deepcopy(bundled_json("policy.json"))
    pol["chainStages"][3]["maxLaneWithoutEscalation"] = "cheap"
    strict = custom_router(policy=pol)
    d = decide(strict, task_class="routine-code", stage="planning")
    assert d.status == "deferred"
    assert decide(Router(), task_class="routine-code", stage="planning").lane == "standard"


def test_cost_follows_the_contract_formula_at_half_way_points(router: Router) -> None:
    # 0.001 + 274*0.15/1e6 + 85974*0.6/1e6 lands on a rounding boundary where
    # pre-dividing the price by 1e6 would give 0.052625 instead of 0.052626.
    d = decide(router, healthy(estimatedInputTokens=274, estimatedOutputTokens=85974),
               task_class="formatting-rewrite", stage="intake", risk_class="low")
    assert d.candidate("cheap").estimated_cost == round(0.001 + 274 * 0.15 / 1e6 + 85974 * 0.6 / 1e6, 6) == 0.052626


def test_excluded_lanes_carry_their_reason_and_are_never_selected(router: Router) -> None:
    d = decide(router, task_class="routine-code", stage="execution", escalation_reason="repeated-standard-lane-failure",
               excluded_lanes=(("standard", "escalated-from:standard"),))
    assert d.lane == "high-end"
    assert reasons_of(d, "standard") == ("escalated-from:standard",)
    d2 = decide(router, task_class="routine-code", stage="execution")
    assert d2.lane == "standard" and d2.decision_id != d.decision_id
    with pytest.raises(RouteInputError, match="Excluded lane 'turbo'"):
        decide(router, task_class="routine-code", stage="execution", excluded_lanes=(("turbo", "x"),))


def test_premium_share_headroom_from_a_ledger(router: Router) -> None:
    req = RouteRequest(task_class="architecture-decision", stage="planning", risk_class="high",
                       escalation_reason="architecture-decision", signals=healthy())
    assert router.decide(req, premium_remaining=(0.5, 0.1)).lane == "high-end"
    d = router.decide(req, premium_remaining=(0.2, 0.1))
    assert d.status == "deferred"
    assert reasons_of(d, "high-end")[-1] == "high-end-share-exhausted"
    assert d.decision_id != router.decide(req, premium_remaining=(0.5, 0.1)).decision_id


# ------------------------------------------------------------- Part D: the neighbours' inputs


# Decision ids recorded before the neighbours' inputs existed: recorded runs are replayed
# by comparing ids, so a request without findings, ceilings or a binding must keep them.
PINNED_IDS = [
    ({"task_class": "routine-code", "stage": "planning"}, "461d18008095b9976bd38396471be3a9"),
    ({"task_class": "architecture-decision", "stage": "planning", "risk_class": "high",
          "escalation_reason": "architecture-decision"}, "505ef68db95aef8b9035b9ff7af9d8ae"),
    ({"task_class": "log-triage", "stage": "classification", "risk_class": "low", "requested_lane": "standard",
          "budget_remaining": 0.01}, "58ad36528977e493e0f4835695262cf9"),
    ({"task_class": "routine-code", "stage": "verification", "deterministic": True,
          "excluded_lanes": (("standard", "escalated-from:standard"),)}, "ff801db1dfe24b9ea1afabcad9d9fa5e"),
]


@pytest.mark.parametrize(("kw", "pinned"), PINNED_IDS)
def test_decision_ids_without_neighbour_inputs_are_unchanged(router: Router, kw: dict[str, Any],
                                                             pinned: str) -> None:
    from agentlanes.signals import SignalSnapshot

    d = decide(router, **kw)
    assert d.decision_id == "urn:agentlanes:route-decision:" + pinned
    assert "neighbourInputs" not in d.to_native()
    trusted = router.decide(RouteRequest.trusted(
        signals=SignalSnapshot(healthy()), risk_class=kw.get("risk_class", "medium"),
        requested_lane=kw.get("requested_lane"), escalation_reason=kw.get("escalation_reason"),
        budget_window="task", budget_remaining=kw.get("budget_remaining", 2.0),
        deterministic=kw.get("deterministic", False), excluded_lanes=kw.get("excluded_lanes", ()),
        task_class=kw["task_class"], stage=kw["stage"]))
    assert trusted.decision_id == d.decision_id


def test_fail_closed_signal_decision_id_is_unchanged(router: Router) -> None:
    d = decide(router, healthy(networkAvailable=None), task_class="routine-code", stage="planning")
    assert d.decision_id == "urn:agentlanes:route-decision:724d5de3589eda4932e6596279a373f0"


def test_neighbour_reasons_come_after_the_nine_rules_in_order(router: Router) -> None:
    from agentlanes.binding import BindingDecision

    deny = BindingDecision(target="deny", profile_ref=None, artifact_ref=None, reasons=("binding:no-route",),
                           refused=(), task="x", route_id=None, binding_id=None, binding_digest=None,
                           contract_digest=None, ledger_approved=False, egress_approval=None,
                           now="2026-01-01T00:00:00Z")
    ceiling = {"schema_version": "1.0", "policy_id": "p", "routing_consequence": {
        "autonomy_ceiling": "advisory", "model_lane_ceiling": "cheap", "high_end_allowed": False,
        "pro_allowed": True, "deterministic_verification_required": False, "fallback_posture": "x",
        "must_preserve_warnings": ["w"]}}
    d = decide(router, healthy(networkAvailable=False), task_class="routine-code", stage="execution",
               findings={"findings": [], "metadata": {"requires_local_model": "true"}},
               ceilings=[ceiling], binding=deny)
    assert reasons_of(d, "high-end") == (
        "stage-max-without-escalation:standard", "premium-lane-requires-escalation-reason", "network-unavailable",
        "finding:requires-local-model", "ceiling:model-lane:cheap", "ceiling:high-end-not-allowed",
        "binding:deny", "ceiling:autonomy:advisory")
    assert reasons_of(d, "no-model")[-1] == "ceiling:autonomy:advisory"
    assert (d.status, d.reason, d.reasons) == ("deferred", "ceiling:autonomy:advisory",
                                               ("ceiling:autonomy:advisory",))
    assert d.warnings == ("w",)


def test_a_stage_deferred_by_a_ceiling_is_deferred_even_where_the_policy_denies() -> None:
    pol = bundled_json("policy.json")
    pol["enforcement"]["onViolation"] = "deny"
    r = custom_router(policy=pol)
    ceiling = {"schema_version": "1.0", "policy_id": "p", "routing_consequence": {
        "autonomy_ceiling": "report_only", "model_lane_ceiling": "pro", "high_end_allowed": True,
        "pro_allowed": True, "deterministic_verification_required": True, "fallback_posture": "x",
        "must_preserve_warnings": []}}
    d = decide(r, task_class="routine-code", stage="tool-use", deterministic=True, ceilings=[ceiling])
    assert (d.status, d.reasons) == ("deferred", ("ceiling:autonomy:report_only",))
    d = decide(r, healthy(networkAvailable=None), task_class="routine-code", stage="tool-use", ceilings=[ceiling])
    assert (d.status, d.reasons) == ("denied", ("missing-signal:networkAvailable", "ceiling:autonomy:report_only"))


def test_requested_lane_outside_candidate_order_gets_neighbour_reasons() -> None:
    opt = bundled_json("optimizer.json")
    opt["selectionPolicy"]["candidateOrder"] = ["no-model", "local-cheap", "cheap", "standard"]
    r = custom_router(optimizer=opt)
    d = decide(r, task_class="architecture-decision", stage="planning", risk_class="high",
               escalation_reason="architecture-decision", requested_lane="high-end",
               findings={"findings": [], "metadata": {"x.sensitivity": "restricted"}})
    assert d.requested is not None and not d.requested.feasible
    assert d.requested.reasons == ("finding:sensitivity-restricted",)


def test_neighbour_inputs_share_plans_only_with_the_same_inputs(router: Router) -> None:
    f1 = {"findings": [], "metadata": {"sensitivity": "public"}}
    f2 = {"findings": [], "metadata": {"sensitivity": "restricted"}}
    a = decide(router, task_class="routine-code", stage="planning", findings=f1)
    b = decide(router, task_class="routine-code", stage="planning", findings=f2)
    c = decide(router, task_class="routine-code", stage="planning", findings=f1, budget_remaining=0.01)
    assert (a.lane, b.lane, c.lane) == ("standard", None, None)
    assert reasons_of(c, "standard") == ("budget-insufficient",)
    assert len({a.decision_id, b.decision_id, c.decision_id}) == 3
