"""Invariants of the neighbours' inputs (CONTRACT D) over generated requests, signals,
findings, ceilings and bindings."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentlanes import Router, RouteRequest
from agentlanes.binding import BindingRequest
from agentlanes.evidence import StageEvidence, check_lane_receipt, guardrail_decisions, lane_receipt
from agentlanes.findings import parse_findings
from agentlanes.lanes import HOSTED_LANES, PREMIUM_LANES
from tests.conftest import UPSTREAM, requires_upstream, upstream_json
from tests.properties.strategies import requests, signals

pytestmark = requires_upstream

ROUTER = Router()
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CEILINGS = [upstream_json(f"examples/{p.name}") for p in sorted((UPSTREAM / "examples").glob("*routing-policy.*"))
            if "routing_consequence" in p.read_text()] if (UPSTREAM / "examples").is_dir() else []
BINDING = upstream_json("examples/local-personal-route-binding.llama32.json") if CEILINGS else {}
CONTRACT = (upstream_json("model-governance-ledger/examples/personal-tuning-contract.local-llama32-user.json")
            if CEILINGS else {})

text = st.text(max_size=12)
NAMESPACES = st.sampled_from(["", "anonymize.", "a.b.", "classify."])
findings_list = st.lists(
    st.fixed_dictionaries({"type": text, "label": text, "count": st.integers(0, 10**6), "confidence": text,
                           "severity": st.sampled_from(["low", "medium", "high", "critical", "CRITICAL", "info"])}),
    max_size=5)


@st.composite
def true_text(draw: st.DrawFn) -> str:
    """``true`` in any case."""
    return "".join(c.upper() if draw(st.booleans()) else c for c in "true")


@st.composite
def local_only_findings(draw: st.DrawFn) -> dict[str, Any]:
    """A findings document whose metadata requires a local model, among other noise."""
    metadata = draw(st.dictionaries(text.filter(lambda k: not k.endswith("requires_local_model")), text,
                                    max_size=6))
    metadata[draw(NAMESPACES) + "requires_local_model"] = draw(true_text())
    return {"findings": draw(findings_list), "metadata": metadata}


@st.composite
def any_findings(draw: st.DrawFn) -> Any:
    metadata = draw(st.dictionaries(
        st.one_of(text, st.builds(lambda ns, k: ns + k, NAMESPACES,
                                  st.sampled_from(["sensitivity", "requires_local_model", "modalities"]))),
        st.one_of(text, st.sampled_from(["public", "internal", "confidential", "restricted", "true", "TRUE"])),
        max_size=6))
    doc = {"findings": draw(findings_list), "metadata": metadata}
    return draw(st.sampled_from([doc, None])) if draw(st.integers(0, 9)) == 0 else doc


@st.composite
def ceilings(draw: st.DrawFn) -> list[Any]:
    chosen = draw(st.lists(st.sampled_from(range(len(CEILINGS))), max_size=3))
    out: list[Any] = []
    for i in chosen:
        doc = copy.deepcopy(CEILINGS[i])
        rc = doc["routing_consequence"]
        rc["autonomy_ceiling"] = draw(st.sampled_from(
            ["report_only", "advisory", "human_review_required", "bounded_autonomy", rc["autonomy_ceiling"]]))
        rc["model_lane_ceiling"] = draw(st.sampled_from(
            ["no_model", "local_cheap", "cheap", "standard", "high_end", "pro"]))
        rc["high_end_allowed"] = draw(st.booleans())
        rc["pro_allowed"] = draw(st.booleans())
        rc["deterministic_verification_required"] = draw(st.booleans())
        out.append(doc)
    if draw(st.integers(0, 9)) == 0:
        out.append({"routing_consequence": draw(st.dictionaries(text, text, max_size=2))})
    return out


@st.composite
def bindings(draw: st.DrawFn) -> BindingRequest | None:
    if draw(st.booleans()):
        return None
    return BindingRequest(
        binding=BINDING,
        task=draw(st.sampled_from(["router", "office-assist", "complex-reasoning", "triage"])),
        contract=draw(st.sampled_from([None, CONTRACT])),
        ledger_approved=draw(st.booleans()),
        egress_approval=draw(st.sampled_from([None, "policy://egress/1"])),
        now=draw(st.sampled_from(["2026-06-01T00:00:00Z", "2027-06-01T00:00:00Z"])),
    )


def decide(req: dict[str, Any], sig: dict[str, Any], **extra: Any) -> Any:
    return ROUTER.decide(RouteRequest(signals=sig, **req, **extra))


@SETTINGS
@given(requests(), signals(valid=False), local_only_findings(), ceilings(), bindings())
def test_findings_requiring_a_local_model_never_yield_a_hosted_lane(req: dict[str, Any], sig: dict[str, Any],
                                                                    found: dict[str, Any], ceil: list[Any],
                                                                    binding: BindingRequest | None) -> None:
    assert parse_findings(found).requires_local_model
    d = decide(req, sig, findings=found, ceilings=ceil, binding=binding)
    assert d.lane not in HOSTED_LANES
    for cand in d.candidates:
        if cand.lane in HOSTED_LANES:
            assert not cand.feasible and "finding:requires-local-model" in cand.reasons
    if d.requested is not None and d.requested.lane in HOSTED_LANES:
        assert not d.requested.feasible


@SETTINGS
@given(requests(), signals(valid=False), any_findings(), ceilings(), bindings())
def test_inputs_only_ever_remove_lanes(req: dict[str, Any], sig: dict[str, Any], found: Any, ceil: list[Any],
                                       binding: BindingRequest | None) -> None:
    plain = decide(req, sig)
    shaped = decide(req, sig, findings=found, ceilings=ceil, binding=binding)
    for before, after in zip(plain.candidates, shaped.candidates, strict=True):
        assert after.reasons[: len(before.reasons)] == before.reasons  # the nine rules' reasons come first
        assert not (after.feasible and not before.feasible)
        assert after.estimated_cost == before.estimated_cost
    if shaped.lane is not None:
        assert plain.candidate(shaped.lane) is not None and plain.candidate(shaped.lane).feasible  # type: ignore[union-attr]
    if plain.lane is None:
        assert shaped.lane is None
    has_inputs = found is not None or bool(ceil) or binding is not None
    assert (shaped.decision_id == plain.decision_id) == (not has_inputs)
    assert decide(req, sig, findings=found, ceilings=ceil, binding=binding).decision_id == shaped.decision_id


@SETTINGS
@given(requests(), signals(valid=True), st.recursive(
    st.none() | st.booleans() | st.integers() | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=8))
def test_junk_findings_and_ceilings_leave_at_most_no_model(req: dict[str, Any], sig: dict[str, Any],
                                                           junk: Any) -> None:
    found = junk if junk is not None else []
    if isinstance(found, dict) and set(found) == {"findings", "metadata"}:
        return
    d = decide(req, sig, findings=found)
    assert d.lane in (None, "no-model")
    d = decide(req, sig, ceilings=[junk])
    assert d.lane in (None, "no-model")


@SETTINGS
@given(requests(), signals(valid=False), any_findings(), ceilings(), bindings(),
       st.sampled_from([None, "pending", "granted", "denied"]), st.booleans(), st.booleans())
def test_evidence_for_any_decision_passes_agentplanes_gates(req: dict[str, Any], sig: dict[str, Any], found: Any,
                                                             ceil: list[Any], binding: BindingRequest | None,
                                                             approval: Any, deterministic: bool, judge: bool) -> None:
    d = decide(req, sig, findings=found, ceilings=ceil, binding=binding)
    premium = d.lane in PREMIUM_LANES
    ctx = StageEvidence(run_id="run-p", issued_at="2026-06-01T00:00:00Z", deterministic_verifiers=deterministic,
                        model_judge=judge, escalation_receipt_id="run-p/receipt/1" if premium else None,
                        approval=approval if premium else None)
    doc = lane_receipt(d, ctx)
    assert check_lane_receipt(doc) == [], doc
    gates = guardrail_decisions(d, ctx)
    assert doc["policy_decision_ref"] == gates[-1]["decisionId"]
    json.dumps(gates, allow_nan=False)
