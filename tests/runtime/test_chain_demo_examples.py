"""Declared chains, the demo, and the examples (each example runs as a test)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentlanes import Chain, ConfigurationError, PolicyError, VerificationFailed
from agentlanes.chain import StepSpec, VerifierSpec, bundled_stages_dir
from agentlanes.demo import main as demo_main
from agentlanes.stores import MemoryStore
from agentlanes.testing import TestModel
from tests.conftest import ROOT, healthy
from tests.runtime.test_stages import make_lanes


def test_bundled_chain_loads() -> None:
    chain = Chain.load(bundled_stages_dir() / "fix-failing-test.chain.json")
    assert [(s.name, s.stage) for s in chain.steps] == [("plan", "planning"), ("execute", "execution"),
                                                        ("finalize", "finalization")]
    assert chain.task_class == "routine-code" and chain.steps[2].risk_class == "low"


def test_chain_documents_are_checked(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text(json.dumps({"kind": "AgentLanesChain", "name": "c", "taskClass": "x",
                                                 "steps": ["missing"]}))
    with pytest.raises(PolicyError, match=r"missing\.json: no such file"):
        Chain.load(tmp_path / "c.json")
    (tmp_path / "s.json").write_text(json.dumps({"kind": "AgentLanesStage", "name": "s", "stage": "dreaming",
                                                 "type": "model", "prompt": "x"}))
    (tmp_path / "c2.json").write_text(json.dumps({"kind": "AgentLanesChain", "name": "c", "taskClass": "x",
                                                  "steps": ["s"]}))
    with pytest.raises(PolicyError, match=r"/stage"):
        Chain.load(tmp_path / "c2.json")
    with pytest.raises(ConfigurationError, match="two steps named 'a'"):
        Chain([StepSpec(name="a", stage="planning", type="model", prompt="p")] * 2, name="c", task_class="t")
    with pytest.raises(ConfigurationError, match="needs verifiers and a subject"):
        Chain([StepSpec(name="v", stage="verification", type="verify")], name="c", task_class="t")


async def test_declared_chain_with_tool_and_verify_steps(tmp_path: Path) -> None:
    steps = [
        StepSpec(name="draft", stage="planning", type="model", prompt="Draft for {task}"),
        StepSpec(name="count", stage="tool-use", type="tool", tool="tests.runtime.test_chain_demo_examples:count"),
        StepSpec(name="check", stage="verification", type="verify", subject="count",
                 verifiers=[VerifierSpec(type="callable", ref="tests.runtime.test_chain_demo_examples:positive")]),
    ]
    lanes = make_lanes(tmp_path, {"standard": TestModel(text="hello world")})
    result = await Chain(steps, name="c", task_class="routine-code").run("greet", lanes=lanes)
    assert result.output == 2 and result.status == "succeeded"
    assert [r.lane for r in result.records] == ["standard", "no-model", "no-model"]
    bad = [*steps[:2], StepSpec(name="check", stage="verification", type="verify", subject="draft",
                                verifiers=[VerifierSpec(type="callable",
                                                        ref="tests.runtime.test_chain_demo_examples:positive")])]
    with pytest.raises(VerificationFailed, match="'check' failed verification"):
        await Chain(bad, name="c", task_class="routine-code").run("greet", lanes=lanes)


def count(values: dict[str, object]) -> int:
    return len(str(values["draft"]).split())


def positive(value: object) -> bool:
    return isinstance(value, int) and value > 0


async def test_unknown_prompt_placeholder_is_named(tmp_path: Path) -> None:
    step = StepSpec(name="a", stage="planning", type="model", prompt="{nothing}")
    lanes = make_lanes(tmp_path, {"standard": TestModel()})
    with pytest.raises(ConfigurationError, match=r"placeholder \{nothing\} names nothing.*known: .*task"):
        await Chain([step], name="c", task_class="routine-code").run("t", lanes=lanes)


def test_demo_runs_offline_with_a_receipt_in_its_summary(tmp_path: Path) -> None:
    out = io.StringIO()
    started = time.perf_counter()
    code = demo_main(["--data-dir", str(tmp_path / "home"), "--task", "fix calc"], out=out)
    elapsed = time.perf_counter() - started
    text = out.getvalue()
    assert code == 0, text
    assert elapsed < 30
    assert "bundled doubles standing in for the lanes" in text
    assert "task: fix calc" in text
    assert "escalation receipts: 1" in text
    assert "standard -> high-end (repeated-standard-lane-failure)" in text
    assert "execute            execution     standard -> high-end        3" in text
    assert "finalize           finalization  cheap" in text
    workspace = next((tmp_path / "home" / "workspaces").iterdir())
    assert "for item in items:" in (workspace / "calc.py").read_text()
    assert (tmp_path / "home" / "agentlanes.db").is_file()


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.py")), ids=lambda p: p.name)
def test_examples_run(example: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(example)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={"AGENTLANES_LOG_LEVEL": "warning", "PATH": "/usr/bin:/bin",
                                            "PYTHONPATH": str(ROOT)}, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_cli_demo_from_another_directory(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "agentlanes", "demo"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "escalation receipts: 1" in proc.stdout
    assert (tmp_path / ".agentlanes" / "agentlanes.db").is_file()
    assert MemoryStore  # the default store is SQLite, not memory
    assert healthy()
