"""The local trace: one owner for the file format agentlanes records runs in.

Every span of a run is appended, as it ends, to ``<data-dir>/traces/<run-id>.otlp.jsonl``:
one ``ExportTraceServiceRequest`` per line in OTLP/JSON (hex ids, as the Collector's file
exporter writes them), flushed, so after a kill -9 everything up to the last finished
span can be read (a torn last line is ignored by :func:`read_trace`).

Schema versions of the trace (``agentlanes.trace.schema`` on the run span):
``agentlanes.trace/1``: first version.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

__all__ = ["TRACE_SCHEMA_VERSION", "TraceWriter", "encode_otlp_json", "read_trace", "trace_path"]

TRACE_SCHEMA_VERSION = "agentlanes.trace/1"
_ID_KEYS = ("traceId", "spanId", "parentSpanId")


def trace_path(data_dir: Path, run_id: str) -> Path:
    """Where a run's local trace lives."""
    return data_dir / "traces" / f"{run_id}.otlp.jsonl"


def _hex(value: Any) -> Any:
    return base64.b64decode(value).hex() if isinstance(value, str) else value


def _hex_ids(message: dict[str, Any]) -> dict[str, Any]:
    """OTLP/JSON writes trace and span ids as hex; protobuf's JSON mapping uses base64.
    Only spans and their links carry ids, so only those are visited."""
    for rs in message.get("resourceSpans", ()):
        for ss in rs.get("scopeSpans", ()):
            for span in ss.get("spans", ()):
                for key in _ID_KEYS:
                    if key in span:
                        span[key] = _hex(span[key])
                for link in span.get("links", ()):
                    for key in ("traceId", "spanId"):
                        if key in link:
                            link[key] = _hex(link[key])
    return message


def encode_otlp_json(spans: list[ReadableSpan]) -> str:
    """One OTLP/JSON ``ExportTraceServiceRequest`` line for ``spans``."""
    from google.protobuf.json_format import MessageToDict  # type: ignore[import-untyped]
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    message = MessageToDict(encode_spans(spans), use_integers_for_enums=True)
    return json.dumps(_hex_ids(message), separators=(",", ":"), ensure_ascii=False)


class TraceWriter(SpanProcessor):
    """Appends the spans of registered runs to their files, one OTLP/JSON line per span
    as it ends, flushed at once: a kill -9 loses at most the line being written, which
    readers skip. (Writing a stage's spans as one line was measured: no faster to
    write, and it made counterfactual replay decode every chat span.)"""

    def __init__(self) -> None:
        self._files: dict[int, Any] = {}
        self._lock = threading.Lock()

    def register(self, trace_id: int, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._files[trace_id] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def close(self, trace_id: int) -> None:
        with self._lock:
            fh = self._files.pop(trace_id, None)
        if fh is not None:
            fh.close()

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        ctx = span.context
        if ctx is None:
            return
        fh = self._files.get(ctx.trace_id)
        if fh is None:
            return
        line = encode_otlp_json([span])
        with self._lock:
            fh.write(line + "\n")
            fh.flush()  # in the OS once the span has ended: a kill -9 cannot lose it

    def shutdown(self) -> None:
        with self._lock:
            files, self._files = self._files, {}
        for fh in files.values():
            fh.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _value(v: dict[str, Any]) -> Any:
    if "stringValue" in v:
        return v["stringValue"]
    if "boolValue" in v:
        return v["boolValue"]
    if "intValue" in v:
        return int(v["intValue"])
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "arrayValue" in v:
        return [_value(x) for x in v["arrayValue"].get("values", [])]
    return None


def _attrs(items: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {a["key"]: _value(a.get("value", {})) for a in items or []}


def read_trace(path: Path, *, containing: str | None = None) -> Iterator[dict[str, Any]]:
    """The spans of a local trace file, as plain dicts (``name``, ``spanId``,
    ``parentSpanId``, ``kind``, ``start``, ``end``, ``attributes``, ``events``,
    ``status``), in the order they ended. A torn last line (a writer killed
    mid-line) is skipped; a broken line elsewhere is an error.

    Args:
        containing: only parse lines that contain this text (a span per line makes
            this an exact, cheap filter, e.g. an event name).
    """
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip() or (containing is not None and containing not in line and i != last):
            continue
        try:
            message = json.loads(line)
        except ValueError:
            if i == last:
                return  # torn by a kill mid-write: everything before it is intact
            raise ValueError(f"{path}: line {i + 1} is not OTLP/JSON") from None
        for rs in message.get("resourceSpans", []):
            for ss in rs.get("scopeSpans", []):
                for span in ss.get("spans", []):
                    yield {
                        "name": span.get("name"),
                        "traceId": span.get("traceId"),
                        "spanId": span.get("spanId"),
                        "parentSpanId": span.get("parentSpanId") or None,
                        "kind": span.get("kind", 0),
                        "start": int(span.get("startTimeUnixNano", 0)),
                        "end": int(span.get("endTimeUnixNano", 0)),
                        "attributes": _attrs(span.get("attributes")),
                        "events": [
                            {
                                "name": e.get("name"),
                                "time": int(e.get("timeUnixNano", 0)),
                                "attributes": _attrs(e.get("attributes")),
                            }
                            for e in span.get("events", [])
                        ],
                        "status": span.get("status", {}),
                    }
