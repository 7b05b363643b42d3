"""The local trace: one owner for the file format agentlanes records runs in.

Every span of a run is appended to ``<data-dir>/traces/<run-id>.otlp.jsonl`` when it
ends: one ``ExportTraceServiceRequest`` per line in OTLP/JSON (hex ids, as the
Collector's file exporter writes them), flushed, so after a kill -9 everything up to the
last finished span can be read (a torn last line is ignored by :func:`read_trace`).

A trace is data, never instructions: :func:`read_trace` reads only regular files, with
a size bound, and checks the shape of every line it uses (a hostile trace gives a
:class:`TraceError` naming the file and line, never a traceback or a hang);
:func:`load_record` turns a trace into a :class:`RecordedRun`: the run, its stages (by
their key, ``name#n``) and every recorded step in order, which is what exact replay
serves and checks.

Schema versions of the trace (``agentlanes.trace.schema`` on the run span):
``agentlanes.trace/1``: first version.
``agentlanes.trace/2``: stage keys, verifier identities, receipt times and evidence
refs, budget refusals, approvals and tool results as steps, the run's step count and
output digest; the inputs marker is no longer a workflow span.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentlanes import attributes as A
from agentlanes._otlp import encode_span_line, encode_spans_json
from agentlanes._private import private_dir
from agentlanes.errors import ConfigurationError

if TYPE_CHECKING:  # the SDK is loaded only where spans are made (agentlanes.telemetry)
    from opentelemetry.sdk.trace import ReadableSpan

__all__ = [
    "MARKER",
    "MAX_TRACE_BYTES",
    "TRACE_SCHEMA_VERSION",
    "RecordedRun",
    "RecordedStage",
    "RecordedStep",
    "RunTraceFile",
    "TraceError",
    "encode_otlp_json",
    "find_trace",
    "load_record",
    "read_lines",
    "read_trace",
    "trace_path",
]

TRACE_SCHEMA_VERSION = "agentlanes.trace/2"
MARKER = "agentlanes.run.inputs"
"""The span that records a run's inputs (local record only)."""
_LIMIT_SETTING = os.environ.get("AGENTLANES_MAX_TRACE_BYTES", "")
MAX_TRACE_BYTES = int(_LIMIT_SETTING) if _LIMIT_SETTING.isdigit() and len(_LIMIT_SETTING) <= 18 else 256 * 1024 * 1024
"""Traces larger than this are refused rather than read (``AGENTLANES_MAX_TRACE_BYTES``)."""
_HEX = re.compile(r"[0-9a-f]+\Z")
RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}\Z")
"""What a run id may look like (it names a file)."""


class TraceError(ConfigurationError, ValueError):
    """A trace (or other record file) cannot be used: not a regular file, too large, or
    a line that is not what agentlanes writes.

    Attributes:
        path: the file.
        line: the 1-based line, when one is to blame.
    """

    def __init__(self, message: str, *, path: Path | str, line: int | None = None) -> None:
        super().__init__(message)
        self.path = str(path)
        self.line = line


def trace_path(data_dir: Path, run_id: str) -> Path:
    """Where a run's local trace lives."""
    return data_dir / "traces" / f"{run_id}.otlp.jsonl"


def find_trace(data_dir: Path, run_or_path: str | Path) -> Path:
    """A trace file from a path, or from a run id (looked up in ``data_dir/traces``)."""
    given = str(run_or_path)
    path = Path(run_or_path)
    if isinstance(run_or_path, Path) or os.sep in given or path.exists():
        if not path.exists():
            raise TraceError(f"No trace at {path}: no such file.", path=path)
        if not path.is_file():
            raise TraceError(f"{path} is not a regular file, so it is not a trace agentlanes wrote.", path=path)
        return path
    if not RUN_ID_RE.match(given):
        raise ConfigurationError(
            f"{given!r} is neither a trace file nor a run id (runs are listed by `agentlanes runs`)."
        )
    candidate = trace_path(data_dir, given)
    if candidate.is_file():
        return candidate
    raise ConfigurationError(
        f"No trace for {given!r}: not a file, and no {candidate} (runs are listed by `agentlanes runs`)."
    )


# ------------------------------------------------------------------------- writing


def encode_otlp_json(spans: Sequence[ReadableSpan]) -> str:
    """One OTLP/JSON ``ExportTraceServiceRequest`` line for ``spans``: byte for byte
    what the official encoder (protobuf, then its JSON mapping, hex ids) writes, by an
    encoder of our own that costs about what an OTel span does (see
    :mod:`agentlanes._otlp` and ``tests/telemetry/test_otlp_encoder.py``)."""
    return encode_spans_json(spans)


class RunTraceFile:
    """One run's trace file, appended one span per line and flushed per write: a kill
    -9 loses at most the line being written, which readers skip. (Writing a stage's
    spans as one line was measured: no faster to write, and it made counterfactual
    replay decode every chat span.) The file is private to its owner (0600)."""

    def __init__(self, path: Path) -> None:
        private_dir(path.parent)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if stat.S_IMODE(os.fstat(self._fd).st_mode) & 0o077:  # a file from before, made wider
            os.fchmod(self._fd, 0o600)
        self.path = path

    def write(self, spans: Sequence[Any]) -> None:
        """Append ``spans`` (SDK spans, or the record's own spans of the same shape)."""
        # One write call per batch of spans (a stage's): in the OS once the spans have
        # ended, so a kill -9 cannot lose them; a torn line can only be the last one.
        self.write_lines(b"".join(encode_span_line(span) for span in spans))

    def write_lines(self, data: bytes) -> None:
        """Append whole encoded lines, in one write call."""
        while data:
            written = os.write(self._fd, data)
            data = data[written:]

    def close(self) -> None:
        os.close(self._fd)


# ------------------------------------------------------------------------- reading


def trace_limit() -> int:
    """:data:`MAX_TRACE_BYTES`, refusing a setting of ``AGENTLANES_MAX_TRACE_BYTES`` that
    is not a whole number of bytes (checked here, not at import, so importing never fails)."""
    if _LIMIT_SETTING and not (_LIMIT_SETTING.isdigit() and len(_LIMIT_SETTING) <= 18):
        shown = _LIMIT_SETTING if len(_LIMIT_SETTING) <= 40 else f"{_LIMIT_SETTING[:40]}..."
        raise TraceError(
            f"AGENTLANES_MAX_TRACE_BYTES={shown!r} is not a whole number of bytes (at most 18 digits); "
            "unset it or give one such as 268435456.",
            path="AGENTLANES_MAX_TRACE_BYTES",
        )
    return MAX_TRACE_BYTES


def read_lines(path: Path | str, *, limit: int | None = None) -> list[str]:
    """The lines of a record file: a regular file (never a FIFO, device or directory),
    at most ``limit`` bytes (default :data:`MAX_TRACE_BYTES`), UTF-8."""
    limit = trace_limit() if limit is None else limit
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise TraceError(f"{path}: cannot be read ({exc.strerror}).", path=path) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise TraceError(f"{path} is not a regular file, so it is not a trace agentlanes wrote.", path=path)
        if info.st_size > limit:
            raise TraceError(
                f"{path} is {info.st_size} bytes, more than a trace may be ({limit}; AGENTLANES_MAX_TRACE_BYTES "
                "raises it).",
                path=path,
            )
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            data = os.read(fd, min(1 << 20, limit + 1 - size))
            if not data:
                break
            chunks.append(data)
            size += len(data)
        raw = b"".join(chunks)
    finally:
        os.close(fd)
    if len(raw) > limit:
        raise TraceError(f"{path} grew past {limit} bytes while it was read.", path=path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise TraceError(
            f"{path}: line {line} is not UTF-8 text, so it is not OTLP/JSON.", path=path, line=line
        ) from None
    return text.split("\n")


def _loads(text: str, path: Path | str, line: int) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise TraceError(f"{path}: line {line} is nested too deeply to be OTLP/JSON.", path=path, line=line) from None


def _value(v: Any) -> Any:
    if not isinstance(v, dict):
        return None
    if "stringValue" in v:
        return v["stringValue"]
    if "boolValue" in v:
        return v["boolValue"]
    if "intValue" in v:
        return int(v["intValue"])
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "arrayValue" in v:
        values = v["arrayValue"].get("values", []) if isinstance(v["arrayValue"], dict) else []
        return [_value(x) for x in values] if isinstance(values, list) else None
    return None


def _attrs(items: Any) -> dict[str, Any]:
    if not isinstance(items, list):
        raise ValueError("attributes are not a list")
    out: dict[str, Any] = {}
    for a in items:
        if not isinstance(a, dict) or not isinstance(a.get("key"), str):
            raise ValueError("an attribute has no key")
        out[a["key"]] = _value(a.get("value", {}))
    return out


def _id(value: Any, size: int, what: str) -> str:
    if not isinstance(value, str) or len(value) != size or not _HEX.match(value):
        raise ValueError(f"{what} is not {size} hex digits")
    return value


def _span(span: Any) -> dict[str, Any]:
    if not isinstance(span, dict):
        raise ValueError("a span is not an object")
    name = span.get("name")
    if not isinstance(name, str):
        raise ValueError("a span has no name")
    parent = span.get("parentSpanId") or None
    events = span.get("events", [])
    if not isinstance(events, list):
        raise ValueError("events are not a list")
    out_events = []
    for e in events:
        if not isinstance(e, dict) or not isinstance(e.get("name"), str):
            raise ValueError("an event has no name")
        out_events.append(
            {"name": e["name"], "time": int(e.get("timeUnixNano", 0)), "attributes": _attrs(e.get("attributes", []))}
        )
    status = span.get("status", {})
    return {
        "name": name,
        "traceId": _id(span.get("traceId"), 32, "traceId"),
        "spanId": _id(span.get("spanId"), 16, "spanId"),
        "parentSpanId": None if parent is None else _id(parent, 16, "parentSpanId"),
        "kind": int(span.get("kind", 0)),
        "start": int(span.get("startTimeUnixNano", 0)),
        "end": int(span.get("endTimeUnixNano", 0)),
        "attributes": _attrs(span.get("attributes", [])),
        "events": out_events,
        "status": status if isinstance(status, dict) else {},
    }


def _spans_of(message: Any) -> Iterator[Any]:
    if not isinstance(message, dict) or not isinstance(message.get("resourceSpans", []), list):
        raise ValueError("not an ExportTraceServiceRequest object")
    for rs in message.get("resourceSpans", []):
        if not isinstance(rs, dict) or not isinstance(rs.get("scopeSpans", []), list):
            raise ValueError("resourceSpans holds something else")
        for ss in rs.get("scopeSpans", []):
            if not isinstance(ss, dict) or not isinstance(ss.get("spans", []), list):
                raise ValueError("scopeSpans holds something else")
            yield from ss.get("spans", [])


def read_trace(path: Path | str, *, containing: str | None = None) -> Iterator[dict[str, Any]]:
    """The spans of a local trace file, as plain dicts (``name``, ``traceId``,
    ``spanId``, ``parentSpanId``, ``kind``, ``start``, ``end``, ``attributes``,
    ``events``, ``status``), in the order they ended. A torn last line (a writer killed
    mid-line: no newline after it) is skipped; any other unreadable line is a
    :class:`TraceError` naming it.

    Args:
        containing: only parse lines that contain this text (a span per line makes
            this an exact, cheap filter, e.g. an event name).
    """
    lines = read_lines(path)
    torn = len(lines) - 1 if lines and lines[-1].strip() else -1  # no newline after the last line
    for i, line in enumerate(lines):
        if not line.strip() or (containing is not None and containing not in line):
            continue
        try:
            message = json.loads(line)
        except RecursionError:
            raise TraceError(
                f"{path}: line {i + 1} is nested too deeply to be OTLP/JSON.", path=path, line=i + 1
            ) from None
        except ValueError:
            if i == torn:
                return  # torn by a kill mid-write: everything before it is intact
            raise TraceError(f"{path}: line {i + 1} is not OTLP/JSON.", path=path, line=i + 1) from None
        try:
            spans = [_span(s) for s in _spans_of(message)]
        except (ValueError, TypeError, AttributeError) as exc:
            raise TraceError(
                f"{path}: line {i + 1} is not a trace line agentlanes writes ({exc}).", path=path, line=i + 1
            ) from None
        yield from spans


# ------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class RecordedStep:
    """One recorded step: ``kind`` is ``decision``, ``refusal``, ``call``, ``tool``,
    ``verify``, ``approval`` or ``escalation``; ``step`` its number in the run
    (``agentlanes.step``), ``index`` its 0-based place among the run's steps."""

    index: int
    step: int
    kind: str
    stage_key: str
    stage: str
    data: dict[str, Any]

    def describe(self) -> str:
        d = self.data
        where = f"stage {self.stage!r}"
        if self.kind == "decision":
            return f"decision for {where}: {d.get('status')} on {d.get('lane') or '-'} ({d.get('reason')})"
        if self.kind == "call":
            outcome = "ok" if d.get("ok") else d.get("error")
            return f"model call on {d.get('lane')} ({d.get('model')}) in {where} ({outcome})"
        if self.kind == "verify":
            return f"verifier {d.get('name')!r} in {where}: {'pass' if d.get('passed') else 'fail'}"
        if self.kind == "tool":
            return f"tool {d.get('name')!r} in {where} ({'ok' if d.get('ok') else d.get('error')})"
        if self.kind == "refusal":
            return f"budget refusal in {where}: the {d.get('window')} window ({d.get('reason')}) on {d.get('lane')}"
        if self.kind == "approval":
            return f"approval in {where}: {'approved' if d.get('approved') else 'denied'} by {d.get('approver')}"
        return f"escalation in {where}: {d.get('from')} -> {d.get('to')} ({d.get('reason')})"


@dataclass
class RecordedStage:
    """A stage as its span records it (``complete`` is false when its span is missing
    but steps inside it were found)."""

    key: str
    name: str
    stage: str
    parent_key: str | None
    attributes: dict[str, Any]
    start: int
    complete: bool = True
    steps: list[RecordedStep] = field(default_factory=list)


@dataclass
class RecordedRun:
    """A run as its local trace records it."""

    run_id: str
    complete: bool
    """True when the run span was written (the run finished)."""
    task_class: str
    risk_class: str
    chain: str | None
    input_digest: str | None
    schema: str
    attributes: dict[str, Any]
    """The run span's attributes (empty when it is missing)."""
    stages: dict[str, RecordedStage]
    steps: list[RecordedStep]
    """Every step, ordered by its number in the run."""

    @property
    def recorded_steps(self) -> int | None:
        """How many steps the run says it took (``agentlanes.trace/2``)."""
        value = self.attributes.get(A.RUN_STEPS)
        return value if isinstance(value, int) else None

    def gaps(self) -> list[int]:
        """Step numbers missing from the record (lines lost or removed)."""
        numbers = {s.step for s in self.steps}
        top = max(self.recorded_steps or 0, max(numbers, default=0))
        return [n for n in range(1, top + 1) if n not in numbers]


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _first(value: Any) -> str | None:
    return value[0] if isinstance(value, list) and value and isinstance(value[0], str) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def load_record(path: Path | str) -> RecordedRun:
    """The run, stages and ordered steps a local trace records (see the module docstring).

    Raises:
        TraceError: the file is not a trace agentlanes wrote.
    """
    path = Path(path)
    try:
        return _load_record(path)
    except RecursionError:
        raise TraceError(f"{path}: its stage spans nest too deeply (or in a cycle) to be a run.", path=path) from None


def _load_record(path: Path) -> RecordedRun:
    spans = list(read_trace(path))
    by_id = {s["spanId"]: s for s in spans}
    run = next(
        (
            s
            for s in spans
            if s["name"].startswith("invoke_workflow ") and isinstance(s["attributes"].get(A.RUN_ID), str)
        ),
        None,
    )
    markers = [s for s in spans if s["name"] == MARKER and isinstance(s["attributes"].get(A.RUN_ID), str)]
    stage_spans = [s for s in spans if s["name"].startswith("agentlanes.stage ")]
    stage_span_ids = {s["spanId"] for s in stage_spans}

    # Stage keys: recorded (trace/2), or derived the way the engine makes them.
    keys: dict[str, str] = {}
    counters: dict[tuple[str, str], int] = {}

    def key_of(span: dict[str, Any]) -> str:
        sid = span["spanId"]
        if sid in keys:
            return keys[sid]
        recorded = span["attributes"].get(A.STAGE_KEY)
        if isinstance(recorded, str) and recorded:
            keys[sid] = recorded
            return recorded
        parent = span["parentSpanId"]
        prefix = key_of(by_id[parent]) + "/" if parent in stage_span_ids else ""
        name = _text(span["attributes"].get(A.STAGE_NAME)) or span["name"].removeprefix("agentlanes.stage ")
        n = counters.get((prefix, name), 0)
        counters[(prefix, name)] = n + 1
        keys[sid] = f"{prefix}{name}#{n}"
        return keys[sid]

    stages: dict[str, RecordedStage] = {}
    for span in sorted(stage_spans, key=lambda s: s["start"]):
        key = key_of(span)
        a = span["attributes"]
        parent = span["parentSpanId"]
        stages[key] = RecordedStage(
            key=key,
            name=_text(a.get(A.STAGE_NAME)) or span["name"].removeprefix("agentlanes.stage "),
            stage=_text(a.get(A.STAGE)) or "",
            parent_key=keys.get(parent) if parent in stage_span_ids else None,
            attributes=a,
            start=span["start"],
        )

    steps: list[RecordedStep] = []

    def add(step: Any, kind: str, key: str, data: dict[str, Any]) -> None:
        number = _int(step)
        if number is None or number < 1:
            return
        stage = stages[key].name if key in stages else key
        steps.append(RecordedStep(0, number, kind, key, stage, data))

    for span in spans:
        a = span["attributes"]
        sid, parent = span["spanId"], span["parentSpanId"]
        if sid in stage_span_ids:
            key = keys[sid]
            for e in span["events"]:
                ea = e["attributes"]
                if e["name"] == A.EVENT_DECISION:
                    raw_request = ea.get(A.REQUEST)
                    try:
                        request = json.loads(raw_request) if isinstance(raw_request, str) else None
                    except (ValueError, RecursionError):
                        request = None
                    add(
                        ea.get(A.STEP),
                        "decision",
                        key,
                        {
                            "id": ea.get(A.DECISION_ID),
                            "status": ea.get(A.DECISION_STATUS),
                            "lane": ea.get(A.LANE) or None,
                            "reason": ea.get(A.DECISION_REASON),
                            "cost": _num(ea.get(A.COST_ESTIMATED)),
                            "rejected": ea.get(A.CANDIDATES_REJECTED) or [],
                            "request": request if isinstance(request, dict) else None,
                            "time": e["time"],
                        },
                    )
                elif e["name"] == A.EVENT_ESCALATION:
                    add(
                        ea.get(A.STEP),
                        "escalation",
                        key,
                        {
                            "from": ea.get(A.FROM_LANE) or None,
                            "to": ea.get(A.TO_LANE),
                            "reason": ea.get(A.ESCALATION_REASON),
                            "decision": ea.get(A.DECISION_ID),
                            "approver": ea.get(A.APPROVER) or None,
                            "digest": ea.get(A.RECEIPT_DIGEST),
                            "receipt": ea.get(A.RECEIPT_ID),
                            "created_at": ea.get(A.RECEIPT_CREATED_AT) or None,
                            "evidence_refs": ea.get(A.EVIDENCE_REFS),
                        },
                    )
                elif e["name"] == A.EVENT_BUDGET_REFUSED:
                    add(
                        ea.get(A.STEP),
                        "refusal",
                        key,
                        {
                            "lane": ea.get(A.LANE),
                            "window": ea.get(A.BUDGET_WINDOW),
                            "reason": ea.get(A.BUDGET_REFUSAL_REASON),
                            "available": _num(ea.get(A.BUDGET_AVAILABLE)),
                            "estimate": _num(ea.get(A.COST_RESERVED)),
                        },
                    )
                elif e["name"] == A.EVENT_APPROVAL:
                    add(
                        ea.get(A.STEP),
                        "approval",
                        key,
                        {
                            "approved": ea.get(A.APPROVED) is True,
                            "approver": ea.get(A.APPROVER),
                            "justification": ea.get(A.JUSTIFICATION_DIGEST),
                        },
                    )
            continue
        if parent not in stage_span_ids:
            continue
        key = keys[parent]
        op = a.get(A.GEN_AI_OPERATION_NAME)
        if op == A.OP_CHAT:
            add(
                a.get(A.STEP),
                "call",
                key,
                {
                    "lane": a.get(A.LANE),
                    "model": a.get(A.GEN_AI_REQUEST_MODEL),
                    "provider": a.get(A.GEN_AI_PROVIDER_NAME),
                    "prompt": a.get(A.PROMPT_DIGEST),
                    "ok": A.ERROR_TYPE not in a,
                    "error": a.get(A.ERROR_TYPE),
                    "retryable": a.get(A.ERROR_RETRYABLE) is True,
                    "status": _int(a.get("http.response.status_code")),
                    "output": a.get(A.OUTPUT_DIGEST),
                    "usage": (
                        _int(a.get(A.GEN_AI_USAGE_INPUT_TOKENS)) or 0,
                        _int(a.get(A.GEN_AI_USAGE_OUTPUT_TOKENS)) or 0,
                    ),
                    "response_model": a.get(A.GEN_AI_RESPONSE_MODEL) or a.get(A.GEN_AI_REQUEST_MODEL),
                    "reserved": _num(a.get(A.COST_RESERVED)),
                    "charged": _num(a.get(A.COST_ACTUAL)),
                    "max_tokens": _int(a.get(A.GEN_AI_REQUEST_MAX_TOKENS)),
                    "attempt": _int(a.get(A.ATTEMPT)),
                    "start": span["start"],
                    "format": _text(a.get(A.OUTPUT_FORMAT)),
                    "finish_reason": _first(a.get(A.GEN_AI_RESPONSE_FINISH_REASONS)),
                    "cached": _int(a.get(A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS)) or 0,
                    "streamed": a.get(A.STREAMED) is True,
                },
            )
        elif op == A.OP_EXECUTE_TOOL:
            evaluations = [e for e in span["events"] if e["name"] == A.EVENT_EVALUATION_RESULT]
            for e in evaluations:
                ea = e["attributes"]
                add(
                    ea.get(A.STEP),
                    "verify",
                    key,
                    {
                        "name": ea.get(A.GEN_AI_EVALUATION_NAME),
                        "passed": ea.get(A.GEN_AI_EVALUATION_SCORE_LABEL) == "pass",
                        "kind": a.get(A.VERIFIER_KIND, "command"),
                        "exit_status": _int(ea.get(A.VERIFIER_EXIT_STATUS)),
                        "output": ea.get(A.OUTPUT_DIGEST),
                        "identity": ea.get(A.VERIFIER_IDENTITY),
                    },
                )
            if not evaluations and A.STEP in a:
                add(
                    a.get(A.STEP),
                    "tool",
                    key,
                    {
                        "name": a.get(A.GEN_AI_TOOL_NAME),
                        "ok": A.ERROR_TYPE not in a,
                        "error": a.get(A.ERROR_TYPE),
                        "output": a.get(A.OUTPUT_DIGEST),
                    },
                )
    steps.sort(key=lambda s: s.step)
    steps = [dataclasses.replace(s, index=i) for i, s in enumerate(steps)]
    for s in steps:
        if s.stage_key in stages:
            stages[s.stage_key].steps.append(s)
    run_attrs = run["attributes"] if run is not None else {}
    meta = run_attrs or (markers[-1]["attributes"] if markers else {})
    input_digest = next(
        (m["attributes"].get(A.RUN_INPUT_DIGEST) for m in reversed(markers) if A.RUN_INPUT_DIGEST in m["attributes"]),
        None,
    )
    first_request = next((s.data["request"] for s in steps if s.kind == "decision" and s.data["request"]), None) or {}
    return RecordedRun(
        run_id=_text(meta.get(A.RUN_ID)) or path.name.split(".")[0],
        complete=run is not None,
        task_class=_text(meta.get(A.TASK_CLASS)) or _text(first_request.get("taskClass")) or "",
        risk_class=_text(meta.get(A.RISK_CLASS)) or _text(first_request.get("riskClass")) or "",
        chain=_text(meta.get(A.CHAIN_REF)),
        input_digest=_text(run_attrs.get(A.RUN_INPUT_DIGEST)) or _text(input_digest),
        schema=_text(meta.get(A.TRACE_SCHEMA)) or "agentlanes.trace/1",
        attributes=run_attrs,
        stages=stages,
        steps=steps,
    )
