"""The direct writer of a stage's local trace lines writes exactly what the general way
(``emit_stage`` into local spans, then the OTLP/JSON encoder) writes, ids included; and
it declines (``None``) every stage outside its shape, which then takes the general way.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from agentlanes import Router, RouteRequest
from agentlanes._localtrace import stage_lines
from agentlanes._otlp import encode_span_line
from agentlanes.models import Usage
from agentlanes.result import CallRecord, RefusalRecord, RunState, StageRecord, ToolRecord
from agentlanes.telemetry import _LocalSink, _rejected, _RunSpan, emit_stage, request_json
from tests.conftest import ROOT

SIGNALS = json.loads((ROOT / "examples/signals/healthy-local.json").read_text())
ROUTER = Router()
RESOURCE = Resource.create({"service.name": "tests"})
SCOPE = InstrumentationScope("agentlanes", None, "https://opentelemetry.io/schemas/1.37.0")

texts = st.text(max_size=10) | st.sampled_from(["", "é", "😀", '"\\\n', "\u2028", "a" * 80, "lone\ud800"])
times = st.integers(1, 2**63)
maybe_text = st.none() | texts


def decision(stage: str, remaining: float, reason: str | None) -> Any:
    return ROUTER.decide(
        RouteRequest(
            task_class="routine-code",
            stage=stage,
            signals=SIGNALS,
            budget_remaining=remaining,
            escalation_reason=reason,
        )
    )


decisions = st.builds(
    decision,
    st.sampled_from(["planning", "execution", "verification", "review"]),
    st.sampled_from([0.0, 0.5, 10.0, 1e9]),
    st.sampled_from([None, "repeated-verification-failure", "not-a-reason"]),
)


@st.composite
def calls(draw: Any) -> CallRecord:
    ok = draw(st.booleans())
    usage = draw(
        st.none()
        | st.builds(Usage, st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10))
        | st.builds(Usage, st.just(3.0), st.just(4.0))  # integral floats are valid usage
    )
    call = CallRecord(
        draw(texts),
        draw(texts),
        draw(texts),
        draw(st.integers(1, 5)),
        draw(st.integers(0, 10**9)),
        draw(st.integers(0, 10**9)),
        usage,
        ok,
        draw(st.floats(0, 100)),
        error=draw(maybe_text),
        status=draw(st.none() | st.sampled_from([0, 400, 429, 500])),
        prompt_digest=draw(maybe_text),
        output_digest=draw(maybe_text),
        response_model=draw(maybe_text),
        max_tokens=draw(st.integers(0, 2**31)),
        started_ns=draw(times),
        step=draw(st.integers(0, 1000)),
        retryable=draw(st.booleans()),
        streamed=draw(st.booleans()),
        finish_reason=draw(maybe_text),
        output_format=draw(maybe_text),
    )
    if draw(st.booleans()):
        call.prompt_text = draw(texts)  # content capture: the general way
    return call


@st.composite
def stages(draw: Any) -> tuple[RunState, StageRecord]:
    run = RunState(draw(texts), draw(texts), draw(texts), None, None, {}, "USD")
    record = StageRecord(name=draw(texts), stage=draw(texts))
    record.key = draw(texts)
    record.status = draw(st.sampled_from(["succeeded", "failed", "cancelled"]))
    record.error = draw(maybe_text)
    record.attempts = draw(st.integers(0, 5))
    record.output_digest = draw(maybe_text)
    record.started_ns = draw(times)
    record.ended_ns = draw(times)
    for d in draw(st.lists(decisions, max_size=3)):
        record.decisions.append(d)
        record.decision_steps.append(draw(st.integers(0, 1000)))
        record.premium.append(draw(st.none() | st.tuples(st.floats(0, 10), st.floats(0, 10))))
    record.calls.extend(draw(st.lists(calls(), max_size=3)))
    return run, record


def general(run: RunState, record: StageRecord, parent: Any) -> bytes:
    sink = _LocalSink(RESOURCE, SCOPE)
    emit_stage(sink, run, record, parent, False)
    return b"".join(encode_span_line(span) for span in sink.ended)


def both(run: RunState, record: StageRecord) -> tuple[bytes | None, bytes | None]:
    """(direct, general) with the same span ids; general is ``None`` where it raises
    (a lone surrogate in a span name or status, which no encoder can write)."""
    parent = _RunSpan()
    seed = random.getrandbits(32)
    random.seed(seed)
    direct = stage_lines(run, record, parent, RESOURCE, SCOPE, _rejected, request_json)
    random.seed(seed)
    try:
        expected = general(run, record, parent)
    except UnicodeEncodeError:
        return direct, None
    return direct, expected


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stages())
def test_the_direct_lines_are_the_general_ways_lines(stage: tuple[RunState, StageRecord]) -> None:
    run, record = stage
    direct, expected = both(run, record)
    if expected is None:
        assert direct is None  # it declines what cannot be written, and the general way says why
    elif direct is not None:
        assert direct == expected


def test_the_common_stage_is_written_directly() -> None:
    run = RunState("run-1", "routine-code", "medium", None, None, {}, "USD")
    record = StageRecord(name="execution", stage="execution", key="execution#0", status="succeeded", attempts=1)
    record.started_ns, record.ended_ns = 1_700_000_000_000_000_000, 1_700_000_000_100_000_000
    d = decision("execution", 10.0, None)
    record.decisions.append(d)
    record.decision_steps.append(1)
    record.premium.append((1.5, 0.2))
    call = CallRecord("standard", "gpt", "openai", 1, 20000, 18000, Usage(10, 20), True, 0.25)
    call.started_ns, call.step, call.max_tokens = record.started_ns + 5, 2, 1024
    call.prompt_digest, call.output_digest = "hmac-sha256:" + "a" * 64, "hmac-sha256:" + "b" * 64
    call.finish_reason = "stop"
    record.calls.append(call)
    record.output_digest = "hmac-sha256:" + "c" * 64
    direct, expected = both(run, record)
    assert direct is not None and direct == expected
    assert direct.count(b"\n") == 2  # the call's line, then the stage's


@pytest.mark.parametrize(
    "shape",
    ["child", "tool", "refusal", "capture", "parent"],
)
def test_other_shapes_take_the_general_way(shape: str) -> None:
    run = RunState("run-1", "routine-code", "medium", None, None, {}, "USD")
    record = StageRecord(name="execution", stage="execution", key="execution#0", status="succeeded")
    record.started_ns, record.ended_ns = 1, 2
    call = CallRecord("standard", "gpt", "openai", 1, 1, 1, None, True, 0.0, started_ns=1)
    record.calls.append(call)
    if shape == "child":
        record.children.append(StageRecord(name="c", stage="verification"))
    elif shape == "tool":
        record.tools.append(ToolRecord("write", True, 1, None, None, 1, 2))
    elif shape == "refusal":
        record.refusals.append(RefusalRecord("standard", "task", "cap", 0, 1, 1))
    elif shape == "capture":
        call.output_text = "a reply"
    else:
        record.parent = "outer"
    assert stage_lines(run, record, _RunSpan(), RESOURCE, SCOPE, _rejected, request_json) is None
