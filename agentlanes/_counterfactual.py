"""The recorded route decisions of a local trace, read for counterfactual replay without
decoding what it does not use.

Counterfactual replay needs, per recorded decision: its time (the order), its stage's
name, its id, status, lane, estimated cost and request (the inputs it is decided again
from), and whether an escalation event of its stage names it. A stage span holding
decisions is a line of about 4 KB, a third of it the request and the rejected
candidates, which the decision event repeats from the span. Decoding such lines whole
(``orjson``, then a walk over every attribute) was most of counterfactual replay's
time, and validating their JSON without building anything still costs about twice what
deciding again does (msgspec, measured). So this reader reads a line the way
agentlanes' encoder (:mod:`agentlanes._otlp`) writes it, and decodes only those fields.

Why markers can be trusted. Inside a JSON string a ``"`` is always escaped (``\\"``). So
the text ``"name":"agentlanes.route_decision"`` whose first quote is not preceded by a
backslash is a JSON member ``name`` with exactly that value, and ``{"key":"…`` or
``},{"timeUnixNano":"`` are an object's first member: none of them can come from a
string's content, whatever a captured prompt, a stage name or an error text holds. (A
quote preceded by a backslash is looked at no further: the line is decoded in full or
the occurrence is content.) Every marker below starts with a quote that follows a
character other than a backslash, or with ``{`` or ``,`` before the quote.

How a file is read:

* The file is read (a regular file of at most ``MAX_TRACE_BYTES``, as
  :func:`agentlanes.tracefile.read_lines` checks) and decoded as UTF-8 (an invalid byte
  is the same :class:`~agentlanes.tracefile.TraceError` as before), then searched for
  ``agentlanes.route_decision``, which is what the full decode looked for.
* A line whose occurrences are all inside longer strings (not a quoted string of their
  own) names no decision and is skipped. A line where the name appears as the encoder
  writes it is read in place when it has the encoder's frame: its resource and scope
  header (checked once per distinct header: decoded with the closing brackets
  appended, it is one resource with one scope whose span list comes last), its span's
  events array ending where ``],"status":{`` begins, and after that only the status,
  the flags, the schema URLs and the closing brackets (a regular expression to the end
  of the line). Each decision event is matched from its start through its id, status,
  reason and lane (a pattern anchored at the ``{"timeUnixNano":"`` before the name);
  what follows (the rejected candidates) is skipped by searching for the request's key
  (no ``"name":"`` may lie between: that would be another event); the request ends at the
  first ``"}},{"key":"`` whose quote is not escaped, and from there a pattern anchored
  at both ends reads the step and the cost up to the event's end and the next event's
  start. What lies between and after the decisions (other events) must hold no
  ``"spanId":"`` (another span) and is searched for escalation events, whose decision
  ids mark the decisions they escalated. Every value used is decoded by the JSON
  decoder (the request, strings with escapes) or matched byte by byte (digits, plain
  strings, a number of bounded length) before use.
* Anything else, and any line with no newline after it (a write cut by a kill -9), is
  decoded in full with the same code and errors as before: a header, tail, field type,
  field order or number of another shape, an escape where the encoder writes none, a
  line with spaces, a mention of the event's name elsewhere in a decision line. A line
  decoded in full may be at most :data:`MAX_FULL_LINE` characters (decoding a hostile
  line builds several objects per byte); a stage span holds at most 128 events, a few
  hundred KB.

Scope. For every line as the encoder writes it (trace/1 and trace/2 alike: one span
per line, keys in the protobuf order, no duplicate keys), whatever its strings hold,
the result is exactly the full decode's; :func:`read_decisions` counts the lines it
decoded in full, and the tests keep that at zero for freshly recorded runs (a tripwire
for a change of the writer). What the reader does not do is validate bytes it does not
use: a line damaged by hand only there (inside the rejected candidates, in a span's own
attributes or head) is read as the decisions it holds where the full decode refused
it, and a line edited to repeat a key, or to carry a span before the stage's own, is
read by the first occurrence. Such edits can change no more than editing the decision
fields themselves could; ``agentlanes replay`` (exact replay) reads every byte.

The requests (:class:`RequestCache`). A request is canonical JSON (``request_json`` in
telemetry: sorted keys, compact): ``"signals":{…}`` comes right before ``"stage"`` and
``"taskClass"``. Runs repeat one signal set across their stages, and decoding it (and
the snapshot cache's ``repr`` key) was a third of a request's cost, so the signals
object is cut out by position, the rest decoded with ``null`` in its place, and the
signals looked up by their text (a text seen before decoded to a dict that passed every
check; substituting a value for a ``null`` that is a value leaves the rest of the
document as it was). The cut is used only when ``"signals":`` occurs once and the rest
decodes to an object whose ``signals`` is that ``null``; otherwise, and on any error,
the request is decoded whole as before, so the errors are the same. Rebuilt requests
are cached by their text for one :func:`~agentlanes.history.counterfactual` call
(bounded); every decision is still decided again by the router.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, NamedTuple

from agentlanes import attributes as A
from agentlanes import tracefile as _tracefile
from agentlanes.decision import RouteRequest
from agentlanes.signals import SignalSnapshot, SnapshotCache
from agentlanes.tracefile import TraceError, _attrs, _value

__all__ = ["MAX_FULL_LINE", "MISSING", "Recorded", "RequestCache", "read_decisions"]

_loads: Callable[[str | bytes], Any]
try:  # optional accelerator (agentlanes[fast]): the same values, faster
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - exercised where orjson is not installed
    _loads = json.loads

MAX_FULL_LINE = 8 * 1024 * 1024
"""A line with route decisions that is not in the encoder's shape is decoded in full
only up to this many bytes (a :class:`TraceError` beyond)."""

MISSING: Final[Any] = object()
"""The request of a decision event that has none."""

_new_tuple: Final = tuple.__new__
_TEXT: Final = A.EVENT_DECISION
_MARKER: Final = '"name":"' + A.EVENT_DECISION + '"'
_SPANS: Final = '"spans":[{"traceId":"'
_SPAN: Final = '{"traceId":"'
_STATUS: Final = '],"status":{'
_EVENTS: Final = ',"events":[{"timeUnixNano":"'
_NEXT_EVENT: Final = '},{"timeUnixNano":"'
_TIME: Final = '{"timeUnixNano":"'
_SPAN_ID: Final = '"spanId":"'
_NAME: Final = '"name":"'
_ESCALATION_NAME: Final = '"name":"' + A.EVENT_ESCALATION + '"'
_STRING: Final = '"stringValue":"'
_STAGE_KEY: Final = '{"key":"' + A.STAGE_NAME + '","value":{'
_ID_KEY: Final = '{"key":"' + A.DECISION_ID + '","value":{'
_REQUEST_KEY: Final = '}},{"key":"' + A.REQUEST + '","value":{"stringValue":"'
_NEXT_KEY: Final = '"}},{"key":"'  # a string value's end, another attribute after it

_JSON_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_PLAIN = r'"([^"\\]*)"'


def _kv(key: str, value: str) -> str:
    return r'\{"key":"' + re.escape(key) + r'","value":\{' + value + r"\}\}"


# After the events array: the status (its message a JSON string), the flags, and the
# closing brackets of the span, the span list, the scope (with its schema URL), the
# resource (with its schema URL) and the message.
_TAIL: Final = re.compile(
    r'\],"status":\{(?:"message":' + _JSON_STRING + r'(?:,"code":[0-9])?|"code":[0-9])?\}'
    r'(?:,"flags":[0-9]{1,10})?\}\](?:,"schemaUrl":' + _JSON_STRING + r")?\}\]"
    r'(?:,"schemaUrl":' + _JSON_STRING + r")?\}\]\}\Z"
)
# A decision event after its '{"timeUnixNano":"', up to its lane's closing quote, as the
# encoder writes it (trace/1 and trace/2 alike). What follows up to the request (the
# rejected candidates today) is skipped.
_DECISION: Final = re.compile(
    r'([0-9]{1,20})","name":"'
    + re.escape(A.EVENT_DECISION)
    + r'","attributes":\['
    + _kv(A.DECISION_ID, '"stringValue":' + _PLAIN)
    + ","
    + _kv(A.DECISION_STATUS, '"stringValue":' + _PLAIN)
    + ","
    + _kv(A.DECISION_REASON, '"stringValue":"[^"\\\\]*"')
    + r',\{"key":"'
    + re.escape(A.LANE)
    + r'","value":\{"stringValue":"([^"\\]*)"'
)
# From the request's closing quote to the event's closing brace (then the next event, or
# the end of the events): its step and estimated cost
# (trace/2 writes the step first, trace/1 the cost; a decision that admitted no lane has
# no cost; a cost with a three-digit exponent is read by the full decode).
_STEP = _kv(A.STEP, '"intValue":"-?[0-9]{1,19}"')
_DECISION_END: Final = re.compile(
    r'"\}\}(?:,'
    + _STEP
    + r")?(?:,"
    + _kv(A.COST_ESTIMATED, r'"doubleValue":(-?(?:0|[1-9][0-9]{0,30})(?:\.[0-9]{1,30})?(?:[eE][+-]?[0-9]{1,2})?)')
    + r")?(?:,"
    + _STEP
    + r")?\]\}(?=,\{\"timeUnixNano\":\"|\Z)"
)
# The stage's name attribute's value (group 2 is set when it has no escapes).
_STAGE: Final = re.compile(r'"stringValue":"([^"\\]*)("\}\})?')
_SPAN_NAME: Final = re.compile(
    r'\{"traceId":"[0-9a-f]{32}","spanId":"[0-9a-f]{16}"(?:,"parentSpanId":"[0-9a-f]{16}")?,"name":"'
)


# Headers already checked, and the last tail (whether they are in the encoder's shape is
# a function of their text alone; bounded).
_HEADERS: dict[str, bool] = {}
_LAST_TAIL = "\0"


class Recorded(NamedTuple):
    """One recorded decision, as counterfactual replay uses it: the values the full
    decode's event attributes give (``lane`` is ``attrs.get(LANE) or None``, ``status``
    ``attrs.get(DECISION_STATUS, "?")``, ``cost`` a float or None, ``request`` the request
    attribute, the JSON text, or :data:`MISSING`)."""

    time: int
    stage: str
    decision_id: Any
    status: Any
    lane: Any
    cost: float | None
    request: Any
    escalated: bool
    offset: int
    """Where its line starts in the trace's text (its number is counted only for an error)."""


def read_decisions(path: Path) -> tuple[list[Recorded], int, str]:
    """The recorded decisions of the trace at ``path`` in time order (ties in file order),
    how many lines had to be decoded in full, and the trace's text (to number a line
    named in an error: ``text.count("\\n", 0, offset) + 1``).

    Raises:
        TraceError: the file cannot be read, or a line holding decisions is not a trace
            line agentlanes writes (the file and line named).
    """
    raw = _read(path)
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise TraceError(
            f"{path}: line {line} is not UTF-8 text, so it is not OTLP/JSON.", path=path, line=line
        ) from None
    del raw
    found: list[Recorded] = []
    slow = 0
    header = "\0"  # no line starts with it
    pos = text.find(_TEXT)
    while pos >= 0:
        ls = text.rfind("\n", 0, pos) + 1
        le = text.find("\n", pos)
        got: list[Recorded] | None = None
        first = pos
        if le >= 0 and not text.startswith(_MARKER, pos - 8):  # the text in a string (a stage's name, say)
            first = text.find(_MARKER, pos, le) + 8
        if le >= 0 and first - 9 > ls and text[first - 9] != "\\":
            if not text.startswith(header, ls):
                header = _header(text, ls, le) or "\0"
            if header != "\0":
                got = _fast_line(text, ls + len(header) - len(_SPAN), le, first, ls)
        if got is None:
            torn = le < 0
            if torn:
                le = len(text)
            if _names_a_decision(text, ls, le, pos):
                slow += 1
                got = _full_line(text, ls, le, path, torn)
            if torn:
                if got:
                    found.extend(got)
                break
        if got:
            found.extend(got)
        pos = text.find(_TEXT, le)
    found.sort(key=_time)
    return found, slow, text


def _time(r: Recorded) -> int:
    return r.time


def _names_a_decision(text: str, ls: int, le: int, pos: int) -> bool:
    """Whether some occurrence of ``agentlanes.route_decision`` in the line may be an
    event's name: one that is a JSON string of its own (a quote before it that is not
    escaped, a quote after it). One inside a longer string (a captured prompt, an error
    text) names nothing; a line with only such occurrences holds no decision."""
    while pos >= 0:
        end = pos + len(_TEXT)
        if (
            pos > ls
            and text[pos - 1] == '"'
            and text.startswith('"', end)
            and not (pos - 2 > ls and text[pos - 2] == "\\" and text[pos - 3] != "\\")
        ):
            return True
        pos = text.find(_TEXT, end, le)
    return False


def _read(path: Path) -> bytes:
    """The bytes of a record file: a regular file (never a FIFO, device or directory) of
    at most :data:`agentlanes.tracefile.MAX_TRACE_BYTES` (the checks
    :func:`agentlanes.tracefile.read_lines` makes, with one read for a file that holds
    still)."""
    limit = _tracefile.trace_limit()
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
            want = min(max(info.st_size + 1 - size, 1 << 16), limit + 1 - size)
            data = os.read(fd, want)
            chunks.append(data)
            size += len(data)
            if len(data) < want:  # a regular file reads short only at its end
                break
    finally:
        os.close(fd)
    raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if len(raw) > limit:
        raise TraceError(f"{path} grew past {limit} bytes while it was read.", path=path)
    return raw


def _header(text: str, ls: int, le: int) -> str | None:
    """The line's resource and scope header, up to and including the ``{"traceId":"`` of
    its span, when it is one resource with one scope whose span list it ends with."""
    at = text.find(_SPANS, ls, le)
    if at < 0:
        return None
    header = text[ls : at + len(_SPANS)]
    ok = _HEADERS.get(header)
    if ok is None:
        ok = False
        try:
            message = _loads(header[: -len(_SPAN)] + "]}]}]}")
        except (ValueError, RecursionError):
            message = None
        if type(message) is dict and type(message.get("resourceSpans")) is list and len(message["resourceSpans"]) == 1:
            rs = message["resourceSpans"][0]
            if type(rs) is dict and type(rs.get("scopeSpans")) is list and len(rs["scopeSpans"]) == 1:
                ss = rs["scopeSpans"][0]
                ok = type(ss) is dict and ss.get("spans") == []
        if len(_HEADERS) >= 256:
            _HEADERS.clear()
        _HEADERS[header] = ok
    return header if ok else None


def _fast_line(text: str, h: int, le: int, pos: int, ls: int) -> list[Recorded] | None:
    """The decisions of the one span at ``h`` (its ``{"traceId":"``), read in place, or
    None when the line is not in the encoder's shape (it is then decoded in full).

    ``pos`` is the first decision's name. Each decision event is read from its start to
    its end (patterns anchored at both, the rejected candidates and the request skipped
    by searching for what follows them); what lies between them (other events, and
    nothing else in one span) is searched for escalation events and must hold no other
    span."""
    global _LAST_TAIL
    st = text.rfind(_STATUS, h, le)
    if st < 0:
        return None
    if not (le - st == len(_LAST_TAIL) and text.startswith(_LAST_TAIL, st)):  # the tail checked last time
        if _TAIL.match(text, st, le) is None:
            return None
        _LAST_TAIL = text[st:le]
    ev = text.rfind(_EVENTS, h, pos)
    if ev < 0 or text[st - 1] != "}":
        return None
    # The stage's name: its agentlanes.stage.name attribute, else the span's name. (One
    # span per line, as every version of the writer writes them: a line with several is
    # told by a span's boundary between or after the decisions, not before them.)
    k = text.find(_STAGE_KEY, h, ev)
    if k >= 0:
        m = _STAGE.match(text, k + len(_STAGE_KEY), ev)
        if m is None:
            return None  # a stage name that is not a string
        stage = m[1] if m[2] else _string(text, m.start(1) - 1, '"}}', ev)
    else:
        m = _SPAN_NAME.match(text, h, ev)
        stage = _string(text, m.end() - 1, '",', ev) if m is not None else None
    if stage is None:
        return None
    out: list[Recorded] = []
    gaps: list[str] = []
    gap = ev + len(_EVENTS) - len(_TIME)  # the first event's '{'
    while True:
        start = text.rfind(_TIME, gap, pos)
        m = _DECISION.match(text, start + len(_TIME), le) if start >= 0 else None
        if m is None:
            return None
        r = text.find(_REQUEST_KEY, m.end(), st)
        if r < 0 or text.find(_NAME, m.end(), r) >= 0:
            return None  # no request, or what is skipped to it runs into another event
        o = r + len(_REQUEST_KEY) - 1  # the request's opening quote
        q = text.find(_NEXT_KEY, o, st)
        if q < 0 or text[q - 1] == "\\":
            q = _close(text, o, '"}}', st)
        end = _DECISION_END.match(text, q, st) if q > 0 else None
        if end is None:
            return None
        try:
            request = _loads(text[o : q + 1])
        except (ValueError, RecursionError):
            return None
        time, did, status, lane = m.groups()
        cost = end[1]
        if cost is not None:
            cost = float(cost)  # finite: at most 31 digits and an exponent of two
        if start > gap:
            gaps.append(text[gap:start])
        gap = end.end()  # after the event's '}'
        out.append(_new_tuple(Recorded, (int(time), stage, did, status, lane or None, cost, request, False, ls)))
        pos = text.find(_TEXT, gap, le)
        if pos < 0:
            break
        if pos >= st or not (text.startswith(_MARKER, pos - 8) and text[pos - 9] != "\\"):
            return None  # the text elsewhere than as the name of a decision of these events
    if gap < st:
        gaps.append(text[gap:st])
    escalated: set[Any] = set()
    for other in gaps:  # other events between and after the decisions
        if _SPAN_ID in other:
            return None
        at = other.find(_ESCALATION_NAME)
        while at >= 0:
            n = other.find(_NEXT_EVENT, at)
            event = other[at : n if n >= 0 else len(other)]
            k = event.find(_ID_KEY)
            if k < 0:
                escalated.add(None)
            else:
                value = _string(event, k + len(_ID_KEY) + len(_STRING) - 1, '"}}', len(event))
                if value is None or not event.startswith(_STRING, k + len(_ID_KEY)):
                    return None
                escalated.add(value)
            at = other.find(_ESCALATION_NAME, at + len(_ESCALATION_NAME))
    if escalated:
        out = [r._replace(escalated=r.decision_id in escalated) for r in out]
    return out


def _close(text: str, opening: int, close: str, limit: int) -> int:
    """Where the JSON string opened at ``opening`` ends (its closing quote, followed by
    ``close[1:]``), -1 if not before ``limit``: the first such quote not escaped."""
    q = text.find(close, opening + 1, limit)
    while q > 0 and text[q - 1] == "\\":
        run = q - 1
        while text[run - 1] == "\\":
            run -= 1
        if (q - run) % 2 == 0:  # an even run of backslashes: the quote is not escaped
            break
        q = text.find(close, q + 1, limit)
    return q


def _string(text: str, opening: int, close: str, limit: int) -> str | None:
    """The JSON string opened at ``opening`` and closed by a quote followed by
    ``close[1:]``; None if it is not one."""
    q = _close(text, opening, close, limit)
    if q < 0:
        return None
    value = text[opening + 1 : q]
    if "\\" not in value:
        return None if '"' in value else value
    try:
        decoded = _loads(text[opening : q + 1])
    except (ValueError, RecursionError):
        return None
    return decoded if type(decoded) is str else None


def _full_line(text: str, ls: int, le: int, path: Path, torn: bool) -> list[Recorded]:
    """A line decoded in full, as counterfactual replay always did (the same errors)."""
    line_no = text.count("\n", 0, ls) + 1
    if le - ls > MAX_FULL_LINE:
        raise TraceError(
            f"{path}: line {line_no} is {le - ls} characters; a line with route decisions that long is not one "
            f"agentlanes writes (at most {MAX_FULL_LINE} are decoded).",
            path=path,
            line=line_no,
        )
    try:
        message = _loads(text[ls:le])
    except RecursionError:
        raise TraceError(
            f"{path}: line {line_no} is nested too deeply to be OTLP/JSON.", path=path, line=line_no
        ) from None
    except ValueError:
        if torn:
            return []  # torn by a kill mid-write: everything before it is intact
        raise TraceError(f"{path}: line {line_no} is not OTLP/JSON.", path=path, line=line_no) from None
    found: list[Recorded] = []
    try:
        for rs in message["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                for span in ss["spans"]:
                    stage = next(
                        (a["value"].get("stringValue") for a in span.get("attributes", ()) if a["key"] == A.STAGE_NAME),
                        span.get("name"),
                    )
                    events = span.get("events", ())
                    escalated = {_event_attr(e, A.DECISION_ID) for e in events if e.get("name") == A.EVENT_ESCALATION}
                    for e in events:
                        if e.get("name") == A.EVENT_DECISION:
                            at = int(e.get("timeUnixNano", 0))
                            attrs = _attrs(e.get("attributes", []))
                            cost = attrs.get(A.COST_ESTIMATED)
                            found.append(
                                Recorded(
                                    at,
                                    str(stage),
                                    attrs.get(A.DECISION_ID),
                                    attrs.get(A.DECISION_STATUS, "?"),
                                    attrs.get(A.LANE) or None,
                                    float(cost) if isinstance(cost, (int, float)) else None,
                                    attrs.get(A.REQUEST, MISSING),
                                    attrs.get(A.DECISION_ID) in escalated,
                                    ls,
                                )
                            )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise TraceError(
            f"{path}: line {line_no} is not a trace line agentlanes writes ({type(exc).__name__}).",
            path=path,
            line=line_no,
        ) from None
    return found


def _event_attr(event: dict[str, Any], key: str) -> Any:
    for a in event.get("attributes", ()):
        if a["key"] == key:
            return _value(a.get("value", {}))
    return None


# ------------------------------------------------------------------------- requests


class RequestCache:
    """Recorded requests rebuilt for the router, cached by their JSON text (bounded), and
    their signal snapshots cached by the signals' text (see the module docstring)."""

    def __init__(self, build: Callable[[Any, SnapshotCache, SignalSnapshot | None], RouteRequest], limit: int = 4096):
        self._build = build
        self.snapshots = SnapshotCache()
        self.known: dict[str, tuple[RouteRequest, tuple[float, float] | None]] = {}
        """Requests already rebuilt, by their text (what :meth:`get` returns for them)."""
        self._signals: dict[str, tuple[dict[str, Any], SignalSnapshot]] = {}
        self._limit = limit

    def get(self, text: Any) -> tuple[RouteRequest, tuple[float, float] | None]:
        """The request and premium caps of a recorded request attribute.

        Raises:
            KeyError, TypeError, ValueError, IndexError, RecursionError: as decoding it
                whole and :func:`agentlanes.history._recorded_request` raise.
        """
        if type(text) is str:
            hit = self.known.get(text)
            if hit is not None:
                return hit
            got = self._split(text)
            if got is not None:
                if len(self.known) >= self._limit:
                    self.known.clear()
                self.known[text] = got
                return got
        if text is MISSING:
            raise KeyError(A.REQUEST)
        req = _loads(text)
        request = self._build(req, self.snapshots, None)
        premium = req.get("premiumRemaining")
        return request, ((float(premium[0]), float(premium[1])) if premium else None)

    def _split(self, text: str) -> tuple[RouteRequest, tuple[float, float] | None] | None:
        """The request decoded with its signals cut out and looked up by their text; None
        when that cannot be done or anything fails (the caller decodes it whole)."""
        i = text.find('"signals":{')
        j = text.rfind('},"stage":"')
        if i < 0 or j < i or text.count('"signals":') != 1:
            return None
        i += len('"signals":')
        key = text[i : j + 1]
        try:
            req = _loads(text[:i] + "null" + text[j + 1 :])
            if type(req) is not dict or req.get("signals", 0) is not None:
                return None
            cached = self._signals.get(key)
            if cached is None:
                signals = _loads(key)
                if type(signals) is not dict:
                    return None
                cached = (signals, SignalSnapshot(signals))  # a text not seen yet: no repr() key needed
                if len(self._signals) >= self._limit:
                    self._signals.clear()
                self._signals[key] = cached
            req["signals"] = cached[0]
            request = self._build(req, self.snapshots, cached[1])
            premium = req.get("premiumRemaining")
            return request, ((float(premium[0]), float(premium[1])) if premium else None)
        except Exception:  # decoded whole by the caller, which raises what decoding it raises
            return None
