"""Loading routing documents: strict types, precise errors, cross-document checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agentlanes import PolicyBundle, PolicyError, PriceCatalog, RoutingOptimizer, RoutingPolicy, load_bundle
from agentlanes.policy import load_document
from tests.conftest import bundled_json


def write(tmp_path: Path, name: str, data: Any) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def bundle_with(policy: Any = None, optimizer: Any = None, catalog: Any = None) -> PolicyBundle:
    return PolicyBundle.from_loaded(
        load_document(policy or bundled_json("policy.json"), source="policy.json"),
        load_document(optimizer or bundled_json("optimizer.json"), source="optimizer.json"),
        load_document(catalog or bundled_json("price-catalog.json"), source="catalog.json"),
    )


def test_bundled_defaults_load() -> None:
    b = load_bundle()
    assert isinstance(b.policy, RoutingPolicy)
    assert isinstance(b.optimizer, RoutingOptimizer)
    assert isinstance(b.catalog, PriceCatalog)
    assert b.warnings == ()
    assert b.policy.escalation_policy.repeated_failure_threshold == 2
    assert b.digest.startswith("sha256:")


def test_snake_case_attributes_camel_case_wire() -> None:
    b = load_bundle()
    stage = b.policy.chain_stages[3]
    assert stage.max_lane_without_escalation == "standard"
    dumped = stage.model_dump()
    assert "maxLaneWithoutEscalation" in dumped


def test_bad_lane_names_file_pointer_value_and_lanes(tmp_path: Path) -> None:
    doc = bundled_json("policy.json")
    doc["chainStages"][3]["defaultLane"] = "turbo"
    path = write(tmp_path, "policy.json", doc)
    with pytest.raises(PolicyError, match=r"Lane 'turbo' at /chainStages/3/defaultLane is not a lane "
                                          r"\(lanes: no-model, local-cheap, cheap, standard, high-end, pro\)") as ei:
        load_document(path)
    assert ei.value.pointer == "/chainStages/3/defaultLane"
    assert ei.value.source == str(path)
    assert str(path) in str(ei.value)


@pytest.mark.parametrize(
    ("mutate", "pointer", "match"),
    [
        (lambda d: d["escalationPolicy"].__setitem__("repeatedFailureThreshold", "2"),
         "/escalationPolicy/repeatedFailureThreshold", r"'2' .* valid integer"),
        (lambda d: d["escalationPolicy"].__setitem__("repeatedFailureThreshold", 9),
         "/escalationPolicy/repeatedFailureThreshold", r"9 .* less than or equal to 5"),
        (lambda d: d["defaultPosture"].__setitem__("failClosed", "true"),
         "/defaultPosture/failClosed", r"'true' .* valid boolean"),
        (lambda d: d.pop("chainStages"), "/chainStages", r"required but missing"),
        (lambda d: d["taskClasses"][0]["allowedEscalationLanes"].append("no-model"),
         "/taskClasses/0/allowedEscalationLanes/1", r"'no-model' .* not allowed \(allowed: 'cheap'"),
        (lambda d: d.__setitem__("policyId", "my-policy"), "/policyId", r"must match the pattern"),
        (lambda d: d["escalationPolicy"]["allowedReasons"].append("because"),
         "/escalationPolicy/allowedReasons/10", r"'because' .* not allowed"),
    ],
)
def test_policy_errors_are_precise(mutate: Any, pointer: str, match: str) -> None:
    doc = bundled_json("policy.json")
    mutate(doc)
    with pytest.raises(PolicyError, match=match) as ei:
        load_document(doc, source="p.json")
    assert ei.value.pointer == pointer
    assert pointer in str(ei.value)


@pytest.mark.parametrize(
    ("mutate", "pointer", "match"),
    [
        (lambda d: d["budgetPolicy"]["windows"][0].__setitem__("maxSpend", -1),
         "/budgetPolicy/windows/0/maxSpend", r"greater than or equal to 0"),
        (lambda d: d["budgetPolicy"]["windows"][0].__setitem__("highEndMaxShare", 1.5),
         "/budgetPolicy/windows/0/highEndMaxShare", r"less than or equal to 1"),
        (lambda d: d["resourcePolicy"]["hostedAdmission"].__setitem__("maxProviderLatencyP95Ms", 0),
         "/resourcePolicy/hostedAdmission/maxProviderLatencyP95Ms", r"greater than or equal to 1"),
        (lambda d: d["qualityPolicy"]["riskFloors"][1].__setitem__("riskClass", "severe"),
         "/qualityPolicy/riskFloors/1/riskClass", r"'severe' .* not allowed"),
    ],
)
def test_optimizer_numbers_in_range(mutate: Any, pointer: str, match: str) -> None:
    doc = bundled_json("optimizer.json")
    mutate(doc)
    with pytest.raises(PolicyError, match=match) as ei:
        load_document(doc)
    assert ei.value.pointer == pointer


def test_nan_and_infinity_are_not_json(tmp_path: Path) -> None:
    text = json.dumps(bundled_json("optimizer.json")).replace('"maxSpend": 2.0', '"maxSpend": NaN')
    with pytest.raises(PolicyError, match=r"not valid JSON: NaN"):
        load_document(write(tmp_path, "o.json", text))
    doc = bundled_json("optimizer.json")
    doc["budgetPolicy"]["windows"][0]["maxSpend"] = float("inf")
    with pytest.raises(PolicyError, match=r"/budgetPolicy/windows/0/maxSpend .*finite"):
        load_document(doc)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{", r"not valid JSON"),
        ("[]", r"must be a JSON object, not list"),
        ('{"kind": "Banana"}', r"/kind is 'Banana'; a routing document's kind is one of"),
        ("{}", r"/kind is missing"),
        ("[" * 100000 + "]" * 100000, r"not valid JSON|nested too deeply"),
    ],
)
def test_unreadable_documents(tmp_path: Path, content: str, match: str) -> None:
    with pytest.raises(PolicyError, match=match):
        load_document(write(tmp_path, "x.json", content))


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"no such file"):
        load_document(tmp_path / "nope.json")
    with pytest.raises(PolicyError, match=r"is a directory"):
        load_document(tmp_path)


def test_every_problem_is_reported() -> None:
    doc = bundled_json("policy.json")
    doc["chainStages"][0]["defaultLane"] = "x"
    doc["chainStages"][1]["defaultLane"] = "y"
    with pytest.raises(PolicyError, match=r"1 more problem") as ei:
        load_document(doc)
    assert [p for p, _ in ei.value.problems] == ["/chainStages/0/defaultLane", "/chainStages/1/defaultLane"]


def test_unknown_fields_are_warned_about_and_never_change_the_digest() -> None:
    plain = load_document(bundled_json("policy.json"))
    doc = bundled_json("policy.json")
    doc["x-team"] = "routing"
    doc["escalationPolicy"]["allowAnything"] = True
    extra = load_document(doc, source="p.json")
    assert extra.digest == plain.digest
    assert sorted(extra.warnings) == [
        "p.json: unknown field /escalationPolicy/allowAnything is ignored (it cannot change a routing decision).",
        "p.json: unknown field /x-team is ignored (it cannot change a routing decision).",
    ]
    assert plain.warnings == ()


# ------------------------------------------------------------- cross-document


def test_candidate_order_unknown_lane() -> None:
    opt = bundled_json("optimizer.json")
    opt["selectionPolicy"]["candidateOrder"][2] = "turbo"
    with pytest.raises(PolicyError, match=r"Lane 'turbo' at /selectionPolicy/candidateOrder/2 is not a lane") as ei:
        bundle_with(optimizer=opt)
    assert ei.value.source == "optimizer.json"


def test_candidate_order_duplicate_lane() -> None:
    opt = bundled_json("optimizer.json")
    opt["selectionPolicy"]["candidateOrder"].append("cheap")
    with pytest.raises(PolicyError, match=r"lane 'cheap' at /selectionPolicy/candidateOrder/6 is defined twice"):
        bundle_with(optimizer=opt)


def test_catalog_must_price_every_candidate_lane() -> None:
    cat = bundled_json("price-catalog.json")
    del cat["lanes"][4]
    with pytest.raises(PolicyError, match=r"prices no lane 'high-end'.*candidateOrder/4") as ei:
        bundle_with(catalog=cat)
    assert ei.value.pointer == "/lanes"


def test_default_profile_ref_must_resolve() -> None:
    cat = bundled_json("price-catalog.json")
    cat["lanes"][3]["defaultProfileRef"] = "urn:nowhere"
    with pytest.raises(PolicyError, match=r"defaultProfileRef 'urn:nowhere' at /lanes/3/defaultProfileRef names no "
                                          r"profile of lane 'standard'"):
        bundle_with(catalog=cat)


def test_duplicate_task_class() -> None:
    pol = bundled_json("policy.json")
    pol["taskClasses"].append(dict(pol["taskClasses"][0]))
    with pytest.raises(PolicyError, match=r"taskClass 'formatting-rewrite' at /taskClasses/8 is defined twice "
                                          r"\(first at /taskClasses/0\)"):
        bundle_with(policy=pol)


def test_currency_mismatch() -> None:
    cat = bundled_json("price-catalog.json")
    cat["currency"] = "EUR"
    with pytest.raises(PolicyError, match=r"/currency is 'EUR' but the optimizer's budgets are in 'USD'"):
        bundle_with(catalog=cat)


def test_policy_ref_mismatch_is_a_warning() -> None:
    pol = bundled_json("policy.json")
    pol["policyId"] = "urn:socioprophet:model-routing-policy:v2"
    b = bundle_with(policy=pol)
    assert any("does not match the policy's policyId" in w for w in b.warnings)


def test_wrong_document_in_a_role() -> None:
    with pytest.raises(PolicyError, match=r"expected a RoutingPolicy document for --policy, got PriceCatalog"):
        bundle_with(policy=bundled_json("price-catalog.json"))
