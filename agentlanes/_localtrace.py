"""The local record's lines for a finished stage, written straight from its records.

Every stage ends by writing its spans to the run's trace file (see
:mod:`agentlanes.tracefile`), before the stage returns to its caller. The general way is
:func:`agentlanes.telemetry.emit_stage` (attribute dictionaries, then the OTLP/JSON
encoder of :mod:`agentlanes._otlp`); this module writes the same bytes for the common
shape of a stage (its decisions and model calls) without building the dictionaries or
dispatching on each value's type: the keys are constants and the types are known. It
is the hot path of a recorded stage, so it exists only as a faster equivalent:
``tests/telemetry/test_localtrace.py`` checks, over generated stages, that both ways
write identical lines with the same span ids.

:func:`stage_lines` returns ``None`` for any stage outside that shape (sub-stages,
tools, checks, refusals, approvals, receipts, content capture, a value of an unexpected
type or a string that is not valid UTF-8); the caller then takes the general way.
"""

from __future__ import annotations

from json.encoder import encode_basestring as _esc
from random import getrandbits as _getrandbits
from typing import Any

from agentlanes import attributes as A
from agentlanes._otlp import _double, _header
from agentlanes.result import CallRecord, RunState, StageRecord

__all__ = ["stage_lines"]

_UINT64 = 1 << 64
_INT64_MAX = (1 << 63) - 1


class _Other(Exception):
    """The stage is not of the shape this module writes: take the general way."""


def _key(name: str, kind: str) -> str:
    return '{"key":' + _esc(name) + ',"value":{"' + kind + '":'


# ',{"key":<name>,"value":{"<kind>":' for each attribute written here
_S_STAGE = _key(A.STAGE, "stringValue")
_S_STAGE_NAME = "," + _key(A.STAGE_NAME, "stringValue")
_S_STAGE_KEY = "," + _key(A.STAGE_KEY, "stringValue")
_S_STAGE_STATUS = "," + _key(A.STAGE_STATUS, "stringValue")
_I_STAGE_ATTEMPTS = "," + _key(A.STAGE_ATTEMPTS, "intValue") + '"'
_S_TASK_CLASS = "," + _key(A.TASK_CLASS, "stringValue")
_S_RISK_CLASS = "," + _key(A.RISK_CLASS, "stringValue")
_D_COST_ACTUAL = "," + _key(A.COST_ACTUAL, "doubleValue")
_S_STAGE_PARENT = "," + _key(A.STAGE_PARENT, "stringValue")
_S_LANE = "," + _key(A.LANE, "stringValue")
_S_LANE_FIRST = _key(A.LANE, "stringValue")
_S_DECISION_ID = "," + _key(A.DECISION_ID, "stringValue")
_S_DECISION_ID_FIRST = _key(A.DECISION_ID, "stringValue")
_S_DECISION_STATUS = "," + _key(A.DECISION_STATUS, "stringValue")
_S_DECISION_REASON = "," + _key(A.DECISION_REASON, "stringValue")
_A_REJECTED = "," + '{"key":' + _esc(A.CANDIDATES_REJECTED) + ',"value":'
_D_BUDGET_REMAINING = "," + _key(A.BUDGET_REMAINING, "doubleValue")
_D_COST_ESTIMATED = "," + _key(A.COST_ESTIMATED, "doubleValue")
_S_OUTPUT_DIGEST = "," + _key(A.OUTPUT_DIGEST, "stringValue")
_S_ERROR_TYPE = "," + _key(A.ERROR_TYPE, "stringValue")
_S_REQUEST = "," + _key(A.REQUEST, "stringValue")
_I_STEP = "," + _key(A.STEP, "intValue") + '"'
_CHAT_FIRST = _key(A.GEN_AI_OPERATION_NAME, "stringValue") + _esc(A.OP_CHAT) + "}}"
_S_PROVIDER = "," + _key(A.GEN_AI_PROVIDER_NAME, "stringValue")
_S_REQUEST_MODEL = "," + _key(A.GEN_AI_REQUEST_MODEL, "stringValue")
_I_MAX_TOKENS = "," + _key(A.GEN_AI_REQUEST_MAX_TOKENS, "intValue") + '"'
_I_ATTEMPT = "," + _key(A.ATTEMPT, "intValue") + '"'
_D_COST_RESERVED = "," + _key(A.COST_RESERVED, "doubleValue")
_S_PROMPT_DIGEST = "," + _key(A.PROMPT_DIGEST, "stringValue")
_S_RESPONSE_MODEL = "," + _key(A.GEN_AI_RESPONSE_MODEL, "stringValue")
_I_INPUT_TOKENS = "," + _key(A.GEN_AI_USAGE_INPUT_TOKENS, "intValue") + '"'
_I_OUTPUT_TOKENS = "," + _key(A.GEN_AI_USAGE_OUTPUT_TOKENS, "intValue") + '"'
_A_FINISH = "," + '{"key":' + _esc(A.GEN_AI_RESPONSE_FINISH_REASONS) + ',"value":'
_S_OUTPUT_FORMAT = "," + _key(A.OUTPUT_FORMAT, "stringValue")
_B_STREAMED = "," + _key(A.STREAMED, "boolValue") + "true}}"
_I_CACHE_READ = "," + _key(A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, "intValue") + '"'
_B_RETRYABLE = "," + _key(A.ERROR_RETRYABLE, "boolValue")
_I_HTTP_STATUS = "," + _key("http.response.status_code", "intValue") + '"'
_DECISION_EVENT = ',"name":' + _esc(A.EVENT_DECISION) + ',"attributes":['


def _s(value: Any) -> str:
    """A string attribute's value: ``"..."}}``."""
    if type(value) is not str:
        raise _Other
    return _esc(value) + "}}"


def _i(value: Any) -> str:
    """An int attribute's digits and its closing: ``123"}}`` (after the opening quote)."""
    if type(value) is not int or not -_INT64_MAX - 1 <= value <= _INT64_MAX:
        raise _Other
    return f'{value}"}}}}'


def _d(value: Any) -> str:
    if type(value) is not float:
        raise _Other
    return _double(value) + "}}"


def _strings(values: Any) -> str:
    """A list of strings as an ``arrayValue``, with the KeyValue's closing."""
    if type(values) is not list:
        raise _Other
    if not values:
        return '{"arrayValue":{}}}'
    for v in values:
        if type(v) is not str:
            raise _Other
    return '{"arrayValue":{"values":[' + ",".join(['{"stringValue":' + _esc(v) + "}" for v in values]) + "]}}}"


def _time(value: Any) -> str:
    if type(value) is not int or not 0 < value < _UINT64:
        raise _Other
    return str(value)


def _ids(trace_id: int, span_id: int, parent_id: int) -> str:
    return (
        '{"traceId":"'
        + trace_id.to_bytes(16, "big").hex()
        + '","spanId":"'
        + span_id.to_bytes(8, "big").hex()
        + '","parentSpanId":"'
        + parent_id.to_bytes(8, "big").hex()
        + '"'
    )


def _status(error: str) -> str:
    if not error:
        return ',"status":{},"flags":256}'
    return ',"status":{"message":' + _esc(error) + ',"code":2},"flags":256}'


def stage_lines(
    run: RunState,
    record: StageRecord,
    parent: Any,
    resource: Any,
    scope: Any,
    rejected: Any,
    request_json: Any,
) -> bytes | None:
    """The trace lines of a finished top-level stage (its model calls, then the stage
    span), exactly as ``emit_stage`` through the encoder writes them, or ``None`` when
    the stage is not of the shape written here. ``rejected(decision)`` and
    ``request_json(decision, premium)`` are telemetry's own helpers."""
    if (
        record.children
        or record.tools
        or record.checks
        or record.refusals
        or record.approvals
        or record.receipts
        or record.parent
    ):
        return None
    try:
        return _stage(run, record, parent, resource, scope, rejected, request_json).encode("utf-8")
    except (_Other, UnicodeEncodeError):
        return None


def _stage(
    run: RunState,
    record: StageRecord,
    parent: Any,
    resource: Any,
    scope: Any,
    rejected: Any,
    request_json: Any,
) -> str:
    prefix, suffix = _header(resource, scope, False)
    context = parent.get_span_context()
    trace_id = context.trace_id
    if getattr(context, "is_remote", False) or getattr(context, "trace_state", None):
        raise _Other
    # Span ids in the order the general way starts its spans: the stage, then each call.
    stage_id = _getrandbits(64) or 1
    out: list[str] = []
    w = out.append
    for call in record.calls:
        _call(w, call, trace_id, stage_id, prefix, suffix)
    last = record.decisions[-1] if record.decisions else None
    w(prefix)
    w(_ids(trace_id, stage_id, context.span_id))
    w(',"name":' + _esc("agentlanes.stage " + record.name) + ',"kind":1,"startTimeUnixNano":"')
    w(_time(record.started_ns))
    w('","endTimeUnixNano":"')
    w(_time(record.ended_ns))
    w('","attributes":[')
    w(_S_STAGE + _s(record.stage))
    w(_S_STAGE_NAME + _s(record.name))
    w(_S_STAGE_KEY + _s(record.key))
    w(_S_STAGE_STATUS + _s(record.status))
    w(_I_STAGE_ATTEMPTS + _i(record.attempts))
    w(_S_TASK_CLASS + _s(run.task_class))
    w(_S_RISK_CLASS + _s(last.request.risk_class if last is not None else run.risk_class))
    w(_D_COST_ACTUAL + _d(record.cost / 1_000_000))
    last_rejected: list[str] = []
    if last is not None:
        last_rejected = rejected(last)
        w(_S_LANE + _s(last.lane or ""))
        w(_S_DECISION_ID + _s(last.decision_id))
        w(_S_DECISION_STATUS + _s(last.status))
        w(_S_DECISION_REASON + _s(last.reason))
        w(_A_REJECTED + _strings(last_rejected))
        w(_D_BUDGET_REMAINING + _d(last.budget_remaining))
        if last.estimated_cost is not None:
            w(_D_COST_ESTIMATED + _d(last.estimated_cost))
    if record.output_digest:
        w(_S_OUTPUT_DIGEST + _s(record.output_digest))
    if record.error:
        w(_S_ERROR_TYPE + _s(record.error))
    w("]")
    if record.decisions:
        at = _time(record.started_ns)
        w(',"events":[')
        first = True
        for decision, step, premium in zip(record.decisions, record.decision_steps, record.premium, strict=True):
            if not first:
                w(",")
            first = False
            w('{"timeUnixNano":"' + at + '"' + _DECISION_EVENT)
            w(_S_DECISION_ID_FIRST + _s(decision.decision_id))
            w(_S_DECISION_STATUS + _s(decision.status))
            w(_S_DECISION_REASON + _s(decision.reason))
            w(_S_LANE + _s(decision.lane or ""))
            w(_A_REJECTED + _strings(last_rejected if decision is last else rejected(decision)))
            w(_S_REQUEST + _s(request_json(decision, premium)))
            w(_I_STEP + _i(step))
            if decision.estimated_cost is not None:
                w(_D_COST_ESTIMATED + _d(decision.estimated_cost))
            w("]}")
        w("]")
    w(_status("" if record.status == "succeeded" else (record.error or record.status)))
    w(suffix)
    w("\n")
    return "".join(out)


def _call(w: Any, call: CallRecord, trace_id: int, parent_id: int, prefix: str, suffix: str) -> None:
    if call.prompt_text is not None or call.output_text is not None or call.tool_definitions is not None:
        raise _Other  # content capture: the general way
    span_id = _getrandbits(64) or 1
    start = call.started_ns
    w(prefix)
    w(_ids(trace_id, span_id, parent_id))
    w(',"name":' + _esc("chat " + _str(call.model)) + ',"kind":3,"startTimeUnixNano":"')
    w(_time(start))
    w('","endTimeUnixNano":"')
    w(_time(start + int(call.duration * 1e9)))
    w('","attributes":[' + _CHAT_FIRST)
    w(_S_PROVIDER + _s(call.provider))
    w(_S_REQUEST_MODEL + _s(call.model))
    w(_I_MAX_TOKENS + _i(call.max_tokens))
    w(_S_LANE + _s(call.lane))
    w(_I_ATTEMPT + _i(call.attempt))
    w(_D_COST_RESERVED + _d(call.reserved / 1_000_000))
    w(_D_COST_ACTUAL + _d(call.charged / 1_000_000))
    w(_I_STEP + _i(call.step))
    if call.prompt_digest:
        w(_S_PROMPT_DIGEST + _s(call.prompt_digest))
    usage = call.usage
    if usage is not None and (call.ok or call.charged):
        w(_S_RESPONSE_MODEL + _s(call.response_model or call.model))
        w(_I_INPUT_TOKENS + _i(usage.input_tokens))
        w(_I_OUTPUT_TOKENS + _i(usage.output_tokens))
    if call.output_digest:
        w(_S_OUTPUT_DIGEST + _s(call.output_digest))
    if call.finish_reason is not None:
        w(_A_FINISH + _strings([call.finish_reason]))
    if call.output_format is not None:
        w(_S_OUTPUT_FORMAT + _s(call.output_format))
    if call.streamed:
        w(_B_STREAMED)
    if usage is not None and usage.cached_input_tokens:
        w(_I_CACHE_READ + _i(usage.cached_input_tokens))
    failure = ""
    if not call.ok:
        error = call.error or "error"
        w(_S_ERROR_TYPE + _s(error))
        if type(call.retryable) is not bool:
            raise _Other
        w(_B_RETRYABLE + ("true}}" if call.retryable else "false}}"))
        if call.status is not None:
            w(_I_HTTP_STATUS + _i(call.status))
        failure = error + (f" (HTTP {call.status})" if call.status else "")
    w("]")
    w(_status(failure))
    w(suffix)
    w("\n")


def _str(value: Any) -> str:
    if type(value) is not str:
        raise _Other
    return value
