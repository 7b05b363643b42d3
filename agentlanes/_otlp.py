"""OTLP/JSON for the local trace, written directly from the SDK's spans.

The output is byte-for-byte what the official path writes (the OTLP protobuf encoder,
``MessageToDict(..., use_integers_for_enums=True)``, trace and span ids turned from
base64 into hex, ``json.dumps(separators=(",", ":"), ensure_ascii=False)``), without
building protobuf messages or an intermediate dict. The rules it has to follow:

* Keys come in protobuf field-number order, not declaration order: a span's ``flags``
  (field 16) comes after ``status`` (15); an event's ``timeUnixNano`` before its
  ``name``; a status's ``message`` before its ``code``.
* Fields at their proto3 default are left out (``""``, ``0``, empty lists), but a set
  sub-message is always written, even empty: ``"status":{}``, ``"resource":{}``,
  ``"scope":{}``, ``"value":{}`` for ``None``, ``"arrayValue":{}`` for an empty sequence.
  Inside ``AnyValue`` the value is a oneof, so ``""``, ``0``, ``false`` and ``0.0`` are
  written. An attribute whose key is ``""`` is written without ``"key"``.
* 64-bit integers (``intValue``, the ``*UnixNano`` times) are JSON strings; 32-bit ones
  (dropped counts, ``flags``) and enums (``kind``, status ``code``) are numbers. Doubles
  are Python's ``repr`` (``1.0``, ``1e+22``, ``-0.0``, ``5e-324``) except NaN and the
  infinities, which are the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``. Bytes
  values are base64; only trace and span ids are hex.
* ``kind`` is the OTLP enum, one more than the SDK's (INTERNAL is 1), so never omitted.
  ``flags`` is 256 (the parent's remoteness is known), 768 when the parent (for a link:
  the linked context) is remote; the W3C trace flags are not written. A link's trace
  state is not written.
* An attribute the encoder cannot represent is dropped, with a log line, rather than
  failing the span: an int outside int64, a string with a lone surrogate anywhere in it
  (key or nested value), a value of an unknown type. A lone surrogate in a span's or
  event's name, a trace state, a scope or a schema URL raises ``UnicodeEncodeError``,
  as the official encoder does; so does a time outside uint64 (``ValueError``).
* Spans are grouped by resource, then scope, in the order first seen, with equality
  (not identity) deciding what a group is, as ``encode_spans`` does.

Strings are escaped by :func:`json.encoder.encode_basestring`, the function
``json.dumps(..., ensure_ascii=False)`` itself uses, so escaping cannot drift.

The resource and scope header of a one-span line is cached per (resource, scope)
object pair when their attribute values are immutable (SDK resources and scopes are).
"""

from __future__ import annotations

import base64
import json.encoder
import logging
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.trace import SpanKind, StatusCode

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

__all__ = ["encode_span_json", "encode_span_line", "encode_spans_json"]

_logger = logging.getLogger(__name__)

_esc: Callable[[str], str] = json.encoder.encode_basestring  # what json.dumps(ensure_ascii=False) calls
_float_repr = float.__repr__
_int_repr = int.__repr__
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_UINT64_LIMIT = 1 << 64
_SPECIAL_DOUBLES = {"nan": '"NaN"', "inf": '"Infinity"', "-inf": '"-Infinity"'}
_KIND = {
    SpanKind.INTERNAL: ',"kind":1',
    SpanKind.SERVER: ',"kind":2',
    SpanKind.CLIENT: ',"kind":3',
    SpanKind.PRODUCER: ',"kind":4',
    SpanKind.CONSUMER: ',"kind":5',
}
# Enum members hash and give their value in Python code; their ids are a cheaper key.
_KIND_BY_ID = {id(kind): text for kind, text in _KIND.items()}
_STATUS_CODE_BY_ID = {id(code): code.value for code in StatusCode}
_FLAGS_LOCAL = ',"flags":256}'  # SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK, and the span or link ends
_FLAGS_REMOTE = ',"flags":768}'  # ... | SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
_KEYS_LIMIT = 4096
_HEADERS_LIMIT = 256

# ',{"key":"<key>","value":' and the same followed by the opening of a string, int or
# double value, per attribute key: the same keys come back on every span.
_prefixes: dict[str, str] = {}
_str_prefixes: dict[str, str] = {}
_int_prefixes: dict[str, str] = {}
_float_prefixes: dict[str, str] = {}
# (key, short string value) -> its whole ',{"key":...,"value":{"stringValue":...}}'
_str_pairs: dict[tuple[str, str], str] = {}
_SHORT = 48
_PAIRS_LIMIT = 8192
# (id(resource), id(scope)) -> (resource, scope, line prefix, line suffix)
_headers: dict[tuple[int, int], tuple[Any, Any, str, str]] = {}


class _Unencodable(Exception):
    """A value the OTLP encoder drops (it cannot be put in the protobuf message)."""


def _typed_prefix(key: Any, cache: dict[str, str], opening: str) -> str:
    """``,{"key":<key>,"value":<opening>``, cached per key (the first time a key is seen;
    a key that is not exactly a str is converted the way protobuf converts it)."""
    if type(key) is not str:
        key = _odd_key(key)
        cached = cache.get(key)
        if cached is not None:
            return cached
    prefix = (',{"key":' + _esc(key) + ',"value":' if key else ',{"value":') + opening
    if len(cache) >= _KEYS_LIMIT:
        cache.clear()
    cache[key] = prefix
    return prefix


def _odd_key(key: Any) -> str:
    if isinstance(key, str):
        return str.__str__(key)
    if isinstance(key, bytes):  # protobuf takes UTF-8 bytes for a string field
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            raise _Unencodable("the key is not UTF-8") from None
    raise _Unencodable(f"a {type(key).__name__} is not an attribute key")


def _double(value: float) -> str:
    text = _float_repr(value)
    return _SPECIAL_DOUBLES.get(text, text)


def _value(value: Any) -> str:
    """The JSON of one ``AnyValue`` message (for values inside sequences and mappings,
    and the unusual types at the top level)."""
    kind = type(value)
    if kind is str:
        return '{"stringValue":' + _esc(value) + "}"
    if kind is bool:
        return '{"boolValue":true}' if value else '{"boolValue":false}'
    if kind is int:
        if _INT64_MIN <= value <= _INT64_MAX:
            return '{"intValue":"' + _int_repr(value) + '"}'
        raise _Unencodable(f"{value} is outside the int64 range")
    if kind is float:
        return '{"doubleValue":' + _double(value) + "}"
    if kind is list or kind is tuple:  # exactly a Sequence: no ABC check needed
        items = [_value(item) for item in value]
        return '{"arrayValue":{"values":[' + ",".join(items) + "]}}" if items else '{"arrayValue":{}}'
    # The same order of tests as the OTLP encoder: bool, str, int, float, bytes, then
    # any Sequence (so a bytearray is a list of ints) and any Mapping.
    if value is None:
        return "{}"
    if isinstance(value, str):
        return '{"stringValue":' + _esc(value) + "}"
    if isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            return '{"intValue":"' + _int_repr(value) + '"}'
        raise _Unencodable(f"{int(value)} is outside the int64 range")
    if isinstance(value, float):
        return '{"doubleValue":' + _double(value) + "}"
    if isinstance(value, bytes):
        return '{"bytesValue":"' + base64.b64encode(value).decode("ascii") + '"}'
    if isinstance(value, Sequence):
        items = [_value(item) for item in value]
        return '{"arrayValue":{"values":[' + ",".join(items) + "]}}" if items else '{"arrayValue":{}}'
    if isinstance(value, Mapping):
        pairs = [_typed_prefix(str(k), _prefixes, "")[1:] + _value(v) + "}" for k, v in value.items()]
        return '{"kvlistValue":{"values":[' + ",".join(pairs) + "]}}" if pairs else '{"kvlistValue":{}}'
    raise _Unencodable(f"a {type(value).__name__} is not an attribute value")


def _items(attributes: Any) -> Any:
    """The (key, value) pairs of an attribute mapping, in its order. The SDK's
    BoundedAttributes (behind a read-only proxy on spans) is a Python-level Mapping whose
    item view calls ``__getitem__`` per key; its ``copy()`` is a plain dict, much faster."""
    kind = type(attributes)
    if kind is dict:
        return attributes.items()
    if kind is MappingProxyType or kind is BoundedAttributes:
        try:
            plain = attributes.copy()
        except AttributeError:
            return attributes.items()
        if type(plain) is dict:
            return plain.items()
    return attributes.items()


def _attributes(out: list[str], attributes: Any, careful: bool, opening: str) -> None:
    """Appends ``opening`` and the ``KeyValue`` list of ``attributes`` and ``]``, or
    nothing when no attribute is left."""
    if not attributes:
        return
    w = out.append
    start = len(out)
    w(opening)
    for key, value in _items(attributes):
        mark = len(out) if careful else 0
        try:
            kind = type(value)
            # Everything that can raise comes before the first append.
            if kind is str:
                if len(value) <= _SHORT:
                    # short values (lanes, stages, statuses, models) come back span after
                    # span: their whole KeyValue is cached with the key
                    pair = (key, value)
                    text = _str_pairs.get(pair)
                    if text is None:
                        prefix = _str_prefixes.get(key) or _typed_prefix(key, _str_prefixes, '{"stringValue":')
                        text = prefix + _esc(value) + "}}"
                        if len(_str_pairs) >= _PAIRS_LIMIT:
                            _str_pairs.clear()
                        _str_pairs[pair] = text
                    w(text)
                else:
                    prefix = _str_prefixes.get(key) or _typed_prefix(key, _str_prefixes, '{"stringValue":')
                    w(prefix)
                    w(_esc(value))
                    w("}}")
            elif kind is int and _INT64_MIN <= value <= _INT64_MAX:
                prefix = _int_prefixes.get(key) or _typed_prefix(key, _int_prefixes, '{"intValue":"')
                w(prefix)
                w(_int_repr(value))
                w('"}}')
            elif kind is float:
                prefix = _float_prefixes.get(key) or _typed_prefix(key, _float_prefixes, '{"doubleValue":')
                w(prefix)
                w(_double(value))
                w("}}")
            else:
                text = _value(value)
                prefix = _prefixes.get(key) or _typed_prefix(key, _prefixes, "")
                w(prefix)
                w(text)
                w("}")
            if careful:
                "".join(out[mark:]).encode("utf-8")
        except Exception as error:  # as the OTLP encoder: drop the attribute, keep the span
            if careful:
                del out[mark:]
            _logger.warning("Attribute %r is left out of the trace: %s.", key, error)
    if len(out) == start + 1:
        del out[start]
        return
    out[start + 1] = out[start + 1][1:]  # the first KeyValue's leading comma
    w("]")


def _time(w: Callable[[str], None], opening: str, value: Any) -> None:
    """Appends ``opening`` + nanoseconds + ``"``, unless the time is unset (None or 0,
    fixed64's default)."""
    if type(value) is int:
        if 0 < value < _UINT64_LIMIT:
            w(opening + _int_repr(value) + '"')
        elif value != 0:
            raise ValueError(f"Value out of range: {value}")
    elif value is not None:
        if isinstance(value, int) and not isinstance(value, bool):
            _time(w, opening, int(value))
        else:
            raise TypeError(f"A span time must be an int of nanoseconds, not {type(value).__name__}.")


def _span(out: list[str], span: ReadableSpan, careful: bool) -> None:
    """Appends the JSON of one ``Span`` message."""
    w = out.append
    ctx: Any = span.get_span_context()
    parent: Any = span.parent
    w(
        '{"traceId":"'
        + ctx.trace_id.to_bytes(16, "big").hex()
        + '","spanId":"'
        + ctx.span_id.to_bytes(8, "big").hex()
        + '"'
    )
    trace_state = ctx.trace_state
    if trace_state:
        w(',"traceState":' + _esc(",".join([f"{k}={v}" for k, v in trace_state.items()])))
    if parent:
        w(',"parentSpanId":"' + parent.span_id.to_bytes(8, "big").hex() + '"')
    name = span.name
    if name:
        w(',"name":')
        w(_esc(name))
    kind = span.kind
    w(_KIND_BY_ID.get(id(kind)) or _KIND[kind])
    start = span.start_time
    if type(start) is int and 0 < start < _UINT64_LIMIT:
        w(',"startTimeUnixNano":"' + _int_repr(start) + '"')
    elif start is not None:
        _time(w, ',"startTimeUnixNano":"', start)
    end = span.end_time
    if type(end) is int and 0 < end < _UINT64_LIMIT:
        w(',"endTimeUnixNano":"' + _int_repr(end) + '"')
    elif end is not None:
        _time(w, ',"endTimeUnixNano":"', end)
    _attributes(out, span.attributes, careful, ',"attributes":[')
    dropped = span.dropped_attributes
    if dropped:
        w(',"droppedAttributesCount":' + _int_repr(dropped))
    events = span.events
    if events:
        w(',"events":[')
        for event in events:
            _event(out, event, careful)
            w(",")
        out[-1] = "]"
    dropped = span.dropped_events
    if dropped:
        w(',"droppedEventsCount":' + _int_repr(dropped))
    links = span.links
    if links:
        w(',"links":[')
        for link in links:
            _link(out, link, careful)
            w(",")
        out[-1] = "]"
    dropped = span.dropped_links
    if dropped:
        w(',"droppedLinksCount":' + _int_repr(dropped))
    status: Any = span.status
    if status is not None:
        code = _STATUS_CODE_BY_ID.get(id(status.status_code))
        if code is None:
            code = status.status_code.value
        description = status.description
        if description:
            w(',"status":{"message":')
            w(_esc(description))
            w(',"code":' + _int_repr(code) + "}" if code else "}")
        else:
            w(',"status":{"code":' + _int_repr(code) + "}" if code else ',"status":{}')
    w(_FLAGS_REMOTE if parent and parent.is_remote else _FLAGS_LOCAL)


def _event(out: list[str], event: Any, careful: bool) -> None:
    w = out.append
    w("{")
    first = len(out)
    _time(w, ',"timeUnixNano":"', event.timestamp)
    name = event.name
    if name:
        w(',"name":')
        w(_esc(name))
    _attributes(out, event.attributes, careful, ',"attributes":[')
    dropped = event.dropped_attributes
    if dropped:
        w(',"droppedAttributesCount":' + _int_repr(dropped))
    if len(out) > first:
        out[first] = out[first][1:]
    w("}")


def _link(out: list[str], link: Any, careful: bool) -> None:
    w = out.append
    ctx = link.context
    w(
        '{"traceId":"'
        + ctx.trace_id.to_bytes(16, "big").hex()
        + '","spanId":"'
        + ctx.span_id.to_bytes(8, "big").hex()
        + '"'
    )
    _attributes(out, link.attributes, careful, ',"attributes":[')
    dropped = link.dropped_attributes
    if dropped:
        w(',"droppedAttributesCount":' + _int_repr(dropped))
    w(_FLAGS_REMOTE if ctx and ctx.is_remote else _FLAGS_LOCAL)


def _resource(out: list[str], resource: Any, careful: bool) -> None:
    out.append("{")
    _attributes(out, resource.attributes, careful, '"attributes":[')
    out.append("}")


def _scope(out: list[str], scope: Any, careful: bool) -> None:
    w = out.append
    w("{")
    if scope is not None:
        first = len(out)
        if scope.name:
            w(',"name":' + _esc(scope.name))
        if scope.version:
            w(',"version":' + _esc(scope.version))
        _attributes(out, scope.attributes, careful, ',"attributes":[')
        if len(out) > first:
            out[first] = out[first][1:]
    w("}")


def _schema(schema_url: Any) -> str:
    return ',"schemaUrl":' + _esc(schema_url) if schema_url else ""


def _frozen(value: Any) -> bool:
    """Whether an attribute value cannot change after the fact (so its JSON can be cached)."""
    if value is None or type(value) in (str, bool, int, float, bytes):
        return True
    return type(value) is tuple and all(_frozen(item) for item in value)


def _header(resource: Any, scope: Any, careful: bool) -> tuple[str, str]:
    """The text before and after the span of a one-span line."""
    key = (id(resource), id(scope))
    cached = _headers.get(key)
    if cached is not None and cached[0] is resource and cached[1] is scope:
        return cached[2], cached[3]
    cacheable = all(_frozen(v) for v in (resource.attributes or {}).values())
    if scope is not None:
        cacheable = cacheable and all(_frozen(v) for v in (scope.attributes or {}).values())
    careful = careful or cacheable  # cached text must be right whatever the span holds
    out = ['{"resourceSpans":[{"resource":']
    _resource(out, resource, careful)
    out.append(',"scopeSpans":[{"scope":')
    _scope(out, scope, careful)
    out.append(',"spans":[')
    prefix = "".join(out)
    suffix = (
        "]" + (_schema(scope.schema_url) if scope is not None else "") + "}]" + _schema(resource.schema_url) + "}]}"
    )
    if cacheable:
        if len(_headers) >= _HEADERS_LIMIT:
            _headers.clear()
        _headers[key] = (resource, scope, prefix, suffix)
    return prefix, suffix


def _one(span: ReadableSpan, careful: bool) -> str:
    prefix, suffix = _header(span.resource, span.instrumentation_scope or None, careful)
    out = [prefix]
    _span(out, span, careful)
    out.append(suffix)
    return "".join(out)


def _many(spans: Sequence[ReadableSpan], careful: bool) -> str:
    if not spans:
        return "{}"
    resource, scope = spans[0].resource, spans[0].instrumentation_scope or None
    if all(s.resource is resource and (s.instrumentation_scope or None) is scope for s in spans):
        # One group (the usual case): no need to hash the resource, which the SDK does
        # by dumping its attributes to JSON, and the header may be cached.
        prefix, suffix = _header(resource, scope, careful)
        out = [prefix]
        for span in spans:
            _span(out, span, careful)
            out.append(",")
        out[-1] = suffix
        return "".join(out)
    # resource -> scope -> span texts; dict keys compare by equality, as encode_spans' do.
    groups: dict[Any, dict[Any, list[str]]] = {}
    last_resource: Any = groups  # a sentinel no span has as its resource or scope
    last_scope: Any = groups
    bucket: list[str] = []
    for span in spans:
        body: list[str] = []
        _span(body, span, careful)
        resource = span.resource
        scope = span.instrumentation_scope or None
        if resource is not last_resource or scope is not last_scope:
            bucket = groups.setdefault(resource, {}).setdefault(scope, [])
            last_resource, last_scope = resource, scope
        bucket.append("".join(body))
    out = ['{"resourceSpans":[']
    w = out.append
    for resource, scopes in groups.items():
        w('{"resource":')
        _resource(out, resource, careful)
        w(',"scopeSpans":[')
        for scope, bodies in scopes.items():
            w('{"scope":')
            _scope(out, scope, careful)
            w(',"spans":[')
            w(",".join(bodies))
            w("]" + (_schema(scope.schema_url) if scope is not None else "") + "},")
        out[-1] = out[-1][:-1]
        w("]" + _schema(resource.schema_url) + "},")
    out[-1] = out[-1][:-1]
    w("]}")
    return "".join(out)


def _checked(line: str, again: Callable[[], str]) -> str:
    """``line``, unless it holds a lone surrogate: then the careful encoding, which drops
    the attributes that hold one (or raises, for a name or URL that does)."""
    if not line.isascii():
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:
            line = again()
            line.encode("utf-8")  # what is left is outside attributes: fail as the official encoder does
    return line


def encode_span_json(span: ReadableSpan) -> str:
    """One OTLP/JSON ``ExportTraceServiceRequest`` line holding ``span`` alone (the
    local trace's line): the same text as :func:`encode_spans_json` ``([span])``."""
    return _checked(_one(span, False), lambda: _one(span, True))


def encode_span_line(span: ReadableSpan) -> bytes:
    """:func:`encode_span_json` as UTF-8 with a newline, ready for a binary file: the
    encoding to bytes is also the check for lone surrogates, so it is done once."""
    line = _one(span, False)
    try:
        return (line + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (_one(span, True) + "\n").encode("utf-8")


def encode_spans_json(spans: Sequence[ReadableSpan]) -> str:
    """One OTLP/JSON ``ExportTraceServiceRequest`` line for ``spans``: byte for byte
    what the official OTLP encoder, protobuf's JSON mapping and ``json.dumps`` give
    (with hex ids); see the module docstring for the rules."""
    if len(spans) == 1:
        return encode_span_json(spans[0])
    return _checked(_many(spans, False), lambda: _many(spans, True))
