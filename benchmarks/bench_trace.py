"""Encoding one span as a local-trace line: our OTLP/JSON encoder vs the official path.

Prints figures, asserts nothing but that both encoders wrote the same bytes; baselines
are measured in the same run, in CPU time (``time.process_time``), medians of
interleaved rounds:

* official: the OTLP protobuf encoder, ``MessageToDict``, hex ids, ``json.dumps``: what
  ``agentlanes.tracefile.encode_otlp_json`` did before our encoder (rebuilt here).
* one OpenTelemetry SDK span: started and ended with 10 attributes on a real
  TracerProvider (a processor that drops it), the unit issue 11 counts overhead in.

Spans are what agentlanes writes (see ``agentlanes.telemetry.emit_stage``), recorded on
the SDK's default resource: a stage span with 12 attributes and 2 decision events whose
attributes hold a ~1 KB request JSON, and a chat span with 15 attributes.

Usage: python benchmarks/bench_trace.py [--quick]
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult  # noqa: E402
from opentelemetry.trace import SpanKind, Status, StatusCode  # noqa: E402

from agentlanes import attributes as A  # noqa: E402
from agentlanes._otlp import encode_span_json, encode_span_line, encode_spans_json  # noqa: E402


class Keep(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


class Drop(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def request_json(i: int) -> str:
    """A decision event's request, about 1 KB, shaped like ``telemetry._request_json``."""
    return json.dumps(
        {
            "taskClass": "routine-code",
            "riskClass": "low",
            "stage": "planning",
            "deterministic": False,
            "estimatedInputTokens": 1200 + i,
            "estimatedOutputTokens": 400,
            "excludedLanes": [["high-end", "escalation not approved"]],
            "ledgerRemaining": {"cheap": 12.5, "standard": 40.0, "high-end": 120.0, "pro": 0.0},
            "premiumRemaining": [3.25, 10.0],
            "signals": {
                "batteryState": "normal",
                "thermalState": "normal",
                "localModelProfileAvailable": True,
                "localServiceHealthy": True,
                "memoryAvailableBytes": 17179869184,
                "networkAvailable": True,
                "providerErrorRate": 0.001,
                "providerLatencyP95Ms": 1200,
                "providerQuotaKnown": True,
                "providerQuotaRemainingShare": 0.8,
                "estimatedInputTokens": 1200,
                "estimatedOutputTokens": 400,
            },
            "notes": "résumé of the plan — keep the diff small; " * 6,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )


def agentlanes_spans() -> tuple[ReadableSpan, ReadableSpan]:
    """A stage span and a chat span, as the SDK hands them to the trace writer."""
    keep = Keep()
    provider = TracerProvider()
    provider.add_span_processor(keep)
    tracer = provider.get_tracer("agentlanes", schema_url="https://opentelemetry.io/schemas/1.37.0")
    t0 = time.time_ns()
    run = tracer.start_span("invoke_workflow routine-code", start_time=t0)
    stage = tracer.start_span(
        "agentlanes.stage plan",
        context=trace.set_span_in_context(run),
        kind=SpanKind.INTERNAL,
        start_time=t0 + 1000,
        attributes={
            A.STAGE: "planning",
            A.STAGE_NAME: "plan",
            A.STAGE_STATUS: "succeeded",
            A.STAGE_ATTEMPTS: 1,
            A.TASK_CLASS: "routine-code",
            A.RISK_CLASS: "low",
            A.COST_ACTUAL: 0.000825,
            A.LANE: "standard",
            A.DECISION_ID: "dec_01HZX3K9Q2V7M4N8P6R5T1W0YB",
            A.DECISION_STATUS: "routed",
            A.DECISION_REASON: "cheapest feasible lane",
            A.CANDIDATES_REJECTED: ["no-model: stage needs a model", "local-cheap: quality floor 0.80 > 0.72"],
        },
    )
    for i in range(2):
        stage.add_event(
            A.EVENT_DECISION,
            {
                A.DECISION_ID: f"dec_01HZX3K9Q2V7M4N8P6R5T1W0Y{i}",
                A.DECISION_STATUS: "routed",
                A.DECISION_REASON: "cheapest feasible lane",
                A.LANE: "standard",
                A.CANDIDATES_REJECTED: ["no-model: stage needs a model"],
                A.REQUEST: request_json(i),
                A.COST_ESTIMATED: 0.0009,
                A.STEP: i + 1,
            },
            timestamp=t0 + 2000 + i,
        )
    chat = tracer.start_span(
        "chat gpt-4.1-mini",
        context=trace.set_span_in_context(stage),
        kind=SpanKind.CLIENT,
        start_time=t0 + 3000,
        attributes={
            A.GEN_AI_OPERATION_NAME: A.OP_CHAT,
            A.GEN_AI_PROVIDER_NAME: "openai",
            A.GEN_AI_REQUEST_MODEL: "gpt-4.1-mini",
            A.GEN_AI_REQUEST_MAX_TOKENS: 512,
            A.LANE: "standard",
            A.ATTEMPT: 1,
            A.COST_RESERVED: 0.0012,
            A.COST_ACTUAL: 0.000825,
            A.STEP: 2,
            A.PROMPT_DIGEST: "hmac-sha256:" + "3f" * 32,
            A.GEN_AI_RESPONSE_MODEL: "gpt-4.1-mini-2025-04-14",
            A.GEN_AI_USAGE_INPUT_TOKENS: 1187,
            A.GEN_AI_USAGE_OUTPUT_TOKENS: 342,
            A.OUTPUT_DIGEST: "hmac-sha256:" + "a9" * 32,
            A.ERROR_RETRYABLE: False,
        },
    )
    chat.set_status(Status(StatusCode.OK))
    chat.end(end_time=t0 + 900_000_000)
    stage.end(end_time=t0 + 950_000_000)
    run.end(end_time=t0 + 960_000_000)
    provider.shutdown()
    by_name = {s.name: s for s in keep.spans}
    return by_name["agentlanes.stage plan"], by_name["chat gpt-4.1-mini"]


def official_json(spans: list[ReadableSpan]) -> str:
    """The official path, as ``agentlanes.tracefile.encode_otlp_json`` had it before our
    encoder (rebuilt here so this stays a comparison once the writer uses ours)."""
    from google.protobuf.json_format import MessageToDict  # type: ignore[import-untyped]
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    doc = MessageToDict(encode_spans(spans), use_integers_for_enums=True)
    for rs in doc.get("resourceSpans", []):
        for ss in rs["scopeSpans"]:
            for one in ss["spans"]:
                for holder in [one, *one.get("links", [])]:
                    for key in ("traceId", "spanId", "parentSpanId"):
                        if key in holder:
                            holder[key] = base64.b64decode(holder[key]).hex()
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def cpu_us(fn: Callable[[], object], n: int) -> float:
    """CPU time per call over one round of ``n`` calls, in microseconds."""
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n * 1e6


def otel_span() -> tuple[Callable[[], object], TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Drop()))
    tracer = provider.get_tracer("bench")
    attrs = {f"agentlanes.bench.attr{i}": ("standard" if i % 2 else i) for i in range(10)}

    def one() -> None:
        tracer.start_span("stage", attributes=attrs).end()

    return one, provider


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n, rounds = (300, 3) if args.quick else (2000, 9)
    stage, chat = agentlanes_spans()
    for spans in ([stage], [chat], [stage, chat]):
        assert encode_spans_json(spans) == official_json(spans), "the encoders disagree"
    span, provider = otel_span()
    stage_b, chat_b = len(encode_span_json(stage).encode()), len(encode_span_json(chat).encode())
    measured: dict[str, Callable[[], object]] = {
        "span": span,
        "stage official": lambda: official_json([stage]),
        "stage ours": lambda: encode_span_json(stage),
        "stage ours bytes": lambda: encode_span_line(stage),
        "chat official": lambda: official_json([chat]),
        "chat ours": lambda: encode_span_json(chat),
        "both official": lambda: official_json([stage, chat]),
        "both ours": lambda: encode_spans_json([stage, chat]),
    }
    for fn in measured.values():  # warm up
        for _ in range(max(1, n // 10)):
            fn()
    # Rounds interleave every measurement, so a noisy machine's drift hits all alike.
    samples: dict[str, list[float]] = {name: [] for name in measured}
    for _ in range(rounds):
        for name, fn in measured.items():
            samples[name].append(cpu_us(fn, n))
    provider.shutdown()
    us = {name: statistics.median(values) for name, values in samples.items()}
    span_us = us["span"]
    print(f"python {sys.version.split()[0]}; CPU time per call, median of {rounds} interleaved rounds of {n}:")
    print(f"  one OpenTelemetry SDK span, 10 attributes, start+end   {span_us:7.1f} us  (baseline)")
    rows = [
        (f"stage span (12 attributes, 2 events, {stage_b} B)", "stage"),
        (f"chat span (15 attributes, {chat_b} B)", "chat"),
        ("stage + chat spans in one line", "both"),
    ]
    for label, key in rows:
        official, ours = us[f"{key} official"], us[f"{key} ours"]
        print(f"  {label}")
        print(f"    official encoder                 {official:7.1f} us = {official / span_us:5.2f} spans")
        print(
            f"    agentlanes._otlp                 {ours:7.1f} us = {ours / span_us:5.2f} spans, "
            f"{official / ours:5.1f}x faster than the official encoder"
        )
        if f"{key} ours bytes" in us:
            bytes_us = us[f"{key} ours bytes"]
            print(
                f"    agentlanes._otlp, UTF-8 line     {bytes_us:7.1f} us = {bytes_us / span_us:5.2f} spans "
                "(encode_span_line: the str check and the file's encoding in one)"
            )


if __name__ == "__main__":
    main()
