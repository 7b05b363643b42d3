"""Counterfactual replay as it was before the fast reader (agentlanes 1318631): every
line that mentions a route decision decoded in full. Frozen here as the oracle the fast
reader is compared with (tests/replay/test_counterfactual_reader.py); not used by the
package."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from agentlanes import attributes as A
from agentlanes.decision import RouteRequest, neighbour_inputs_from_record
from agentlanes.errors import ConfigurationError
from agentlanes.history import Change, CounterfactualReport
from agentlanes.router import Router
from agentlanes.signals import SnapshotCache
from agentlanes.tracefile import TraceError, _attrs, _value, read_lines

_loads: Callable[[str], Any]
try:
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    _loads = json.loads


def counterfactual(paths: Sequence[Path], router: Router) -> CounterfactualReport:
    report = CounterfactualReport()
    snapshots = SnapshotCache()
    runs: set[str] = set()
    for path in paths:
        for run_id, stage, attrs, escalated in _decision_events(path):
            runs.add(run_id)
            try:
                req = _loads(attrs[A.REQUEST])
                request = _recorded_request(req, snapshots)
                premium = req.get("premiumRemaining")
                premium_pair = (float(premium[0]), float(premium[1])) if premium else None
            except (KeyError, TypeError, ValueError, IndexError, RecursionError) as exc:
                raise TraceError(
                    f"{path}: a recorded decision's inputs are not what agentlanes writes ({type(exc).__name__}).",
                    path=path,
                ) from None
            new_status: str
            try:
                new = router.decide(request, premium_remaining=premium_pair)
                new_lane, new_status, new_reason, new_cost = new.lane, new.status, new.reason, new.estimated_cost
            except ConfigurationError as exc:
                new_lane, new_status, new_reason, new_cost = None, "error", str(exc), None
            recorded_lane = attrs.get(A.LANE) or None
            recorded_cost = _recorded_cost(attrs)
            report.decisions += 1
            report.recorded_cost += recorded_cost or 0.0
            report.new_cost += new_cost or 0.0
            change = Change(
                run_id,
                stage,
                recorded_lane,
                attrs.get(A.DECISION_STATUS, "?"),
                new_lane,
                new_status,
                new_reason,
                recorded_cost,
                new_cost,
                attrs.get(A.DECISION_ID) in escalated,
            )
            if (
                change.new_lane != change.recorded_lane
                or change.new_status != change.recorded_status
                or change.new_cost != change.recorded_cost
            ):
                report.changes.append(change)
    report.runs = len(runs)
    return report


def _recorded_request(req: Any, snapshots: SnapshotCache) -> RouteRequest:
    names = (req["taskClass"], req["stage"], req["riskClass"], req["budgetWindow"])
    optional = (req["requestedLane"], req["escalationReason"])
    remaining = req["budgetRemaining"]
    if (
        not all(isinstance(n, str) for n in names)
        or not all(o is None or isinstance(o, str) for o in optional)
        or not isinstance(remaining, (int, float))
        or isinstance(remaining, bool)
        or not math.isfinite(remaining)
        or not isinstance(req["deterministic"], bool)
        or not isinstance(req["signals"], dict)
    ):
        raise TypeError("a field of the wrong kind")
    return RouteRequest.trusted(
        task_class=req["taskClass"],
        stage=req["stage"],
        risk_class=req["riskClass"],
        requested_lane=req["requestedLane"],
        escalation_reason=req["escalationReason"],
        budget_window=req["budgetWindow"],
        budget_remaining=float(remaining),
        deterministic=req["deterministic"],
        excluded_lanes=tuple((str(x[0]), str(x[1])) for x in req["excludedLanes"]),
        signals=snapshots.get(req["signals"]),
        **neighbour_inputs_from_record(req.get("neighbourInputs")),
    )


def _recorded_cost(attrs: dict[str, Any]) -> float | None:
    value = attrs.get(A.COST_ESTIMATED)
    return float(value) if isinstance(value, (int, float)) else None


def _decision_events(path: Path) -> Iterable[tuple[str, str, dict[str, Any], set[str]]]:
    run_id = path.name.split(".")[0]
    lines = read_lines(path)
    torn = len(lines) - 1 if lines and lines[-1].strip() else -1
    found: list[tuple[int, str, dict[str, Any], set[str]]] = []
    for i, line in enumerate(lines):
        if A.EVENT_DECISION not in line:
            continue
        try:
            message = _loads(line)
        except RecursionError:
            raise TraceError(
                f"{path}: line {i + 1} is nested too deeply to be OTLP/JSON.", path=path, line=i + 1
            ) from None
        except ValueError:
            if i == torn:
                break
            raise TraceError(f"{path}: line {i + 1} is not OTLP/JSON.", path=path, line=i + 1) from None
        try:
            for rs in message["resourceSpans"]:
                for ss in rs["scopeSpans"]:
                    for span in ss["spans"]:
                        stage = next(
                            (
                                a["value"].get("stringValue")
                                for a in span.get("attributes", ())
                                if a["key"] == A.STAGE_NAME
                            ),
                            span.get("name"),
                        )
                        events = span.get("events", ())
                        escalated = {
                            _event_attr(e, A.DECISION_ID) for e in events if e.get("name") == A.EVENT_ESCALATION
                        }
                        for e in events:
                            if e.get("name") == A.EVENT_DECISION:
                                at = int(e.get("timeUnixNano", 0))
                                found.append((at, str(stage), _attrs(e.get("attributes", [])), escalated))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise TraceError(
                f"{path}: line {i + 1} is not a trace line agentlanes writes ({type(exc).__name__}).",
                path=path,
                line=i + 1,
            ) from None
    found.sort(key=lambda f: f[0])
    for _, stage, attrs, escalated in found:
        yield run_id, stage, attrs, escalated


def _event_attr(event: dict[str, Any], key: str) -> Any:
    for a in event.get("attributes", ()):
        if a["key"] == key:
            return _value(a.get("value", {}))
    return None
