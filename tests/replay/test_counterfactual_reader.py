"""Counterfactual replay's reader (agentlanes/_counterfactual.py) against the full decode
it replaced (tests/replay/reference_counterfactual.py, frozen): the same report on every
kind of recorded run, on trace/1 traces and on traces cut anywhere (a kill -9 mid-write);
the fast path is the one taken on what agentlanes writes; hostile traces give a
TraceError naming the file and line, never a traceback and never figures of their own."""

from __future__ import annotations

import io
import json
import random
import shutil
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from agentlanes import EscalationDenied, Lanes, RouteDeferred, StageContext, cli
from agentlanes import _counterfactual as reader
from agentlanes.approval import Approval, CallbackApprover
from agentlanes.demo import run_demo
from agentlanes.history import CounterfactualReport, counterfactual
from agentlanes.policy import PolicyBundle, load_document
from agentlanes.router import Router
from agentlanes.testing import ScriptedModel, TestModel
from agentlanes.tracefile import TraceError, load_record, read_trace
from agentlanes.verifiers import CallableVerifier
from tests.conftest import ROOT, healthy, upstream_available, upstream_json
from tests.replay import reference_counterfactual as reference

FIXTURES = ROOT / "tests" / "fixtures" / "trace-v1"
MARKER = '"name":"agentlanes.route_decision"'
HOSTILE = (
    'say "hi" \\ ☃ {"key":"agentlanes.request","value":{"stringValue":"{}"}} '
    '"name":"agentlanes.route_decision","attributes":[] },{"timeUnixNano":"1","name":"agentlanes.escalation"'
)


def _router(policy: dict[str, Any] | None = None, catalog: dict[str, Any] | None = None) -> Router:
    return Router(PolicyBundle.from_loaded(
        load_document(policy if policy is not None else ROOT / "policies" / "policy.json"),
        load_document(ROOT / "policies" / "optimizer.json"),
        load_document(catalog if catalog is not None else ROOT / "policies" / "price-catalog.json")))


def _routers() -> list[Router]:
    """The run's documents, a policy that forbids routine code to escalate, and prices
    three times the default (so recorded and new costs differ)."""
    strict = json.loads((ROOT / "policies" / "policy.json").read_text())
    for task in strict["taskClasses"]:
        task["allowedEscalationLanes"] = []
    dearer = json.loads((ROOT / "policies" / "price-catalog.json").read_text())
    for lane in dearer["lanes"]:
        for profile in lane["profiles"]:
            pricing = profile["pricing"]
            for key, value in pricing.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    pricing[key] = value * 3
    return [Router(), _router(strict), _router(catalog=dearer)]


ROUTERS = _routers()


def _outcome(fn: Callable[[Sequence[Path], Router], CounterfactualReport], paths: Sequence[Path],
             router: Router) -> tuple[str, Any]:
    try:
        report = fn(paths, router)
    except TraceError as exc:
        return "error", str(exc)
    return "report", (report.decisions, report.runs, report.changes, report.recorded_cost, report.new_cost,
                      report.to_json())


def _request_error(message: str) -> str:
    """The old reader named no line for a bad recorded request; the new one does."""
    head, sep, rest = message.partition(": line ")
    if sep and ": a recorded decision's inputs" in rest:
        return head + rest[rest.index(":"):]
    return message


def assert_same(paths: Sequence[Path], routers: Sequence[Router] = ROUTERS) -> tuple[str, Any]:
    for router in routers:
        want = _outcome(reference.counterfactual, paths, router)
        got = _outcome(counterfactual, paths, router)
        if want[0] == "error" and got[0] == "error":
            assert _request_error(got[1]) == want[1]
        else:
            assert got == want
    return got


# --------------------------------------------------------------------------- the corpus


async def _ask(ctx: StageContext) -> str:
    return (await ctx.complete("write it", max_tokens=32)).text


async def _record_all(home: Path) -> dict[str, Path]:
    """Recorded runs of every kind counterfactual replay meets, one data dir each."""
    made: dict[str, Path] = {}

    def lanes(name: str, models: dict[str, Any], **kw: Any) -> Lanes:
        kw.setdefault("signals", healthy())
        return Lanes(models, data_dir=home / name, **kw)

    async def one(name: str, lanes_: Lanes, body: Callable[[Lanes], Any]) -> None:
        try:
            await body(lanes_)
        finally:
            await lanes_.aclose()
        made[name] = home / name

    await run_demo("fix calc", home / "demo", io.StringIO())
    made["demo"] = home / "demo"

    async def escalated(lanes_: Lanes) -> None:
        async with lanes_.run(task_class="routine-code") as run:
            await run.stage("planning", _ask)
            await run.stage_with("execution", _ask, verify=[CallableVerifier(lambda o: o == "good", name="is-good")])

    await one("escalated", lanes("escalated", {"standard": ScriptedModel(["p", "b1", "b2"]),
                                               "high-end": TestModel(text="good")}), escalated)

    async def failed(lanes_: Lanes) -> None:
        async def boom(ctx: StageContext) -> str:
            await ctx.complete("x")
            raise RuntimeError("the stage's own failure")

        try:
            async with lanes_.run(task_class="routine-code") as run:
                await run.stage("planning", _ask)
                await run.stage("execution", boom)
        except RuntimeError:
            return
        raise AssertionError("the stage did not fail")

    await one("failed", lanes("failed", {"standard": TestModel(text="ok")}), failed)

    async def deferred(lanes_: Lanes) -> None:  # no lane admitted: decisions without a cost
        async with lanes_.run(task_class="routine-code") as run:
            with pytest.raises(RouteDeferred):
                await run.stage("planning", _ask)

    await one("deferred", lanes("deferred", {"standard": TestModel(text="ok")},
                                signals=healthy(networkAvailable=False, localServiceHealthy=False)), deferred)

    async def approved(lanes_: Lanes) -> None:
        async with lanes_.run(task_class="hard-debugging", risk_class="high",
                              escalation_reason="hard-debugging") as run:
            await run.stage("planning", _ask)

    await one("approved", lanes("approved", {"standard": TestModel(text="s"), "high-end": TestModel(text="h"),
                                             "pro": TestModel(text="p")},
                                approver=CallbackApprover(lambda r: Approval(True, "ann", "looked at it"))), approved)

    async def named(lanes_: Lanes) -> None:  # names and content that mention the markers
        async def echo(ctx: StageContext) -> str:
            return (await ctx.complete(f"{HOSTILE} {MARKER}")).text

        async with lanes_.run(task_class="routine-code") as run:
            await run.stage_with("planning", echo, name=HOSTILE)
            await run.stage_with("execution", echo, name="agentlanes.route_decision")
            await run.stage_with("execution", echo, name='"}},{"key":"agentlanes.stage.name","value":{"stringValue":"x')

    await one("named", lanes("named", {"standard": TestModel(text=f"{MARKER} {HOSTILE}")}, capture_content=True),
              named)

    async def nested(lanes_: Lanes) -> None:
        async with lanes_.run(task_class="routine-code") as run:
            async def outer(ctx: StageContext) -> str:
                return await run.stage_with("execution", _ask, name="inner")

            await run.stage_with("planning", outer, name="outer")
            async with anyio.create_task_group() as tg:
                for part in ("a", "b", "c"):
                    tg.start_soon(lambda p=part: run.stage_with("execution", _ask, name=f"review {p}"))

    await one("nested", lanes("nested", {"standard": TestModel(text="ok")}), nested)

    if upstream_available():
        findings = {"findings": [{"type": "pii.email", "label": "email address", "count": 2,
                                  "confidence": "high", "severity": "medium"}],
                    "metadata": {"anonymize.requires_local_model": "true",
                                 "anonymize.sensitivity": "confidential"}}
        local = {"local-cheap": TestModel(text="local"), "cheap": TestModel(text="hosted"),
                 "standard": TestModel(text="std")}

        async def triage(lanes_: Lanes) -> None:
            async with lanes_.run(task_class="log-triage", risk_class="low") as run:
                await run.stage("classification", _ask)

        await one("findings", lanes("findings", dict(local), findings_source=lambda: findings), triage)

        async def ceiling_run(lanes_: Lanes) -> None:
            async with lanes_.run(task_class="log-triage", risk_class="low") as run:
                await run.stage("classification", _ask)
                with pytest.raises(RouteDeferred):
                    await run.stage("execution", _ask)

        ceiling = upstream_json("examples/runtime-state-routing-policy.failed.json")
        await one("ceilings", lanes("ceilings", dict(local), ceilings=[ceiling]), ceiling_run)
        from agentlanes.binding import BindingRequest

        binding = BindingRequest(binding=upstream_json("examples/local-personal-route-binding.llama32.json"),
                                 task="router", now="2026-06-01T00:00:00Z")
        await one("binding", lanes("binding", dict(local), binding=binding), triage)
        review = json.loads(json.dumps(upstream_json("examples/svf-receipt-state-routing-policy.default.json")))
        review["routing_consequence"].update({"autonomy_ceiling": "human_review_required",
                                              "model_lane_ceiling": "standard",
                                              "deterministic_verification_required": False})

        async def reviewed(lanes_: Lanes) -> None:
            async with lanes_.run(task_class="routine-code") as run:
                await run.stage_with("execution", _ask, name="allowed")
                with pytest.raises(EscalationDenied):
                    await run.stage_with("execution", _ask, name="refused")

        await one("review", lanes("review", {"standard": TestModel(text="done")}, ceilings=[review],
                                  approver=CallbackApprover(lambda r: Approval(r.stage == "allowed", "rev", "ok"))),
                  reviewed)
    return made


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    home = tmp_path_factory.mktemp("corpus")
    made = anyio.run(_record_all, home)
    out = {name: sorted((d / "traces").iterdir()) for name, d in made.items()}
    for name in ("demo", "loop"):
        out[f"trace/1 {name}"] = sorted((FIXTURES / name / "traces").iterdir())
    return out


def test_every_kind_of_run_gives_the_same_report(corpus: dict[str, list[Path]]) -> None:
    assert len(corpus) >= 9
    for name, paths in corpus.items():
        kind, got = assert_same(paths)
        assert kind == "report" and got[0] > 0, name
    everything = [p for paths in corpus.values() for p in paths]
    assert assert_same(everything)[1][1] == len(everything)  # one run per trace


def test_the_fast_path_reads_every_line_agentlanes_writes(corpus: dict[str, list[Path]]) -> None:
    """The tripwire for a change of the writer: every decision line of a fresh trace (and
    of a trace/1 one) is read without decoding it in full, and holds one span."""
    for name, paths in corpus.items():
        for path in paths:
            decisions, slow, _ = reader.read_decisions(path)
            steps = [s for s in load_record(path).steps if s.kind == "decision"]
            assert slow == 0 and len(decisions) == len(steps), name
            for line in path.read_text().splitlines():
                if MARKER in line:
                    message = json.loads(line)
                    assert sum(len(ss["spans"]) for rs in message["resourceSpans"] for ss in rs["scopeSpans"]) == 1


def test_marker_text_in_names_and_captured_content_forges_nothing(corpus: dict[str, list[Path]]) -> None:
    [path] = corpus["named"]
    text = path.read_text()
    assert text.count("agentlanes.route_decision") > 3 * text.count(MARKER)  # the content is in the trace
    decisions, slow, _ = reader.read_decisions(path)
    assert slow == 0
    assert [d.stage for d in decisions] == [HOSTILE, "agentlanes.route_decision",
                                            '"}},{"key":"agentlanes.stage.name","value":{"stringValue":"x']
    assert not any(d.escalated for d in decisions)


def test_traces_cut_anywhere_read_as_the_full_decode_reads_them(corpus: dict[str, list[Path]],
                                                               tmp_path: Path) -> None:
    """What a kill -9 leaves: a prefix of the file, cut mid-line (the torn last line is
    skipped, as before) or between lines: every 9th byte of the largest decision line,
    every 61st of the others, both sides of every line's end."""
    for name in ("demo", "trace/1 loop"):
        source = corpus[name][0]
        data = source.read_bytes()
        cuts: set[int] = set()
        spans = _line_spans(data)
        decision_lines = [(s, e) for s, e in spans if MARKER.encode() in data[s:e]]
        largest = max(decision_lines, key=lambda se: se[1] - se[0])
        for s, e in spans:
            cuts |= {s, e, e + 1}
        for s, e in decision_lines:
            cuts |= set(range(s, e, 9 if (s, e) == largest else 61))
        cut = tmp_path / source.name
        for at in sorted(cuts):
            cut.write_bytes(data[:at])
            assert_same([cut], ROUTERS[1:2])


# --------------------------------------------------------------------------- hostile traces


def _edit(path: Path, dest: Path, edit: Callable[[list[str]], None]) -> Path:
    lines = path.read_text().split("\n")
    edit(lines)
    dest.write_text("\n".join(lines))
    return dest


def _decision_line(lines: list[str], nth: int = 0) -> int:
    return [i for i, line in enumerate(lines) if MARKER in line][nth]


def _replace_in(old: str, new: str, nth: int = 0) -> Callable[[list[str]], None]:
    def edit(lines: list[str]) -> None:
        i = _decision_line(lines, nth)
        assert old in lines[i], old
        lines[i] = lines[i].replace(old, new, 1)

    return edit


def _replace_last(old: str, new: str) -> Callable[[list[str]], None]:
    """In the first decision line's last occurrence (its decision event, not its span)."""

    def edit(lines: list[str]) -> None:
        i = _decision_line(lines)
        at = lines[i].rindex(old)
        lines[i] = lines[i][:at] + new + lines[i][at + len(old):]

    return edit


def _request(value: Any) -> Callable[[list[str]], None]:
    def edit(lines: list[str]) -> None:
        i = _decision_line(lines)
        message = json.loads(lines[i])
        for e in message["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["events"]:
            for a in e["attributes"]:
                if a["key"] == "agentlanes.request":
                    a["value"] = value(a["value"])
        lines[i] = json.dumps(message, separators=(",", ":"), ensure_ascii=False)

    return edit


def _request_field(field: str, raw: str) -> Callable[[list[str]], None]:
    def change(value: dict[str, Any]) -> dict[str, Any]:
        text = value["stringValue"]
        body = json.loads(text)
        assert field in body
        start = text.index(f'"{field}":') + len(f'"{field}":')
        end = start + len(json.dumps(body[field], separators=(",", ":")))
        return {"stringValue": text[:start] + raw + text[end:]}

    return _request(change)


UNTOUCHED = "untouched"
"""The full decode refuses the line; the reader reports the decisions as recorded (the
edit is in bytes it does not read: see the module docstring of agentlanes._counterfactual)."""

HOSTILE_EDITS: dict[str, tuple[Callable[[list[str]], None], str | None]] = {
    "a decision line cut short": (lambda ls: ls.__setitem__(_decision_line(ls), ls[_decision_line(ls)][:-40]),
                                  "line {n} is not OTLP/JSON"),
    "a decision event that is not JSON": (_replace_in(MARKER + ',"attributes":[', MARKER + ',,"attributes":['),
                                          "line {n} is not OTLP/JSON"),
    "a decision's status that is not JSON": (_replace_last('"stringValue":"selected"}}', '"stringValue":"sel"ected"}}'),
                                             "line {n} is not OTLP/JSON"),
    "a span's head that is not JSON": (_replace_in('"kind":1,', '"kind":1,,'), UNTOUCHED),
    "the request as a number": (_request(lambda v: {"intValue": "7"}), "line {n}: a recorded decision's inputs"),
    "the request as a list": (_request(lambda v: {"arrayValue": {"values": [v]}}),
                              "line {n}: a recorded decision's inputs"),
    "no request": (_request(lambda v: {}), "line {n}: a recorded decision's inputs"),
    "the request cut short": (_request(lambda v: {"stringValue": v["stringValue"][:-9]}),
                              "line {n}: a recorded decision's inputs"),
    "a budget of the wrong kind": (_request_field("budgetRemaining", '"2.0"'),
                                   "line {n}: a recorded decision's inputs"),
    "a giant budget": (_request_field("budgetRemaining", "1e400"), "line {n}: a recorded decision's inputs"),
    "a huge integer budget": (_request_field("budgetRemaining", "9" * 5000), "line {n}: a recorded decision's inputs"),
    "signals as a list": (_request_field("signals", "[1,2]"), "line {n}: a recorded decision's inputs"),
    "deeply nested signals": (_request_field("signals", "[" * 5000 + "]" * 5000),
                              "line {n}: a recorded decision's inputs"),
    "a premium cap of the wrong kind": (_request_field("premiumRemaining", '["x",1]'),
                                        "line {n}: a recorded decision's inputs"),
    "a giant cost": (_replace_in('"doubleValue":0.02}}]}', '"doubleValue":1e999}}]}'), "line {n} is not OTLP/JSON"),
    "a cost as text": (_replace_in('"doubleValue":0.02}}]}', '"stringValue":"0.02"}}]}'), None),
    "a lane as a number": (_replace_in('{"key":"agentlanes.lane","value":{"stringValue":"standard"}}',
                                       '{"key":"agentlanes.lane","value":{"intValue":"3"}}'), None),
    "a time that is not a number": (_replace_in('"timeUnixNano":"1', '"timeUnixNano":"x1'),
                                    "line {n} is not a trace line agentlanes writes"),
    "a time of 40 digits": (_replace_in('"timeUnixNano":"1', '"timeUnixNano":"' + "9" * 39 + "1"), None),
    "an event without attributes": (_replace_in('"name":"agentlanes.route_decision","attributes":[',
                                                '"name":"agentlanes.route_decision","x":['),
                                    "line {n}: a recorded decision's inputs"),
    "events that are not a list": (_replace_in(',"events":[{', ',"events":{"x":[{'), "line {n} is not"),
    "resourceSpans that are not a list": (_replace_in('{"resourceSpans":[', '{"resourceSpans":"x","y":['),
                                          "line {n} is not a trace line agentlanes writes"),
    "a nested decision line": (lambda ls: ls.insert(1, "[" * 100_000 + MARKER + "]" * 100_000),
                               "line 2 is not OTLP/JSON"),
    "a spaced decision line": (lambda ls: ls.__setitem__(_decision_line(ls), json.dumps(json.loads(
        ls[_decision_line(ls)]))), None),
    "two spans on one line": (lambda ls: ls.__setitem__(_decision_line(ls), ls[_decision_line(ls)].replace(
        '"spans":[{', '"spans":[' + json.dumps(json.loads(ls[_decision_line(ls, 1)])["resourceSpans"][0][
            "scopeSpans"][0]["spans"][0], separators=(",", ":")) + ",{", 1)), None),
    "an escalation's decision id as a number": (_replace_in(
        '{"key":"agentlanes.decision.id","value":{"stringValue":"urn', '{"key":"agentlanes.decision.id","value":'
        '{"intValue":"1"}},{"key":"x","value":{"stringValue":"urn', nth=3), None),
    "not UTF-8": (lambda ls: ls.__setitem__(_decision_line(ls), ls[_decision_line(ls)] + "\udcff"), None),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_EDITS))
def test_hostile_traces_give_the_full_decodes_answer(case: str, corpus: dict[str, list[Path]],
                                                     tmp_path: Path) -> None:
    edit, expected = HOSTILE_EDITS[case]
    [source] = corpus["demo"]
    path = tmp_path / source.name
    if case == "not UTF-8":
        data = bytearray(source.read_bytes())
        data[data.find(MARKER.encode()) + 3] = 0xFF
        path.write_bytes(bytes(data))
        expected = "line {n} is not UTF-8 text"
    else:
        _edit(source, path, edit)
    if expected == UNTOUCHED:
        assert _outcome(reference.counterfactual, [path], ROUTERS[1])[0] == "error"
        assert _outcome(counterfactual, [path], ROUTERS[1]) == _outcome(counterfactual, [source], ROUTERS[1])
        return
    kind, got = assert_same([path])
    if expected is None:
        assert kind == "report"
        return
    assert kind == "error", got
    n = next(i + 1 for i, line in enumerate(path.read_bytes().split(b"\n"))
             if MARKER.encode() in line or b"\xff" in line)
    assert str(path) in got and expected.format(n=n) in got, got


def test_a_line_of_100_mb_is_refused_in_bounded_memory(tmp_path: Path, corpus: dict[str, list[Path]]) -> None:
    [source] = corpus["demo"]
    path = tmp_path / source.name
    size = 100 * 1024 * 1024
    with path.open("w") as f:
        f.write(source.read_text())
        f.write('{"resourceSpans":[{"x":"' + "a" * size + '",' + MARKER + "}]}\n")
    tracemalloc.start()
    try:
        with pytest.raises(TraceError, match=r"line 26 is \d+ characters; a line with route decisions that long"):
            counterfactual([path], ROUTERS[0])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * size  # the file's bytes and its text, nothing per byte beyond


def test_damage_only_where_counterfactual_does_not_read_changes_no_figure(corpus: dict[str, list[Path]],
                                                                          tmp_path: Path) -> None:
    """What the fast reader does not validate (see its docstring): a rejected candidate's
    text broken, say. The full decode refused the line; the reader reports the decision,
    exactly as recorded."""
    [source] = corpus["demo"]
    path = _edit(source, tmp_path / source.name, _replace_in('{"stringValue":"no-model: ', '{"stringValue":"no-"m: '))
    assert reference.counterfactual([source], ROUTERS[1]).to_json() == counterfactual([path], ROUTERS[1]).to_json()
    with pytest.raises(TraceError, match="is not OTLP/JSON"):
        reference.counterfactual([path], ROUTERS[1])


def test_random_damage_never_gives_figures_the_trace_does_not_hold(corpus: dict[str, list[Path]],
                                                                   tmp_path: Path) -> None:
    """Single edits anywhere in decision lines: when the full decode reads the trace, the
    reader gives its report; when it refuses it, the reader refuses too (a TraceError) or
    reports the untouched decisions (the edit was in bytes no decision is read from)."""
    rng = random.Random(11)
    router = ROUTERS[1]
    for name in ("demo", "trace/1 loop"):
        [source] = corpus[name][:1]
        data = source.read_bytes()
        original = _outcome(counterfactual, [source], router)
        lines = [(s, e) for s, e in _line_spans(data) if MARKER.encode() in data[s:e]]
        alphabet = b'"\\{}[],:0123456789.eE-+ aZ\n\x00'
        path = tmp_path / source.name
        for _ in range(700):
            s, e = rng.choice(lines)
            at = rng.randrange(s, e)
            op = rng.random()
            if op < 0.5:
                mutated = data[:at] + bytes([rng.choice(alphabet)]) + data[at + 1:]
            elif op < 0.75:
                mutated = data[:at] + data[at + rng.randrange(1, 8):]
            else:
                mutated = data[:at] + bytes([rng.choice(alphabet)]) + data[at:]
            path.write_bytes(mutated)
            want = _outcome(reference.counterfactual, [path], router)
            got = _outcome(counterfactual, [path], router)
            if want[0] == "report":
                assert got == want, (name, at, mutated[at - 20:at + 20])
            else:
                assert got[0] == "error" or got[1][:5] == original[1][:5], (name, at, mutated[at - 20:at + 20])


def _line_spans(data: bytes) -> list[tuple[int, int]]:
    out, start = [], 0
    while True:
        end = data.find(b"\n", start)
        if end < 0:
            return out
        out.append((start, end))
        start = end + 1


# --------------------------------------------------------------------------- the rest


def test_without_orjson_the_reports_are_the_same(corpus: dict[str, list[Path]],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader, "_loads", json.loads)
    monkeypatch.setattr(reference, "_loads", json.loads)
    for name in ("demo", "escalated", "named", "trace/1 loop"):
        assert assert_same(corpus[name], ROUTERS[:2])[0] == "report"


def test_the_cli_prints_what_it_printed(corpus: dict[str, list[Path]], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    shutil.copytree(corpus["escalated"][0].parent.parent, home)
    [trace] = (home / "traces").iterdir()
    strict = json.loads((ROOT / "policies" / "policy.json").read_text())
    for task in strict["taskClasses"]:
        task["allowedEscalationLanes"] = []
    policy = tmp_path / "strict.json"
    policy.write_text(json.dumps(strict))
    run_id = trace.name.split(".")[0]
    assert cli.main(["replay", run_id, "--policy", str(policy), "--json", "--data-dir", str(home)]) == 0
    printed = capsys.readouterr().out
    assert printed.strip() == json.dumps(reference.counterfactual([trace], _router(strict)).to_json(), indent=2)
    assert cli.main(["replay", run_id, "--policy", str(policy), "--check", "--data-dir", str(home)]) == 1
    assert "would take another lane" in capsys.readouterr().err
    trace.write_text(trace.read_text().replace(MARKER + ',"attributes":[', MARKER + ',,"attributes":[', 1))
    assert cli.main(["replay", run_id, "--policy", str(policy), "--data-dir", str(home)]) == 2
    err = capsys.readouterr().err
    assert str(trace) in err and "is not OTLP/JSON" in err and "Traceback" not in err


def test_read_trace_and_the_reader_agree_on_what_a_decision_is(corpus: dict[str, list[Path]]) -> None:
    for paths in corpus.values():
        for path in paths:
            events = [e for s in read_trace(path) for e in s["events"] if e["name"] == "agentlanes.route_decision"]
            decisions = reader.read_decisions(path)[0]
            assert sorted(e["time"] for e in events) == [d.time for d in decisions]
            assert sorted(str(e["attributes"].get("agentlanes.decision.id")) for e in events) == sorted(
                str(d.decision_id) for d in decisions)


def test_a_slimmer_decision_event_still_reads_fast(corpus: dict[str, list[Path]], tmp_path: Path) -> None:
    """Decision events without the rejected candidates (which the stage span carries too):
    what a writer that records only what replay needs would leave."""
    [source] = corpus["demo"]
    lines = source.read_text().split("\n")
    for i, line in enumerate(lines):
        if MARKER in line:
            message = json.loads(line)
            for span in message["resourceSpans"][0]["scopeSpans"][0]["spans"]:
                for event in span["events"]:
                    if event["name"] == "agentlanes.route_decision":
                        event["attributes"] = [a for a in event["attributes"]
                                               if a["key"] != "agentlanes.candidates.rejected"]
            lines[i] = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    path = tmp_path / source.name
    path.write_text("\n".join(lines))
    events = [line.split('"events":', 1)[1] for line in lines if MARKER in line]
    assert events and all("agentlanes.candidates.rejected" not in e for e in events)
    assert reader.read_decisions(path)[1] == 0
    assert assert_same([path])[1][:5] == _outcome(counterfactual, [source], ROUTERS[-1])[1][:5]
