"""Spans, privacy by default, the durable local trace, runs / show / replay."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from agentlanes import Lanes, StageContext, cli
from agentlanes import attributes as A
from agentlanes.approval import Approval, CallbackApprover
from agentlanes.errors import RetryStage
from agentlanes.models import ProviderError
from agentlanes.runtime import RetryPolicy
from agentlanes.stores import SQLiteStore
from agentlanes.telemetry import read_trace, trace_path
from agentlanes.testing import ScriptedModel, TestModel, capture_spans
from agentlanes.verifiers import CallableVerifier
from tests.conftest import ROOT, healthy


def lanes_for(home: Path, models: dict[str, Any], **kw: Any) -> Lanes:
    kw.setdefault("signals", healthy())
    kw.setdefault("retry", RetryPolicy(attempts=2, initial_wait=0.001))
    return Lanes(models, data_dir=home, **kw)


async def escalating_run(lanes: Lanes) -> Any:
    async def execute(ctx: StageContext) -> str:
        return (await ctx.complete("write it", max_tokens=32)).text

    async with lanes.run(task_class="routine-code", chain="tests:chain") as run:
        await run.stage("planning", execute)
        await run.stage_with("execution", execute, verify=[CallableVerifier(lambda o: o == "good", name="is-good")])
    return run


SNAPSHOT = [
    ["invoke_workflow tests:chain", "INTERNAL", {"gen_ai.operation.name": "invoke_workflow"}, [], [
        ["agentlanes.stage planning", "INTERNAL", {"agentlanes.lane": "standard"}, ["agentlanes.route_decision"], [
            ["chat s", "CLIENT", {"agentlanes.lane": "standard", "gen_ai.operation.name": "chat"}, [], []]]],
        ["agentlanes.stage execution", "INTERNAL", {"agentlanes.lane": "high-end"},
         ["agentlanes.route_decision"] * 3 + ["agentlanes.escalation"], [
            ["chat s", "CLIENT", {"agentlanes.lane": "standard", "gen_ai.operation.name": "chat"}, [], []],
            ["agentlanes.stage execution.verify", "INTERNAL", {"agentlanes.lane": "no-model"},
             ["agentlanes.route_decision"], [
                ["execute_tool is-good", "INTERNAL", {"agentlanes.lane": "no-model",
                                                      "gen_ai.operation.name": "execute_tool"},
                 ["gen_ai.evaluation.result"], []]]],
            ["chat s", "CLIENT", {"agentlanes.lane": "standard", "gen_ai.operation.name": "chat"}, [], []],
            ["agentlanes.stage execution.verify", "INTERNAL", {"agentlanes.lane": "no-model"},
             ["agentlanes.route_decision"], [
                ["execute_tool is-good", "INTERNAL", {"agentlanes.lane": "no-model",
                                                      "gen_ai.operation.name": "execute_tool"},
                 ["gen_ai.evaluation.result"], []]]],
            ["chat h", "CLIENT", {"agentlanes.lane": "high-end", "gen_ai.operation.name": "chat"}, [], []],
            ["agentlanes.stage execution.verify", "INTERNAL", {"agentlanes.lane": "no-model"},
             ["agentlanes.route_decision"], [
                ["execute_tool is-good", "INTERNAL", {"agentlanes.lane": "no-model",
                                                      "gen_ai.operation.name": "execute_tool"},
                 ["gen_ai.evaluation.result"], []]]]]]]]]


async def test_span_tree_matches_the_snapshot(tmp_path: Path) -> None:
    cap = capture_spans()
    lanes = lanes_for(tmp_path, {"standard": ScriptedModel(["plan", "bad", "worse"], name="s"),
                                 "high-end": ScriptedModel(["good"], name="h")}, tracer_provider=cap.provider)
    run = await escalating_run(lanes)
    assert cap.tree() == SNAPSHOT
    spans = {s.name: s for s in cap.spans}
    stage = spans["agentlanes.stage execution"]
    a = stage.attributes
    assert a[A.TASK_CLASS] == "routine-code" and a[A.RISK_CLASS] == "medium" and a[A.STAGE] == "execution"
    assert a[A.DECISION_ID] == run.records[1].decisions[-1].decision_id and a[A.DECISION_STATUS] == "selected"
    assert a[A.COST_ESTIMATED] == 0.25 and a[A.COST_ACTUAL] == 0.29 and a[A.BUDGET_REMAINING] > 0
    assert any(r.startswith("standard: ") and "escalated-from:standard" in r for r in a[A.CANDIDATES_REJECTED])
    escalation = next(e for e in stage.events if e.name == A.EVENT_ESCALATION)
    assert escalation.attributes[A.RECEIPT_ID] == run.receipts[0].receipt_id
    assert escalation.attributes[A.RECEIPT_DIGEST] == run.receipts[0].digest
    chat = spans["chat h"].attributes
    assert chat[A.GEN_AI_PROVIDER_NAME] == "test" and chat[A.GEN_AI_REQUEST_MODEL] == "h"
    assert chat[A.GEN_AI_USAGE_INPUT_TOKENS] > 0 and chat[A.GEN_AI_REQUEST_MAX_TOKENS] == 32
    assert chat[A.PROMPT_DIGEST].startswith("hmac-sha256:") and A.GEN_AI_INPUT_MESSAGES not in chat
    # the same spans went to the durable local trace, in OTLP/JSON with hex ids
    local = list(read_trace(trace_path(tmp_path, run.run_id)))
    assert sorted(s["name"] for s in local) == sorted(s.name for s in cap.spans)
    first = json.loads(trace_path(tmp_path, run.run_id).read_text().splitlines()[0])
    span = first["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert len(span["traceId"]) == 32 and len(span["spanId"]) == 16
    assert int(span["traceId"], 16) == cap.spans[0].context.trace_id


def test_attribute_names_match_the_semantic_conventions() -> None:
    from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as g

    pinned = {name: value for name, value in vars(A).items() if name.startswith("GEN_AI_") and isinstance(value, str)}
    for name, value in pinned.items():
        assert getattr(g, name) == value, name


async def test_content_capture_is_opt_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def ask(ctx: StageContext) -> str:
        return (await ctx.complete("the prompt text")).text

    for env, explicit, expected in (("true", None, True), ("true", False, False), ("", None, False),
                                    ("", True, True)):
        monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", env)
        cap = capture_spans()
        lanes = lanes_for(tmp_path, {"standard": TestModel(text="the output")}, tracer_provider=cap.provider,
                          capture_content=explicit)
        async with lanes.run(task_class="routine-code") as run:
            await run.stage("planning", ask)
        chat = next(s for s in cap.spans if s.name.startswith("chat")).attributes
        assert (A.GEN_AI_INPUT_MESSAGES in chat) is expected, (env, explicit)
        if expected:
            assert "the prompt text" in chat[A.GEN_AI_INPUT_MESSAGES]
            assert "the output" in chat[A.GEN_AI_OUTPUT_MESSAGES]


async def test_no_canary_leaves_the_content_store(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTLANES_LOG_LEVEL", "debug")
    monkeypatch.delenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", raising=False)
    canaries = {k: f"CANARY-{k}-5d2e" for k in ("prompt", "system", "toolarg", "toolresult", "modelerror",
                                                  "feedback", "justification", "output")}
    cap = capture_spans()
    std = ScriptedModel([ProviderError(f"boom {canaries['modelerror']}", retryable=True),
                         f"first {canaries['output']}", f"second {canaries['output']}"], name="s")
    hi = TestModel(text=f"good {canaries['output']}", name="h")
    lanes = lanes_for(tmp_path, {"standard": std, "high-end": hi}, tracer_provider=cap.provider,
                      approver=CallbackApprover(lambda r: Approval(True, "ann", canaries["justification"])))
    seen_tool: list[str] = []

    async def work(ctx: StageContext, arg: str) -> str:
        reply = await ctx.complete(f"{canaries['prompt']} {arg} {ctx.feedback_text}", system=canaries["system"])
        if ctx.attempt == 1:
            raise RetryStage(canaries["feedback"])
        return reply.text

    def tool(output: str) -> str:
        seen_tool.append(output)
        return canaries["toolresult"]

    async with lanes.run(task_class="routine-code") as run:
        await run.stage_with("execution", work, (canaries["toolarg"],), tool=tool,
                             verify=[CallableVerifier(lambda o: ("good" in o, f"saw {o}"), name="v")])
    async def plan(ctx: StageContext) -> str:
        return (await ctx.complete(canaries["prompt"], system=canaries["system"])).text

    async with lanes.run(task_class="hard-debugging", risk_class="high", escalation_reason="hard-debugging") as r2:
        await r2.stage("planning", plan)
    assert seen_tool and run.receipts and r2.receipts[0].body["approval"]["approver"] == "ann"
    logs = capsys.readouterr().err
    places: dict[str, str] = {
        "spans": "\n".join(json.dumps({"name": s.name, "attributes": dict(s.attributes or {}),
                                       "events": [dict(e.attributes or {}) for e in s.events]}, default=str)
                           for s in cap.spans),
        "logs": logs,
        "receipts": "\n".join(r.text + json.dumps(r.body) for r in (*run.receipts, *r2.receipts)),
        "decisions": "\n".join(json.dumps(d.to_native()) + json.dumps(d.to_upstream())
                               for rec in (*run.records, *r2.records) for d in rec.decisions),
        "traces": "\n".join(p.read_text() for p in (tmp_path / "traces").glob("*")),
        "store": (tmp_path / "agentlanes.db").read_bytes().decode("latin-1"),
    }
    for where, text in places.items():
        for name, canary in canaries.items():
            assert canary not in text, f"{name} canary leaked into {where}"
    content = "\n".join(p.read_text() for p in (tmp_path / "content").iterdir())
    for name in ("prompt", "system", "output"):
        assert canaries[name] in content  # exact replay needs the bodies, kept locally


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    async def go() -> Path:
        lanes = lanes_for(tmp_path, {"standard": ScriptedModel(["plan", "bad", "worse"]),
                                     "high-end": TestModel(text="good")})
        run = await escalating_run(lanes)
        return trace_path(tmp_path, run.run_id)

    path = anyio.run(go)
    whole = path.read_text()
    lines = whole.splitlines()
    complete = len(list(read_trace(path)))
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    assert len(list(read_trace(path))) == complete - 1
    path.write_text(lines[0][:10] + "\n" + "\n".join(lines[1:]) + "\n")
    with pytest.raises(ValueError, match="line 1 is not OTLP/JSON"):
        list(read_trace(path))


KILLED = textwrap.dedent("""
    import anyio, sys
    from agentlanes import Lanes
    from agentlanes.stores import MemoryStore
    from agentlanes.testing import TestModel
    from tests.conftest import healthy

    async def main(home):
        lanes = Lanes({"standard": TestModel()}, signals=healthy(), data_dir=home)
        async def check(ctx):
            return "ok"
        async with lanes.run(task_class="routine-code", run_id="run-killed") as run:
            for i in range(100000):  # deterministic stages cost nothing: no budget ends the loop
                await run.stage_with("verification", check, deterministic=True)
                if i == 20:
                    print("going", flush=True)

    anyio.run(main, sys.argv[1])
""")


def test_kill_9_mid_run_leaves_a_readable_trace(tmp_path: Path) -> None:
    from agentlanes.history import render_timeline

    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "AGENTLANES_LOG_LEVEL": "off"})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "going"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    path = trace_path(tmp_path, "run-killed")
    spans = list(read_trace(path))
    stages = [s for s in spans if s["name"] == "agentlanes.stage verification"]
    assert len(stages) >= 20
    assert all(s["attributes"][A.STAGE_STATUS] == "succeeded" for s in stages)
    assert "run span not written yet" in render_timeline(path)


def test_the_applications_tracer_provider_is_used(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import anyio
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from agentlanes import Lanes
        from agentlanes.testing import TestModel
        from tests.conftest import healthy

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        app = trace.get_tracer("app")

        async def main():
            lanes = Lanes({{"standard": TestModel()}}, signals=healthy(), data_dir={str(tmp_path)!r})
            async def ask(ctx):
                return (await ctx.complete("x")).text
            with app.start_as_current_span("app work"):
                pass
            async with lanes.run(task_class="routine-code") as run:
                await run.stage("planning", ask)
            names = sorted(s.name for s in exporter.get_finished_spans())
            print(",".join(names))
            lines = open(run.trace_path).read().count("app work")
            print("app spans in the local trace:", lines)

        anyio.run(main)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "AGENTLANES_LOG_LEVEL": "off"}, check=False)
    assert proc.returncode == 0, proc.stderr
    names, only_ours = proc.stdout.splitlines()
    assert "agentlanes.stage planning" in names and "app work" in names and "chat test-model" in names
    assert only_ours == "app spans in the local trace: 0"


def test_runs_show_and_counterfactual_replay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def go() -> Any:
        lanes = lanes_for(tmp_path, {"standard": ScriptedModel(["p", "b1", "b2"]), "high-end": TestModel(text="good")})
        run = await escalating_run(lanes)
        await lanes.aclose()
        return run

    run = anyio.run(go)
    assert cli.main(["runs", "--data-dir", str(tmp_path), "--json"]) == 0
    [entry] = json.loads(capsys.readouterr().out)
    assert (entry["runId"], entry["status"], entry["taskClass"], entry["cost"]) == (run.run_id, "succeeded",
                                                                                    "routine-code", "0.31")
    assert entry["tracePath"] == str(trace_path(tmp_path, run.run_id))
    assert cli.main(["show", run.run_id, "--data-dir", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert "ESCALATED standard→high-end (repeated-standard-lane-failure)" in shown
    assert "verifier is-good: fail" in shown and "verifier is-good: pass" in shown
    assert cli.main(["show", "run-nope", "--data-dir", str(tmp_path)]) == 1
    assert "No trace for 'run-nope'" in capsys.readouterr().err
    # counterfactual: forbid high-end for routine code
    policy = json.loads((ROOT / "policies" / "policy.json").read_text())
    for task in policy["taskClasses"]:
        if task["taskClass"] == "routine-code":
            task["allowedEscalationLanes"] = []
    strict = tmp_path / "strict.json"
    strict.write_text(json.dumps(policy))
    trace_file = str(trace_path(tmp_path, run.run_id))
    assert cli.main(["replay", run.run_id, trace_file, "--policy", str(strict), "--json",
                     "--data-dir", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["runs"] == 1 and report["decisions"] == 2 * (1 + 3 + 3)  # the trace given twice
    assert len(report["escalationsNoLongerAllowed"]) == 2
    assert report["nowDeferredOrDenied"][0]["stage"] == "execution"
    assert report["cost"]["difference"] == -0.5
    assert cli.main(["replay", run.run_id, "--policy", str(ROOT / "policies" / "policy.json"),
                     "--data-dir", str(tmp_path)]) == 0
    assert "lanes that change: 0" in capsys.readouterr().out
    # without documents it is an exact replay, which needs the code named: the chain
    # reference the run recorded is data, never imported (exit 2: unusable as given)
    assert cli.main(["replay", run.run_id, "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "the chain 'tests:chain'" in err and "--entry MODULE:FUNCTION" in err


async def test_the_record_does_not_depend_on_tracing(tmp_path: Path) -> None:
    """tracing=False turns spans off; the local record (trace file and bodies) is still
    written, unless record=False."""
    cap = capture_spans()
    lanes = lanes_for(tmp_path, {"standard": TestModel()}, tracing=False, tracer_provider=cap.provider)
    async with lanes.run(task_class="routine-code") as run:
        await run.stage("planning", lambda ctx: ctx.complete("x"))
    assert cap.spans == []
    assert run.trace_path is not None
    names = sorted(s["name"] for s in read_trace(run.trace_path))
    assert names == ["agentlanes.stage planning", "chat test-model", "invoke_workflow routine-code"]
    assert len(list((tmp_path / "content").iterdir())) == 2  # the prompt and the output
    off = tmp_path / "off"
    lanes = lanes_for(off, {"standard": TestModel()}, tracing=False, record=False, store=SQLiteStore(off / "db"))
    async with lanes.run(task_class="routine-code") as run:
        await run.stage("planning", lambda ctx: ctx.complete("x"))
    assert run.trace_path is None and not (off / "traces").exists() and not (off / "content").exists()
    store = lanes.store
    assert isinstance(store, SQLiteStore)
    await store.aclose()


async def test_otlp_http_export_to_a_local_collector(tmp_path: Path) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.sdk.trace import TracerProvider

    received: list[str] = []

    class Collector(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            req = ExportTraceServiceRequest.FromString(body)
            received.extend(s.name for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        lanes = lanes_for(tmp_path, {"standard": TestModel()}, tracer_provider=TracerProvider(),
                          otlp_endpoint=f"http://127.0.0.1:{port}/v1/traces")
        async with lanes.run(task_class="routine-code") as run:
            await run.stage("planning", lambda ctx: ctx.complete("x"))
        exported, dropped = lanes.telemetry.flush_export()
        assert (exported, dropped) == (3, 0)
        assert sorted(received) == sorted(s["name"] for s in read_trace(run.trace_path))
    finally:
        server.shutdown()
        server.server_close()
    # the collector is gone: spans are counted as dropped, the local trace still has them
    lanes = lanes_for(tmp_path, {"standard": TestModel()}, tracer_provider=TracerProvider(),
                      otlp_endpoint=f"http://127.0.0.1:{port}/v1/traces")
    async with lanes.run(task_class="routine-code") as run:
        await run.stage("planning", lambda ctx: ctx.complete("x"))
    assert lanes.telemetry.flush_export(3000)[1] == 3
    assert len(list(read_trace(run.trace_path))) == 3
