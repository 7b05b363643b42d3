"""Replay any run, never trusting its trace: loops named by --entry, concurrent stages,
traces recorded before trace/2, hostile traces and data directories, tampering caught at
the right step, and the CLI's exit codes (0 identical, 1 diverged, 2 unusable)."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from agentlanes import ReplayDivergence, cli
from agentlanes import attributes as A
from agentlanes.chain import Chain
from agentlanes.demo import demo_chain, run_demo
from agentlanes.replay import replay
from agentlanes.testing import assert_replays, assert_replays_async
from agentlanes.tracefile import load_record, trace_path
from tests.conftest import ROOT
from tests.replay import concurrent_program, loop_program

LOOP = str(ROOT / "tests" / "replay" / "loop_program.py") + ":main"
FIXTURES = ROOT / "tests" / "fixtures" / "trace-v1"


def cli_replay(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = cli.main(["replay", *args])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def loop_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    home = tmp_path_factory.mktemp("loop")
    return home, anyio.run(loop_program.record, home)


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    home = tmp_path_factory.mktemp("demo")
    return home, anyio.run(run_demo, "fix the calc tests", home, io.StringIO()).run_id


def copy_home(home: Path, dest: Path) -> Path:
    shutil.copytree(home, dest)
    return dest


def edit_spans(path: Path, fn: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite a trace file, applying ``fn`` to every span (OTLP/JSON)."""
    out = []
    for line in path.read_text().splitlines():
        message = json.loads(line)
        for rs in message["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                for span in ss["spans"]:
                    fn(span)
        out.append(json.dumps(message, separators=(",", ":")))
    path.write_text("\n".join(out) + "\n")


def attr(items: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    return next((a["value"] for a in items if a["key"] == key), None)


# ----------------------------------------------------------------- any run, by its code


def test_a_loop_written_with_run_stage_replays_with_its_entry(loop_home: tuple[Path, str],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    home, run_id = loop_home
    record = load_record(trace_path(home, run_id))
    assert record.complete and record.chain is None and record.schema == "agentlanes.trace/2"
    assert [s.kind for s in record.steps].count("escalation") == 1
    status, out, err = cli_replay(capsys, run_id, "--entry", LOOP, "--data-dir", str(home))
    assert (status, err) == (0, "")
    assert f"{run_id}: replayed exactly, {len(record.steps)} step(s) identical to the record" in out
    # the module:function form, from the repository root (the current directory is importable)
    status, _, err = cli_replay(capsys, run_id, "--entry", "tests.replay.loop_program:main", "--data-dir", str(home))
    assert (status, err) == (0, "")


def test_without_the_code_named_a_loop_cannot_be_replayed(loop_home: tuple[Path, str],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    home, run_id = loop_home
    status, _, err = cli_replay(capsys, run_id, "--data-dir", str(home))
    assert status == 2
    assert "a run.stage loop" in err and "--entry MODULE:FUNCTION" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("env", "expect"),
    [
        ({"LOOP_PROMPT": "Plan this: {goal}"}, r"the prompt differs: the record has at character 5: "
                                                r"'user:Write a short plan.*the replay produced 'user:Plan this"),
        ({"LOOP_GOAL": "a titlecase() helper"}, "the prompt differs"),
        ({"LOOP_CHECK": "strict"}, r"verifier 'slugify-check' changed \(its function differs\)"),
    ],
    ids=["prompt", "input", "verifier"],
)
def test_a_changed_loop_diverges_with_exit_1(loop_home: tuple[Path, str], capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                              expect: str) -> None:
    home, run_id = loop_home
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    status, _, err = cli_replay(capsys, run_id, "--entry", LOOP, "--data-dir", str(home))
    assert status == 1, err
    assert "DIVERGED" in err
    import re

    assert re.search(expect, err), err


def test_a_changed_policy_diverges_with_exit_1(loop_home: tuple[Path, str], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    home, run_id = loop_home
    policy = json.loads((ROOT / "policies" / "policy.json").read_text())
    policy["escalationPolicy"]["repeatedFailureThreshold"] = 3
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy))
    status, _, err = cli_replay(capsys, run_id, "--entry", LOOP, "--policy", str(path), "--data-dir", str(home))
    assert status == 1
    assert "Replay step 0 (decision for stage 'planning'" in err and "the documents (policy" in err
    # counterfactual --check: the same policy leaves every lane as it was, a strict one does not
    assert cli_replay(capsys, run_id, "--policy", str(path), "--check", "--data-dir", str(home))[0] == 0
    for task in policy["taskClasses"]:
        if task["taskClass"] == "routine-code":
            task["allowedEscalationLanes"] = []
    path.write_text(json.dumps(policy))
    status, out, err = cli_replay(capsys, run_id, "--policy", str(path), "--check", "--data-dir", str(home))
    assert status == 1 and "would take another lane" in err and "escalations no longer allowed: 1" in out


async def test_assert_replays_has_an_async_form(loop_home: tuple[Path, str]) -> None:
    home, run_id = loop_home
    trace = trace_path(home, run_id)
    steps = await assert_replays_async(trace, data_dir=home, entry=loop_program.main)
    assert steps == len(load_record(trace).steps)
    with pytest.raises(RuntimeError, match="await assert_replays_async"):
        assert_replays(trace, data_dir=home, entry=loop_program.main)


def test_assert_replays_takes_an_entry(loop_home: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    home, run_id = loop_home
    assert assert_replays(trace_path(home, run_id), data_dir=home, entry=loop_program.main) > 10
    monkeypatch.setenv("LOOP_PROMPT", "other {goal}")
    with pytest.raises(ReplayDivergence, match="the prompt differs"):
        assert_replays(trace_path(home, run_id), data_dir=home, entry=loop_program.main)


def test_concurrent_stages_replay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_id = anyio.run(concurrent_program.record, tmp_path)
    record = load_record(trace_path(tmp_path, run_id))
    assert sorted(record.stages) == ["review#0", "review#1", "review#2"]
    steps = [s.step for s in record.steps]
    by_stage = [s.stage_key for s in sorted(record.steps, key=lambda s: s.step)]
    assert by_stage != sorted(by_stage)  # the stages' steps interleave in the record
    assert assert_replays(trace_path(tmp_path, run_id), data_dir=tmp_path, entry=concurrent_program.main) == len(steps)
    monkeypatch.setenv("CONCURRENT_PROMPT", "Look at {part}")
    with pytest.raises(ReplayDivergence, match="the prompt differs"):
        assert_replays(trace_path(tmp_path, run_id), data_dir=tmp_path, entry=concurrent_program.main)


def test_a_run_recorded_inside_an_application_span_replays(tmp_path: Path) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()

    async def go() -> str:
        with provider.get_tracer("app").start_as_current_span("app request"):
            return await loop_program.record(tmp_path, tracer_provider=provider)

    run_id = anyio.run(go)
    record = load_record(trace_path(tmp_path, run_id))
    assert record.complete  # the run span has a parent outside the trace
    report = anyio.run(lambda: replay(run_id, data_dir=tmp_path, entry=loop_program.main))
    assert report.complete and report.steps == len(record.steps)


@pytest.mark.parametrize(("name", "entry"), [("demo", None), ("loop", LOOP)])
def test_traces_recorded_before_trace_2_still_replay(name: str, entry: str | None, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    home = copy_home(FIXTURES / name, tmp_path / name)
    [trace] = (home / "traces").iterdir()
    assert load_record(trace).schema == "agentlanes.trace/1"
    status, out, err = cli_replay(capsys, str(trace), *(["--entry", entry] if entry else []), "--data-dir", str(home))
    assert (status, err) == (0, "") and "identical to the record" in out


def test_the_record_is_independent_of_tracing(tmp_path: Path) -> None:
    run_id = anyio.run(lambda: loop_program.record(tmp_path, tracing=False))
    assert assert_replays(trace_path(tmp_path, run_id), data_dir=tmp_path, entry=loop_program.main) > 10


# ----------------------------------------------------------------- a trace is data


@pytest.mark.parametrize("ref", ["sys:exit", "os:abort", "this:s", "agentlanes.cli:main", "tests.conftest:healthy"])
def test_a_chain_the_trace_names_is_never_imported(demo_home: tuple[Path, str], tmp_path: Path, ref: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    home = copy_home(demo_home[0], tmp_path / "home")
    trace = trace_path(home, demo_home[1])

    def rename(span: dict[str, Any]) -> None:
        for a in span.get("attributes", []):
            if a["key"] == A.CHAIN_REF:
                a["value"] = {"stringValue": ref}

    edit_spans(trace, rename)
    status, _, err = cli_replay(capsys, demo_home[1], "--data-dir", str(home))
    assert status == 2  # the process is alive and says what to do
    assert f"the chain {ref!r}" in err and "--entry MODULE:FUNCTION" in err


def _workspace(home: Path, run_id: str) -> Path:
    digest = load_record(trace_path(home, run_id)).input_digest
    assert digest is not None
    inputs = json.loads((home / "content" / digest.split(":")[1]).read_text())
    return Path(inputs["variables"]["workspace"])


@pytest.mark.parametrize("live", [False, True])
def test_recorded_tools_never_write_outside_a_scratch_copy(demo_home: tuple[Path, str], tmp_path: Path,
                                                          live: bool, capsys: pytest.CaptureFixture[str]) -> None:
    """The data directory was sent to us; the workspace its inputs name is a directory
    of ours. Replaying serves the recorded patch tool (or, with --live-tools, runs it in
    a scratch copy): our files are never written."""
    home = copy_home(demo_home[0], tmp_path / "received")
    ours = _workspace(demo_home[0], demo_home[1])
    (ours / "calc.py").write_text("# the receiver's own file: CANARY\n")
    before = (ours / "calc.py").stat().st_mtime_ns, sorted(p.name for p in ours.iterdir())
    status, _, err = cli_replay(capsys, demo_home[1], "--data-dir", str(home), *(["--live-tools"] if live else []))
    assert (status, err) == (0, "")
    assert (ours / "calc.py").read_text() == "# the receiver's own file: CANARY\n"
    assert ((ours / "calc.py").stat().st_mtime_ns, sorted(p.name for p in ours.iterdir())) == before


def _chat_output_digest(trace: Path, nth: int = -1) -> str:
    found = []
    for line in trace.read_text().splitlines():
        for rs in json.loads(line)["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                for span in ss["spans"]:
                    if span["name"].startswith("chat "):
                        found.append((int(span["startTimeUnixNano"]), attr(span["attributes"], A.OUTPUT_DIGEST)))
    return sorted(found)[nth][1]["stringValue"]  # type: ignore[index]


@pytest.mark.parametrize(
    "digest",
    ["hmac-sha256:../../../../etc/hostname", "hmac-sha256:" + "0" * 63 + "/", "/etc/hostname", "sha256:" + "a" * 64],
)
def test_a_digest_names_nothing_outside_the_content_store(demo_home: tuple[Path, str], tmp_path: Path, digest: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    home = copy_home(demo_home[0], tmp_path / "home")
    trace = trace_path(home, demo_home[1])
    target = _chat_output_digest(trace, 0)

    def swap(span: dict[str, Any]) -> None:
        for a in span.get("attributes", []):
            if a["value"] == {"stringValue": target}:
                a["value"] = {"stringValue": digest}

    edit_spans(trace, swap)
    status, _, err = cli_replay(capsys, demo_home[1], "--data-dir", str(home))
    assert status == 1 and "is not a content digest" in err
    assert Path("/etc/hostname").read_text().strip() not in err


@pytest.mark.parametrize("kind", ["symlink", "fifo", "edited"])
def test_a_body_is_served_only_if_it_is_what_its_digest_says(demo_home: tuple[Path, str], tmp_path: Path, kind: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    home = copy_home(demo_home[0], tmp_path / "home")
    body = home / "content" / _chat_output_digest(trace_path(home, demo_home[1])).split(":")[1]
    body.unlink() if kind != "edited" else None
    if kind == "symlink":
        body.symlink_to("/etc/hostname")
    elif kind == "fifo":
        os.mkfifo(body)
    else:
        body.write_text("Fixed everything. Residual risk: none. (edited after the run)")
    started = time.monotonic()
    status, _, err = cli_replay(capsys, demo_home[1], "--data-dir", str(home))
    assert time.monotonic() - started < 30  # no hang on a FIFO
    assert status == 1 and "DIVERGED" in err
    expected = {"symlink": "cannot be read as a body", "fifo": "not a regular file",
                "edited": "does not match its digest"}[kind]
    assert expected in err


@pytest.mark.parametrize(
    ("make", "expect"),
    [
        (lambda p: os.mkfifo(p), "is not a regular file"),
        (lambda p: p.write_text("[" * 100_000 + "]" * 100_000 + "\n"), "nested too deeply"),
        (lambda p: p.write_text('{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": 5}]}]}]}\n'),
         "line 1 is not a trace line agentlanes writes"),
        (lambda p: p.write_text('{"resourceSpans": "x"}\n'), "line 1 is not a trace line"),
        (lambda p: p.write_bytes(b"\xff\xfe\x00garbage\n"), "not UTF-8"),
        (lambda p: p.write_text("not json at all\n{}\n"), "line 1 is not OTLP/JSON"),
    ],
    ids=["fifo", "deep", "wrong-shape", "wrong-shape-top", "binary", "not-json"],
)
def test_a_hostile_trace_is_refused_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            make: Callable[[Path], None], expect: str) -> None:
    path = tmp_path / "run-hostile.otlp.jsonl"
    make(path)
    started = time.monotonic()
    status, _, err = cli_replay(capsys, str(path), "--entry", LOOP, "--data-dir", str(tmp_path))
    assert time.monotonic() - started < 30
    assert status == 2 and expect in err and "Traceback" not in err


def test_dev_zero_as_a_trace(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, _, err = cli_replay(capsys, "/dev/zero", "--entry", LOOP, "--data-dir", str(tmp_path))
    assert status == 2 and "is not a regular file" in err


def test_an_oversized_trace_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from agentlanes import tracefile

    monkeypatch.setattr(tracefile, "MAX_TRACE_BYTES", 1000)
    path = tmp_path / "big.otlp.jsonl"
    path.write_text("x" * 2000)
    status, _, err = cli_replay(capsys, str(path), "--entry", LOOP, "--data-dir", str(tmp_path))
    assert status == 2 and "more than a trace may be" in err


# ----------------------------------------------------------------- every divergence, at its step


def _edit_first(trace: Path, where: Callable[[dict[str, Any]], bool], change: Callable[[dict[str, Any]], None]) -> None:
    done = []

    def apply(span: dict[str, Any]) -> None:
        if not done and where(span):
            change(span)
            done.append(span)

    edit_spans(trace, apply)
    assert done


def _set(items: list[dict[str, Any]], key: str, value: dict[str, Any]) -> None:
    for a in items:
        if a["key"] == key:
            a["value"] = value


def _decision_lane_to_pro(span: dict[str, Any]) -> None:
    event = next(e for e in span["events"] if e["name"] == A.EVENT_DECISION)
    _set(event["attributes"], A.LANE, {"stringValue": "pro"})


TAMPERING: list[tuple[str, Callable[[Path, Path], None], str]] = [
    ("decision lane standard -> pro",
     lambda home, trace: _edit_first(trace, lambda s: s["name"] == "agentlanes.stage plan", _decision_lane_to_pro),
     r"Replay step 0 \(decision for stage 'plan': selected on pro .*the decision differs \(the lane\): "
     r"the record has pro, the replay produced standard"),
    ("stage cost -> 99.0",
     lambda home, trace: _edit_first(trace, lambda s: s["name"] == "agentlanes.stage plan",
                                     lambda s: _set(s["attributes"], A.COST_ACTUAL, {"doubleValue": 99.0})),
     r"stage 'plan' ends differently \(cost\): the record has 99000000, the replay produced 20000"),
    ("call cost -> 5.0",
     lambda home, trace: _edit_first(trace, lambda s: s["name"].startswith("chat "),
                                     lambda s: _set(s["attributes"], A.COST_ACTUAL, {"doubleValue": 5.0})),
     r"the call differs \(the cost charged\)"),
    ("final output body edited",
     lambda home, trace: (home / "content" / _chat_output_digest(trace).split(":")[1]).write_text("all done"),
     r"does not match its digest"),
    ("trace cut with its run span",
     lambda home, trace: trace.write_text("\n".join(trace.read_text().splitlines()[:-2]) + "\n"),
     r"the run index says run .* finished \(succeeded, 26 step\(s\)\), but its trace has no run span"),
    ("a chat span removed",
     lambda home, trace: trace.write_text(
         "\n".join(line for i, line in enumerate(trace.read_text().splitlines()) if i != 1) + "\n"),
     r"the run recorded 26 step\(s\), but its trace holds 25 \(step 2 is missing\)"),
    ("a line duplicated",
     lambda home, trace: trace.write_text(trace.read_text() + trace.read_text().splitlines()[3] + "\n"),
     r"appears more than once"),
    ("run status edited",
     lambda home, trace: _edit_first(trace, lambda s: s["name"].startswith("invoke_workflow"),
                                     lambda s: _set(s["attributes"], A.RUN_STATUS, {"stringValue": "failed"})),
     r"the run ends differently \(status\): the record has failed, the replay produced succeeded"),
    ("escalation reason edited",
     lambda home, trace: _edit_first(
         trace, lambda s: any(e["name"] == A.EVENT_ESCALATION for e in s.get("events", [])),
         lambda s: _set(next(e for e in s["events"] if e["name"] == A.EVENT_ESCALATION)["attributes"],
                        A.ESCALATION_REASON, {"stringValue": "security-sensitive-change"})),
     r"the escalation differs \(the reason\)"),
    ("receipt digest edited",
     lambda home, trace: _edit_first(
         trace, lambda s: any(e["name"] == A.EVENT_ESCALATION for e in s.get("events", [])),
         lambda s: _set(next(e for e in s["events"] if e["name"] == A.EVENT_ESCALATION)["attributes"],
                        A.RECEIPT_DIGEST, {"stringValue": "sha256:" + "0" * 64})),
     r"the escalation receipt differs"),
    ("failing verifier verdict flipped to pass",
     lambda home, trace: _edit_first(
         trace, lambda s: s["name"] == "execute_tool unittest",
         lambda s: _set(s["events"][0]["attributes"], A.GEN_AI_EVALUATION_SCORE_LABEL, {"stringValue": "pass"})),
     r"stage 'execute.verify' ends differently \(status\): the record has failed, the replay produced succeeded"),
]


@pytest.mark.parametrize(("name", "tamper", "expect"), TAMPERING, ids=[t[0] for t in TAMPERING])
def test_tampering_is_a_divergence(demo_home: tuple[Path, str], tmp_path: Path, name: str,
                                   tamper: Callable[[Path, Path], None], expect: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    import re

    home = copy_home(demo_home[0], tmp_path / "home")
    trace = trace_path(home, demo_home[1])
    assert cli_replay(capsys, demo_home[1], "--data-dir", str(home))[0] == 0
    tamper(home, trace)
    status, _, err = cli_replay(capsys, demo_home[1], "--data-dir", str(home))
    assert status == 1, (name, err)
    assert re.search(expect, err), (name, err)


@pytest.mark.parametrize(
    ("update", "expect"),
    [
        ("{'argv': ['{python}', '-m', 'unittest', '-v']}", "verifier 'unittest' changed (its argv differs)"),
        ("{'timeout_seconds': 5.0}", "verifier 'unittest' changed (its timeout differs)"),
        ("{'schema_': {'type': 'object', 'required': ['path']}}",
         "verifier 'patch-shape' changed (its schema differs)"),
    ],
    ids=["command", "timeout", "schema"],
)
def test_a_verifier_change_is_a_divergence(demo_home: tuple[Path, str], tmp_path: Path, update: str,
                                           expect: str, capsys: pytest.CaptureFixture[str]) -> None:
    home, run_id = demo_home
    module = tmp_path / "my_chain.py"
    kind = "command" if "argv" in update or "timeout" in update else "schema"
    module.write_text(
        "from agentlanes.demo import demo_chain\n"
        "def chain():\n"
        "    c = demo_chain()\n"
        "    step = c.steps[1]\n"
        f"    verifiers = [v.model_copy(update={update}) if v.type == {kind!r} else v for v in step.verifiers]\n"
        "    c.steps[1] = step.model_copy(update={'verifiers': verifiers})\n"
        "    return c\n"
    )
    status, _, err = cli_replay(capsys, run_id, "--chain", f"{module}:chain", "--data-dir", str(home))
    assert status == 1 and expect in err, err
    assert "Replay step" in err and "verifier" in err


def test_the_same_chain_named_by_the_user_replays(demo_home: tuple[Path, str], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    home, run_id = demo_home
    module = tmp_path / "same_chain.py"
    module.write_text("from agentlanes.demo import demo_chain as chain\n")
    assert cli_replay(capsys, run_id, "--chain", f"{module}:chain", "--data-dir", str(home))[0] == 0
    assert isinstance(demo_chain(), Chain)


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--entry", "no_such_module_xyz:main"], "cannot be imported"),
        (["--entry", "tests.replay.loop_program:nothing"], "has no 'nothing'"),
        (["--entry", "not a ref"], "must look like"),
        (["--entry", LOOP, "--chain", "x:y"], "not both"),
    ],
)
def test_bad_code_names_are_clear_errors(loop_home: tuple[Path, str], capsys: pytest.CaptureFixture[str],
                                         args: list[str], expect: str) -> None:
    home, run_id = loop_home
    status, _, err = cli_replay(capsys, run_id, *args, "--data-dir", str(home))
    assert status == 2 and expect in err and "Traceback" not in err


def test_unknown_runs_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for run in ("run-nope", "../../etc/passwd", "run with spaces"):
        status, _, err = cli_replay(capsys, run, "--entry", LOOP, "--data-dir", str(tmp_path))
        assert status == 2 and "Traceback" not in err, err
