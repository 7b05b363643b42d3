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
    assert code == 1 and "cannot read batch file" in err


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
