"""Conformance with the public routing contract in ../shared/upstream.

Every upstream example loads unchanged; agentlanes' bundled documents and every decision
it emits in the upstream form validate against the upstream schemas; the bundled
defaults decide exactly like the upstream defaults; and the router agrees with an
independent reading of CONTRACT.md (tests/oracle.py) across the whole grid.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from agentlanes import PolicyBundle, Router, RouteRequest
from agentlanes.policy import load_document
from tests import oracle
from tests.conftest import POLICIES, UPSTREAM, healthy, requires_upstream, upstream_json

pytestmark = requires_upstream

import jsonschema  # noqa: E402 - a core dependency: never skipped

SCHEMAS = {
    "AgentExecutionModelRoutingPolicy": "agent-execution-model-routing-policy.schema.json",
    "AgentExecutionBudgetResourceOptimizer": "agent-execution-budget-resource-optimizer.schema.json",
    "ModelPriceCatalog": "model-price-catalog.schema.json",
    "AgentExecutionRouteDecision": "agent-execution-route-decision.schema.json",
    "LocalPersonalRouteBinding": "local-personal-route-binding.schema.json",
}


def validator(kind: str) -> Any:
    schema = upstream_json(f"schemas/{SCHEMAS[kind]}")
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def upstream_examples() -> list[Path]:
    return sorted((UPSTREAM / "examples").glob("*.json")) if (UPSTREAM / "examples").is_dir() else []


@pytest.mark.parametrize("path", upstream_examples(), ids=lambda p: p.name)
def test_every_upstream_example_loads_unchanged(path: Path) -> None:
    loaded = load_document(path)
    assert loaded.warnings == ()


@pytest.mark.parametrize("name", ["policy.json", "optimizer.json", "price-catalog.json"])
def test_bundled_documents_validate_against_upstream_schemas(name: str) -> None:
    doc = json.loads((POLICIES / name).read_text())
    validator(doc["kind"]).validate(doc)


UP_POLICY = "examples/agent-execution-model-routing-policy.default.json"
UP_OPTIMIZER = "examples/agent-execution-budget-resource-optimizer.default.json"
UP_CATALOG = "examples/model-price-catalog.demo.json"


@pytest.fixture(scope="module")
def upstream_router() -> Router:
    return Router(PolicyBundle.from_loaded(
        load_document(UPSTREAM / UP_POLICY), load_document(UPSTREAM / UP_OPTIMIZER),
        load_document(UPSTREAM / UP_CATALOG)))


@pytest.fixture(scope="module")
def bundled_router() -> Router:
    return Router()


SIGNAL_SETS = {
    "healthy-local": lambda: upstream_json("examples/resources.healthy-local.json"),
    "thermal-critical": lambda: upstream_json("examples/resources.thermal-critical.json"),
    "unknown-premium-quota": lambda: upstream_json("examples/resources.unknown-premium-quota.json"),
    "offline": lambda: healthy(networkAvailable=False),
    "missing-network": lambda: healthy(networkAvailable=None),
    "string-bool": lambda: healthy(localServiceHealthy="false"),
    "big-request": lambda: healthy(estimatedInputTokens=200000, estimatedOutputTokens=50000),
    "overrides": lambda: healthy(estimatedLaneCosts={"standard": 0.5, "cheap": 0.0}),
    "low-reserve": lambda: healthy(providerQuotaRemainingShare=0.2),
}
TASKS = ["formatting-rewrite", "log-triage", "routine-code", "architecture-decision", "hard-debugging",
         "security-review", "multi-repo-migration", "high-stakes-synthesis"]
STAGES = ["intake", "classification", "retrieval", "planning", "execution", "tool-use", "verification",
          "review", "finalization"]
RISKS = ["low", "medium", "high", "critical"]
REASONS = [None, "architecture-decision", "repeated-standard-lane-failure", "not-a-reason"]
REQUESTED = [None, "local-cheap", "standard", "pro"]
BUDGETS = [2.0, 0.02, 0.0]


def grid() -> list[tuple[Any, ...]]:
    rows = []
    combos = itertools.product(TASKS, STAGES, RISKS, REASONS)
    for i, (task, stage, risk, reason) in enumerate(combos):
        # rotate the rarer dimensions so the grid stays a few thousand rows
        sig = list(SIGNAL_SETS)[i % len(SIGNAL_SETS)]
        requested = REQUESTED[(i // 3) % len(REQUESTED)]
        budget = BUDGETS[(i // 7) % len(BUDGETS)]
        deterministic = i % 5 == 0
        rows.append((task, stage, risk, reason, requested, sig, budget, deterministic))
    return rows


GRID = grid()


def _request(row: tuple[Any, ...], signals: dict[str, Any]) -> RouteRequest:
    task, stage, risk, reason, requested, _sig, budget, deterministic = row
    return RouteRequest(task_class=task, stage=stage, risk_class=risk, escalation_reason=reason,
                        requested_lane=requested, budget_remaining=budget, deterministic=deterministic,
                        signals=signals)


def _essence(d: Any) -> tuple[Any, ...]:
    return (d.status, d.lane, d.reason, d.estimated_cost,
            tuple((c.lane, c.feasible, c.estimated_cost, c.reasons) for c in d.candidates),
            None if d.requested is None else tuple(d.requested))


def test_bundled_defaults_decide_like_upstream_defaults(upstream_router: Router, bundled_router: Router) -> None:
    signals = {name: make() for name, make in SIGNAL_SETS.items()}
    assert len(GRID) > 1000
    for row in GRID:
        a = upstream_router.decide(_request(row, signals[row[5]]))
        b = bundled_router.decide(_request(row, signals[row[5]]))
        assert _essence(a) == _essence(b), row


def test_router_agrees_with_an_independent_reading_of_the_contract(upstream_router: Router) -> None:
    policy, optimizer, catalog = upstream_json(UP_POLICY), upstream_json(UP_OPTIMIZER), upstream_json(UP_CATALOG)
    signals = {name: make() for name, make in SIGNAL_SETS.items()}
    for row in GRID:
        task, stage, risk, reason, requested, sig, budget, deterministic = row
        got = upstream_router.decide(_request(row, signals[sig]))
        want = oracle.decide(policy, optimizer, catalog, signals[sig], task_class=task, stage=stage, risk_class=risk,
                             requested_lane=requested, escalation_reason=reason, budget_remaining=budget,
                             deterministic=deterministic)
        assert (got.status, got.lane, got.reason) == (want["status"], want["lane"], want["reason"]), row
        assert [c.to_native() for c in got.candidates] == want["candidates"], row
        if requested:
            assert got.requested is not None and got.requested.to_native() == want["requested"], row


def test_emitted_upstream_decisions_validate(bundled_router: Router) -> None:
    check = validator("AgentExecutionRouteDecision")
    signals = {name: make() for name, make in SIGNAL_SETS.items()}
    signals["empty"] = {}
    statuses = set()
    for i, row in enumerate(GRID[::7]):
        sig = row[5] if i % 10 else "empty"
        d = bundled_router.decide(_request(row, signals[sig]))
        doc = d.to_upstream()
        errors = sorted(check.iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, (row, [e.message for e in errors[:3]])
        statuses.add(d.status)
    assert statuses >= {"selected", "downgraded", "deferred"}


def test_upstream_form_matches_the_reference_shape(bundled_router: Router) -> None:
    d = bundled_router.decide(RouteRequest(task_class="routine-code", stage="planning", requested_lane="cheap",
                                           signals=upstream_json("examples/resources.healthy-local.json")))
    doc = d.to_upstream(created_at="2026-11-22T00:00:00Z")
    assert doc["createdAt"] == "2026-11-22T00:00:00Z"
    assert doc["selected"] == {"lane": "standard", "status": "selected",
                               "reason": "requested-lane-not-optimal-or-feasible:cheap",
                               "costClass": "medium", "estimatedCost": 0.02}
    assert doc["candidateSet"][3] == {"lane": "standard", "feasible": True, "estimatedCost": 0.02,
                                      "reasons": ["feasible"]}
    assert doc["requestedEvaluation"]["reasons"] == ["below-quality-floor:standard", "not-allowed-for-task-class"]
    assert doc["quality"] == {"minimumLane": "standard", "requiresVerification": True}
    assert doc["budget"] == {"window": "task", "remaining": 2.0, "onBudgetPressure": "downgrade",
                             "premiumReserveShare": 0.35}
    assert doc["evidence"]["promptEvidenceMode"] == "hash-only"
