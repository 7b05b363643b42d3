"""Exact replay: recorded runs replay identically; changes are caught at the right step;
a trace cut at any span boundary replays without a false divergence."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from agentlanes import Chain, ConfigurationError, ReplayDivergence, cli
from agentlanes.chain import StepSpec, VerifierSpec
from agentlanes.demo import demo_chain, run_demo
from agentlanes.policy import PolicyBundle, load_document
from agentlanes.replay import Step, load_record, replay_run
from agentlanes.testing import assert_replays
from tests.conftest import bundled_json


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One real demo run: (data dir, trace)."""
    home = tmp_path_factory.mktemp("home")
    result = anyio.run(run_demo, "fix the calc tests", home, io.StringIO())
    return home, home / "traces" / f"{result.run_id}.otlp.jsonl"


def test_a_recorded_run_replays_identically(recorded: tuple[Path, Path]) -> None:
    home, trace = recorded
    record = load_record(trace)
    assert record.complete and record.chain == "agentlanes.demo:demo_chain"
    kinds = [s.kind for s in record.steps]
    assert kinds.count("call") == 5 and kinds.count("verify") == 6 and kinds.count("escalation") == 1
    assert assert_replays(trace, data_dir=home) == len(record.steps)


def test_replay_from_the_command_line(recorded: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    home, trace = recorded
    run_id = trace.name.split(".")[0]
    assert cli.main(["replay", run_id, "--data-dir", str(home)]) == 0
    steps = len(load_record(trace).steps)  # decisions, calls, tool results, verifier results, the receipt
    assert steps == 26
    assert f"{run_id}: replayed exactly, {steps} step(s) identical to the record" in capsys.readouterr().out
    assert cli.main(["replay", str(trace), "--chain", "agentlanes.demo:demo_chain", "--data-dir", str(home)]) == 0


def first(record_steps: list[Step], kind: str, stage: str, nth: int = 0) -> int:
    hits = [s.index for s in record_steps if s.kind == kind and s.stage == stage]
    return hits[nth]


def chain_with(change: Callable[[list[StepSpec]], list[StepSpec]], **chain_kw: Any) -> Chain:
    base = demo_chain()
    kw = {"name": base.name, "task_class": base.task_class, "risk_class": base.risk_class, **chain_kw}
    return Chain(change([s.model_copy() for s in base.steps]), **kw)


def edit(i: int, **fields: Any) -> Callable[[list[StepSpec]], list[StepSpec]]:
    def apply(steps: list[StepSpec]) -> list[StepSpec]:
        steps[i] = steps[i].model_copy(update=fields)
        return steps
    return apply


def bundle_with(policy: Callable[[dict[str, Any]], None] | None = None,
                optimizer: Callable[[dict[str, Any]], None] | None = None,
                catalog: Callable[[dict[str, Any]], None] | None = None) -> PolicyBundle:
    docs = {"policy.json": bundled_json("policy.json"), "optimizer.json": bundled_json("optimizer.json"),
            "price-catalog.json": bundled_json("price-catalog.json")}
    for name, fn in (("policy.json", policy), ("optimizer.json", optimizer), ("price-catalog.json", catalog)):
        if fn:
            fn(docs[name])
    return PolicyBundle.from_loaded(*(load_document(d) for d in docs.values()))


def _drop_schema_verifier(steps: list[StepSpec]) -> list[StepSpec]:
    steps[1] = steps[1].model_copy(update={"verifiers": steps[1].verifiers[1:]})
    return steps


def _extra_verifier(steps: list[StepSpec]) -> list[StepSpec]:
    extra = VerifierSpec(type="callable", name="extra", ref="agentlanes.demo:apply_patch")
    steps[1] = steps[1].model_copy(update={"verifiers": [*steps[1].verifiers, extra]})
    return steps


def _set_stage_cap(doc: dict[str, Any]) -> None:
    doc["chainStages"][3]["maxLaneWithoutEscalation"] = "high-end"


def _set_floor(doc: dict[str, Any]) -> None:
    doc["qualityPolicy"]["riskFloors"][1]["minimumLane"] = "cheap"


def _set_price(doc: dict[str, Any]) -> None:
    doc["lanes"][3]["profiles"][0]["pricing"]["minCost"] = 0.03


def _set_threshold(doc: dict[str, Any]) -> None:
    doc["escalationPolicy"]["repeatedFailureThreshold"] = 3


def _set_tiebreakers(doc: dict[str, Any]) -> None:
    doc["selectionPolicy"]["tieBreakers"] = ["local-first", "lower-cost"]


def _set_reasons(doc: dict[str, Any]) -> None:
    doc["escalationPolicy"]["allowedReasons"].remove("release-gate-review")


# (name, chain or None, bundle or None, how to find the step that must diverge)
CHANGES: list[tuple[str, Callable[[], Chain | None], Callable[[], PolicyBundle | None],
                    Callable[[list[Step]], int]]] = [
    ("plan prompt text", lambda: chain_with(edit(0, prompt="PLAN differently: {task}")), lambda: None,
     lambda st: first(st, "call", "plan")),
    ("plan system text", lambda: chain_with(edit(0, system="Be terse.")), lambda: None,
     lambda st: first(st, "call", "plan")),
    ("plan chain stage", lambda: chain_with(edit(0, stage="intake")), lambda: None,
     lambda st: first(st, "decision", "plan")),
    ("plan escalation reason", lambda: chain_with(edit(0, escalation_reason="hard-debugging")), lambda: None,
     lambda st: first(st, "decision", "plan")),
    ("plan risk class", lambda: chain_with(edit(0, risk_class="high")), lambda: None,
     lambda st: first(st, "decision", "plan")),
    ("chain risk class", lambda: chain_with(lambda s: s, risk_class="low"), lambda: None,
     lambda st: first(st, "decision", "plan")),
    ("chain task class", lambda: chain_with(lambda s: s, task_class="log-triage"), lambda: None,
     lambda st: first(st, "decision", "plan")),
    ("execute prompt text", lambda: chain_with(edit(1, prompt="PATCH now: {plan} {feedback}")), lambda: None,
     lambda st: first(st, "call", "execute")),
    ("execute system text", lambda: chain_with(edit(1, system="Reply in JSON.")), lambda: None,
     lambda st: first(st, "call", "execute")),
    ("execute stage kind", lambda: chain_with(edit(1, stage="review")), lambda: None,
     lambda st: first(st, "decision", "execute")),
    ("execute own reason", lambda: chain_with(edit(1, escalation_reason="hard-debugging")), lambda: None,
     lambda st: first(st, "decision", "execute")),
    ("execute tool removed", lambda: chain_with(edit(1, tool=None)), lambda: None,
     lambda st: first(st, "decision", "execute.tool")),
    ("verifier removed", lambda: chain_with(_drop_schema_verifier), lambda: None,
     lambda st: first(st, "verify", "execute.verify")),
    ("verifier renamed", lambda: chain_with(lambda s: _rename_first_verifier(s)), lambda: None,
     lambda st: first(st, "verify", "execute.verify")),
    ("verifier added", lambda: chain_with(_extra_verifier), lambda: None,
     lambda st: first(st, "verify", "execute.verify", 1) + 1),
    ("finalize risk class", lambda: chain_with(edit(2, risk_class="medium")), lambda: None,
     lambda st: first(st, "decision", "finalize")),
    ("finalize prompt", lambda: chain_with(edit(2, prompt="SUMMARY please: {task}")), lambda: None,
     lambda st: first(st, "call", "finalize")),
    ("finalize step removed", lambda: chain_with(lambda s: s[:2]), lambda: None,
     lambda st: first(st, "decision", "finalize")),
    ("step appended", lambda: chain_with(lambda s: [*s, s[2].model_copy(update={"name": "again"})]), lambda: None,
     lambda st: len(st)),
    ("policy stage cap", lambda: None, lambda: bundle_with(policy=_set_stage_cap), lambda st: 0),
    ("optimizer risk floor", lambda: None, lambda: bundle_with(optimizer=_set_floor), lambda st: 0),
    ("catalog price", lambda: None, lambda: bundle_with(catalog=_set_price), lambda st: 0),
    ("policy failure threshold", lambda: None, lambda: bundle_with(policy=_set_threshold), lambda st: 0),
    ("optimizer tie-breakers", lambda: None, lambda: bundle_with(optimizer=_set_tiebreakers), lambda st: 0),
    ("policy escalation reasons", lambda: None, lambda: bundle_with(policy=_set_reasons), lambda st: 0),
]


def _rename_first_verifier(steps: list[StepSpec]) -> list[StepSpec]:
    renamed = steps[1].verifiers[0].model_copy(update={"name": "shape"})
    steps[1] = steps[1].model_copy(update={"verifiers": [renamed, *steps[1].verifiers[1:]]})
    return steps


@pytest.mark.parametrize(("name", "make_chain", "make_bundle", "where"), CHANGES, ids=[c[0] for c in CHANGES])
def test_each_change_is_caught_at_its_step(recorded: tuple[Path, Path], name: str, make_chain: Any,
                                           make_bundle: Any, where: Callable[[list[Step]], int]) -> None:
    home, trace = recorded
    steps = load_record(trace).steps
    chain = make_chain() or demo_chain()
    with pytest.raises(ReplayDivergence) as ei:
        anyio.run(lambda: replay_run(trace, data_dir=home, chain=chain, bundle=make_bundle()))
    assert ei.value.index == where(steps), (name, str(ei.value))
    assert f"Replay step {ei.value.index}" in str(ei.value)


def test_there_are_at_least_twenty_kinds_of_change() -> None:
    assert len(CHANGES) >= 20


def _as_if_killed(home: Path, dest: Path, run_id: str) -> Path:
    """A copy of a data directory whose run index says the run is still running (what a
    kill -9 leaves behind)."""
    import shutil
    import sqlite3

    shutil.copytree(home, dest)
    db = sqlite3.connect(dest / "agentlanes.db")
    (entry,) = db.execute("SELECT entry FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    db.execute("UPDATE runs SET entry = ? WHERE run_id = ?",
               (json.dumps({**json.loads(entry), "status": "running"}), run_id))
    db.commit()
    db.close()
    return dest


def test_a_trace_cut_at_every_span_boundary(recorded: tuple[Path, Path], tmp_path: Path) -> None:
    """A killed run (the index says it is still running) replays up to where its record
    ends, at every cut; the same cuts of a run the index says finished are divergences."""
    home, trace = recorded
    run_id = trace.name.split(".")[0]
    killed = _as_if_killed(home, tmp_path / "killed", run_id)
    lines = trace.read_text().splitlines()
    for cut in range(1, len(lines)):
        part = tmp_path / f"cut-{cut}.otlp.jsonl"
        part.write_text("\n".join(lines[:cut]) + "\n")
        report = anyio.run(lambda p=part: replay_run(p, data_dir=killed, chain=demo_chain()))
        assert not report.complete
        with pytest.raises(ReplayDivergence, match=r"the run index says run .* finished .* the trace was cut"):
            anyio.run(lambda p=part: replay_run(p, data_dir=home, chain=demo_chain()))


def test_replay_needs_the_recording_data_dir(recorded: tuple[Path, Path], tmp_path: Path) -> None:
    _, trace = recorded
    with pytest.raises(ConfigurationError, match="needs the data directory the run was recorded in"):
        anyio.run(lambda: replay_run(trace, data_dir=tmp_path))
