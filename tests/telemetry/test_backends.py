"""What OTLP backends see: GenAI message parts with content capture on, tool
definitions, one workflow span per run, error statuses that name no content, exporter
headers and resource attributes set in code, drops reported while the process runs,
and a dead collector that cannot stall shutdown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agentlanes import Lanes, ModelError, StageContext
from agentlanes import attributes as A
from agentlanes.models import ProviderError, Tool, Usage
from agentlanes.runtime import RetryPolicy
from agentlanes.stores import MemoryStore
from agentlanes.telemetry import OTLPExport
from agentlanes.testing import ScriptedModel, capture_spans, reply, tool_call
from tests.conftest import ROOT, healthy

TOOL = Tool("lookup", {"type": "object", "properties": {"q": {"type": "string"}}}, "Looks things up.")


class Collector:
    """An OTLP/HTTP collector on 127.0.0.1 that keeps what it receives."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        self.requests: list[Any] = []
        self.headers: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append(ExportTraceServiceRequest.FromString(body))
                outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def spans(self) -> list[Any]:
        return [s for r in self.requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]

    def resources(self) -> list[dict[str, str]]:
        return [{kv.key: kv.value.string_value for kv in rs.resource.attributes}
                for r in self.requests for rs in r.resource_spans]


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.server.shutdown()
    c.server.server_close()


async def tool_turn(ctx: StageContext) -> str:
    first = await ctx.complete("find it", system="be brief", tools=[TOOL])
    from agentlanes.models import Message

    messages = [Message("system", "be brief"), Message("user", "find it"),
                Message("assistant", "", first.tool_calls), Message("tool", "found: 42", tool_call_id="c1")]
    return (await ctx.complete(messages, tools=[TOOL])).text


async def test_captured_messages_use_the_conventions_parts(tmp_path: Path) -> None:
    cap = capture_spans()
    model = ScriptedModel([reply(tool_calls=[tool_call("lookup", {"q": "x"}, id="c1")], usage=Usage(10, 3)),
                           reply("It is 42.", usage=Usage(20, 4))])
    lanes = Lanes({"standard": model}, signals=healthy(), store=MemoryStore(), data_dir=tmp_path,
                  tracer_provider=cap.provider, capture_content=True)
    async with lanes.run(task_class="routine-code") as run:
        await run.stage("planning", tool_turn)
    chats = sorted((s for s in cap.spans if s.name.startswith("chat ")), key=lambda s: s.start_time)
    first_out = json.loads(chats[0].attributes[A.GEN_AI_OUTPUT_MESSAGES])
    assert first_out == [{"role": "assistant", "finish_reason": "tool_calls", "parts": [
        {"type": "tool_call", "id": "c1", "name": "lookup", "arguments": {"q": "x"}}]}]
    second_in = json.loads(chats[1].attributes[A.GEN_AI_INPUT_MESSAGES])
    assert second_in[0] == {"role": "system", "parts": [{"type": "text", "content": "be brief"}]}
    assert second_in[3] == {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1",
                                                        "response": "found: 42"}]}
    definitions = json.loads(chats[0].attributes[A.GEN_AI_TOOL_DEFINITIONS])
    assert definitions == [{"type": "function", "name": "lookup", "description": "Looks things up.",
                            "parameters": dict(TOOL.parameters)}]
    assert list(chats[0].attributes[A.GEN_AI_RESPONSE_FINISH_REASONS]) == ["tool_calls"]
    workflows = [s.name for s in cap.spans if (s.attributes or {}).get(A.GEN_AI_OPERATION_NAME) == "invoke_workflow"]
    assert workflows == ["invoke_workflow routine-code"]  # only the run span claims to be the workflow


async def test_without_capture_no_message_or_definition_leaves(tmp_path: Path) -> None:
    cap = capture_spans()
    model = ScriptedModel([reply(tool_calls=[tool_call("lookup", {"q": "SECRET"}, id="c1")]), reply("done")])
    lanes = Lanes({"standard": model}, signals=healthy(), store=MemoryStore(), data_dir=tmp_path,
                  tracer_provider=cap.provider, capture_content=False)
    async with lanes.run(task_class="routine-code") as run:
        await run.stage("planning", tool_turn)
    text = json.dumps([dict(s.attributes or {}) for s in cap.spans], default=str)
    assert "SECRET" not in text and A.GEN_AI_TOOL_DEFINITIONS not in text and A.GEN_AI_INPUT_MESSAGES not in text


async def test_failed_spans_say_what_failed_without_content(tmp_path: Path) -> None:
    from opentelemetry.trace import StatusCode

    cap = capture_spans()
    model = ScriptedModel([ProviderError("boom: SECRET-PROMPT-ECHO", retryable=False, status=400)])
    lanes = Lanes({"standard": model}, signals=healthy(), store=MemoryStore(), data_dir=tmp_path,
                  tracer_provider=cap.provider, retry=RetryPolicy(attempts=1))

    async def ask(ctx: StageContext) -> str:
        return (await ctx.complete("x")).text

    with pytest.raises(ModelError):
        async with lanes.run(task_class="routine-code") as run:
            await run.stage("planning", ask)
    by_name = {s.name: s for s in cap.spans}
    chat = next(s for s in cap.spans if s.name.startswith("chat "))
    assert (chat.status.status_code, chat.status.description) == (StatusCode.ERROR, "ProviderError (HTTP 400)")
    stage = by_name["agentlanes.stage planning"]
    assert (stage.status.status_code, stage.status.description) == (StatusCode.ERROR, "ModelError")
    assert by_name["invoke_workflow routine-code"].status.description == "ModelError"
    assert all("SECRET" not in (s.status.description or "") for s in cap.spans)
    assert run.status == "failed"


async def test_headers_and_resource_are_set_in_code(tmp_path: Path, collector: Collector) -> None:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    lanes = Lanes({"standard": ScriptedModel(["ok"])}, signals=healthy(), store=MemoryStore(), data_dir=tmp_path,
                  tracer_provider=TracerProvider(resource=Resource.create({"service.name": "mine"})),
                  otlp=OTLPExport(collector.url, headers={"x-api-key": "k-123"}))

    async def ask(ctx: StageContext) -> str:
        return (await ctx.complete("x")).text

    async with lanes.run(task_class="routine-code") as run:
        await run.stage("planning", ask)
    await lanes.aclose()  # sends what is queued
    assert collector.headers and all(h["x-api-key"] == "k-123" for h in collector.headers)
    assert sorted(s.name for s in collector.spans()) == sorted(
        ["invoke_workflow routine-code", "agentlanes.stage planning", "chat scripted-model"])
    assert all(r["service.name"] == "mine" for r in collector.resources())
    assert run.status == "succeeded"


def test_a_private_provider_takes_resource_attributes(tmp_path: Path, collector: Collector) -> None:
    code = textwrap.dedent(f"""
        import anyio
        from agentlanes import Lanes
        from agentlanes.telemetry import OTLPExport
        from agentlanes.testing import TestModel
        from tests.conftest import healthy

        async def main():
            lanes = Lanes({{"standard": TestModel()}}, signals=healthy(), data_dir={str(tmp_path)!r},
                          otlp=OTLPExport({collector.url!r}), resource_attributes={{"service.name": "my-agent"}})
            async def ask(ctx):
                return (await ctx.complete("x")).text
            async with lanes.run(task_class="routine-code") as run:
                await run.stage("planning", ask)
            await lanes.aclose()
        anyio.run(main)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "AGENTLANES_LOG_LEVEL": "off"}, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert collector.resources() and all(r["service.name"] == "my-agent" for r in collector.resources())


def test_a_dead_collector_is_reported_and_cannot_stall_shutdown(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/traces"
    code = textwrap.dedent(f"""
        import time, anyio
        from agentlanes import Lanes
        from agentlanes.telemetry import OTLPExport
        from agentlanes.testing import TestModel
        from tests.conftest import healthy

        async def main():
            lanes = Lanes({{"standard": TestModel()}}, signals=healthy(), data_dir={str(tmp_path)!r},
                          otlp=OTLPExport({dead!r}, timeout=1.0))
            async def ask(ctx):
                return (await ctx.complete("x")).text
            async with lanes.run(task_class="routine-code") as run:
                await run.stage("planning", ask)
            lanes.telemetry.flush_export(5000)   # the drop is reported now, while the process runs
            print("flushed", lanes.telemetry.flush_export(0)[1], flush=True)
            started = time.monotonic()
            await lanes.aclose()
            print("closed in", round(time.monotonic() - started, 1), flush=True)
        anyio.run(main)
    """)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "AGENTLANES_LOG_LEVEL": "warning"}, check=False)
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "flushed 3" in proc.stdout
    warnings = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert any(w["event"] == "telemetry.dropped_spans" and w["dropped"] == 3 for w in warnings)
    # a 1 s export timeout: the process ends without waiting out the exporter's default 10 s retries
    assert took < 8
