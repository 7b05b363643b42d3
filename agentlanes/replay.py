"""Exact replay: run the code that produced a run again, with every effect served from
the run's record, and stop at the first difference.

Replay is one effects implementation plus one processor:

* :class:`ReplayEffects` serves what the world gave the run: each decision's signals
  and budget headroom, model outputs (after comparing the lane, model and prompt
  digest), verifier results (after comparing what the verifier checks), tool results,
  approvals, budget refusals, receipt times; it sleeps for no backoff;
* :class:`ReplayChecker` compares everything the run does with what the record claims:
  each decision's id, lane, status, reason, cost and candidate set; each call's lane,
  model, reservation and cost; each escalation's lanes, reason, decision and receipt
  digest; each stage's status, attempts, lane, cost, output and error; the run's
  outcome, cost, output and step count.

**A trace is data.** The code to replay is named by the caller, never by the trace:
``entry`` (``async def main(lanes) -> object``, called with the replay's
:class:`~agentlanes.Lanes`), or a declared chain; the bundled chains replay with no
name. Nothing a trace names is imported, called, opened or written: bodies are looked
up only inside the content store, by digests of the exact form, and re-hashed before
they are served; recorded tools are served, not run (``live_tools=True`` runs them, in a
scratch copy of the workspace).

The first difference raises :class:`~agentlanes.errors.ReplayDivergence` naming the
step, what the record holds and what the code did. A run cut short by a kill (no run
span, and the run index does not say it finished) replays up to where its record ends.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentlanes import attributes as A
from agentlanes.approval import Approval, ApprovalRequest
from agentlanes.budget import Refusal, Reservation, to_micro
from agentlanes.content import ContentError, ContentHasher, ContentStore
from agentlanes.decision import RouteDecision, neighbour_inputs_from_record
from agentlanes.effects import Call, Effects, RouteInputs
from agentlanes.errors import ConfigurationError, ReplayDivergence, RunError
from agentlanes.events import (
    BudgetRefused,
    CallEnded,
    Decided,
    Escalated,
    RunEnded,
    StageEnded,
    ToolEnded,
)
from agentlanes.models.base import (
    Model,
    ModelResponse,
    ModelSettings,
    ProviderError,
    TextDelta,
    ToolCallDelta,
    Usage,
    response_from_body,
)
from agentlanes.policy import PolicyBundle, canonical_json
from agentlanes.receipts import Receipt
from agentlanes.result import RunState, StageRecord
from agentlanes.signals import SignalSnapshot, SnapshotCache
from agentlanes.tracefile import RecordedRun, RecordedStage, RecordedStep, TraceError, find_trace, load_record
from agentlanes.verifiers import Verifier, VerifierResult, VerifyContext

__all__ = [
    "BUNDLED_CHAINS",
    "RecordedRun",
    "ReplayChecker",
    "ReplayEffects",
    "ReplayReport",
    "Step",
    "load_record",
    "replay",
    "replay_run",
    "resolve_entry",
]

Entry = Callable[[Any], Awaitable[object]]
Step = RecordedStep  # the name earlier versions exported


def _demo_chain() -> Any:
    from agentlanes.demo import demo_chain

    return demo_chain()


BUNDLED_CHAINS: dict[str, Callable[[], Any]] = {"agentlanes.demo:demo_chain": _demo_chain}
"""Chains agentlanes ships, by the name their runs record: these replay with no
``--chain`` (the name is looked up here, never imported)."""


@dataclass(frozen=True)
class ReplayReport:
    """A replay that matched its record."""

    run_id: str
    steps: int
    complete: bool
    """False when the run never finished and the replay stopped where its record ends."""


class _RecordEnded(BaseException):
    """The record of a run that never finished ends here (a BaseException, so that the
    replayed code's own ``except Exception`` cannot swallow it)."""


class _ReplayedError(RunError):
    """An error the recorded run met (a tool's), raised again with its recorded type
    name (``recorded_type``), which is what the record compares."""

    def __init__(self, recorded_type: str, what: str) -> None:
        super().__init__(f"replayed failure: {what} raised {recorded_type} in the recorded run")
        self.recorded_type = recorded_type


class _RecordedModel(Model):
    """A model the record names: every request is served by the replay's effects."""

    def __init__(self, name: str, provider: str) -> None:
        self.name = name
        self.provider = provider

    async def request(self, messages: Any, settings: ModelSettings) -> ModelResponse:  # pragma: no cover
        raise AssertionError("replayed models are served by ReplayEffects")


def _words(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, float):
        return f"{value:.6f}".rstrip("0").rstrip(".")
    return str(value)


class _State:
    """What the effects and the checker share: the record, what was served, the first
    divergence."""

    def __init__(self, record: RecordedRun, content: ContentStore, hasher: ContentHasher, live_tools: bool) -> None:
        self.record = record
        self.content = content
        self.hasher = hasher
        self.live_tools = live_tools
        self.used: set[int] = set()  # recorded step numbers served or matched
        self.decisions: dict[str, RecordedStep] = {}  # stage key -> decision served, awaiting its event
        self.calls: dict[tuple[str, int], RecordedStep] = {}  # (stage key, replayed step) -> recorded call
        self.receipts: dict[str, RecordedStep] = {}  # stage key -> escalation served, awaiting its event
        self.tools: dict[str, RecordedStep] = {}  # stage key -> tool served, awaiting its event
        self.moved: tuple[str, str] | None = None
        """With live tools: (the scratch workspace, the recorded one), for comparing prompts."""
        self.divergence: ReplayDivergence | None = None
        self.run_started = False
        self.snapshots = SnapshotCache()
        starts = [s.start for s in record.stages.values()]
        self.clock = min(starts) if starts else 0
        """The recorded time of the latest step served: the replay's clock."""

    # -- failing

    def diverge(
        self, step: RecordedStep | None, what: str, expected: Any, actual: Any, *, at: int | None = None
    ) -> ReplayDivergence:
        """Record (the first) divergence and return it to raise. ``step`` is the recorded
        step it concerns; without one, ``at`` is where in the record the code departed."""
        if self.divergence is None:
            index = step.index if step is not None else (len(self.record.steps) if at is None else at)
            where = f"Replay step {index} ({step.describe()})" if step is not None else f"Replay step {index}"
            self.divergence = ReplayDivergence(
                f"{where}: {what}: the record has {_words(expected)}, the replay produced {_words(actual)}.",
                index=index,
                expected=expected,
                actual=actual,
            )
        return self.divergence

    def check(self) -> None:
        if self.divergence is not None:
            raise self.divergence

    # -- the record, per stage

    def stage_of(self, record: StageRecord) -> RecordedStage:
        stage = self.record.stages.get(record.key)
        if stage is None:
            if not self.record.complete:
                raise _RecordEnded()
            raise self.diverge(
                None,
                f"the code ran stage {record.name!r} ({record.key}), which the record does not have",
                "no such stage",
                f"stage {record.name!r}",
            )
        return stage

    def next_step(self, record: StageRecord, kinds: tuple[str, ...], what: str) -> RecordedStep:
        """The stage's first recorded step not yet used, which must be one of ``kinds``."""
        stage = self.stage_of(record)
        for step in stage.steps:
            if step.step in self.used:
                continue
            if step.kind not in kinds:
                raise self.diverge(
                    step, f"the code did {what} where the record goes on otherwise", step.describe(), what
                )
            self.used.add(step.step)
            return step
        if not self.record.complete and not stage.complete:
            raise _RecordEnded()
        raise self.diverge(
            None,
            f"in stage {record.name!r} the code did {what}, which the record does not have",
            f"{len(stage.steps)} step(s) in that stage",
            what,
            at=stage.steps[-1].index + 1 if stage.steps else None,
        )

    def peek(self, record: StageRecord) -> RecordedStep | None:
        stage = self.stage_of(record)
        return next((s for s in stage.steps if s.step not in self.used), None)

    def body(self, step: RecordedStep, digest: Any, what: str) -> str:
        try:
            text = self.content.get_verified(digest, self.hasher)
        except ContentError as exc:
            raise self.diverge(
                step, f"its recorded {what} cannot be served: {exc}", "a body matching its digest", "an altered body"
            ) from None
        if text is None:
            raise ConfigurationError(
                f"Replay step {step.step}: the {what} it recorded ({digest}) is not in the content store "
                f"{self.content.root}; exact replay needs the data directory the run was recorded in (and "
                "Lanes(record_content=True) when it ran)."
            )
        return text

    def advance(self, step: RecordedStep) -> None:
        at = step.data.get("start")
        if isinstance(at, int) and at > self.clock:
            self.clock = at


class ReplayEffects(Effects):
    """Effects served from a record (see the module docstring)."""

    def __init__(self, state: _State) -> None:
        self._s = state

    @property
    def cancel_safe(self) -> bool:
        return True

    def now_ns(self) -> int:
        return self._s.clock

    def new_id(self, prefix: str) -> str:
        if prefix == "run":
            return self._s.record.run_id
        return f"{prefix}-{uuid.uuid4().hex[:20]}"

    async def sleep(self, seconds: float) -> None:
        self._s.check()

    async def start_run(self, run: RunState, entry: Mapping[str, Any]) -> None:
        s = self._s
        s.check()
        record = s.record
        if s.run_started:
            raise s.diverge(None, "the code opened a second run; the record holds one", record.run_id, run.run_id)
        s.run_started = True
        for what, recorded, replayed in (
            ("the run id", record.run_id, run.run_id),
            ("the task class", record.task_class, run.task_class),
            ("the risk class", record.risk_class, run.risk_class),
        ):
            if recorded and recorded != replayed:
                raise s.diverge(None, f"the run starts differently ({what})", recorded, replayed, at=0)

    async def end_run(self, run: RunState, entry: Mapping[str, Any]) -> None:
        pass

    async def route_inputs(self, run: RunState, record: StageRecord) -> RouteInputs:
        s = self._s
        s.check()
        step = s.next_step(record, ("decision",), "a route decision")
        req = step.data.get("request")
        if not isinstance(req, dict) or not isinstance(req.get("signals"), dict):
            raise TraceError(
                f"Replay step {step.step}: the decision's recorded inputs are missing or not an object.",
                path=str(s.record.run_id),
            )
        try:
            snap = s.snapshots.get(req["signals"])
            remaining = float(req["budgetRemaining"])
            premium = req.get("premiumRemaining")
            premium_pair = (float(premium[0]), float(premium[1])) if premium else None
        except (KeyError, TypeError, ValueError, IndexError, RecursionError) as exc:
            raise TraceError(
                f"Replay step {step.step}: the decision's recorded inputs are not what agentlanes writes ({exc!r}).",
                path=str(s.record.run_id),
            ) from None
        try:
            neighbours = neighbour_inputs_from_record(req.get("neighbourInputs"))
        except (ValueError, TypeError, KeyError) as exc:
            raise TraceError(
                f"Replay step {step.index}: the decision's recorded neighbour inputs are not what agentlanes writes "
                f"({type(exc).__name__}).",
                path=str(s.record.run_id),
            ) from None
        s.decisions[record.key] = step
        return RouteInputs(
            snap if isinstance(snap, SignalSnapshot) else SignalSnapshot({}),
            remaining,
            premium_pair,
            neighbours.get("findings"),
            tuple(neighbours.get("ceilings", ())),
            neighbours.get("binding"),
        )

    async def reserve(self, run: RunState, record: StageRecord, lane: str, amount: int) -> Reservation | Refusal:
        s = self._s
        s.check()
        upcoming = s.peek(record)
        if upcoming is not None and upcoming.kind == "refusal":
            s.used.add(upcoming.step)
            d = upcoming.data
            return Refusal(str(d.get("window")), run.run_id, str(d.get("reason")), to_micro(d.get("available") or 0.0))
        return Reservation(f"replay-{uuid.uuid4().hex}", lane, amount, (), 0.0)

    async def settle(self, held: Reservation, actual: int) -> int:
        return actual

    async def release(self, held: Reservation) -> None:
        pass

    def _served_call(self, call: Call) -> RecordedStep:
        """The recorded call this request must match, after comparing lane, model and prompt."""
        s = self._s
        s.check()
        step = s.next_step(call.record, ("call",), f"a model call on {call.lane}")
        d = step.data
        s.advance(step)
        if d.get("lane") != call.lane:
            raise s.diverge(step, "the call went to another lane", d.get("lane"), call.lane)
        if d.get("model") not in (None, call.model.name):
            raise s.diverge(step, "the call went to another model", d.get("model"), call.model.name)
        prompt_digest, prompt_text = call.prompt_digest, call.prompt_text
        if s.moved is not None and s.moved[0] in prompt_text:
            # live tools work in a scratch copy: the prompt names the copy where the run named the original
            prompt_text = prompt_text.replace(*s.moved)
            prompt_digest = s.hasher.digest(prompt_text)
        if d.get("prompt") != prompt_digest:
            raise s.diverge(step, "the prompt differs", *_difference(s, d.get("prompt"), prompt_text))
        s.calls[(call.record.key, call.step)] = step
        return step

    def _response(self, step: RecordedStep, call: Call) -> ModelResponse | None:
        """The recorded reply (or what of it arrived), ``None`` when nothing did."""
        d = step.data
        if not d.get("output"):
            return None
        body = self._s.body(step, d.get("output"), "model output")
        usage = d.get("usage") or (0, 0)
        try:
            return response_from_body(
                body,
                d.get("format"),
                Usage(int(usage[0]), int(usage[1]), int(d.get("cached") or 0)),
                str(d.get("response_model") or call.model.name),
                d.get("finish_reason"),
            )
        except (ValueError, TypeError, KeyError, IndexError, RecursionError):
            raise self._s.diverge(step, "its recorded reply is not a reply", "a reply", "other text") from None

    @staticmethod
    def _error(step: RecordedStep) -> ProviderError:
        d = step.data
        error = ProviderError(
            f"replayed failure: {d.get('error')}", retryable=bool(d.get("retryable")), status=d.get("status")
        )
        error.recorded_type = d.get("error") or "ProviderError"  # type: ignore[attr-defined]
        return error

    async def external(self, call: Call) -> None:
        self._served_call(call)

    async def request(self, call: Call) -> ModelResponse:
        step = self._served_call(call)
        if not step.data.get("ok"):
            raise self._error(step)
        response = self._response(step, call)
        if response is None:
            raise ConfigurationError(f"Replay step {step.index}: the call's recorded reply names no body.")
        return response

    async def stream(self, call: Call) -> AsyncIterator[Any]:
        step = self._served_call(call)
        response = self._response(step, call)
        if response is not None:
            if response.text:
                yield TextDelta(response.text)
            for index, tool_call in enumerate(response.tool_calls):
                yield ToolCallDelta(index, tool_call.id, tool_call.name, tool_call.arguments)
        if not step.data.get("ok"):
            if step.data.get("error") == "StreamClosed":
                return  # the recorded code closed the stream here
            raise self._error(step)
        if response is not None:
            yield response

    async def verify(
        self, run: RunState, record: StageRecord, verifier: Verifier, subject: Any, context: VerifyContext
    ) -> VerifierResult:
        s = self._s
        s.check()
        step = s.next_step(record, ("verify",), f"verifier {verifier.name!r}")
        d = step.data
        if d.get("name") != verifier.name:
            raise s.diverge(step, "another verifier ran", d.get("name"), verifier.name)
        recorded_identity = d.get("identity")
        if isinstance(recorded_identity, str):
            from agentlanes._engine import verifier_identity

            mine = verifier_identity(verifier, s.hasher.digest)
            if mine != recorded_identity:
                raise s.diverge(
                    step,
                    f"verifier {verifier.name!r} changed ({_identity_change(recorded_identity, mine)})",
                    "its recorded definition",
                    "another definition",
                )
        body = s.body(step, d.get("output"), "verifier result")
        summary, _, output = body.partition("\n")
        return VerifierResult(
            verifier.name,
            bool(d.get("passed")),
            str(d.get("kind")),
            summary,
            output=output,
            exit_status=d.get("exit_status"),
        )

    async def tool(self, run: RunState, record: StageRecord, name: str, fn: Callable[[Any], Any], subject: Any) -> Any:
        s = self._s
        s.check()
        if s.record.schema == "agentlanes.trace/1" and not any(x.kind == "tool" for x in s.stage_of(record).steps):
            return None  # trace/1 did not record tool results; the tool is still not run
        step = s.next_step(record, ("tool",), f"tool {name!r}")
        d = step.data
        if d.get("name") != name:
            raise s.diverge(step, "another tool ran", d.get("name"), name)
        s.tools[record.key] = step
        if s.live_tools:
            out = fn(subject)
            if inspect.isawaitable(out):
                out = await out
            return out
        if not d.get("ok"):
            raise _ReplayedError(str(d.get("error") or "Exception"), f"tool {name!r}")
        digest = d.get("output")
        try:
            text = s.content.get_verified(digest, s.hasher) if isinstance(digest, str) else None
        except ContentError as exc:
            raise s.diverge(
                step,
                f"its recorded tool result cannot be served: {exc}",
                "a body matching its digest",
                "an altered body",
            ) from None
        if text is None:
            return None  # the tool's result was not JSON: only its digest was kept
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            raise s.diverge(step, "its recorded tool result is not JSON", "JSON", "other text") from None

    async def approve(self, run: RunState, record: StageRecord, request: ApprovalRequest) -> Approval | None:
        s = self._s
        s.check()
        upcoming = s.peek(record)
        if upcoming is not None and upcoming.kind == "escalation" and s.record.schema == "agentlanes.trace/1":
            # approvals were not steps in trace/1: the escalation names the approver
            return Approval(True, str(upcoming.data.get("approver") or "replay"), "")
        step = s.next_step(record, ("approval",), "an approval")
        d = step.data
        if d.get("approver") is None and not d.get("approved"):
            return None  # no approver was configured
        return Approval(
            bool(d.get("approved")), str(d.get("approver") or ""), "", justification_digest=d.get("justification")
        )

    async def append_receipt(self, run: RunState, record: StageRecord, body: dict[str, Any]) -> Receipt:
        s = self._s
        s.check()
        step = s.next_step(record, ("escalation",), f"an escalation to {body.get('toLane')}")
        body["createdAt"] = step.data.get("created_at") or ""
        previous = run.receipts[-1] if run.receipts else None
        full = {**body, "seq": len(run.receipts), "prev": previous.digest if previous is not None else None}
        payload = canonical_json(full)
        s.receipts[record.key] = step
        digest = "sha256:" + hashlib.sha256(payload).hexdigest()
        return Receipt(run.run_id, full["seq"], digest, full["prev"], full, payload.decode("utf-8"))


def _difference(s: _State, digest: Any, text: str) -> tuple[str, str]:
    """Where two prompts part, in words: the recorded one (its body, when the content
    store has it) and the replayed one, around the first character that differs."""
    try:
        recorded = s.content.get_verified(digest, s.hasher) if isinstance(digest, str) else None
    except ContentError:
        recorded = None
    if recorded is None:
        return f"prompt {digest}", f"prompt {s.hasher.digest(text)}"
    at = next(
        (i for i, (a, b) in enumerate(zip(recorded, text, strict=False)) if a != b), min(len(recorded), len(text))
    )
    lo = max(0, at - 30)

    def window(value: str) -> str:
        part = value[lo : at + 40]
        return ("…" if lo else "") + repr(part)[1:-1] + ("…" if at + 40 < len(value) else "")

    return f"at character {at}: {window(recorded)!r}", f"{window(text)!r}"


def _identity_change(recorded: str, mine: str) -> str:
    try:
        a, b = json.loads(recorded), json.loads(mine)
    except (ValueError, RecursionError):
        return "its definition differs"
    if not isinstance(a, dict) or not isinstance(b, dict):
        return "its definition differs"
    if a.get("kind") != b.get("kind"):
        return f"it was a {a.get('kind')} verifier and is now a {b.get('kind')} verifier"
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return f"its {', '.join(changed)} differ{'s' if len(changed) == 1 else ''}"


def _micro(value: Any) -> int | None:
    try:
        return to_micro(float(value)) if value is not None else None
    except (TypeError, ValueError, ConfigurationError):
        return None


class ReplayChecker:
    """Compares each run event with the record (see the module docstring); the first
    difference is kept and raised, and every later check stands down."""

    def __init__(self, state: _State) -> None:
        self._s = state

    def on_event(self, event: Any) -> None:
        s = self._s
        if s.divergence is not None:
            return
        kind = type(event)
        if kind is Decided:
            self._decision(event.record, event.decision)
        elif kind is CallEnded:
            self._call(event.record, event.call)
        elif kind is BudgetRefused:
            pass  # served from the record: the estimate is compared with the call that follows
        elif kind is ToolEnded:
            self._tool(event.record, event.tool)
        elif kind is Escalated:
            self._escalation(event.record, event.receipt)
        elif kind is StageEnded:
            self._stage(event.record)
        elif kind is RunEnded:
            self._run(event.run)
        s.check()

    def _decision(self, record: StageRecord, decision: RouteDecision) -> None:
        s = self._s
        step = s.decisions.pop(record.key, None)
        if step is None:
            return
        d = step.data
        rejected = [f"{c.lane}: {', '.join(c.reasons)}" for c in decision.candidates if not c.feasible]
        for what, recorded, replayed in (
            ("the lane", d.get("lane"), decision.lane),
            ("the status", d.get("status"), decision.status),
            ("the reason", d.get("reason"), decision.reason),
            ("the estimated cost", _micro(d.get("cost")), _micro(decision.estimated_cost)),
            ("the rejected candidates", d.get("rejected"), rejected),
        ):
            if recorded != replayed:
                raise s.diverge(step, f"the decision differs ({what})", recorded, replayed)
        if d.get("id") != decision.decision_id:
            req = d.get("request") or {}
            actual = decision.request
            changed = [
                name
                for name, old, new in (
                    ("taskClass", req.get("taskClass"), actual.task_class),
                    ("stage", req.get("stage"), actual.stage),
                    ("riskClass", req.get("riskClass"), actual.risk_class),
                    ("escalationReason", req.get("escalationReason"), actual.escalation_reason),
                    ("requestedLane", req.get("requestedLane"), actual.requested_lane),
                    ("deterministic", req.get("deterministic"), actual.deterministic),
                    ("excludedLanes", req.get("excludedLanes"), [list(x) for x in actual.excluded_lanes]),
                )
                if old != new
            ] or ["the documents (policy, optimizer or catalog)"]
            raise s.diverge(
                step,
                f"the decision differs (changed: {', '.join(changed)})",
                f"{d.get('status')} on {d.get('lane')}",
                f"{decision.status} on {decision.lane}",
            )

    def _call(self, record: StageRecord, call: Any) -> None:
        s = self._s
        step = s.calls.pop((record.key, call.step), None)
        if step is None:
            return
        d = step.data
        for what, recorded, replayed in (
            ("the reservation (its estimate: prompt length and max_tokens)", _micro(d.get("reserved")), call.reserved),
            ("the cost charged", _micro(d.get("charged")), call.charged),
            ("max_tokens", d.get("max_tokens"), call.max_tokens),
            ("the attempt", d.get("attempt"), call.attempt),
        ):
            if recorded is not None and recorded != replayed:
                raise s.diverge(step, f"the call differs ({what})", recorded, replayed)
        if bool(d.get("ok")) != call.ok:
            raise s.diverge(
                step,
                "the call's outcome differs",
                "ok" if d.get("ok") else d.get("error"),
                "ok" if call.ok else call.error,
            )

    def _tool(self, record: StageRecord, tool: Any) -> None:
        s = self._s
        step = s.tools.pop(record.key, None)
        if step is None:
            return
        d = step.data
        if bool(d.get("ok")) != tool.ok or (d.get("error") or None) != tool.error:
            raise s.diverge(step, "the tool's outcome differs", d.get("error") or "ok", tool.error or "ok")
        if d.get("output") != tool.output_digest:
            raise s.diverge(
                step, "the tool's result differs", f"result {d.get('output')}", f"result {tool.output_digest}"
            )

    def _escalation(self, record: StageRecord, receipt: Receipt) -> None:
        s = self._s
        step = s.receipts.pop(record.key, None)
        if step is None:
            return
        d, body = step.data, receipt.body
        for what, recorded, replayed in (
            ("the lane escalated from", d.get("from"), body.get("fromLane")),
            ("the lane escalated to", d.get("to"), body.get("toLane")),
            ("the reason", d.get("reason"), body.get("reason")),
            ("the decision", d.get("decision"), body.get("decisionId")),
        ):
            if recorded != replayed:
                raise s.diverge(step, f"the escalation differs ({what})", recorded, replayed)
        if d.get("created_at") and d.get("digest") != receipt.digest:
            raise s.diverge(
                step,
                "the escalation receipt differs (its evidence, approver or place in the chain)",
                f"receipt {d.get('digest')}",
                f"receipt {receipt.digest}",
            )

    def _stage(self, record: StageRecord) -> None:
        s = self._s
        stage = s.record.stages.get(record.key)
        if stage is None:
            return  # route_inputs reported it already (or the record ended)
        a = stage.attributes
        first = stage.steps[0] if stage.steps else None
        for what, recorded, replayed in (
            ("status", a.get(A.STAGE_STATUS), record.status),
            ("error", a.get(A.ERROR_TYPE), record.error),
            ("attempts", a.get(A.STAGE_ATTEMPTS), record.attempts),
            ("lane", a.get(A.LANE) if A.LANE in a else None, record.lane if A.LANE in a else None),
            ("cost", _micro(a.get(A.COST_ACTUAL)), record.cost),
            ("output", a.get(A.OUTPUT_DIGEST), record.output_digest),
        ):
            if recorded != replayed:
                raise s.diverge(first, f"stage {record.name!r} ends differently ({what})", recorded, replayed)
        prefix = record.key + "/"
        left = sorted(
            (
                step
                for key, inner in s.record.stages.items()
                if key == record.key or key.startswith(prefix)
                for step in inner.steps
                if step.step not in s.used
            ),
            key=lambda step: step.index,
        )
        if left:
            raise s.diverge(
                left[0],
                f"stage {record.name!r} ended, but the record goes on in it",
                left[0].describe(),
                "the stage's end",
            )

    def _run(self, run: RunState) -> None:
        s = self._s
        record = s.record
        left = [step for step in record.steps if step.step not in s.used]
        if left and record.complete:
            raise s.diverge(left[0], "the run ended, but the record goes on", left[0].describe(), "the run's end")
        if not record.complete:
            return
        a = record.attributes
        for what, recorded, replayed in (
            ("status", a.get(A.RUN_STATUS), run.status),
            ("error", a.get(A.ERROR_TYPE), run.error),
            ("cost", _micro(a.get(A.COST_ACTUAL)), run.cost_micro),
            ("output", a.get(A.RUN_OUTPUT_DIGEST), run.output_digest if A.RUN_OUTPUT_DIGEST in a else None),
            ("steps", record.recorded_steps, run.steps if record.recorded_steps is not None else None),
        ):
            if recorded != replayed:
                raise s.diverge(None, f"the run ends differently ({what})", recorded, replayed)


# --------------------------------------------------------------------------- drivers


def resolve_entry(ref: str, *, what: str = "entry") -> Callable[..., Any]:
    """Import ``module:attr`` or ``path/to/file.py:attr``, named by the user (never by
    a trace). The current directory is importable, as ``python -m`` would make it."""
    target, sep, attr = ref.rpartition(":")
    if not sep or not target or not attr.isidentifier():
        raise ConfigurationError(
            f"--{what} {ref!r} must look like 'package.module:function' or 'path/to/file.py:function'."
        )
    import importlib
    import importlib.util

    try:
        if target.endswith(".py"):
            path = Path(target).resolve()
            if not path.is_file():
                raise ConfigurationError(f"--{what} {ref!r}: no file {path}.")
            spec = importlib.util.spec_from_file_location(f"agentlanes_replay_{path.stem}", path)
            if spec is None or spec.loader is None:
                raise ConfigurationError(f"--{what} {ref!r}: {path} cannot be imported.")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            cwd = os.getcwd()
            if cwd not in sys.path:
                sys.path.insert(0, cwd)
            module = importlib.import_module(target)
    except ConfigurationError:
        raise
    except Exception as exc:  # the user's module failed to import: say so, no traceback
        raise ConfigurationError(f"--{what} {ref!r} cannot be imported: {type(exc).__name__}: {exc}.") from exc
    obj = getattr(module, attr, None)
    if obj is None:
        raise ConfigurationError(f"--{what} {ref!r}: module {target!r} has no {attr!r}.")
    return obj  # type: ignore[no-any-return]


def _index_entry(data_dir: Path, run_id: str) -> dict[str, Any] | None:
    """The run's entry in the data directory's run index, read without writing."""
    db = data_dir / "agentlanes.db"
    if not db.is_file():
        return None
    for mode in ("ro", "ro&immutable=1"):
        try:
            conn = sqlite3.connect(f"file:{db}?mode={mode}", uri=True, timeout=2)
        except sqlite3.Error:
            continue
        try:
            conn.execute("PRAGMA trusted_schema = OFF")
            row = conn.execute("SELECT entry FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            entry = json.loads(row[0]) if row and isinstance(row[0], str) else None
            return entry if isinstance(entry, dict) else None
        except (sqlite3.Error, ValueError, RecursionError):
            continue
        finally:
            conn.close()
    return None


def _recorded_models(record: RecordedRun) -> dict[str, list[Model]]:
    models: dict[str, list[Model]] = {}
    seen: set[tuple[str, str]] = set()
    for step in record.steps:
        if step.kind != "call":
            continue
        lane, name = step.data.get("lane"), step.data.get("model")
        if isinstance(lane, str) and isinstance(name, str) and (lane, name) not in seen:
            seen.add((lane, name))
            models.setdefault(lane, []).append(_RecordedModel(name, str(step.data.get("provider") or "replay")))
    from agentlanes.lanes import LANES

    for lane in LANES:
        if lane != "no-model" and lane not in models:
            models[str(lane)] = [_RecordedModel(f"replay:{lane}", "replay")]
    return models


def _preflight(record: RecordedRun, path: Path, index: dict[str, Any] | None) -> None:
    """Refuse a record whose own accounts do not add up, before running anything."""
    numbers = [s.step for s in record.steps]
    duplicates = sorted({n for n in numbers if numbers.count(n) > 1})
    if duplicates:
        raise ReplayDivergence(
            f"{path}: step {duplicates[0]} appears more than once in the trace (lines were duplicated).",
            index=duplicates[0],
            expected="each step once",
            actual="a repeated step",
        )
    finished = index is not None and index.get("status") in ("succeeded", "failed", "cancelled")
    if not record.complete and finished:
        assert index is not None
        raise ReplayDivergence(
            f"{path}: the run index says run {record.run_id} finished ({index.get('status')}, "
            f"{index.get('steps', '?')} step(s)), but its trace has no run span and {len(record.steps)} step(s): "
            "the trace was cut or lines were removed.",
            index=len(record.steps),
            expected=f"{index.get('steps', '?')} step(s) and the run span",
            actual=f"{len(record.steps)} step(s), no run span",
        )
    expected_steps = record.recorded_steps
    if expected_steps is None and finished and isinstance(index, dict) and isinstance(index.get("steps"), int):
        expected_steps = index["steps"] if index["steps"] > 0 else None
    if record.complete and expected_steps is not None and expected_steps != len(record.steps):
        gaps = record.gaps()
        raise ReplayDivergence(
            f"{path}: the run recorded {expected_steps} step(s), but its trace holds {len(record.steps)}"
            + (f" (step {gaps[0]} is missing)" if gaps else "")
            + ": lines were removed or added.",
            index=gaps[0] if gaps else len(record.steps),
            expected=f"{expected_steps} step(s)",
            actual=f"{len(record.steps)} step(s)",
        )


async def replay(
    trace_or_run_id: str | Path,
    *,
    entry: Entry | str | None = None,
    chain: Any = None,
    data_dir: str | Path | None = None,
    bundle: PolicyBundle | None = None,
    live_tools: bool = False,
) -> ReplayReport:
    """Replay a recorded run exactly (see the module docstring).

    Args:
        trace_or_run_id: the run's id (its trace is looked up in the data directory)
            or its trace file.
        entry: the code that made the run: ``async def main(lanes) -> object``, which
            the recorded program called with its :class:`~agentlanes.Lanes` (or its
            ``module:function``). It is called again with the replay's ``Lanes``.
        chain: instead of ``entry``, a declared chain (a :class:`~agentlanes.Chain`, or
            a ``module:attr`` naming a chain or a function returning one). The
            bundled chains need neither.
        data_dir: the data directory the run was recorded in (content bodies, the
            content key, the run index); nothing is written to it.
        bundle: the routing documents the run used (default: the bundled ones).
        live_tools: run recorded tools for real (in a scratch copy of the run's
            ``workspace`` variable) instead of serving their results.

    Raises:
        ReplayDivergence: at the first step where the code does something else.
        ConfigurationError: the input cannot be replayed (no such run, a trace that is
            not one, bodies missing, no code named).
    """
    from agentlanes.chain import Chain
    from agentlanes.runtime import Lanes, resolve_data_dir
    from agentlanes.stores import MemoryStore

    home = resolve_data_dir(data_dir)
    path = find_trace(home, trace_or_run_id)
    record = load_record(path)
    index = _index_entry(home, record.run_id)
    _preflight(record, path, index)
    hasher = ContentHasher.existing(home / "keys" / "content.key")
    content = ContentStore(home / "content", create=False)

    target: Any
    if entry is not None and chain is not None:
        raise ConfigurationError("Name the code to replay once: an entry function or a chain, not both.")
    if entry is not None:
        target = resolve_entry(entry) if isinstance(entry, str) else entry
        if not callable(target):
            raise ConfigurationError(f"The entry {target!r} is not a function (async def main(lanes) -> object).")
    else:
        if chain is None:
            if record.chain in BUNDLED_CHAINS:
                chain = BUNDLED_CHAINS[record.chain]()
            else:
                what = f"the chain {record.chain!r}" if record.chain else "a run.stage loop"
                raise ConfigurationError(
                    f"{path}: the run was recorded by {what}, and a trace never names the code to run: pass the "
                    "code that produced it, --entry MODULE:FUNCTION (async def main(lanes)) or --chain MODULE:ATTR."
                )
        if isinstance(chain, str):
            chain = resolve_entry(chain, what="chain")
        if not isinstance(chain, Chain) and callable(chain):
            made = chain
            try:
                chain = made()
            except Exception as exc:  # the user's factory: say which and how it failed
                raise ConfigurationError(
                    f"The chain {getattr(made, '__qualname__', made)!r} was called to make the chain and raised "
                    f"{type(exc).__name__}: {exc}; --chain names a Chain or a function of no arguments returning one."
                ) from None
        if not isinstance(chain, Chain):
            raise ConfigurationError(f"{chain!r} is not a Chain (nor a function returning one).")
        target = chain

    inputs: Mapping[str, Any] = {}
    if isinstance(target, Chain):
        if record.input_digest is None:
            raise ConfigurationError(f"{path}: the run recorded no inputs, so the chain cannot be run again.")
        try:
            raw = content.get_verified(record.input_digest, hasher)
        except ContentError as exc:
            raise ReplayDivergence(
                f"Replay: the run's recorded inputs cannot be served: {exc}",
                index=0,
                expected="its inputs",
                actual="an altered body",
            ) from None
        if raw is None:
            raise ConfigurationError(
                f"{path}: its inputs are not in {content.root}; replay needs the data directory it was recorded in."
            )
        loaded = json.loads(raw)
        inputs = loaded if isinstance(loaded, dict) else {}

    state = _State(record, content, hasher, live_tools)
    scratch: str | None = None
    variables = dict(inputs.get("variables") or {})
    if live_tools and isinstance(target, Chain) and "workspace" in variables:
        scratch = tempfile.mkdtemp(prefix="agentlanes-replay-")
        source = Path(str(variables["workspace"]))
        copy = Path(scratch) / "workspace"
        if source.is_dir():
            shutil.copytree(source, copy, symlinks=True)
        else:
            copy.mkdir()
        variables["workspace"] = str(copy)
        state.moved = (str(copy), str(source))
    lanes = Lanes(
        _recorded_models(record),
        bundle=bundle,
        signals={},
        store=MemoryStore(),
        data_dir=home,
        tracing=False,
        record=False,
        effects=ReplayEffects(state),
        processors=[ReplayChecker(state)],
        log=False,
        hasher=hasher,
    )
    try:
        try:
            if isinstance(target, Chain):
                await target.run(str(inputs.get("task", "")), lanes=lanes, variables=variables or None)
            else:
                await target(lanes)
        except _RecordEnded:
            return ReplayReport(record.run_id, len(state.used), False)
        except BaseException as exc:
            if state.divergence is not None:
                raise state.divergence from None
            ended = _find(exc, _RecordEnded)
            if ended is not None:
                return ReplayReport(record.run_id, len(state.used), False)
            found = _find(exc, ReplayDivergence)
            if found is not None:
                raise found from None
            if not isinstance(exc, Exception):
                raise
            recorded_error = record.attributes.get(A.ERROR_TYPE)
            if not (record.complete and recorded_error == (getattr(exc, "recorded_type", None) or type(exc).__name__)):
                raise ReplayDivergence(
                    f"Replay: the replayed code raised {type(exc).__name__}: {exc}; the record shows the run "
                    f"{record.attributes.get(A.RUN_STATUS, 'unfinished')}"
                    + (f" ({recorded_error})" if recorded_error else "")
                    + ".",
                    index=len(state.used),
                    expected=record.attributes.get(A.RUN_STATUS, "unfinished"),
                    actual=type(exc).__name__,
                ) from exc
        if state.divergence is not None:
            raise state.divergence
        if not state.run_started:
            raise ConfigurationError(
                f"The code named for replay never opened a run (async with lanes.run(...)); is it the code that "
                f"recorded {record.run_id}?"
            )
        return ReplayReport(record.run_id, len(state.used), record.complete)
    finally:
        await lanes.aclose()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _find(exc: BaseException, kind: type[BaseException]) -> Any:
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find(inner, kind)
            if found is not None:
                return found
    return None


async def replay_run(
    trace: Path, *, data_dir: Path, chain: Any = None, bundle: Any = None, entry: Entry | str | None = None
) -> ReplayReport:
    """:func:`replay` with a trace path (kept for existing callers)."""
    return await replay(trace, data_dir=data_dir, chain=chain, bundle=bundle, entry=entry)
