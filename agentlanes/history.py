"""Recorded runs: the run index, a run's timeline, and counterfactual replay.

* :func:`list_runs`: the run index from the store.
* :func:`load_run`: a run's spans from its local trace, shaped into stages.
* :func:`counterfactual`: re-decide every recorded route decision of one or more
  traces under other documents, and report what would change.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentlanes import attributes as A
from agentlanes.decision import RouteRequest, neighbour_inputs_from_record
from agentlanes.errors import ConfigurationError
from agentlanes.router import Router
from agentlanes.signals import SignalSnapshot, SnapshotCache
from agentlanes.tracefile import TraceError, find_trace, read_trace

_loads: Callable[[str], Any]
try:  # optional accelerator (agentlanes[fast]): same results, faster trace reading
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - exercised where orjson is not installed
    _loads = json.loads

__all__ = ["Change", "CounterfactualReport", "counterfactual", "find_trace", "list_runs", "load_run", "render_timeline"]


async def list_runs(data_dir: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """The run index of a data directory (oldest first), each entry with its receipt
    count read from the ledger (see :func:`agentlanes._runindex.with_ledger_counts`).

    With ``repair``, runs whose process died first are marked ``abandoned`` (see
    :func:`agentlanes._runindex.repair`); the entries marked carry ``"repaired": True``.
    Without it, a data directory this process cannot write (read-only media, another
    user's) is read without writing anything.
    """
    import os

    from agentlanes import _runindex
    from agentlanes.stores import open_store

    if not os.environ.get("AGENTLANES_STORE"):
        db = data_dir / "agentlanes.db"
        if not db.is_file():
            return []
        if not (os.access(db, os.W_OK) and os.access(data_dir, os.W_OK)):
            if repair:
                raise ConfigurationError(
                    f"Cannot mark abandoned runs in {db}: it is not writable here (read-only media, or another "
                    "user's data directory); run `agentlanes runs --repair` as its owner."
                )
            from agentlanes.stores.readonly import read_ledger

            snapshot = read_ledger(db)
            return _runindex.with_ledger_counts(snapshot.runs, snapshot.receipts)
    store = open_store(None, data_dir)
    try:
        marked = {e["runId"] for e in await _runindex.repair(store)} if repair else set()
        runs = _runindex.with_ledger_counts(await store.runs(), await store.receipts())
    finally:
        await store.aclose()
    for r in runs:
        if r.get("runId") in marked:
            r["repaired"] = True
    return runs


def load_run(path: Path) -> dict[str, Any]:
    """A run's spans, shaped: the run span, and each top-level stage with its children."""
    spans = list(read_trace(path))
    run = next((s for s in spans if A.RUN_ID in s["attributes"] and s["parentSpanId"] is None), None)
    children: dict[str | None, list[dict[str, Any]]] = {}
    for s in spans:
        children.setdefault(s["parentSpanId"], []).append(s)
    for items in children.values():
        items.sort(key=lambda s: s["start"])
    return {"run": run, "spans": spans, "children": children}


def render_timeline(path: Path) -> str:
    """A run drawn as a timeline for the terminal."""
    shaped = load_run(path)
    run, children = shaped["run"], shaped["children"]
    spans = shaped["spans"]
    if not spans:
        return f"{path}: no finished spans yet."
    t0 = min(s["start"] for s in spans)
    t1 = max(s["end"] for s in spans)
    total = max(t1 - t0, 1)
    width = 40
    lines = []
    if run is not None:
        a = run["attributes"]
        lines.append(
            f"run {a.get(A.RUN_ID)}  {a.get(A.TASK_CLASS)} / {a.get(A.RISK_CLASS)}  "
            f"status {a.get(A.RUN_STATUS, 'running?')}  cost {a.get(A.COST_ACTUAL, 0):.6f}  "
            f"{(t1 - t0) / 1e6:.1f} ms"
        )
        roots = children.get(run["spanId"], [])
    else:
        lines.append(f"{path}: run span not written yet (the run was cut short); stages so far:")
        ids = {s["spanId"] for s in spans}
        roots = [s for s in spans if s["parentSpanId"] not in ids or s["parentSpanId"] is None]

    def bar(s: dict[str, Any]) -> str:
        start = int((s["start"] - t0) / total * width)
        length = max(1, int((s["end"] - s["start"]) / total * width))
        return " " * start + "█" * min(length, width - start)

    def walk(s: dict[str, Any], depth: int) -> None:
        a = s["attributes"]
        label = s["name"].replace("agentlanes.stage ", "")
        info = []
        if A.LANE in a:
            info.append(f"lane {a[A.LANE]}")
        if s["name"].startswith("agentlanes.stage"):
            info.append(
                f"{a.get(A.STAGE_STATUS, '?')}, {a.get(A.STAGE_ATTEMPTS, 0)} attempt(s), "
                f"cost {a.get(A.COST_ACTUAL, 0):.6f}"
            )
        for e in s["events"]:
            ea = e["attributes"]
            if e["name"] == A.EVENT_ESCALATION:
                info.append(
                    f"ESCALATED {ea.get(A.FROM_LANE)}→{ea.get(A.TO_LANE)} ({ea.get(A.ESCALATION_REASON)}), "
                    f"receipt {ea.get(A.RECEIPT_ID)}"
                )
            if e["name"] == A.EVENT_EVALUATION_RESULT:
                info.append(f"verifier {ea.get(A.GEN_AI_EVALUATION_NAME)}: {ea.get(A.GEN_AI_EVALUATION_SCORE_LABEL)}")
        ms = (s["end"] - s["start"]) / 1e6
        lines.append(
            f"{'  ' * depth}{label[: 34 - 2 * depth]:<{34 - 2 * depth}} {bar(s):<{width}} {ms:8.1f} ms  "
            + "; ".join(info)
        )
        for c in children.get(s["spanId"], []):
            walk(c, depth + 1)

    for s in roots:
        if s["name"] != "agentlanes.run.inputs":  # the replay marker: nothing to draw
            walk(s, 0)
    return "\n".join(lines)


@dataclass(frozen=True)
class Change:
    """One recorded decision re-decided under new documents."""

    run_id: str
    stage: str
    recorded_lane: str | None
    recorded_status: str
    new_lane: str | None
    new_status: str
    new_reason: str
    recorded_cost: float | None
    new_cost: float | None
    escalated: bool


@dataclass
class CounterfactualReport:
    """What a new policy would have done to recorded runs."""

    decisions: int = 0
    runs: int = 0
    changes: list[Change] = field(default_factory=list)
    recorded_cost: float = 0.0
    new_cost: float = 0.0

    @property
    def lane_changes(self) -> list[Change]:
        return [c for c in self.changes if c.new_lane != c.recorded_lane and c.new_lane is not None]

    @property
    def now_blocked(self) -> list[Change]:
        return [c for c in self.changes if c.new_lane is None and c.recorded_lane is not None]

    @property
    def escalations_lost(self) -> list[Change]:
        return [c for c in self.changes if c.escalated and c.new_lane != c.recorded_lane]

    def to_json(self) -> dict[str, Any]:
        def row(c: Change) -> dict[str, Any]:
            return {
                "runId": c.run_id,
                "stage": c.stage,
                "recorded": {"lane": c.recorded_lane, "status": c.recorded_status, "estimatedCost": c.recorded_cost},
                "new": {
                    "lane": c.new_lane,
                    "status": c.new_status,
                    "reason": c.new_reason,
                    "estimatedCost": c.new_cost,
                },
                "escalated": c.escalated,
            }

        return {
            "runs": self.runs,
            "decisions": self.decisions,
            "laneChanges": [row(c) for c in self.lane_changes],
            "nowDeferredOrDenied": [row(c) for c in self.now_blocked],
            "escalationsNoLongerAllowed": [row(c) for c in self.escalations_lost],
            "cost": {
                "recorded": round(self.recorded_cost, 6),
                "new": round(self.new_cost, 6),
                "difference": round(self.new_cost - self.recorded_cost, 6),
            },
        }

    def table(self) -> str:
        out = [f"{self.decisions} recorded decision(s) in {self.runs} run(s) re-decided"]
        for title, rows in (
            ("lanes that change", self.lane_changes),
            ("now deferred or denied", self.now_blocked),
            ("escalations no longer allowed", self.escalations_lost),
        ):
            out.append(f"\n{title}: {len(rows)}")
            for c in rows:
                out.append(
                    f"  {c.run_id:<26} {c.stage:<16} {c.recorded_lane or '-':>9} → {c.new_lane or '-':<9} "
                    f"{c.new_status:<10} {c.new_reason}"
                )
        diff = self.new_cost - self.recorded_cost
        out.append(
            f"\nestimated cost: recorded {self.recorded_cost:.6f}, new {self.new_cost:.6f} "
            f"({'+' if diff >= 0 else ''}{diff:.6f})"
        )
        return "\n".join(out)


def counterfactual(paths: Sequence[Path], router: Router) -> CounterfactualReport:
    """Re-decide every recorded decision of ``paths`` with ``router``'s documents.

    The traces are read by :mod:`agentlanes._counterfactual`, which decodes only the
    fields a decision is decided again from (and a line in full when it is not in the
    shape agentlanes writes); every decision is decided again by ``router``.

    Raises:
        TraceError: a trace cannot be read, or a line or a recorded request in it is not
            what agentlanes writes.
    """
    from agentlanes._counterfactual import RequestCache, read_decisions

    report = CounterfactualReport()
    requests = RequestCache(_recorded_request)
    known = requests.known
    decide = router.decide
    runs: set[str] = set()
    decisions = 0
    recorded_total = new_total = 0.0
    for path in paths:
        run_id = path.name.split(".")[0]
        recorded, _, text = read_decisions(path)
        if recorded:
            runs.add(run_id)
        for _, stage, _id, status, lane, cost, raw, escalated, offset in recorded:
            built = known.get(raw) if type(raw) is str else None
            if built is None:
                try:
                    built = requests.get(raw)
                except (KeyError, TypeError, ValueError, IndexError, RecursionError) as exc:
                    line = text.count("\n", 0, offset) + 1
                    raise TraceError(
                        f"{path}: line {line}: a recorded decision's inputs are not what agentlanes writes "
                        f"({type(exc).__name__}).",
                        path=path,
                        line=line,
                    ) from None
            new_status: str
            try:
                new = decide(built[0], premium_remaining=built[1])
                new_lane, new_status, new_reason, new_cost = new.lane, new.status, new.reason, new.estimated_cost
            except ConfigurationError as exc:
                new_lane, new_status, new_reason, new_cost = None, "error", str(exc), None
            decisions += 1
            recorded_total += cost or 0.0
            new_total += new_cost or 0.0
            if new_lane != lane or new_status != status or new_cost != cost:
                report.changes.append(
                    Change(run_id, stage, lane, status, new_lane, new_status, new_reason, cost, new_cost, escalated)
                )
    report.decisions = decisions
    report.recorded_cost = recorded_total
    report.new_cost = new_total
    report.runs = len(runs)
    return report


def _recorded_request(req: Any, snapshots: SnapshotCache, snapshot: SignalSnapshot | None = None) -> RouteRequest:
    """A recorded decision's request, rebuilt without re-validating what agentlanes
    wrote (the fast path counterfactual replay lives on), after cheap type checks that
    keep a hostile trace from reaching the router with values of the wrong kind.
    ``snapshot``, when given, is the snapshot of ``req["signals"]`` (already built)."""
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
        signals=snapshots.get(req["signals"]) if snapshot is None else snapshot,
        **neighbour_inputs_from_record(req.get("neighbourInputs")),
    )


def run_evidence(path: Path, router: Router, fmt: str, *, task_classes: dict[str, str] | None = None) -> Iterable[str]:
    """A recorded run's evidence for neighbours (CONTRACT D4) as JSON lines: every
    recorded decision is decided again from its recorded inputs (its id must come out
    the same: the documents are the run's), with its stage's context (verifiers, the
    escalation receipt naming it, the prompt digest, an approval) read from the record.

    Raises:
        ConfigurationError: the run was decided under other documents, or ``fmt`` or a
            task class cannot be written (as :func:`agentlanes.evidence.evidence_lines`).
        TraceError: the trace is not one agentlanes wrote.
    """
    from datetime import UTC, datetime

    from agentlanes.evidence import StageEvidence, evidence_lines
    from agentlanes.tracefile import load_record

    record = load_record(path)
    snapshots = SnapshotCache()
    records = []
    for stage in record.stages.values():
        steps = stage.steps
        for i, step in enumerate(steps):
            if step.kind != "decision":
                continue
            req = step.data.get("request")
            try:
                request = _recorded_request(req, snapshots)
                premium = req.get("premiumRemaining") if isinstance(req, dict) else None
                premium_pair = (float(premium[0]), float(premium[1])) if premium else None
            except (KeyError, TypeError, ValueError, IndexError, RecursionError) as exc:
                raise TraceError(
                    f"{path}: a recorded decision's inputs are not what agentlanes writes ({type(exc).__name__}).",
                    path=path,
                ) from None
            decision = router.decide(request, premium_remaining=premium_pair)
            if decision.decision_id != step.data.get("id"):
                raise ConfigurationError(
                    f"{path}: the decision of step {step.step} comes out differently under these documents; pass the "
                    "policy, optimizer and price catalog the run used (--policy, --optimizer, --price-catalog)."
                )
            later = steps[i + 1 :]
            receipt = next(
                (s for s in later if s.kind == "escalation" and s.data.get("decision") == step.data.get("id")), None
            )
            call = next((s for s in later if s.kind == "call"), None)
            approval = next((s for s in later if s.kind == "approval"), None)
            verification = request.stage == "verification"
            issued = datetime.fromtimestamp(int(step.data.get("time") or 0) / 1e9, UTC)
            context = StageEvidence(
                run_id=record.run_id,
                issued_at=issued.isoformat().replace("+00:00", "Z"),
                deterministic_verifiers=verification and request.deterministic,
                model_judge=verification and not request.deterministic,
                escalation_receipt_id=receipt.data.get("receipt") if receipt is not None else None,
                escalation_receipt_digest=receipt.data.get("digest") if receipt is not None else None,
                prompt_digest=call.data.get("prompt") if call is not None else None,
                approval=None if approval is None else ("granted" if approval.data.get("approved") else "denied"),
            )
            records.append((step.step, decision, context))
    records.sort(key=lambda r: r[0])
    return evidence_lines(((d, c) for _, d, c in records), fmt, task_classes=task_classes)
