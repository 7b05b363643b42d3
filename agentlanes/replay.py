"""Exact replay: re-run a recorded chain with everything but its own code served from
the record, and stop at the first difference.

The record is the run's local trace (plus the local content store for bodies). It
holds every step in order: route decisions with the inputs they saw (signals, budget),
model calls with their prompt digests and outputs, verifier results, escalations and
approvals. Replaying re-runs the chain's code with:

* signals and budget headroom served per decision from the record, so every decision
  is reproducible and compared by its id (a digest of documents, request and signals);
* model calls served from the record (no network), after comparing the lane and the
  prompt's keyed digest;
* verifier results and approvals served from the record;
* escalations compared (from-lane, to-lane, reason, decision id).

The first mismatch raises :class:`~agentlanes.errors.ReplayDivergence` naming the step,
what the record holds and what happened. A trace cut short (a killed run: no run span)
replays up to where it ends.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentlanes import attributes as A
from agentlanes.approval import Approval
from agentlanes.content import ContentHasher, ContentStore
from agentlanes.decision import RouteDecision
from agentlanes.errors import ConfigurationError, ReplayDivergence
from agentlanes.models.base import ModelResponse, ProviderError, Usage
from agentlanes.signals import SignalSnapshot, SnapshotCache
from agentlanes.tracefile import read_trace
from agentlanes.verifiers import VerifierResult

__all__ = ["RecordedRun", "ReplayReport", "Replayer", "Step", "load_record", "replay_run"]


@dataclass(frozen=True)
class Step:
    """One recorded step: ``kind`` is ``decision``, ``call``, ``verify`` or ``escalation``."""

    index: int
    kind: str
    stage: str
    data: dict[str, Any]

    def describe(self) -> str:
        d = self.data
        if self.kind == "decision":
            return f"decision for stage {self.stage!r}: {d.get('status')} on {d.get('lane') or '-'} ({d.get('reason')})"
        if self.kind == "call":
            return f"model call on {d.get('lane')} in stage {self.stage!r} ({'ok' if d.get('ok') else d.get('error')})"
        if self.kind == "verify":
            return f"verifier {d.get('name')!r} in stage {self.stage!r}: {'pass' if d.get('passed') else 'fail'}"
        return f"escalation in stage {self.stage!r}: {d.get('from')} -> {d.get('to')} ({d.get('reason')})"


@dataclass(frozen=True)
class RecordedRun:
    """A run as its trace records it."""

    run_id: str
    complete: bool
    """False when the trace was cut short (no run span): replay stops where it ends."""
    task_class: str
    risk_class: str
    chain: str | None
    input_digest: str | None
    steps: list[Step]


def load_record(path: Path) -> RecordedRun:
    """The ordered steps of a recorded run."""
    spans = list(read_trace(path))
    run = next((s for s in spans if A.RUN_ID in s["attributes"] and s["parentSpanId"] is None), None)
    raw: list[tuple[int, str, str, dict[str, Any]]] = []
    for s in spans:
        a = s["attributes"]
        stage = a.get(A.STAGE_NAME) or a.get(A.STAGE) or s["name"]
        for e in s["events"]:
            ea = e["attributes"]
            if e["name"] == A.EVENT_DECISION and A.STEP in ea:
                raw.append(
                    (
                        ea[A.STEP],
                        "decision",
                        stage,
                        {
                            "id": ea[A.DECISION_ID],
                            "status": ea.get(A.DECISION_STATUS),
                            "lane": ea.get(A.LANE) or None,
                            "reason": ea.get(A.DECISION_REASON),
                            "request": json.loads(ea[A.REQUEST]),
                        },
                    )
                )
            elif e["name"] == A.EVENT_ESCALATION and ea.get(A.STEP):
                raw.append(
                    (
                        ea[A.STEP],
                        "escalation",
                        stage,
                        {
                            "from": ea.get(A.FROM_LANE) or None,
                            "to": ea.get(A.TO_LANE),
                            "reason": ea.get(A.ESCALATION_REASON),
                            "decision": ea.get(A.DECISION_ID),
                            "approver": ea.get(A.APPROVER) or None,
                        },
                    )
                )
            elif e["name"] == A.EVENT_EVALUATION_RESULT and A.STEP in ea:
                parent = next((p for p in spans if p["spanId"] == s["parentSpanId"]), None)
                parent_stage = parent["attributes"].get(A.STAGE_NAME, stage) if parent else stage
                raw.append(
                    (
                        ea[A.STEP],
                        "verify",
                        parent_stage,
                        {
                            "name": ea.get(A.GEN_AI_EVALUATION_NAME),
                            "passed": ea.get(A.GEN_AI_EVALUATION_SCORE_LABEL) == "pass",
                            "kind": a.get(A.VERIFIER_KIND, "command"),
                            "exit_status": ea.get(A.VERIFIER_EXIT_STATUS),
                            "output": ea.get(A.OUTPUT_DIGEST),
                        },
                    )
                )
        if a.get(A.GEN_AI_OPERATION_NAME) == A.OP_CHAT and A.STEP in a:
            parent = next((p for p in spans if p["spanId"] == s["parentSpanId"]), None)
            parent_stage = parent["attributes"].get(A.STAGE_NAME, stage) if parent else stage
            raw.append(
                (
                    a[A.STEP],
                    "call",
                    parent_stage,
                    {
                        "lane": a.get(A.LANE),
                        "model": a.get(A.GEN_AI_REQUEST_MODEL),
                        "prompt": a.get(A.PROMPT_DIGEST),
                        "ok": A.ERROR_TYPE not in a,
                        "error": a.get(A.ERROR_TYPE),
                        "retryable": a.get(A.ERROR_RETRYABLE, False),
                        "status": a.get("http.response.status_code"),
                        "output": a.get(A.OUTPUT_DIGEST),
                        "usage": (a.get(A.GEN_AI_USAGE_INPUT_TOKENS, 0), a.get(A.GEN_AI_USAGE_OUTPUT_TOKENS, 0)),
                        "response_model": a.get(A.GEN_AI_RESPONSE_MODEL) or a.get(A.GEN_AI_REQUEST_MODEL),
                    },
                )
            )
    raw.sort(key=lambda r: r[0])
    if run is None:
        # A cut trace may hold a stage's child spans without the stage span (or the
        # other way round): keep only the unbroken run of steps from the first one.
        kept = []
        for expected, item in enumerate(raw, start=1):
            if item[0] != expected:
                break
            kept.append(item)
        raw = kept
    steps = [Step(i, kind, stage, data) for i, (_, kind, stage, data) in enumerate(raw)]
    if run is not None:
        return _recorded(run["attributes"], True, steps)
    marker = next((s for s in spans if s["name"] == "agentlanes.run.inputs"), None)
    if marker is not None:
        return _recorded(marker["attributes"], False, steps)
    first = steps[0].data["request"] if steps and steps[0].kind == "decision" else {}
    return RecordedRun(
        path.name.split(".")[0], False, first.get("taskClass", ""), first.get("riskClass", ""), None, None, steps
    )


def _recorded(attrs: dict[str, Any], complete: bool, steps: list[Step]) -> RecordedRun:
    return RecordedRun(
        attrs[A.RUN_ID],
        complete,
        attrs[A.TASK_CLASS],
        attrs[A.RISK_CLASS],
        attrs.get(A.CHAIN_REF),
        attrs.get(A.RUN_INPUT_DIGEST),
        steps,
    )


class _RecordEnded(Exception):
    pass


@dataclass
class Replayer:
    """Serves a recorded run's steps, in order, and checks what the code does against them."""

    record: RecordedRun
    content: ContentStore
    cursor: int = 0
    snapshots: SnapshotCache = field(default_factory=SnapshotCache)

    def _next(self, kind: str, what: str) -> Step:
        if self.cursor >= len(self.record.steps):
            if not self.record.complete:
                raise _RecordEnded()
            raise ReplayDivergence(
                f"Replay step {self.cursor}: the code did {what}, but the record ended after "
                f"{len(self.record.steps)} step(s).",
                index=self.cursor,
                expected=None,
                actual=what,
            )
        step = self.record.steps[self.cursor]
        if step.kind != kind:
            raise ReplayDivergence(
                f"Replay step {self.cursor}: the record has a {step.describe()}, but the code did {what}.",
                index=self.cursor,
                expected=step.describe(),
                actual=what,
            )
        return step

    def _diverge(self, step: Step, expected: Any, actual: Any, what: str) -> ReplayDivergence:
        return ReplayDivergence(
            f"Replay step {step.index} ({step.describe()}): {what}; recorded {expected!r}, got {actual!r}.",
            index=step.index,
            expected=expected,
            actual=actual,
        )

    def decision_inputs(self) -> tuple[SignalSnapshot, float, tuple[float, float] | None]:
        step = self._next("decision", "a route decision")
        req = step.data["request"]
        snap = self.snapshots.get(req["signals"])
        premium = req.get("premiumRemaining")
        return snap, float(req["budgetRemaining"]), ((float(premium[0]), float(premium[1])) if premium else None)

    def check_decision(self, decision: RouteDecision) -> None:
        step = self._next("decision", f"a route decision for stage {decision.stage!r}")
        self.cursor += 1
        if step.data["id"] != decision.decision_id:
            req = step.data["request"]
            actual = decision.request
            changed = [
                name
                for name, old, new in (
                    ("taskClass", req["taskClass"], actual.task_class),
                    ("stage", req["stage"], actual.stage),
                    ("riskClass", req["riskClass"], actual.risk_class),
                    ("escalationReason", req["escalationReason"], actual.escalation_reason),
                    ("requestedLane", req["requestedLane"], actual.requested_lane),
                    ("deterministic", req["deterministic"], actual.deterministic),
                    (
                        "excludedLanes",
                        [list(x) for x in req["excludedLanes"]],
                        [list(x) for x in actual.excluded_lanes],
                    ),
                )
                if old != new
            ] or ["the documents (policy, optimizer or catalog)"]
            raise self._diverge(
                step,
                f"{step.data['status']} on {step.data['lane']}",
                f"{decision.status} on {decision.lane}",
                f"the decision differs (changed: {', '.join(changed)})",
            )

    def serve_call(self, lane: str, prompt_digest: str) -> ModelResponse:
        step = self._next("call", f"a model call on {lane}")
        self.cursor += 1
        if step.data["lane"] != lane:
            raise self._diverge(step, step.data["lane"], lane, "the call went to another lane")
        if step.data["prompt"] != prompt_digest:
            raise self._diverge(step, step.data["prompt"], prompt_digest, "the prompt differs")
        if not step.data["ok"]:
            raise ProviderError(
                f"replayed failure: {step.data['error']}",
                retryable=bool(step.data["retryable"]),
                status=step.data["status"],
            )
        text = self.content.get(step.data["output"] or "")
        if text is None:
            raise ConfigurationError(
                f"Replay step {step.index}: the output body {step.data['output']} is not in the content store "
                f"{self.content.root}; exact replay needs the data directory the run was recorded in."
            )
        usage = step.data["usage"]
        return ModelResponse(text, Usage(int(usage[0]), int(usage[1])), str(step.data["response_model"]))

    def serve_verifier(self, name: str) -> VerifierResult:
        step = self._next("verify", f"verifier {name!r}")
        self.cursor += 1
        if step.data["name"] != name:
            raise self._diverge(step, step.data["name"], name, "another verifier ran")
        body = self.content.get(step.data["output"] or "") or ""
        summary, _, output = body.partition("\n")
        return VerifierResult(
            name,
            bool(step.data["passed"]),
            str(step.data["kind"]),
            summary,
            output=output,
            exit_status=step.data["exit_status"],
        )

    def serve_approval(self) -> Approval:
        step = self._next("escalation", "an approval")
        return Approval(True, step.data["approver"] or "replay", "replayed approval")

    def check_escalation(self, from_lane: str | None, to_lane: str, reason: str, decision_id: str) -> None:
        step = self._next("escalation", f"an escalation {from_lane} -> {to_lane}")
        self.cursor += 1
        got = (from_lane, to_lane, reason, decision_id)
        want = (step.data["from"], step.data["to"], step.data["reason"], step.data["decision"])
        if got != want:
            raise self._diverge(step, want, got, "the escalation differs")

    def finish(self) -> None:
        if self.cursor < len(self.record.steps) and self.record.complete:
            step = self.record.steps[self.cursor]
            raise ReplayDivergence(
                f"Replay step {step.index}: the record goes on with a {step.describe()}, but the code finished.",
                index=step.index,
                expected=step.describe(),
                actual="the run ended",
            )


@dataclass(frozen=True)
class ReplayReport:
    """A replay that matched its record."""

    run_id: str
    steps: int
    complete: bool
    """False when the trace was cut short and the replay stopped where it ended."""


async def replay_run(trace: Path, *, data_dir: Path, chain: Any = None, bundle: Any = None) -> ReplayReport:
    """Replay a recorded chain run exactly (see the module docstring).

    Args:
        trace: the run's local trace.
        data_dir: the data directory it was recorded in (content store and key).
        chain: the :class:`~agentlanes.Chain` (or ``module:attr``) to run; default: the
            one the run recorded.
        bundle: documents to route with (default: the bundled ones).

    Raises:
        ReplayDivergence: at the first step where the code does something else.
    """
    from agentlanes.chain import Chain, resolve_ref
    from agentlanes.lanes import LANES
    from agentlanes.runtime import Lanes
    from agentlanes.stores import MemoryStore
    from agentlanes.testing import TestModel

    record = load_record(trace)
    target = chain if chain is not None else record.chain
    if target is None:
        raise ConfigurationError(f"{trace}: the run recorded no chain; pass one (--chain module:attr).")
    if isinstance(target, str):
        target = resolve_ref(target)()  # a factory such as agentlanes.demo:demo_chain
    if not isinstance(target, Chain):
        raise ConfigurationError(f"{target!r} is not a Chain.")
    content = ContentStore(data_dir / "content")
    if record.input_digest is None:
        raise ConfigurationError(f"{trace}: the run recorded no inputs; it cannot be re-run.")
    raw_inputs = content.get(record.input_digest)
    if raw_inputs is None:
        raise ConfigurationError(f"{trace}: its inputs are not in {content.root}; replay needs that data directory.")
    inputs: Mapping[str, Any] = json.loads(raw_inputs)
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        # Placeholder models: every call is served from the record before reaching them.
        models: dict[str, Any] = {str(lane): TestModel(name=f"replay:{lane}") for lane in LANES if lane != "no-model"}
        lanes = Lanes(
            models,
            bundle=bundle,
            signals={},
            store=MemoryStore(),
            data_dir=scratch,
            tracing=False,
            record_content=False,
        )
        lanes._hasher = ContentHasher(data_dir / "keys" / "content.key")  # digests comparable with the record
        replayer = Replayer(record, content)
        lanes.replay = replayer
        try:
            await target.run(inputs["task"], lanes=lanes, variables=inputs.get("variables") or None)
        except _RecordEnded:
            return ReplayReport(record.run_id, replayer.cursor, False)
        except ReplayDivergence:
            raise
        except Exception as exc:
            # the code failed where the record says it went on: that is a divergence too
            step = record.steps[replayer.cursor] if replayer.cursor < len(record.steps) else None
            if step is not None and record.complete:
                raise ReplayDivergence(
                    f"Replay step {replayer.cursor}: the record has a {step.describe()}, but the code raised "
                    f"{type(exc).__name__}: {exc}",
                    index=replayer.cursor,
                    expected=step.describe(),
                    actual=type(exc).__name__,
                ) from exc
            if record.complete:
                raise
            return ReplayReport(record.run_id, replayer.cursor, False)
        finally:
            await lanes.aclose()
        replayer.finish()
        return ReplayReport(record.run_id, replayer.cursor, record.complete)
