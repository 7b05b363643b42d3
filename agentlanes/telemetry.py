"""OpenTelemetry spans, and the durable local record every run leaves.

:class:`TraceProcessor` is a run processor (see :mod:`agentlanes.events`) with two
independent outputs:

* **spans** (``Lanes(tracing=True)``, the default): to the application's
  TracerProvider when it has one, else a private one (and over OTLP/HTTP with
  ``otlp_endpoint``);
* **the local record** (``Lanes(record=True)``, the default): the run's trace file,
  ``<data-dir>/traces/<run-id>.otlp.jsonl`` (see :mod:`agentlanes.tracefile`), and the
  bodies exact replay needs (prompts, outputs, verifier and tool results, the run's
  inputs) in the local content store, named by their keyed digests.

With both on, the trace file holds exactly the spans that were emitted (same ids);
with spans off, the record is written all the same, with ids of its own. Only
agentlanes' own spans are ever written to the local trace.

Spans follow the GenAI semantic conventions (names in :mod:`agentlanes.attributes`):
``invoke_workflow {name}`` per run, one span per stage (``agentlanes.stage {name}``),
``chat {model}`` per model call, ``execute_tool {name}`` per deterministic verifier or
tool, verifier outcomes as ``gen_ai.evaluation.result`` events, escalations as
``agentlanes.escalation`` events with the receipt's id and digest. A stage's spans are
emitted when it ends, with their real start and end times.

**Privacy.** Content (prompts, outputs, tool output, error texts) is recorded as keyed
digests, never as text, unless content capture is on: ``Lanes(capture_content=True)``,
or ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`` when the code says nothing.
The bodies in the content store never leave the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from random import getrandbits as _getrandbits
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, TraceFlags

from agentlanes import attributes as A
from agentlanes._localtrace import stage_lines
from agentlanes.content import ContentStore
from agentlanes.errors import ConfigurationError, RecordError
from agentlanes.events import (
    CallEnded,
    InputsRecorded,
    RunEnded,
    RunStarted,
    StageEnded,
    StageStarted,
    ToolEnded,
    Verified,
)
from agentlanes.result import CheckRecord, RunState, StageRecord
from agentlanes.tracefile import MARKER, TRACE_SCHEMA_VERSION, RunTraceFile, read_trace, trace_path
from agentlanes.verifiers import result_body

# The OpenTelemetry SDK (TracerProvider, Resource, the batch processor) is imported when a
# Telemetry or a TraceProcessor is made, not with this module: `from agentlanes import
# Router` and the CLI never load it. The API above is all the hot paths use.
if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from agentlanes._exporter import CountingExporter

__all__ = [
    "TRACE_SCHEMA_VERSION",
    "ContentStore",
    "CountingExporter",
    "OTLPExport",
    "Telemetry",
    "TraceProcessor",
    "read_trace",
    "run_attributes",
    "trace_path",
]

_SCHEMA_URL = "https://opentelemetry.io/schemas/1.37.0"
_FLAGS = TraceFlags(TraceFlags.SAMPLED)
_OK = Status(StatusCode.UNSET)
_ERROR = Status(StatusCode.ERROR)


def _error(what: bool | str) -> Status:
    """An error status; its description names what failed (an error type, a status
    code), never content."""
    return Status(StatusCode.ERROR, what) if isinstance(what, str) and what else _ERROR


@dataclass(frozen=True)
class OTLPExport:
    """Where spans are exported over OTLP/HTTP (``agentlanes[otlp]``).

    Attributes:
        endpoint: the collector's traces URL, e.g. ``http://127.0.0.1:4318/v1/traces``.
        headers: sent with every export (an API key for a hosted backend...).
        timeout: seconds an export may take, its retries included; a collector that
            is down costs at most this per batch, and never stalls shutdown longer.
    """

    endpoint: str
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 5.0


class Telemetry:
    """The tracer agentlanes emits spans with.

    Args:
        enabled: ``False`` turns spans off (the local record does not depend on it).
        tracer_provider: an explicit provider; otherwise the application's global SDK
            provider if it has one, else a private one.
        capture_content: record prompts/outputs as text (default: the environment
            variable ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``, else off).
        otlp_endpoint: also export over OTLP/HTTP (needs ``agentlanes[otlp]``), batched.
    """

    def __init__(
        self,
        *,
        enabled: bool = True,
        tracer_provider: Any = None,
        capture_content: bool | None = None,
        otlp_endpoint: str | None = None,
        otlp: OTLPExport | None = None,
        resource_attributes: Mapping[str, Any] | None = None,
    ) -> None:
        self.enabled = enabled
        if capture_content is None:
            env = os.environ.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "")
            capture_content = env.strip().lower() in ("1", "true", "yes")
        self.capture_content = capture_content
        self.exporter_processor: BatchSpanProcessor | None = None
        self.exporter: CountingExporter | None = None
        self.resource: Resource | None = None
        if not enabled:
            self.tracer: trace.Tracer = trace.NoOpTracer()
            return
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from agentlanes._exporter import CountingExporter

        received = tracer_provider is not None  # someone receives the spans
        provider = tracer_provider
        if provider is None:
            global_provider = trace.get_tracer_provider()
            if _configured(global_provider):
                provider = global_provider  # the application's: its resource stands
                received = True
            else:
                provider = TracerProvider(resource=Resource.create(dict(resource_attributes or {})))
        self.provider = provider
        self.resource = getattr(provider, "resource", None)
        self._private_resource = Resource.create(dict(resource_attributes or {})) if self.resource is None else None
        if otlp is None and otlp_endpoint:
            otlp = OTLPExport(otlp_endpoint)
        if otlp is not None:
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError:
                raise ConfigurationError(
                    "Exporting spans over OTLP/HTTP needs the 'otlp' extra: pip install 'agentlanes[otlp]'."
                ) from None
            if not otlp.endpoint.startswith(("http://", "https://")) or not otlp.timeout > 0:
                raise ConfigurationError(
                    f"OTLP export to {otlp.endpoint!r} with timeout {otlp.timeout!r}: the endpoint must be an http(s) "
                    "URL and the timeout a positive number of seconds."
                )
            exporter = OTLPSpanExporter(endpoint=otlp.endpoint, headers=dict(otlp.headers), timeout=otlp.timeout)
            self.exporter = CountingExporter(exporter)
            self.exporter_processor = BatchSpanProcessor(self.exporter, export_timeout_millis=otlp.timeout * 1000)
            provider.add_span_processor(self.exporter_processor)
        self.tracer = provider.get_tracer("agentlanes", schema_url=_SCHEMA_URL)
        self._consumed = received or self.exporter is not None
        self._late: tuple[Any, Any] | None = None  # (provider, tracer): a global provider set after we were made

    def run_tracer(self) -> Any:
        """The tracer a run emits spans with, or ``None`` when no one can receive them:
        no provider given, none configured by the application (it may configure one
        later: asked at every run's start), and no OTLP export. Spans nobody receives
        are not made; the local record is written all the same, from the run's own
        records, with the same shape and ids of its own."""
        if not self.enabled:
            return None
        if self._consumed:
            return self.tracer
        provider = trace.get_tracer_provider()
        if not _configured(provider):
            return None
        late = self._late
        if late is None or late[0] is not provider:
            self._late = late = (provider, provider.get_tracer("agentlanes", schema_url=_SCHEMA_URL))
        return late[1]

    def local_resource(self) -> Resource:
        """The resource written with spans that only the local record holds."""
        resource = self.resource or self._private_resource
        if resource is None:
            from opentelemetry.sdk.resources import Resource

            resource = Resource.create({})
        return resource

    def shutdown_export(self) -> None:
        """Send what is queued and stop exporting (bounded by the export timeout: a
        collector that is down cannot stall it longer)."""
        if self.exporter_processor is not None:
            processor, self.exporter_processor = self.exporter_processor, None
            processor.shutdown()  # type: ignore[no-untyped-call]  # the SDK leaves it unannotated

    def flush_export(self, timeout_millis: int = 10000) -> tuple[int, int]:
        """Push batched spans to the collector now; ``(exported, dropped)`` so far.

        Spans the batch processor discarded because its queue was full never reach the
        exporter; the SDK logs those. Everything is in the local trace either way."""
        if self.exporter_processor is None or self.exporter is None:
            return (0, 0)
        self.exporter_processor.force_flush(timeout_millis)
        return (self.exporter.exported, self.exporter.dropped)


def _configured(provider: Any) -> bool:
    """Whether a tracer provider is a real one (the application set it), not the API's
    placeholder before any is set or its no-op."""
    return not (type(provider) is trace.ProxyTracerProvider or isinstance(provider, trace.NoOpTracerProvider))


def run_attributes(run: RunState) -> dict[str, Any]:
    """The run span's attributes at its start."""
    out: dict[str, Any] = {
        A.GEN_AI_OPERATION_NAME: A.OP_INVOKE_WORKFLOW,
        A.GEN_AI_WORKFLOW_NAME: run.chain or run.task_class,
        A.TRACE_SCHEMA: TRACE_SCHEMA_VERSION,
        A.RUN_ID: run.run_id,
        A.TASK_CLASS: run.task_class,
        A.RISK_CLASS: run.risk_class,
    }
    if run.chain:
        out[A.CHAIN_REF] = run.chain
    if run.documents:
        out[A.DOCUMENTS] = json.dumps(run.documents, sort_keys=True, separators=(",", ":"))
    return out


def _rejected(decision: Any) -> list[str]:
    return [f"{c.lane}: {', '.join(c.reasons)}" for c in decision.candidates if not c.feasible]


def request_json(decision: Any, premium: tuple[float, float] | None) -> str:
    """The decision's inputs as canonical JSON (sorted keys, no spaces): what
    counterfactual and exact replay re-decide from (names, budget, exclusions,
    signals; never content)."""
    req = decision.request
    body = {
        "budgetRemaining": req.budget_remaining,
        "budgetWindow": req.budget_window,
        "deterministic": req.deterministic,
        "escalationReason": req.escalation_reason,
        "excludedLanes": [list(x) for x in req.excluded_lanes],
        "ledgerRemaining": decision.ledger_remaining,
        "premiumRemaining": list(premium) if premium is not None else None,
        "requestedLane": req.requested_lane,
        "riskClass": req.risk_class,
        "stage": req.stage,
        "taskClass": req.task_class,
    }
    neighbours = decision.neighbour_inputs()
    if neighbours is not None:  # findings, ceilings, a binding: what replay decides with again
        body["neighbourInputs"] = neighbours
    signals = req.signals
    canonical = signals.canonical
    if canonical is None:  # not JSON-representable: written as json.dumps writes it
        body["signals"] = dict(signals.raw)
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # The snapshot's canonical JSON is made once per snapshot; it goes where sorting
    # puts "signals", just before the last top-level key but two ("stage", "taskClass":
    # strings, escaped, so the last ',"stage":' in the text is the top-level one).
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    cut = text.rindex(',"stage":')
    return f'{text[:cut]},"signals":{canonical}{text[cut:]}'


# ---------------------------------------------------------------------- span sinks


class _SdkSink:
    """Spans through a tracer (the application's provider); collects the ended spans.
    Stage spans started live (see :class:`TraceProcessor`) are finished, not made anew."""

    def __init__(self, tracer: Any, live: dict[int, tuple[Any, Any]]) -> None:
        self.tracer = tracer
        self.live = live
        self.ended: list[Any] = []

    def start(
        self, name: str, kind: SpanKind, start: int, attrs: dict[str, Any], parent: Any, record: Any = None
    ) -> Any:
        opened = self.live.pop(id(record), None) if record is not None else None
        if opened is not None:
            opened[0].set_attributes(attrs)
            return opened[0]
        return self.tracer.start_span(
            name, context=trace.set_span_in_context(parent), kind=kind, start_time=start, attributes=attrs
        )

    def event(self, span: Any, name: str, attrs: dict[str, Any], at: int | None = None) -> None:
        span.add_event(name, attrs, timestamp=at)

    def end(self, span: Any, end: int, error: bool | str) -> None:
        if error:
            span.set_status(_error(error))
        span.end(end_time=end)
        self.ended.append(span)


class _LocalSpan:
    """A span only the local record holds: what the OTLP/JSON encoder reads of an SDK
    span, without the SDK's per-span work (attribute cleaning, locks, span processors).
    It is its own span context."""

    __slots__ = (
        "attributes",
        "end_time",
        "events",
        "instrumentation_scope",
        "kind",
        "name",
        "parent",
        "resource",
        "span_id",
        "start_time",
        "status",
        "trace_id",
    )
    trace_state = None
    is_remote = False
    dropped_attributes = 0
    dropped_events = 0
    dropped_links = 0
    links = ()

    def __init__(
        self, name: str, kind: SpanKind, start: int, attrs: dict[str, Any], parent: Any, resource: Any, scope: Any
    ) -> None:
        self.name = name
        self.kind = kind
        self.start_time = start
        self.end_time: int | None = None
        self.attributes = attrs
        self.events: list[_LocalEvent] = []
        self.parent = parent
        self.trace_id = parent.trace_id if parent is not None else 0
        self.span_id = _getrandbits(64) or 1
        self.status = _OK
        self.resource = resource
        self.instrumentation_scope = scope

    def get_span_context(self) -> _LocalSpan:
        return self


class _LocalEvent:
    __slots__ = ("attributes", "name", "timestamp")
    dropped_attributes = 0

    def __init__(self, name: str, attributes: dict[str, Any], timestamp: int) -> None:
        self.name = name
        self.attributes = attributes
        self.timestamp = timestamp


class _LocalSink:
    """Spans for the local record alone (no one receives spans, or spans are off)."""

    __slots__ = ("ended", "resource", "scope")

    def __init__(self, resource: Resource, scope: InstrumentationScope) -> None:
        self.resource = resource
        self.scope = scope
        self.ended: list[_LocalSpan] = []

    def start(
        self, name: str, kind: SpanKind, start: int, attrs: dict[str, Any], parent: Any, record: Any = None
    ) -> _LocalSpan:
        return _LocalSpan(name, kind, start, attrs, parent.get_span_context(), self.resource, self.scope)

    def event(self, span: _LocalSpan, name: str, attrs: dict[str, Any], at: int | None = None) -> None:
        span.events.append(_LocalEvent(name, attrs, at if at is not None else span.start_time))

    def end(self, span: _LocalSpan, end: int, error: bool | str) -> None:
        span.end_time = end
        if error:
            span.status = _error(error)
        self.ended.append(span)


class _RunSpan:
    """Stands in for the run span when it is not an SDK span (a parent for stages)."""

    __slots__ = ("span_id", "trace_id")
    is_remote = False

    def __init__(self) -> None:
        self.trace_id = _getrandbits(128) or 1
        self.span_id = _getrandbits(64) or 1

    def get_span_context(self) -> _RunSpan:
        return self


class _Open:
    """A run the processor is following: the tracer and span of its spans (``None``
    when no one receives spans), the parent the local record uses (the span itself
    when it is an SDK span), its file."""

    __slots__ = ("file", "local", "span", "tracer")

    def __init__(self, tracer: Any, span: Any, local: Any, file: RunTraceFile | None) -> None:
        self.tracer = tracer
        self.span = span
        self.local = local
        self.file = file


class TraceProcessor:
    """Spans to the provider and/or the local record (see the module docstring).

    Args:
        telemetry: the tracer to emit spans with, or ``None`` for no spans.
        record: write the local trace file.
        content: where bodies go (``None``: no bodies).
        capture_content: put prompts and outputs in spans as text.
    """

    def __init__(
        self,
        telemetry: Telemetry | None,
        *,
        record: bool,
        content: ContentStore | None,
        capture_content: bool,
    ) -> None:
        self.telemetry = telemetry if telemetry is not None and telemetry.enabled else None
        self.record = record
        self.content = content
        self.capture = capture_content
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        resource = self.telemetry.local_resource() if self.telemetry is not None else Resource.create({})
        self._local = (resource, InstrumentationScope("agentlanes", None, _SCHEMA_URL))
        self._runs: dict[str, _Open] = {}
        # Stage spans are started when their stage starts and made current while it
        # runs, so spans others start inside it (a framework's, the application's)
        # nest under it; their attributes and children are filled in when it ends.
        self._live_spans: dict[int, tuple[Any, Any]] = {}
        self._run_tokens: dict[str, Any] = {}
        self._broken: dict[str, RecordError] = {}  # runs whose record could not be written

    event_types = (StageStarted, StageEnded, CallEnded, Verified, ToolEnded, RunStarted, InputsRecorded, RunEnded)

    def on_event(self, event: Any) -> None:
        try:
            self._on_event(event)
        except (OSError, UnicodeEncodeError) as exc:  # the record cannot be written
            raise self._broke(event, exc) from exc

    def _broke(self, event: Any, exc: OSError | UnicodeEncodeError) -> RecordError:
        """The run's record failed: close its file, keep the error (no later stage of
        the run may start), and say what happened and what to do."""
        run = event.run
        record = getattr(event, "record", None)
        opened = self._runs.get(run.run_id)
        path = str(run.trace_path or "")
        if isinstance(exc, OSError) and exc.filename:
            path = str(exc.filename)
        elif opened is None or opened.file is None:
            path = str(self.content.root) if self.content is not None else path
        if opened is not None and opened.file is not None:
            file, opened.file = opened.file, None
            with contextlib.suppress(OSError):
                file.close()
        if isinstance(exc, UnicodeEncodeError):
            why = "a name or value holds text that is not valid Unicode (a lone surrogate); use valid text"
        else:
            why = f"{exc.strerror or exc}; free space in, or fix the permissions of, {Path(path).parent}"
        where = f"stage {record.name!r}" if record is not None else "the run"
        error = RecordError(
            f"Run {run.run_id}: its record could not be written to {path} ({why}, or run without a local "
            f"record: Lanes(record=False)). {where[0].upper()}{where[1:]} does not return a result it could not "
            "record; the run stops here and is marked failed.",
            path=path,
            run_id=run.run_id,
            stage=record.name if record is not None else None,
        )
        self._broken[run.run_id] = error
        return error

    def _on_event(self, event: Any) -> None:
        kind = type(event)
        if kind is StageStarted:
            broken = self._broken.get(event.run.run_id)
            if broken is not None:
                raise RecordError(
                    f"Run {event.run.run_id}: no stage can start, since its record could not be written "
                    f"({broken.path}); see the first error.",
                    path=broken.path,
                    run_id=event.run.run_id,
                    stage=event.record.name,
                )
            self._live(event.run, event.record, event.parent)
        elif kind is StageEnded:
            opened = self._live_spans.get(id(event.record))
            if opened is not None:
                _detach(opened[1])
            if event.record.parent is None:
                self._stage(event.run, event.record)
        elif kind is CallEnded:
            if self.content is not None:
                call = event.call
                if call.prompt_digest:
                    self.content.put(call.prompt_digest, event.prompt_text)
                if event.output_text is not None and call.output_digest:
                    self.content.put(call.output_digest, event.output_text)
        elif kind is Verified:
            if self.content is not None:
                check = event.check
                self.content.put(check.digest, result_body(check.result))
        elif kind is ToolEnded:
            if self.content is not None and event.output_text is not None and event.tool.output_digest:
                self.content.put(event.tool.output_digest, event.output_text)
        elif kind is RunStarted:
            self._start(event.run)
        elif kind is InputsRecorded:
            self._inputs(event.run, event.digest, event.text)
        elif kind is RunEnded:
            broken = self._broken.pop(event.run.run_id, None)
            self._end(event.run)
            if broken is not None and event.error is None:
                raise broken  # caught and ignored inside the run: the run still failed

    def _live(self, run: RunState, record: StageRecord, parent_record: StageRecord | None) -> None:
        opened = self._runs.get(run.run_id)
        if opened is None or opened.span is None:
            return
        parent = opened.span
        if parent_record is not None and id(parent_record) in self._live_spans:
            parent = self._live_spans[id(parent_record)][0]
        span = opened.tracer.start_span(
            f"agentlanes.stage {record.name}",
            context=trace.set_span_in_context(parent),
            kind=SpanKind.INTERNAL,
            start_time=record.started_ns,
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        self._live_spans[id(record)] = (span, token)

    # ------------------------------------------------------------------ runs

    def _start(self, run: RunState) -> None:
        span: Any = None
        local: Any = None
        tracer = self.telemetry.run_tracer() if self.telemetry is not None else None
        if tracer is not None:
            span = tracer.start_span(
                f"invoke_workflow {run.chain or run.task_class}",
                attributes=run_attributes(run),
                start_time=run.started_ns,
            )
            from opentelemetry.sdk.trace import ReadableSpan  # loaded: Telemetry imported the SDK

            if isinstance(span, ReadableSpan):
                local = span
            token = otel_context.attach(trace.set_span_in_context(span))
            self._run_tokens[run.run_id] = token
        if local is None:
            local = _RunSpan()
        file = RunTraceFile(run.trace_path) if self.record and run.trace_path is not None else None
        self._runs[run.run_id] = _Open(tracer, span, local, file)

    def _inputs(self, run: RunState, digest: str, text: str) -> None:
        if self.content is not None:
            self.content.put(digest, text)
        opened = self._runs.get(run.run_id)
        if opened is None or opened.file is None:
            return
        # A marker span that ends now, in the local record only: a run cut short by a
        # kill still says what it was given and which chain ran.
        attrs = run_attributes(run)
        del attrs[A.GEN_AI_OPERATION_NAME], attrs[A.GEN_AI_WORKFLOW_NAME]  # only the run span is a workflow
        attrs[A.RUN_INPUT_DIGEST] = digest
        sink = _LocalSink(*self._local)
        now = run.started_ns
        sink.end(sink.start(MARKER, SpanKind.INTERNAL, now, attrs, opened.local), now, False)
        opened.file.write(sink.ended)

    def _end(self, run: RunState) -> None:
        opened = self._runs.pop(run.run_id, None)
        if opened is None:
            return
        token = self._run_tokens.pop(run.run_id, None)
        if token is not None:
            _detach(token)
        attrs: dict[str, Any] = {
            A.RUN_STATUS: run.status,
            A.COST_ACTUAL: run.cost_micro / 1_000_000,
            A.RUN_STEPS: run.steps,
        }
        if run.input_digest is not None:
            attrs[A.RUN_INPUT_DIGEST] = run.input_digest
        if run.output_digest is not None:
            attrs[A.RUN_OUTPUT_DIGEST] = run.output_digest
        if run.error is not None:
            attrs[A.ERROR_TYPE] = run.error
        failed = run.status != "succeeded"
        try:
            if opened.span is not None:
                opened.span.set_attributes(attrs)
                if failed:
                    opened.span.set_status(_error(run.error or run.status))
                opened.span.end(end_time=run.ended_ns)
            if opened.file is not None:
                if opened.local is opened.span:
                    opened.file.write([opened.span])  # the very span exported, same ids
                else:
                    resource, scope = self._local
                    span = _LocalSpan(
                        f"invoke_workflow {run.chain or run.task_class}",
                        SpanKind.INTERNAL,
                        run.started_ns,
                        {**run_attributes(run), **attrs},
                        None,
                        resource,
                        scope,
                    )
                    context = opened.local.get_span_context()  # the ids the stages' parents carry
                    span.trace_id, span.span_id = context.trace_id, context.span_id
                    span.end_time = run.ended_ns
                    if failed:
                        span.status = _error(run.error or run.status)
                    opened.file.write([span])
        finally:
            if opened.file is not None:
                opened.file.close()

    # ------------------------------------------------------------------ stages

    def _stage(self, run: RunState, record: StageRecord) -> None:
        opened = self._runs.get(run.run_id)
        if opened is None:
            return
        if opened.span is not None:
            sdk = _SdkSink(opened.tracer, self._live_spans)
            emit_stage(sdk, run, record, opened.span, self.capture)
            if opened.file is not None and opened.local is opened.span:
                opened.file.write(sdk.ended)  # the very spans exported, same ids
                return
        if opened.file is not None:
            resource, scope = self._local
            lines = stage_lines(run, record, opened.local, resource, scope, _rejected, request_json)
            if lines is not None:  # the common shape, written straight from the records
                opened.file.write_lines(lines)
                return
            local = _LocalSink(resource, scope)
            # captured content goes where spans would have carried it: with tracing on
            # and no one to receive spans, the local record holds what they would hold
            emit_stage(local, run, record, opened.local, self.capture and self.telemetry is not None)
            opened.file.write(local.ended)


def _detach(token: Any) -> None:
    """Leave the context attached at a stage's (or run's) start."""
    otel_context.detach(token)


def emit_stage(sink: Any, run: RunState, record: StageRecord, parent: Any, capture: bool) -> None:
    """A finished stage and everything inside it as spans, through ``sink``."""
    last = record.decisions[-1] if record.decisions else None
    attrs: dict[str, Any] = {
        A.STAGE: record.stage,
        A.STAGE_NAME: record.name,
        A.STAGE_KEY: record.key,
        A.STAGE_STATUS: record.status,
        A.STAGE_ATTEMPTS: record.attempts,
        A.TASK_CLASS: run.task_class,
        A.RISK_CLASS: last.request.risk_class if last is not None else run.risk_class,
        A.COST_ACTUAL: record.cost / 1_000_000,
    }
    if record.parent:
        attrs[A.STAGE_PARENT] = record.parent
    last_rejected: list[str] = []
    if last is not None:
        last_rejected = _rejected(last)
        attrs[A.LANE] = last.lane or ""
        attrs[A.DECISION_ID] = last.decision_id
        attrs[A.DECISION_STATUS] = last.status
        attrs[A.DECISION_REASON] = last.reason
        attrs[A.CANDIDATES_REJECTED] = last_rejected
        attrs[A.BUDGET_REMAINING] = last.budget_remaining
        if last.estimated_cost is not None:
            attrs[A.COST_ESTIMATED] = last.estimated_cost
    if record.output_digest:
        attrs[A.OUTPUT_DIGEST] = record.output_digest
    if record.error:
        attrs[A.ERROR_TYPE] = record.error
    span = sink.start(f"agentlanes.stage {record.name}", SpanKind.INTERNAL, record.started_ns, attrs, parent, record)
    for decision, step, premium in zip(record.decisions, record.decision_steps, record.premium, strict=True):
        event: dict[str, Any] = {
            A.DECISION_ID: decision.decision_id,
            A.DECISION_STATUS: decision.status,
            A.DECISION_REASON: decision.reason,
            A.LANE: decision.lane or "",
            A.CANDIDATES_REJECTED: last_rejected if decision is last else _rejected(decision),
            A.REQUEST: request_json(decision, premium),
            A.STEP: step,
        }
        if decision.estimated_cost is not None:
            event[A.COST_ESTIMATED] = decision.estimated_cost
        sink.event(span, A.EVENT_DECISION, event)
    for refusal in record.refusals:
        sink.event(
            span,
            A.EVENT_BUDGET_REFUSED,
            {
                A.LANE: refusal.lane,
                A.BUDGET_WINDOW: refusal.window,
                A.BUDGET_REFUSAL_REASON: refusal.reason,
                A.BUDGET_AVAILABLE: refusal.available / 1_000_000,
                A.COST_RESERVED: refusal.estimate / 1_000_000,
                A.STEP: refusal.step,
            },
        )
    for approval in record.approvals:
        approval_attrs: dict[str, Any] = {A.APPROVED: approval.approved, A.STEP: approval.step}
        if approval.approver is not None:
            approval_attrs[A.APPROVER] = approval.approver
        if approval.justification_digest is not None:
            approval_attrs[A.JUSTIFICATION_DIGEST] = approval.justification_digest
        sink.event(span, A.EVENT_APPROVAL, approval_attrs)
    for receipt, step in zip(record.receipts, record.receipt_steps, strict=True):
        body = receipt.body
        sink.event(
            span,
            A.EVENT_ESCALATION,
            {
                A.RECEIPT_ID: receipt.receipt_id,
                A.STEP: step,
                A.APPROVER: (body.get("approval") or {}).get("approver") or "",
                A.RECEIPT_DIGEST: receipt.digest,
                A.FROM_LANE: body.get("fromLane") or "",
                A.TO_LANE: body["toLane"],
                A.ESCALATION_REASON: body["reason"],
                A.DECISION_ID: body["decisionId"],
                A.RECEIPT_CREATED_AT: body.get("createdAt") or "",
                A.EVIDENCE_REFS: list(body.get("evidenceRefs") or ()),
            },
        )
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
        if call.usage is not None and (call.ok or call.charged):
            call_attrs[A.GEN_AI_RESPONSE_MODEL] = call.response_model or call.model
            call_attrs[A.GEN_AI_USAGE_INPUT_TOKENS] = call.usage.input_tokens
            call_attrs[A.GEN_AI_USAGE_OUTPUT_TOKENS] = call.usage.output_tokens
        if call.output_digest:
            call_attrs[A.OUTPUT_DIGEST] = call.output_digest
        if call.finish_reason is not None:
            call_attrs[A.GEN_AI_RESPONSE_FINISH_REASONS] = [call.finish_reason]
        if call.output_format is not None:
            call_attrs[A.OUTPUT_FORMAT] = call.output_format
        if call.streamed:
            call_attrs[A.STREAMED] = True
        if call.usage is not None and call.usage.cached_input_tokens:
            call_attrs[A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = call.usage.cached_input_tokens
        if capture and call.prompt_text is not None:
            call_attrs[A.GEN_AI_INPUT_MESSAGES] = call.prompt_text
        if capture and call.output_text is not None:
            call_attrs[A.GEN_AI_OUTPUT_MESSAGES] = call.output_text
        if not call.ok:
            call_attrs[A.ERROR_TYPE] = call.error or "error"
            call_attrs[A.ERROR_RETRYABLE] = call.retryable
            if call.status is not None:
                call_attrs["http.response.status_code"] = call.status
        if capture and call.tool_definitions is not None:
            call_attrs[A.GEN_AI_TOOL_DEFINITIONS] = call.tool_definitions
        child = sink.start(f"chat {call.model}", SpanKind.CLIENT, call.started_ns, call_attrs, span)
        failure = "" if call.ok else (call.error or "error") + (f" (HTTP {call.status})" if call.status else "")
        sink.end(child, call.started_ns + int(call.duration * 1e9), failure)
    for tool in record.tools:
        tool_attrs: dict[str, Any] = {
            A.GEN_AI_OPERATION_NAME: A.OP_EXECUTE_TOOL,
            A.GEN_AI_TOOL_NAME: tool.name,
            A.GEN_AI_TOOL_TYPE: "function",
            A.LANE: "no-model",
            A.STEP: tool.step,
        }
        if tool.output_digest:
            tool_attrs[A.OUTPUT_DIGEST] = tool.output_digest
        if tool.error:
            tool_attrs[A.ERROR_TYPE] = tool.error
        child = sink.start(f"execute_tool {tool.name}", SpanKind.INTERNAL, tool.started_ns, tool_attrs, span)
        sink.end(child, tool.ended_ns, "" if tool.ok else (tool.error or "error"))
    at = record.started_ns
    for check in record.checks:
        at = _emit_check(sink, check, span, at)
    for child_record in record.children:
        emit_stage(sink, run, child_record, span, capture)
    sink.end(span, record.ended_ns, "" if record.status == "succeeded" else (record.error or record.status))


def _emit_check(sink: Any, check: CheckRecord, parent: Any, at: int) -> int:
    result = check.result
    end = at + int(result.duration * 1e9)
    span = sink.start(
        f"execute_tool {result.name}",
        SpanKind.INTERNAL,
        at,
        {
            A.GEN_AI_OPERATION_NAME: A.OP_EXECUTE_TOOL,
            A.GEN_AI_TOOL_NAME: result.name,
            A.GEN_AI_TOOL_TYPE: "function",
            A.LANE: "no-model",
            A.VERIFIER_KIND: result.kind,
        },
        parent,
    )
    event: dict[str, Any] = {
        A.GEN_AI_EVALUATION_NAME: result.name,
        A.GEN_AI_EVALUATION_SCORE_LABEL: "pass" if result.passed else "fail",
        A.OUTPUT_DIGEST: check.digest,
        A.VERIFIER_IDENTITY: check.identity,
        A.STEP: check.step,
    }
    if result.exit_status is not None:
        event[A.VERIFIER_EXIT_STATUS] = result.exit_status
    sink.event(span, A.EVENT_EVALUATION_RESULT, event, end)
    sink.end(span, end, "" if result.passed else f"{result.name} failed")
    return end


if not TYPE_CHECKING:  # hidden from type checkers, which see the import above

    def __getattr__(name: str) -> Any:
        if name == "CountingExporter":  # defined beside the SDK it subclasses, loaded on first use
            from agentlanes._exporter import CountingExporter

            return CountingExporter
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
