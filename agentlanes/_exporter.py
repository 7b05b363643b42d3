"""The exporter wrapper that counts undelivered spans; it subclasses the OpenTelemetry
SDK's ``SpanExporter``, so it lives apart from :mod:`agentlanes.telemetry` and is imported
only when spans are exported over OTLP (``agentlanes.telemetry.CountingExporter`` still
names it)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

__all__ = ["CountingExporter"]


class CountingExporter(SpanExporter):
    """Wraps an exporter and counts the spans it could not deliver (the local trace has
    them regardless); a warning is logged as drops happen (at most every 30 seconds)."""

    def __init__(self, inner: SpanExporter, *, report_every: float = 30.0) -> None:
        self.inner = inner
        self.exported = 0
        self.dropped = 0
        self._report_every = report_every
        self._reported_at = -report_every
        self._reported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception:  # an exporter must never break the run
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self.dropped += len(spans)
            now = time.monotonic()
            if now - self._reported_at >= self._report_every:
                from agentlanes.logs import get_logger

                get_logger().warning(
                    "telemetry.dropped_spans",
                    dropped=self.dropped,
                    since_last_report=self.dropped - self._reported,
                    exported=self.exported,
                )
                self._reported_at, self._reported = now, self.dropped
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)
