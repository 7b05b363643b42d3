"""Static checks of the public API's types (run by `mypy --strict tests/typing` in CI)."""

from __future__ import annotations

from typing import Any, assert_type

from agentlanes import Candidate, Lane, PolicyBundle, RouteDecision, Router, RouteRequest, SignalSnapshot, load_bundle


def test_public_types() -> None:
    bundle = load_bundle()
    assert_type(bundle, PolicyBundle)
    router = Router(bundle)
    request = RouteRequest(task_class="routine-code", stage="planning", signals={"networkAvailable": True})
    assert_type(request.signals, SignalSnapshot)
    decision = router.decide(request)
    assert_type(decision, RouteDecision)
    assert_type(decision.lane, str | None)
    assert_type(decision.candidates, tuple[Candidate, ...])
    assert_type(decision.estimated_cost, float | None)
    assert_type(decision.to_upstream(), dict[str, Any])
    assert_type(Lane.PRO.rank, int)
    assert_type(Lane("pro").is_premium, bool)
    assert decision.status == "deferred"
