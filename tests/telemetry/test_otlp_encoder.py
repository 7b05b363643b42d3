"""Our OTLP/JSON encoder writes exactly what the official one writes.

The official path is the one :func:`agentlanes.tracefile.encode_otlp_json` used before
ours: the OTLP protobuf encoder, ``MessageToDict``, hex ids, ``json.dumps``. It is
rebuilt here from the official pieces, so the comparison keeps its meaning when the
trace writer switches to our encoder. For generated spans covering every field the
encoder reads, and for hand-picked edge cases, the lines must be equal byte for byte
(with ``encode_otlp_json`` too, whichever encoder it calls), and both must parse with the
official protobuf classes into the same message, which is also the message the official
encoder built (NaN payloads aside).
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import pytest
from google.protobuf import json_format  # type: ignore[import-untyped]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from agentlanes._otlp import encode_span_json, encode_span_line, encode_spans_json
from agentlanes.tracefile import encode_otlp_json


def official_json(spans: list[ReadableSpan]) -> str:
    """The official path: protobuf message, protobuf's JSON mapping, ids from base64 to hex."""
    doc = json_format.MessageToDict(encode_spans(spans), use_integers_for_enums=True)
    for rs in doc.get("resourceSpans", []):
        for ss in rs["scopeSpans"]:
            for one in ss["spans"]:
                for holder in [one, *one.get("links", [])]:
                    for key in ("traceId", "spanId", "parentSpanId"):
                        if key in holder:
                            holder[key] = base64.b64decode(holder[key]).hex()
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


# --- strategies -----------------------------------------------------------------------

texts = st.text(max_size=12) | st.sampled_from(["", "gen_ai.request.model", "é", "😀", '\x00\x1f\x7f\u2028"\\/'])
# A lone surrogate is representable in a Python str but not in protobuf: both encoders
# drop the attribute holding it.
surrogate_texts = st.builds(lambda a, b: a + "\ud800" + b, st.text(max_size=3), st.text(max_size=3))
ints = st.integers(-(2**63), 2**63 - 1) | st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 2**70])
floats = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True) | st.sampled_from(
    [0.0, -0.0, 1.0, 1e16, 1e22, 1e-7, 5e-324, 1.7976931348623157e308, float("nan"), float("inf"), float("-inf")]
)
scalars = st.none() | st.booleans() | ints | floats | texts | st.binary(max_size=8)
homogeneous = st.one_of(
    st.lists(st.booleans(), max_size=4),
    st.lists(ints, max_size=4),
    st.lists(floats, max_size=4),
    st.lists(texts, max_size=4),
    st.lists(st.none() | texts, max_size=4),  # the SDK allows None inside a sequence
).map(tuple)
any_values = st.recursive(
    scalars | homogeneous,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=4,
)
values = st.one_of(scalars, homogeneous, any_values, surrogate_texts)


@st.composite
def attribute_maps(draw: Any, max_size: int = 3) -> Any:
    """A plain dict (as a directly built span may hold, "" keys and lone surrogates
    included) or the SDK's BoundedAttributes, sometimes with a limit that drops some."""
    keys = texts | surrogate_texts if draw(st.integers(0, 9)) == 0 else texts
    plain = draw(st.dictionaries(keys, values, max_size=max_size))
    form = draw(st.sampled_from(["none", "dict", "bounded", "limited"]))
    if form == "none":
        return None
    if form == "dict":
        return plain
    return BoundedAttributes(maxlen=2 if form == "limited" else None, attributes=plain, immutable=True)


ids128 = st.integers(0, 2**128 - 1) | st.sampled_from([0, 1, 2**128 - 1])
ids64 = st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 2**64 - 1])
times = st.none() | st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 1_700_000_000_123_456_789])
trace_states = st.lists(
    st.tuples(
        st.sampled_from(["a", "vendor", "k_2", "t*3/4", "a-b", "tenant@sys"]),
        st.sampled_from(["1", "x~y", "!#$%&'()*+-./:;<>?@[]^_`{|}~", "v v"]),  # printable but "," and "="
    ),
    max_size=3,
    unique_by=lambda kv: kv[0],
).map(TraceState)
span_contexts = st.builds(
    SpanContext,
    trace_id=ids128,
    span_id=ids64,
    is_remote=st.booleans(),
    trace_flags=st.integers(0, 255).map(TraceFlags),
    trace_state=trace_states,
)
events = st.builds(Event, name=texts, attributes=attribute_maps(), timestamp=times)
links = st.builds(Link, context=span_contexts, attributes=attribute_maps())
statuses = st.one_of(
    st.none(),
    st.just(Status(StatusCode.UNSET)),
    st.just(Status(StatusCode.OK)),
    st.builds(Status, st.just(StatusCode.ERROR), st.none() | texts),
)
# Few distinct resources and scopes, rebuilt each time: equal but distinct objects must
# share a group, as they do in encode_spans.
resources = st.builds(
    Resource,
    attributes=st.sampled_from([{}, {"service.name": "svc"}, {"service.name": "svc", "n": 1}])
    | st.dictionaries(texts, scalars | homogeneous, max_size=3),
    schema_url=st.sampled_from([None, "", "https://opentelemetry.io/schemas/1.37.0"]),
)
scopes = st.none() | st.builds(
    InstrumentationScope,
    name=st.sampled_from(["agentlanes", "", "other"]),
    version=st.sampled_from([None, "", "1.0"]),
    schema_url=st.sampled_from([None, "", "https://opentelemetry.io/schemas/1.37.0"]),
    attributes=st.sampled_from([None, {}, {"a": 1}]) | st.dictionaries(texts, scalars, max_size=2),
)


def bounded(items: list[Any], limit: int | None) -> Any:
    """A BoundedList as the SDK keeps events and links (so dropped counts are nonzero)."""
    if limit is None:
        return items
    out = BoundedList(limit)
    out.extend(items)
    return out


@st.composite
def readable_spans(draw: Any, shared: tuple[Any, Any] | None = None) -> ReadableSpan:
    limit = draw(st.none() | st.integers(0, 2))
    resource, scope = shared if shared is not None else (draw(resources), draw(scopes))
    return ReadableSpan(
        name=draw(texts),
        context=draw(span_contexts),
        parent=draw(st.none() | span_contexts),
        resource=resource,
        attributes=draw(attribute_maps(max_size=6)),
        events=bounded(draw(st.lists(events, max_size=2)), limit),
        links=bounded(draw(st.lists(links, max_size=2)), limit),
        kind=draw(st.sampled_from(list(SpanKind))),
        status=draw(statuses),
        start_time=draw(times),
        end_time=draw(times),
        instrumentation_scope=scope,
    )


@st.composite
def span_lists(draw: Any) -> list[ReadableSpan]:
    """Spans each with their own resource and scope objects, or all with the same two
    (as a TracerProvider's spans are)."""
    shared = draw(st.none() | st.tuples(resources, scopes))
    return draw(st.lists(readable_spans(shared), max_size=3))


# --- the comparison -------------------------------------------------------------------


def parsed(line: str) -> Any:
    """The line as the official protobuf message (hex ids back to protobuf's base64)."""

    def b64(value: str) -> str:
        return base64.b64encode(bytes.fromhex(value)).decode()

    doc = json.loads(line)
    for rs in doc.get("resourceSpans", []):
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = b64(span[key])
                for link in span.get("links", []):
                    link["traceId"], link["spanId"] = b64(link["traceId"]), b64(link["spanId"])
    return json_format.ParseDict(doc, ExportTraceServiceRequest())


def assert_same(spans: list[ReadableSpan]) -> str:
    official = official_json(spans)
    ours = encode_spans_json(spans)
    assert ours == official
    assert encode_otlp_json(spans) == official
    if len(spans) == 1:
        assert encode_span_json(spans[0]) == official
        assert encode_span_json(spans[0]) == official  # again: through the header cache
        assert encode_span_line(spans[0]) == (official + "\n").encode("utf-8")
    # Parse both: NaN != NaN, so compare the messages' deterministic wire bytes.
    ours_msg, official_msg = parsed(ours), parsed(official)
    assert ours_msg.SerializeToString(deterministic=True) == official_msg.SerializeToString(deterministic=True)
    if "NaN" not in ours:  # JSON keeps no NaN payload; otherwise the line is the message
        assert ours_msg == encode_spans(spans)
    return ours


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(span_lists())
def test_generated_spans_encode_exactly_as_the_official_encoder(spans: list[ReadableSpan]) -> None:
    logging.disable(logging.CRITICAL)  # both encoders log each attribute they drop
    try:
        assert_same(spans)
        for span in spans:
            assert_same([span])
    finally:
        logging.disable(logging.NOTSET)


# --- edge cases, by hand --------------------------------------------------------------

CTX = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, is_remote=False)
REMOTE_PARENT = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0x00F067AA0BA902B7, is_remote=True)
LOCAL_PARENT = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0x1, is_remote=False)
RESOURCE = Resource({"service.name": "agentlanes-test", "host.cores": 2})
SCOPE = InstrumentationScope("agentlanes", "0.1.0", "https://opentelemetry.io/schemas/1.37.0", {"lib": "x"})


def span(**kw: Any) -> ReadableSpan:
    kw.setdefault("name", "agentlanes.stage plan")
    kw.setdefault("context", CTX)
    kw.setdefault("resource", RESOURCE)
    kw.setdefault("instrumentation_scope", SCOPE)
    return ReadableSpan(**kw)


EDGE_CASES: dict[str, list[ReadableSpan]] = {
    "no attributes, no times, unset status": [span(attributes=None)],
    "empty attributes everywhere": [
        span(
            attributes={},
            events=[Event("e", {}, 1)],
            links=[Link(LOCAL_PARENT, {})],
            resource=Resource({}),
            instrumentation_scope=InstrumentationScope("s"),
        )
    ],
    "no scope at all": [span(instrumentation_scope=None)],
    "default values inside AnyValue are written": [
        span(attributes={"s": "", "b": False, "i": 0, "f": 0.0, "n": None, "a": (), "m": {}, "y": b""})
    ],
    "unicode and control characters": [
        span(
            name="résumé 😀 \u2028\u2029 \x7f",
            attributes={"ключ": "значение", "astral": "𝄞😀🜁", "ctl": '\x00\x01\b\f\n\r\t\x1f"\\/', "": "empty key"},
            events=[Event("ünïcode", {"emoji": "🙂" * 3}, 5)],
        )
    ],
    "floats": [
        span(
            attributes={
                "nan": float("nan"),
                "inf": float("inf"),
                "-inf": float("-inf"),
                "-0": -0.0,
                "one": 1.0,
                "big": 1e22,
                "huge": 1.7976931348623157e308,
                "tiny": 5e-324,
                "small": 1e-7,
                "third": 1 / 3,
                "many": (float("nan"), 1.5, -0.0, 1e300),
            }
        )
    ],
    "ints at and beyond the int64 range": [
        span(
            attributes={
                "max": 2**63 - 1,
                "min": -(2**63),
                "over": 2**63,
                "under": -(2**63) - 1,
                "list over": (1, 2**64),
                "ok": (1, -1, 0),
            }
        )
    ],
    "lone surrogates are dropped with their attribute": [
        span(attributes={"bad": "a\ud800", "bad\udfff": 1, "nested": ({"k": "\udc00"},), "good": "é"})
    ],
    "sequences of every type": [
        span(
            attributes={
                "strs": ("a", "", "é"),
                "bools": (True, False),
                "ints": (1, -5),
                "floats": (1.0, 2.5),
                "with none": ("a", None),
                "empty": (),
                "nested": ((1, 2), ("x",)),
                "mixed": [1, "a", 2.5, None, b"\x00"],
                "map": {"k": (1,), "j": {"deep": True}},
            }
        )
    ],
    "several events and links, remote parent, error status": [
        span(
            parent=REMOTE_PARENT,
            kind=SpanKind.CLIENT,
            start_time=1_700_000_000_000_000_000,
            end_time=1_700_000_000_250_000_000,
            status=Status(StatusCode.ERROR, "it broke"),
            attributes={"gen_ai.request.model": "m", "x": 1},
            events=[
                Event("agentlanes.decision", {"request": json.dumps({"k": "v" * 40, "n": [1, 2]})}, 10),
                Event("agentlanes.escalation", None, 20),
                Event("", {"a": 1}, 0),
            ],
            links=[
                Link(REMOTE_PARENT, {"link.kind": "follows"}),
                Link(SpanContext(1, 2, False, trace_state=TraceState([("v", "1")]))),
            ],
        )
    ],
    "local parent, trace state, ok status, every kind": [
        span(
            parent=LOCAL_PARENT,
            kind=kind,
            status=Status(StatusCode.OK),
            context=SpanContext(3, 4, False, TraceFlags(1), TraceState([("a", "1"), ("b", "x~y")])),
        )
        for kind in SpanKind
    ],
    "dropped counts": [
        span(
            attributes=BoundedAttributes(2, {"a": 1, "b": 2, "c": 3}),
            events=bounded([Event("e", BoundedAttributes(1, {"x": 1, "y": 2}), 1)] * 3, 2),
            links=bounded([Link(LOCAL_PARENT, BoundedAttributes(0, {"x": 1}))] * 2, 1),
        )
    ],
    "several resources and scopes in one call": [
        span(name="a"),
        span(name="b", resource=Resource({"service.name": "other"})),
        span(name="c", instrumentation_scope=InstrumentationScope("other")),
        span(name="d", resource=Resource({"host.cores": 2, "service.name": "agentlanes-test"})),  # equal: same group
        span(name="e", instrumentation_scope=None),
        span(name="f", resource=Resource({"service.name": "agentlanes-test", "host.cores": 2}, "https://s")),
        span(name="g"),
    ],
    "several spans, one resource and scope": [
        span(name="a"),
        span(name="b", parent=LOCAL_PARENT, attributes={"x": 1}),
        span(name="c", status=Status(StatusCode.ERROR, "no")),
    ],
    "no spans": [],
}


@pytest.mark.parametrize("spans", list(EDGE_CASES.values()), ids=list(EDGE_CASES))
def test_edge_cases_encode_exactly_as_the_official_encoder(spans: list[ReadableSpan]) -> None:
    assert_same(spans)
    for one in spans:
        assert_same([one])


def test_a_dropped_attribute_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="agentlanes._otlp"):
        line = encode_span_json(span(attributes={"over": 2**63, "ok": 1}))
    assert '"over"' not in line and '"ok"' in line
    assert "'over' is left out of the trace: 9223372036854775808 is outside the int64 range" in caplog.text


def test_a_lone_surrogate_in_a_span_name_fails_as_the_official_encoder_does() -> None:
    with pytest.raises(UnicodeEncodeError):
        official_json([span(name="x\ud800")])
    with pytest.raises(UnicodeEncodeError):
        encode_span_json(span(name="x\ud800"))
    with pytest.raises(UnicodeEncodeError):
        encode_span_line(span(name="x\ud800"))


def test_a_time_outside_uint64_fails_as_the_official_encoder_does() -> None:
    for bad in (-1, 2**64):
        with pytest.raises(ValueError, match="out of range"):
            official_json([span(start_time=bad)])
        with pytest.raises(ValueError, match="out of range"):
            encode_span_json(span(start_time=bad))


def test_a_resource_whose_values_can_change_is_not_cached() -> None:
    resource = Resource({"conf": {"k": 1}})  # a mapping value: the SDK keeps it as a dict
    first = span(resource=resource)
    assert_same([first])
    resource.attributes["conf"]["k"] = 2  # type: ignore[index]
    assert '"intValue":"2"' in assert_same([first])
