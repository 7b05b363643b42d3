"""The agentlanes command line: route, route --batch, validate."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agentlanes import cli, policy
from tests.conftest import POLICIES, bundled_json, healthy


@pytest.fixture
def resources(tmp_path: Path) -> Path:
    path = tmp_path / "resources.json"
    path.write_text(json.dumps(healthy()))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_route_prints_a_native_decision(capsys: pytest.CaptureFixture[str], resources: Path) -> None:
    code, out, err = run(capsys, "route", "--resources", str(resources), "--task-class", "routine-code",
                         "--stage", "planning")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schemaVersion"] == "agentlanes.route-decision/1"
    assert (doc["status"], doc["lane"], doc["estimatedCost"]) == ("selected", "standard", 0.02)
    assert doc["documents"]["policyId"] == "urn:socioprophet:model-routing-policy:agentlanes-default"


def test_route_flags_reach_the_decision(capsys: pytest.CaptureFixture[str], resources: Path) -> None:
    code, out, _ = run(capsys, "route", "--resources", str(resources), "--task-class", "architecture-decision",
                       "--stage", "planning", "--risk-class", "high", "--escalation-reason", "architecture-decision",
                       "--requested-lane", "pro", "--budget-window", "session", "--budget-remaining", "0.3",
                       "--format", "upstream", "--compact")
    assert code == 0
    assert len(out.strip().splitlines()) == 1
    doc = json.loads(out)
    assert doc["kind"] == "AgentExecutionRouteDecision"
    assert doc["selected"]["lane"] == "high-end" and doc["selected"]["status"] == "downgraded"
    assert doc["input"]["budgetWindow"] == "session" and doc["input"]["budgetRemaining"] == 0.3
    pro = doc["candidateSet"][5]
    assert pro["lane"] == "pro" and "budget-insufficient" in pro["reasons"]


def test_route_deterministic(capsys: pytest.CaptureFixture[str], resources: Path) -> None:
    code, out, _ = run(capsys, "route", "--resources", str(resources), "--task-class", "routine-code",
                       "--stage", "verification", "--deterministic")
    assert code == 0 and json.loads(out)["lane"] == "no-model"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--task-class", "juggling", "--stage", "planning"], "Task class 'juggling' is not defined"),
        (["--task-class", "routine-code", "--stage", "planning", "--risk-class", "extreme"],
         "Risk class 'extreme' has no risk floor"),
        (["--task-class", "routine-code", "--stage", "planning", "--policy", "/nonexistent.json"],
         "/nonexistent.json: no such file"),
    ],
)
def test_route_errors_exit_1_with_a_message(capsys: pytest.CaptureFixture[str], resources: Path,
                                            extra: list[str], message: str) -> None:
    code, out, err = run(capsys, "route", "--resources", str(resources), *extra)
    assert code == 1 and out == ""
    assert message in err


def test_route_without_required_flags(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "route", "--task-class", "routine-code")
    assert code == 2 and "--resources, --stage" in err


def test_route_missing_signal_is_a_deferred_decision(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(healthy(networkAvailable=None)))
    code, out, _ = run(capsys, "route", "--resources", str(path), "--task-class", "routine-code",
                       "--stage", "planning")
    doc = json.loads(out)
    assert code == 0 and doc["status"] == "deferred" and doc["reasons"] == ["missing-signal:networkAvailable"]


# ------------------------------------------------------------------ batch


def batch_lines(resources: Path) -> list[str]:
    good = {"taskClass": "routine-code", "stage": "planning", "resources": str(resources)}
    return [
        json.dumps(good),
        json.dumps({**good, "taskClass": "juggling"}),
        "not json",
        json.dumps({**good, "resources": healthy(), "riskClass": "low", "stage": "classification",
                    "taskClass": "log-triage"}),
        "",
        json.dumps({**good, "budgetRemaining": "lots"}),
        json.dumps({**good, "policy": "/nonexistent/policy.json"}),
        json.dumps({**good, "colour": "blue"}),
        json.dumps([1, 2]),
        json.dumps({**good, "requestedLane": "turbo"}),
        json.dumps({"stage": "planning", "resources": str(resources)}),
        json.dumps({**good, "budgetWindow": "fortnight"}),
        json.dumps({**good, "deterministic": True, "stage": "verification"}),
    ]


def test_batch_writes_one_line_per_request_in_order(capsys: pytest.CaptureFixture[str], resources: Path,
                                                    tmp_path: Path) -> None:
    path = tmp_path / "batch.jsonl"
    path.write_text("\n".join(batch_lines(resources)) + "\n")
    code, out, _ = run(capsys, "route", "--batch", str(path))
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 13
    assert rows[0]["lane"] == "standard"
    assert rows[1] == {"error": rows[1]["error"]} and "line 2: Task class 'juggling'" in rows[1]["error"]
    assert "line 3: not a JSON object" in rows[2]["error"]
    assert rows[3]["lane"] == "local-cheap"
    assert "line 5: empty line" in rows[4]["error"]
    assert "line 6: budgetRemaining must be a number" in rows[5]["error"]
    assert "/nonexistent/policy.json: no such file" in rows[6]["error"]
    assert "unknown key 'colour'" in rows[7]["error"]
    assert "must be a JSON object, not list" in rows[8]["error"]
    assert "Requested lane 'turbo' is not a lane" in rows[9]["error"]
    assert "line 11: taskClass is required" in rows[10]["error"]
    assert "Budget window 'fortnight'" in rows[11]["error"]
    assert rows[12]["lane"] == "no-model"


def test_batch_from_stdin_in_upstream_form(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                           resources: Path) -> None:
    lines = [json.dumps({"taskClass": "routine-code", "stage": "planning", "resources": str(resources)})] * 3
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    code, out, _ = run(capsys, "route", "--batch", "-", "--format", "upstream")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(rows) == 3
    assert all(r["kind"] == "AgentExecutionRouteDecision" for r in rows)


def test_batch_loads_each_document_once(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                        resources: Path, tmp_path: Path) -> None:
    pol = tmp_path / "policy.json"
    pol.write_text((POLICIES / "policy.json").read_text())
    calls: list[str] = []
    real = policy.read_json

    def counting(path: Any) -> Any:
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(policy, "read_json", counting)
    monkeypatch.setattr(cli, "read_json", counting)
    line = json.dumps({"taskClass": "routine-code", "stage": "planning", "resources": str(resources),
                       "policy": str(pol)})
    path = tmp_path / "b.jsonl"
    path.write_text("\n".join([line] * 50) + "\n")
    code, out, _ = run(capsys, "route", "--batch", str(path))
    assert code == 0 and len(out.splitlines()) == 50
    assert calls.count(str(pol)) == 1
    assert calls.count(str(resources)) == 1


def test_batch_unreadable_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "route", "--batch", str(tmp_path / "missing.jsonl"))
    assert code == 1 and "Cannot read the batch file" in err and "missing.jsonl: No such file" in err


# ------------------------------------------------------------------ validate


def test_validate_bundled(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "validate")
    assert code == 0, err
    assert out.count("ok: <bundled:") == 3


def test_validate_reports_every_problem(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pol = bundled_json("policy.json")
    pol["chainStages"][3]["defaultLane"] = "turbo"
    pol["escalationPolicy"]["repeatedFailureThreshold"] = 0
    bad = tmp_path / "bad-policy.json"
    bad.write_text(json.dumps(pol))
    cat = bundled_json("price-catalog.json")
    cat["lanes"][2]["defaultProfileRef"] = "nothing"
    badcat = tmp_path / "bad-catalog.json"
    badcat.write_text(json.dumps(cat))
    code, _, err = run(capsys, "validate", str(bad), str(badcat))
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("agentlanes: error:")]
    assert len(errors) == 3
    assert any("/chainStages/3/defaultLane" in e for e in errors)
    assert any("/escalationPolicy/repeatedFailureThreshold" in e for e in errors)
    assert any("defaultProfileRef 'nothing'" in e for e in errors)


def test_validate_strict_turns_warnings_into_failures(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pol = bundled_json("policy.json")
    pol["x-owner"] = "platform"
    path = tmp_path / "p.json"
    path.write_text(json.dumps(pol))
    code, _, err = run(capsys, "validate", str(path))
    assert code == 0 and "unknown field /x-owner" in err
    code, _, _ = run(capsys, "validate", "--strict", str(path))
    assert code == 1


def test_module_entry_point_runs(tmp_path: Path, resources: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "agentlanes", "route", "--resources", str(resources),
                           "--task-class", "routine-code", "--stage", "planning", "--compact"],
                          capture_output=True, text=True, cwd=tmp_path, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["lane"] == "standard"


def test_batch_inline_signals_are_never_confused(capsys: pytest.CaptureFixture[str]) -> None:
    # Same keys, values that differ only in type or by a hair: each line must be
    # decided on its own signals even though snapshots are shared between equal objects.
    variants = [healthy(), healthy(networkAvailable=1), healthy(), healthy(providerErrorRate=0.05),
                healthy(providerErrorRate=0.0500001), healthy(networkAvailable=False)]
    lines = "\n".join(json.dumps({"taskClass": "routine-code", "stage": "planning", "resources": v})
                      for v in variants) + "\n"
    out = io.StringIO()
    assert cli._run_batch(io.StringIO(lines), out, "native") == 0
    rows = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [r["lane"] for r in rows] == ["standard", None, "standard", "standard", None, None]
    assert rows[1]["reasons"] == ["invalid-signal:networkAvailable"]
    assert "provider-error-rate-too-high" in rows[4]["candidates"][3]["reasons"]


# ------------------------------------------------------------ neighbours' inputs (CONTRACT D)

UPSTREAM_BINDING = "examples/local-personal-route-binding.llama32.json"
UPSTREAM_CONTRACT = "model-governance-ledger/examples/personal-tuning-contract.local-llama32-user.json"
CEILING_FILES = ["environment-state-routing-policy.failed.json", "runtime-state-routing-policy.allocated.json"]


def _upstream(relative: str) -> str:
    from tests.conftest import UPSTREAM

    path = UPSTREAM / relative
    if not path.is_file():
        pytest.skip(f"the upstream contract folder is absent ({path})")
    return str(path)


def _findings_file(tmp_path: Path, metadata: dict[str, str], name: str = "findings.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"findings": [], "metadata": metadata}))
    return path


def test_route_findings_keep_the_prompt_local(capsys: pytest.CaptureFixture[str], resources: Path,
                                              tmp_path: Path) -> None:
    found = _findings_file(tmp_path, {"anonymize.requires_local_model": "True"})
    code, out, err = run(capsys, "route", "--resources", str(resources), "--task-class", "log-triage",
                         "--stage", "classification", "--risk-class", "low", "--requested-lane", "standard",
                         "--findings", str(found))
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["status"], doc["lane"]) == ("downgraded", "local-cheap")
    assert "finding:requires-local-model" in doc["requestedEvaluation"]["reasons"]
    assert doc["neighbourInputs"]["findings"]["matchedKeys"] == ["anonymize.requires_local_model"]


def test_route_malformed_findings_file_fails_closed(capsys: pytest.CaptureFixture[str], resources: Path,
                                                    tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff not json")
    code, out, _ = run(capsys, "route", "--resources", str(resources), "--task-class", "routine-code",
                       "--stage", "planning", "--findings", str(bad))
    doc = json.loads(out)
    assert code == 0 and doc["status"] == "deferred"
    assert all("invalid-findings" in c["reasons"] for c in doc["candidates"] if c["lane"] != "no-model")


def test_route_ceilings_repeat(capsys: pytest.CaptureFixture[str], resources: Path) -> None:
    files = [_upstream(f"examples/{name}") for name in CEILING_FILES]
    code, out, err = run(capsys, "route", "--resources", str(resources), "--task-class", "routine-code",
                         "--stage", "execution", "--ceiling", files[0], "--ceiling", files[1])
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["status"], doc["reasons"]) == ("deferred", ["ceiling:autonomy:report_only"])
    assert doc["neighbourInputs"]["mustPreserveWarnings"] == ["environment_validation_failed",
                                                              "runtime_parity_not_certified"]
    assert len(doc["neighbourInputs"]["ceilings"]) == 2
    code, out, _ = run(capsys, "route", "--resources", str(resources), "--task-class", "routine-code",
                       "--stage", "planning", "--risk-class", "low", "--ceiling", files[0], "--format", "upstream")
    doc = json.loads(out)
    assert doc["candidateSet"][3]["reasons"][-1] == "ceiling:model-lane:cheap"
    assert doc["evidence"]["agentlanesNeighbourInputs"]["ceilings"][0]["valid"] is True


def _binding_flags(task: str, *extra: str) -> list[str]:
    return ["--binding", _upstream(UPSTREAM_BINDING), "--consent", _upstream(UPSTREAM_CONTRACT),
            "--binding-task", task, "--now", "2026-06-01T00:00:00Z", *extra]


@pytest.mark.parametrize(("task", "extra", "target", "reasons"), [
    ("office-assist", ["--ledger-approved"], "personal-local", []),
    ("office-assist", [], "base-local", ["personal:ledger-approval-missing"]),
    ("complex-reasoning", ["--ledger-approved"], "quality-local", ["hosted:egress-needs-policy"]),
    ("complex-reasoning", ["--ledger-approved", "--egress-approval", "policy://egress/1"], "hosted", []),
    ("router", ["--ledger-approved"], "base-local", []),
])
def test_bind_decides_the_worked_examples(capsys: pytest.CaptureFixture[str], resources: Path, task: str,
                                          extra: list[str], target: str, reasons: list[str]) -> None:
    code, out, err = run(capsys, "bind", *_binding_flags(task, *extra), "--resources", str(resources))
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["target"], doc["reasons"]) == (target, reasons)
    assert doc["profileRef"] == (None if target == "hosted" else
                                 "urn:srcos:model-profile:local-llama32-3b" if target == "quality-local" else
                                 "urn:srcos:model-profile:local-llama32-1b")
    assert (doc["artifactRef"] is not None) == (target == "personal-local")


def test_bind_without_resources_fails_closed_with_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "bind", *_binding_flags("router", "--ledger-approved"), "--compact")
    assert code == 0 and json.loads(out)["target"] == "deny"
    assert "no --resources given" in err


def test_route_with_a_binding(capsys: pytest.CaptureFixture[str], resources: Path) -> None:
    code, out, err = run(capsys, "route", "--resources", str(resources), "--task-class", "log-triage",
                         "--stage", "classification", "--risk-class", "low", "--requested-lane", "cheap",
                         *_binding_flags("office-assist", "--ledger-approved"))
    assert code == 0, err
    doc = json.loads(out)
    assert doc["lane"] == "local-cheap" and "binding:local-only" in doc["requestedEvaluation"]["reasons"]
    assert doc["neighbourInputs"]["binding"]["target"] == "personal-local"


@pytest.mark.parametrize(("argv", "message"), [
    (["--consent", "c.json"], "--consent configure a binding and take effect only with --binding FILE"),
    (["--ledger-approved", "--now", "2026-01-01T00:00:00Z"], "--ledger-approved, --now configure a binding"),
    (["--binding", "b.json"], "--binding needs --binding-task TASK"),
])
def test_binding_flag_usage_errors(capsys: pytest.CaptureFixture[str], resources: Path, argv: list[str],
                                   message: str) -> None:
    code, _, err = run(capsys, "route", "--resources", str(resources), "--task-class", "routine-code",
                       "--stage", "planning", *argv)
    assert code == 2 and message in err
    code, _, err = run(capsys, "bind", "--binding-task", "router")
    assert code == 2 and "bind needs --binding FILE" in err


def test_bad_binding_time_is_a_clear_error(capsys: pytest.CaptureFixture[str], resources: Path) -> None:
    flags = _binding_flags("router")
    flags[flags.index("--now") + 1] = "tomorrow"
    code, _, err = run(capsys, "bind", *flags, "--resources", str(resources))
    assert code == 1 and "The binding time 'tomorrow' is not usable" in err


@pytest.mark.parametrize("flag", ["--findings", "--ceiling", "--binding"])
def test_input_files_must_be_regular_files(tmp_path: Path, resources: Path, flag: str) -> None:
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    extra = ["--binding-task", "router"] if flag == "--binding" else []
    for target in (str(fifo), "/dev/zero", str(tmp_path)):
        proc = subprocess.run([sys.executable, "-m", "agentlanes", "route", "--resources", str(resources),
                               "--task-class", "routine-code", "--stage", "planning", flag, target, *extra],
                              capture_output=True, text=True, check=False, timeout=60)
        assert proc.returncode == 1, proc.stderr
        assert "agentlanes reads" in proc.stderr or "is a directory" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_input_files_are_bounded(capsys: pytest.CaptureFixture[str], resources: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    with big.open("wb") as fh:
        fh.truncate(5 * 1024 * 1024)
    code, _, err = run(capsys, "route", "--resources", str(resources), "--task-class", "routine-code",
                       "--stage", "planning", "--findings", str(big))
    assert code == 1 and "more than the 4194304 bytes agentlanes reads" in err
    code, _, err = run(capsys, "route", "--resources", str(resources), "--task-class", "routine-code",
                       "--stage", "planning", "--ceiling", str(tmp_path / "missing.json"))
    assert code == 1 and "does not exist" in err


def test_batch_accepts_the_neighbours_inputs(capsys: pytest.CaptureFixture[str], resources: Path,
                                             tmp_path: Path) -> None:
    found = _findings_file(tmp_path, {"sensitivity": "restricted"})
    good = {"taskClass": "log-triage", "stage": "classification", "riskClass": "low", "resources": str(resources)}
    binding = {"binding": _upstream(UPSTREAM_BINDING), "consent": _upstream(UPSTREAM_CONTRACT),
               "bindingTask": "office-assist", "ledgerApproved": True, "now": "2026-06-01T00:00:00Z"}
    lines = [
        {**good, "requestedLane": "cheap", "findings": str(found)},
        {**good, "requestedLane": "cheap", "findings": {"findings": [], "metadata": {"sensitivity": "restricted"}}},
        {**good, "stage": "execution", "taskClass": "routine-code",
         "ceilings": [_upstream(f"examples/{CEILING_FILES[0]}"), json.loads(Path(_upstream(
             f"examples/{CEILING_FILES[1]}")).read_text())]},
        {**good, "requestedLane": "cheap", **binding},
        {**good, "binding": binding["binding"]},
        {**good, "consent": binding["consent"]},
        {**good, "ceilings": ["/nonexistent/ceiling.json"]},
        {**good, "ceilings": [3]},
        {**good, "findings": "not a file"},
        {**good, "requestedLane": "cheap", **binding, "now": "whenever"},
    ]
    path = tmp_path / "batch.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    code, out, _ = run(capsys, "route", "--batch", str(path))
    rows = [json.loads(x) for x in out.splitlines()]
    assert code == 0 and len(rows) == len(lines)
    assert rows[0]["lane"] == rows[1]["lane"] == "local-cheap"
    assert rows[0]["neighbourInputs"]["findings"]["digest"] == rows[1]["neighbourInputs"]["findings"]["digest"]
    assert rows[0]["decisionId"] == rows[1]["decisionId"]
    assert rows[2]["reasons"] == ["ceiling:autonomy:report_only"]
    assert rows[3]["neighbourInputs"]["binding"]["target"] == "personal-local"
    assert "binding needs bindingTask" in rows[4]["error"]
    assert "consent take effect only with binding" in rows[5]["error"]
    assert "does not exist" in rows[6]["error"]
    assert "ceilings must be an array of objects or paths" in rows[7]["error"]
    assert "The findings file 'not a file' does not exist" in rows[8]["error"]
    assert "The binding time 'whenever' is not usable" in rows[9]["error"]


def test_evidence_commands(capsys: pytest.CaptureFixture[str], resources: Path, tmp_path: Path) -> None:
    decisions = []
    for argv in (["--task-class", "routine-code", "--stage", "planning"],
                 ["--task-class", "architecture-decision", "--stage", "planning", "--risk-class", "high"],
                 ["--task-class", "routine-code", "--stage", "verification", "--deterministic"]):
        code, out, _ = run(capsys, "route", "--resources", str(resources), "--compact", *argv)
        decisions.append(json.loads(out))
    lines = [json.dumps(decisions[0]),
             json.dumps({"decision": decisions[1], "context": {"runId": "run-7", "issuedAt": "2026-06-01T00:00:00Z"}}),
             json.dumps({"decision": decisions[2], "context": {"deterministicVerifiers": True}})]
    src = tmp_path / "decisions.jsonl"
    src.write_text("\n".join(lines) + "\n")
    common = ["--run-id", "run-1", "--issued-at", "2026-06-02T00:00:00Z"]
    code, out, err = run(capsys, "evidence", "convert", str(src), "--format", "agentplane-lane-receipts", *common)
    assert code == 0, err
    receipts = [json.loads(x) for x in out.splitlines()]
    assert [r["lane_decision_outcome"] for r in receipts] == ["lane_selected", "deferred", "lane_selected"]
    assert receipts[1]["run_ref"] == "agentlanes://run/run-7" and receipts[0]["issued_at"] == "2026-06-02T00:00:00Z"
    assert receipts[2]["verification_mode"] == "mechanical_tools_only"
    rpath = tmp_path / "receipts.jsonl"
    rpath.write_text(out)
    code, out, _ = run(capsys, "evidence", "check-receipts", str(rpath))
    assert code == 0 and "3 of 3 receipt(s) valid" in out
    broken = dict(receipts[0], selected_lane="pro")
    rpath.write_text(json.dumps(broken) + "\n")
    code, _, err = run(capsys, "evidence", "check-receipts", str(rpath))
    assert code == 1 and "line 1: schema: selected_lane=pro requires escalation_receipt_ref" in err
    code, out, _ = run(capsys, "evidence", "convert", str(src), "--format", "guardrail-decisions", *common)
    assert [json.loads(x)["decision"] for x in out.splitlines()] == ["allow", "defer", "allow"]
    code, out, _ = run(capsys, "evidence", "convert", str(src), "--format", "evidence-journal", *common)
    jpath = tmp_path / "journal.jsonl"
    jpath.write_text(out)
    code, out, _ = run(capsys, "evidence", "verify-journal", str(jpath))
    assert code == 0 and json.loads(out)["verified"] is True and json.loads(out)["records"] == 6
    jpath.write_text(jpath.read_text().replace('"lane_selected"', '"escalated"', 1))
    code, out, _ = run(capsys, "evidence", "verify-journal", str(jpath))
    assert code == 1 and json.loads(out)["reason"] == "evidenceDigest mismatch"


def test_evidence_convert_errors_name_the_line(capsys: pytest.CaptureFixture[str], resources: Path,
                                               tmp_path: Path) -> None:
    pol = bundled_json("policy.json")
    extra = dict(pol["taskClasses"][2], taskClass="data-cleanup")
    pol["taskClasses"].append(extra)
    ppath = tmp_path / "policy.json"
    ppath.write_text(json.dumps(pol))
    code, out, _ = run(capsys, "route", "--resources", str(resources), "--compact", "--policy", str(ppath),
                       "--task-class", "data-cleanup", "--stage", "planning")
    src = tmp_path / "d.jsonl"
    src.write_text(out)
    code, _, err = run(capsys, "evidence", "convert", str(src), "--format", "agentplane-lane-receipts",
                       "--policy", str(ppath))
    assert code == 1 and "Task class 'data-cleanup' has no agentplane task class" in err
    code, out, err = run(capsys, "evidence", "convert", str(src), "--format", "agentplane-lane-receipts",
                         "--policy", str(ppath), "--task-class-map", "data-cleanup=data_extraction")
    assert code == 0, err
    assert json.loads(out)["task_class"] == "data_extraction"
    src.write_text('{"decision": {"schemaVersion": "nope"}}\n')
    code, _, err = run(capsys, "evidence", "convert", str(src), "--format", "guardrail-decisions")
    assert code == 1 and "line 1: Not a native agentlanes route decision" in err


def test_batch_refuses_single_decision_inputs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    found = _findings_file(tmp_path, {})
    code, _, err = run(capsys, "route", "--batch", "-", "--findings", str(found))
    assert code == 2 and "--findings apply to one decision; with --batch" in err
