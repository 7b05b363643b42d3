"""Invariants of the router, over generated requests, signals and documents."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentlanes import PolicyBundle, Router, RouteRequest
from agentlanes.policy import load_document
from tests import oracle
from tests.conftest import bundled_json
from tests.properties.strategies import VALID, requests, signals

POLICY = bundled_json("policy.json")
OPTIMIZER = bundled_json("optimizer.json")
CATALOG = bundled_json("price-catalog.json")
ROUTER = Router()
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decide(req: dict[str, Any], sig: dict[str, Any], router: Router = ROUTER, **extra: Any) -> Any:
    return router.decide(RouteRequest(signals=sig, **{**req, **extra}))


@SETTINGS
@given(requests(), signals(valid=False))
def test_router_equals_the_contract_reading_and_selected_lanes_pass_every_rule(req: dict[str, Any],
                                                                                 sig: dict[str, Any]) -> None:
    got = decide(req, sig)
    want = oracle.decide(POLICY, OPTIMIZER, CATALOG, sig, **req)
    assert (got.status, got.lane, got.reason) == (want["status"], want["lane"], want["reason"])
    assert [c.to_native() for c in got.candidates] == want["candidates"]
    if got.lane is not None:
        chosen = next(c for c in want["candidates"] if c["lane"] == got.lane)
        assert chosen["reasons"] == [] and chosen["feasible"]


BOOL_SIGNALS = {"localModelProfileAvailable", "localServiceHealthy", "networkAvailable", "providerQuotaKnown"}
STATE_SIGNALS = {"batteryState", "thermalState"}


def _mistyped(name: str) -> Any:
    """A value of the wrong JSON type for signal ``name`` (by its declared kind, not by
    whatever value the generated signals happen to hold)."""
    if name in BOOL_SIGNALS:
        return "false"
    if name in STATE_SIGNALS:
        return 0
    return "1"


@SETTINGS
@given(requests(), signals(valid=False), st.sampled_from(list(VALID)), st.sampled_from(["remove", "null", "mistype"]))
def test_degrading_a_signal_never_turns_no_lane_into_a_lane(req: dict[str, Any], sig: dict[str, Any], name: str,
                                                            how: str) -> None:
    before = decide(req, sig)
    degraded = dict(sig)
    if how == "remove":
        degraded.pop(name, None)
    elif how == "null":
        degraded[name] = None
    else:
        degraded[name] = _mistyped(name)
    after = decide(req, degraded)
    # fail closed: a degraded required signal admits no lane at all...
    assert after.lane is None
    assert after.status in ("deferred", "denied")
    # ...so in particular it never turns a no-lane decision into a lane
    if before.lane is None:
        assert after.lane is None


@SETTINGS
@given(requests(), signals(), st.text(min_size=1, max_size=12).filter(
    lambda r: r not in POLICY["escalationPolicy"]["allowedReasons"]))
def test_an_invalid_reason_admits_nothing_that_no_reason_would_not(req: dict[str, Any], sig: dict[str, Any],
                                                                   bad: str) -> None:
    with_bad = decide(req, sig, escalation_reason=bad)
    without = decide(req, sig, escalation_reason=None)
    assert {c.lane for c in with_bad.candidates if c.feasible} <= {c.lane for c in without.candidates if c.feasible}
    assert with_bad.lane == without.lane
    assert with_bad.escalation_valid is False


@SETTINGS
@given(requests(), signals(valid=False))
def test_same_input_same_decision_id(req: dict[str, Any], sig: dict[str, Any]) -> None:
    a = decide(req, sig)
    b = decide(req, copy.deepcopy(sig), router=Router())
    assert a.decision_id == b.decision_id
    assert (a.status, a.lane, a.reason, a.candidates, a.requested) == (b.status, b.lane, b.reason, b.candidates,
                                                                       b.requested)


def _with_unknown_fields(doc: Any, rnd: st.DataObject) -> Any:
    if isinstance(doc, dict):
        out = {k: _with_unknown_fields(v, rnd) for k, v in doc.items()}
        if rnd.draw(st.integers(0, 3)) == 0:
            out[rnd.draw(st.sampled_from(["x-extra", "allowAll", "override", "maxLane"]))] = rnd.draw(
                st.one_of(st.booleans(), st.just("pro"), st.integers(), st.just({"anything": True})))
        return out
    if isinstance(doc, list):
        return [_with_unknown_fields(v, rnd) for v in doc]
    return doc


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), requests(), signals(valid=False))
def test_unknown_fields_never_change_a_decision(data: st.DataObject, req: dict[str, Any],
                                                sig: dict[str, Any]) -> None:
    docs = [_with_unknown_fields(d, data) for d in (POLICY, OPTIMIZER, CATALOG)]
    router = Router(PolicyBundle.from_loaded(*(load_document(d) for d in docs)))
    a, b = decide(req, sig), decide(req, sig, router=router)
    assert a.decision_id == b.decision_id
    assert a.to_native() == b.to_native()


@SETTINGS
@given(requests(), signals(valid=False), st.floats(0, 5))
def test_more_budget_never_removes_a_feasible_lane(req: dict[str, Any], sig: dict[str, Any], more: float) -> None:
    low = decide(req, sig)
    high = decide(req, sig, budget_remaining=req["budget_remaining"] + more)
    assert {c.lane for c in low.candidates if c.feasible} <= {c.lane for c in high.candidates if c.feasible}
    if low.lane is not None:
        assert high.lane is not None
