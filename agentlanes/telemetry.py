"""OpenTelemetry spans, and the durable local trace every run leaves.

Spans follow the GenAI semantic conventions (names in :mod:`agentlanes.attributes`):
``invoke_workflow {name}`` per run, one span per stage (``agentlanes.stage {name}``),
``chat {model}`` per model call, ``execute_tool {name}`` per deterministic verifier or
tool, verifier outcomes as ``gen_ai.evaluation.result`` events and escalations as
``agentlanes.escalation`` events with the receipt's id and digest.

**Privacy.** Content (prompts, outputs, tool output, error texts) is recorded as keyed
digests, never as text, unless content capture is on: ``Lanes(capture_content=True)``,
or ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`` when the code says nothing.

**The local trace.** Every span of a run is appended, as it ends, to
``<data-dir>/traces/<run-id>.otlp.jsonl``: one ``ExportTraceServiceRequest`` per line in
OTLP/JSON (the official protobuf encoder; hex ids, as the Collector's file exporter
writes them), flushed, so after a kill -9 everything up to the last finished span can be
read (a torn last line is ignored by :func:`read_trace`). The local trace never depends
on an exporter. With an application TracerProvider configured, agentlanes uses it and
adds its trace writer to it (the writer only records agentlanes runs' traces).

Schema versions of the trace (``agentlanes.trace.schema`` on the run span):
``agentlanes.trace/1``: first version.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from agentlanes import attributes as A
from agentlanes.content import ContentStore
from agentlanes.errors import ConfigurationError
from agentlanes.tracefile import TRACE_SCHEMA_VERSION, TraceWriter, read_trace, trace_path

__all__ = ["TRACE_SCHEMA_VERSION", "ContentStore", "Telemetry", "TraceWriter", "read_trace", "trace_path"]


class CountingExporter(SpanExporter):
    """Wraps an exporter and counts the spans it could not deliver (the local trace has
    them regardless)."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.exported = 0
        self.dropped = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception:  # an exporter must never break the run
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self.dropped += len(spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class Telemetry:
    """The tracer agentlanes uses, and its local trace writer.

    Args:
        data_dir: where traces are written.
        enabled: ``False`` turns spans (and so the local trace) off.
        tracer_provider: an explicit provider; otherwise the application's global SDK
            provider if it has one, else a private one.
        capture_content: record prompts/outputs as text (default: the environment
            variable ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``, else off).
        otlp_endpoint: also export over OTLP/HTTP (needs ``agentlanes[otlp]``), batched.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        enabled: bool = True,
        tracer_provider: Any = None,
        capture_content: bool | None = None,
        otlp_endpoint: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.enabled = enabled
        if capture_content is None:
            env = os.environ.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "")
            capture_content = env.strip().lower() in ("1", "true", "yes")
        self.capture_content = capture_content
        self.writer = TraceWriter()
        self.exporter_processor: BatchSpanProcessor | None = None
        self.exporter: CountingExporter | None = None
        if not enabled:
            self.tracer: trace.Tracer = trace.NoOpTracer()
            return
        provider = tracer_provider
        if provider is None:
            global_provider = trace.get_tracer_provider()
            provider = global_provider if isinstance(global_provider, TracerProvider) else TracerProvider()
        self.provider = provider
        provider.add_span_processor(self.writer)
        if otlp_endpoint:
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError:
                raise ConfigurationError(
                    "Exporting spans over OTLP/HTTP needs the 'otlp' extra: pip install 'agentlanes[otlp]'."
                ) from None
            self.exporter = CountingExporter(OTLPSpanExporter(endpoint=otlp_endpoint))
            self.exporter_processor = BatchSpanProcessor(self.exporter)
            provider.add_span_processor(self.exporter_processor)
        self.tracer = provider.get_tracer("agentlanes", schema_url="https://opentelemetry.io/schemas/1.37.0")

    def start_run(self, run_id: str, span: Any) -> Path | None:
        """Register a run's root span; its trace goes to the run's file."""
        if not self.enabled or not span.is_recording():
            return None
        path = trace_path(self.data_dir, run_id)
        self.writer.register(span.get_span_context().trace_id, path)
        return path

    def end_run(self, span: Any) -> None:
        if self.enabled:
            self.writer.close(span.get_span_context().trace_id)

    def flush_export(self, timeout_millis: int = 10000) -> tuple[int, int]:
        """Push batched spans to the collector now; ``(exported, dropped)`` so far.

        Spans the batch processor discarded because its queue was full never reach the
        exporter; the SDK logs those. Everything is in the local trace either way."""
        if self.exporter_processor is None or self.exporter is None:
            return (0, 0)
        self.exporter_processor.force_flush(timeout_millis)
        return (self.exporter.exported, self.exporter.dropped)


def run_attributes(run_id: str, task_class: str, risk_class: str, chain: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        A.GEN_AI_OPERATION_NAME: A.OP_INVOKE_WORKFLOW,
        A.GEN_AI_WORKFLOW_NAME: chain or task_class,
        A.TRACE_SCHEMA: TRACE_SCHEMA_VERSION,
        A.RUN_ID: run_id,
        A.TASK_CLASS: task_class,
        A.RISK_CLASS: risk_class,
    }
    if chain:
        out[A.CHAIN_REF] = chain
    return out


def _rejected(decision: Any) -> list[str]:
    return [f"{c.lane}: {', '.join(c.reasons)}" for c in decision.candidates if not c.feasible]


def _request_json(decision: Any, premium: tuple[float, float] | None) -> str:
    req = decision.request
    return json.dumps(
        {
            **req.upstream_input(),
            "deterministic": req.deterministic,
            "excludedLanes": [list(x) for x in req.excluded_lanes],
            "ledgerRemaining": decision.ledger_remaining,
            "premiumRemaining": list(premium) if premium is not None else None,
            "signals": dict(req.signals.raw),
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )


def emit_stage(run: Any, record: Any, parent_ctx: Any) -> None:
    """Emit a finished stage and everything inside it as spans (called once per
    top-level stage record, when it ends)."""
    from opentelemetry.trace import SpanKind, Status, StatusCode

    tracer = run.lanes.telemetry.tracer
    capture = run.lanes.telemetry.capture_content
    record.emitted = True
    last = record.decisions[-1] if record.decisions else None
    attrs: dict[str, Any] = {
        A.STAGE: record.stage,
        A.STAGE_NAME: record.name,
        A.STAGE_STATUS: record.status,
        A.STAGE_ATTEMPTS: record.attempts,
        A.TASK_CLASS: run.task_class,
        A.RISK_CLASS: last.request.risk_class if last is not None else run.risk_class,
        A.COST_ACTUAL: record.cost / 1_000_000,
    }
    if record.parent:
        attrs[A.STAGE_PARENT] = record.parent
    if last is not None:
        attrs.update(
            {
                A.LANE: last.lane or "",
                A.DECISION_ID: last.decision_id,
                A.DECISION_STATUS: last.status,
                A.DECISION_REASON: last.reason,
                A.CANDIDATES_REJECTED: _rejected(last),
                A.BUDGET_REMAINING: last.budget_remaining,
            }
        )
        if last.estimated_cost is not None:
            attrs[A.COST_ESTIMATED] = last.estimated_cost
    if record.output_digest:
        attrs[A.OUTPUT_DIGEST] = record.output_digest
    span = tracer.start_span(
        f"agentlanes.stage {record.name}",
        context=parent_ctx,
        kind=SpanKind.INTERNAL,
        start_time=record.started_ns,
        attributes=attrs,
    )
    for decision in record.decisions:
        event: dict[str, Any] = {
            A.DECISION_ID: decision.decision_id,
            A.DECISION_STATUS: decision.status,
            A.DECISION_REASON: decision.reason,
            A.LANE: decision.lane or "",
            A.CANDIDATES_REJECTED: _rejected(decision),
            A.REQUEST: _request_json(decision, run._premium.get(decision.decision_id)),
        }
        if decision.estimated_cost is not None:
            event[A.COST_ESTIMATED] = decision.estimated_cost
        step = run._steps.get(decision.decision_id)
        if step is not None:
            event[A.STEP] = step
        span.add_event(A.EVENT_DECISION, event)
    for receipt in record.receipts:
        span.add_event(
            A.EVENT_ESCALATION,
            {
                A.RECEIPT_ID: receipt.receipt_id,
                A.STEP: run._steps.get(receipt.receipt_id, 0),
                A.APPROVER: (receipt.body.get("approval") or {}).get("approver") or "",
                A.RECEIPT_DIGEST: receipt.digest,
                A.FROM_LANE: receipt.body.get("fromLane") or "",
                A.TO_LANE: receipt.body["toLane"],
                A.ESCALATION_REASON: receipt.body["reason"],
                A.DECISION_ID: receipt.body["decisionId"],
            },
        )
    ctx = trace.set_span_in_context(span)
    for call in record.calls:
        call_attrs: dict[str, Any] = {
            A.GEN_AI_OPERATION_NAME: A.OP_CHAT,
            A.GEN_AI_PROVIDER_NAME: call.provider,
            A.GEN_AI_REQUEST_MODEL: call.model,
            A.GEN_AI_REQUEST_MAX_TOKENS: call.max_tokens,
            A.LANE: call.lane,
            A.ATTEMPT: call.attempt,
            A.COST_RESERVED: call.reserved / 1_000_000,
            A.COST_ACTUAL: call.charged / 1_000_000,
            A.STEP: call.step,
        }
        if call.prompt_digest:
            call_attrs[A.PROMPT_DIGEST] = call.prompt_digest
        if call.ok and call.usage is not None:
            call_attrs[A.GEN_AI_RESPONSE_MODEL] = call.response_model or call.model
            call_attrs[A.GEN_AI_USAGE_INPUT_TOKENS] = call.usage.input_tokens
            call_attrs[A.GEN_AI_USAGE_OUTPUT_TOKENS] = call.usage.output_tokens
        if call.output_digest:
            call_attrs[A.OUTPUT_DIGEST] = call.output_digest
        if capture and call.prompt_text is not None:
            call_attrs[A.GEN_AI_INPUT_MESSAGES] = call.prompt_text
        if capture and call.output_text is not None:
            call_attrs[A.GEN_AI_OUTPUT_MESSAGES] = json.dumps([{"role": "assistant", "content": call.output_text}])
        child = tracer.start_span(
            f"chat {call.model}", context=ctx, kind=SpanKind.CLIENT, start_time=call.started_ns, attributes=call_attrs
        )
        if not call.ok:
            child.set_attribute(A.ERROR_TYPE, call.error or "error")
            child.set_attribute(A.ERROR_RETRYABLE, call.retryable)
            if call.status is not None:
                child.set_attribute("http.response.status_code", call.status)
            child.set_status(Status(StatusCode.ERROR))
        child.end(end_time=call.started_ns + int(call.duration * 1e9))
    if record.stage in ("verification", "tool-use") and record.decisions and record.decisions[-1].lane == "no-model":
        _emit_tools(tracer, record, ctx, run)
    for child_record in record.children:
        if not child_record.emitted:
            emit_stage(run, child_record, ctx)
    if record.status != "succeeded":
        span.set_status(Status(StatusCode.ERROR))
        if record.error:
            span.set_attribute(A.ERROR_TYPE, record.error)
    span.end(end_time=record.ended_ns)


def _emit_tools(tracer: Any, record: Any, ctx: Any, run: Any) -> None:
    from opentelemetry.trace import SpanKind, Status, StatusCode

    hasher = run.lanes.hasher
    at = record.started_ns
    results = [r for batch in record.verifications for r in batch]
    if record.stage == "tool-use" and not results:
        span = tracer.start_span(
            f"execute_tool {record.name}",
            context=ctx,
            kind=SpanKind.INTERNAL,
            start_time=at,
            attributes={
                A.GEN_AI_OPERATION_NAME: A.OP_EXECUTE_TOOL,
                A.GEN_AI_TOOL_NAME: record.name,
                A.GEN_AI_TOOL_TYPE: "function",
                A.LANE: "no-model",
            },
        )
        if record.status != "succeeded":
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=record.ended_ns)
        return
    steps = list(record.result_steps)
    for i, result in enumerate(results):
        end = at + int(result.duration * 1e9)
        span = tracer.start_span(
            f"execute_tool {result.name}",
            context=ctx,
            kind=SpanKind.INTERNAL,
            start_time=at,
            attributes={
                A.GEN_AI_OPERATION_NAME: A.OP_EXECUTE_TOOL,
                A.GEN_AI_TOOL_NAME: result.name,
                A.GEN_AI_TOOL_TYPE: "function",
                A.LANE: "no-model",
                A.VERIFIER_KIND: result.kind,
            },
        )
        event: dict[str, Any] = {
            A.GEN_AI_EVALUATION_NAME: result.name,
            A.GEN_AI_EVALUATION_SCORE_LABEL: "pass" if result.passed else "fail",
            A.OUTPUT_DIGEST: hasher.digest(f"{result.summary}\n{result.output}"),
        }
        if result.exit_status is not None:
            event[A.VERIFIER_EXIT_STATUS] = result.exit_status
        if i < len(steps):
            event[A.STEP] = steps[i]
        span.add_event(A.EVENT_EVALUATION_RESULT, event, timestamp=end)
        if run.lanes.content is not None:
            run.lanes.content.put(event[A.OUTPUT_DIGEST], f"{result.summary}\n{result.output}")
        if not result.passed:
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=end)
        at = end
