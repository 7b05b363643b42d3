"""The stage engine: a run's stages, with no I/O of its own.

:class:`RunEngine` runs the stages of one run. Every effect (signals, budgets, model
requests, verifiers, tools, approvals, receipts, the clock) goes through its
:class:`~agentlanes.effects.Effects`; everything that happens is told, as typed events
(:mod:`agentlanes.events`), to the run's processors (spans, the local record, logs, the
observer, replay checks). Escalation is the pure :class:`~agentlanes._escalation.Escalation`
state machine, required evidence the pure rules of :mod:`agentlanes._evidence`, model
calls the layered handlers of :mod:`agentlanes._calls`.

A stage, in order: route (a decision, recorded) → a receipt when the lane is premium or
an escalation is pending (an approval first when the task class needs one) → the stage
function with a context bound to the lane → an optional tool (a ``tool-use`` sub-stage
on ``no-model``) → verifiers (a ``verification`` sub-stage on ``no-model``; a model judge
only without deterministic ones) → success, or feedback and another attempt, escalating
after repeated standard-lane failure.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from agentlanes import _evidence
from agentlanes._calls import LaneModels, RetryPolicy
from agentlanes._escalation import Escalation, Next, PendingReceipt
from agentlanes.approval import ApprovalRequest
from agentlanes.content import ContentHasher
from agentlanes.decision import RouteDecision, RouteRequest
from agentlanes.effects import Effects, iso_time
from agentlanes.errors import (
    ConfigurationError,
    Escalate,
    EscalationDenied,
    RetryStage,
    RouteDeferred,
    VerificationFailed,
)
from agentlanes.events import (
    ApprovalAnswered,
    AttemptFailed,
    Decided,
    Escalated,
    Escalating,
    EvidenceMissing,
    InputsRecorded,
    RunEnded,
    RunProcessor,
    RunStarted,
    StageEnded,
    StageStarted,
    ToolEnded,
    Verified,
    wanted,
)
from agentlanes.models.base import Message, ModelResponse, ToolCall
from agentlanes.receipts import receipt_body
from agentlanes.result import ApprovalRecord, CheckRecord, RunState, StageRecord, ToolRecord
from agentlanes.router import Router
from agentlanes.verifiers import ModelVerifier, Verifier, VerifierResult, VerifyContext, result_body

if TYPE_CHECKING:
    from agentlanes.policy import PolicyBundle

__all__ = ["EngineConfig", "RunEngine", "index_entry", "tool_name", "verifier_identity"]


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


_CEILING_REVIEW = "routing-ceiling-human-review"
_REASON_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


def _shown_reason(reason: object) -> str:
    """An escalation reason as an error may show it: a reason is a name, so a name is
    quoted; free text (which may quote a prompt or a model's output) is not repeated."""
    if isinstance(reason, str) and _REASON_NAME.fullmatch(reason):
        return repr(reason)
    if isinstance(reason, str):
        return f"of {len(reason)} character(s) that is not a reason name (free text is not repeated here)"
    return f"of type {type(reason).__name__} (a reason is one of the names below)"


T = TypeVar("T")
ContextFactory = Callable[["RunEngine", StageRecord, RouteDecision, int, Sequence[VerifierResult], "int | None"], Any]


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """What the engine needs from :class:`~agentlanes.Lanes`, fixed for its life."""

    router: Router
    retry: RetryPolicy
    call_timeout: float
    hasher: ContentHasher
    capture_content: bool
    threshold: int
    deescalate_after_plan: bool
    max_log_lines: int
    required_evidence: Mapping[str, Sequence[str]]
    human_justification: Mapping[str, bool]
    allowed_reasons: frozenset[str]
    on_budget_pressure: str
    currency: str

    @classmethod
    def from_bundle(
        cls,
        router: Router,
        bundle: PolicyBundle,
        *,
        retry: RetryPolicy,
        call_timeout: float,
        hasher: ContentHasher,
        capture_content: bool,
    ) -> EngineConfig:
        pol = bundle.policy
        return cls(
            router=router,
            retry=retry,
            call_timeout=call_timeout,
            hasher=hasher,
            capture_content=capture_content,
            threshold=pol.escalation_policy.repeated_failure_threshold,
            deescalate_after_plan=pol.escalation_policy.deescalate_after_plan,
            max_log_lines=pol.context_policy.max_log_lines_without_approval or 80,
            required_evidence={s.stage: tuple(s.required_evidence) for s in pol.chain_stages},
            human_justification={t.task_class: t.requires_human_justification for t in pol.task_classes},
            allowed_reasons=frozenset(pol.escalation_policy.allowed_reasons),
            on_budget_pressure=bundle.optimizer.budget_policy.on_budget_pressure,
            currency=bundle.optimizer.budget_policy.currency,
        )

    def check_reason(self, reason: str | None, where: str) -> None:
        """Refuse an escalation reason the policy does not allow, before anything is
        recorded (the reason text never reaches a record, a span or a log)."""
        if reason is not None and (not isinstance(reason, str) or reason not in self.allowed_reasons):
            shown = _shown_reason(reason)
            raise ConfigurationError(
                f"{where}: escalation reason {shown} is not one the policy allows "
                f"(allowed: {', '.join(sorted(self.allowed_reasons))}); use one of those, or add it to "
                "escalationPolicy.allowedReasons in the policy document."
            )


def tool_name(tool: Callable[..., Any]) -> str:
    """A tool's recorded name: ``module:qualname`` when it has one."""
    module = getattr(tool, "__module__", None)
    qual = getattr(tool, "__qualname__", None) or getattr(tool, "__name__", None)
    if qual is None:
        return type(tool).__name__
    return f"{module}:{qual}" if module else str(qual)


def verifier_identity(verifier: Verifier, digest: Callable[[str], str]) -> str:
    """The verifier's definition (what it checks) as canonical JSON of keyed digests, so
    a record names what changed without holding the definition itself."""
    parts = verifier.identity()
    out = {"kind": parts.pop("kind", type(verifier).__name__)}
    for key, value in parts.items():
        out[key] = digest(value)
    return json.dumps(out, sort_keys=True, separators=(",", ":"))


def index_entry(run: RunState) -> dict[str, Any]:
    """The run's entry in the run index."""
    return {
        "runId": run.run_id,
        "startedAt": run.started_at,
        "taskClass": run.task_class,
        "riskClass": run.risk_class,
        "status": run.status,
        "cost": str(run.result().cost),
        "currency": run.currency,
        "chain": run.chain,
        "receipts": len(run.receipts),
        "steps": run.steps,
        "tracePath": str(run.trace_path) if run.trace_path else None,
    }


def _tool_call_part(call: ToolCall) -> dict[str, Any]:
    try:
        arguments: Any = json.loads(call.arguments) if call.arguments else {}
    except ValueError:
        arguments = call.arguments
    return {"type": "tool_call", "id": call.id, "name": call.name, "arguments": arguments}


def _json_or_none(value: Any) -> str | None:
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        return None


class RunEngine:
    """Runs the stages of one run (see the module docstring)."""

    def __init__(
        self,
        run: RunState,
        config: EngineConfig,
        effects: Effects,
        models: LaneModels,
        processors: Sequence[RunProcessor],
        context: ContextFactory,
    ) -> None:
        self.run = run
        self.config = config
        self.effects = effects
        self.models = models
        self.processors = tuple(processors)
        self._wants = [(wanted(p), p.on_event) for p in self.processors]
        self._dispatch: dict[type, tuple[Callable[[Any], None], ...]] = {}
        self._context = context
        self._keys: dict[tuple[str, str], int] = {}
        self.on_asyncio = _on_asyncio()  # the run's event loop: asyncio, or another anyio backend

    # ------------------------------------------------------------------ events

    def emit(self, event: Any) -> None:
        """Hand ``event`` to the processors that want its kind, in their order."""
        kind = type(event)
        handlers = self._dispatch.get(kind)
        if handlers is None:
            handlers = self._dispatch[kind] = tuple(
                handle for types, handle in self._wants if types is None or kind in types
            )
        for handle in handlers:
            handle(event)

    def messages_json(self, messages: Sequence[Message]) -> str:
        """Messages as the GenAI conventions' ``gen_ai.input.messages`` (role and parts);
        only made when content capture is on."""
        out = []
        for m in messages:
            parts: list[dict[str, Any]] = []
            if m.role == "tool":
                parts.append({"type": "tool_call_response", "id": m.tool_call_id, "response": m.content})
            elif m.content:
                parts.append({"type": "text", "content": m.content})
            parts.extend(_tool_call_part(c) for c in m.tool_calls)
            out.append({"role": m.role, "parts": parts, **({"name": m.name} if m.name else {})})
        return json.dumps(out, ensure_ascii=False)

    def response_json(self, response: ModelResponse) -> str:
        """A reply as ``gen_ai.output.messages`` (only with content capture on)."""
        parts: list[dict[str, Any]] = [{"type": "text", "content": response.text}] if response.text else []
        parts.extend(_tool_call_part(c) for c in response.tool_calls)
        message = {"role": "assistant", "parts": parts, "finish_reason": response.finish_reason or "stop"}
        return json.dumps([message], ensure_ascii=False)

    # ------------------------------------------------------------------ the run

    async def start(self) -> None:
        run = self.run
        self.config.router.check(task_class=run.task_class, risk_class=run.risk_class)
        self.config.check_reason(run.escalation_reason, f"Run of task class {run.task_class!r}")
        run.status = "running"
        run.documents = dict(self.config.router.meta.documents)
        run.started_ns = self.effects.now_ns()
        run.started_at = iso_time(run.started_ns)
        await self.effects.start_run(run, index_entry(run))
        try:
            self.emit(RunStarted(run))
        except BaseException as exc:  # e.g. its record cannot be opened: the run ends here, failed
            await self.end(exc)
            raise

    async def end(self, exc: BaseException | None) -> None:
        run = self.run
        if exc is None:
            run.status = "succeeded"
        elif isinstance(exc, anyio.get_cancelled_exc_class()):
            run.status = "cancelled"
        else:
            run.status = "failed"
            run.error = getattr(exc, "recorded_type", None) or type(exc).__name__
        if run.output is not None:
            run.output_digest = self.digest_output(run.output)
        run.ended_ns = self.effects.now_ns()
        try:
            self.emit(RunEnded(run, exc))
        except BaseException as late:  # the record's last write failed: the run did too
            if run.status == "succeeded":
                run.status = "failed"
                run.error = getattr(late, "recorded_type", None) or type(late).__name__
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await self.effects.end_run(run, {**index_entry(run), "endedAt": iso_time(run.ended_ns)})

    def record_inputs(self, inputs: Mapping[str, Any]) -> str:
        text = json.dumps(dict(inputs), sort_keys=True, ensure_ascii=False)
        digest = self.config.hasher.digest(text)
        self.run.input_digest = digest
        self.emit(InputsRecorded(self.run, digest, text))
        return digest

    def digest_output(self, output: Any) -> str:
        return self.config.hasher.digest(output if isinstance(output, str) else repr(output))

    # ------------------------------------------------------------------ stages

    def new_record(self, name: str, stage: str, parent: StageRecord | None) -> StageRecord:
        prefix = parent.key + "/" if parent is not None else ""
        n = self._keys.get((prefix, name), 0)
        self._keys[(prefix, name)] = n + 1
        record = StageRecord(
            name=name,
            stage=stage,
            parent=parent.name if parent is not None else None,
            key=f"{prefix}{name}#{n}",
            started_ns=self.effects.now_ns(),
        )
        if parent is not None:
            parent.children.append(record)
        self.run.records.append(record)
        self.emit(StageStarted(self.run, record, parent))
        return record

    def find_parent(self, name: str) -> StageRecord | None:
        """The latest still-running stage named ``name`` (sub-stages given by name)."""
        for record in reversed(self.run.records):
            if record.name == name and record.status == "running":
                return record
        return None

    def _fail(self, record: StageRecord, exc: BaseException) -> None:
        record.status = "cancelled" if isinstance(exc, anyio.get_cancelled_exc_class()) else "failed"
        record.error = getattr(exc, "recorded_type", None) or type(exc).__name__

    def _end(self, record: StageRecord) -> None:
        record.ended_ns = self.effects.now_ns()
        self.emit(StageEnded(self.run, record))

    async def stage(
        self,
        stage: str,
        fn: Callable[..., Awaitable[T]],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        name: str | None,
        deterministic: bool,
        escalation_reason: str | None,
        requested_lane: str | None,
        verify: Sequence[Verifier],
        tool: Callable[[Any], Any] | None,
        max_tokens: int | None,
        evidence: Mapping[str, Any] | None,
        parent: StageRecord | None,
        risk_class: str | None,
    ) -> T:
        config, run = self.config, self.run
        record = self.new_record(name or stage, stage, parent)
        in_force = escalation_reason or (
            run.escalation_reason if not (run.planned and config.deescalate_after_plan) else None
        )
        esc = Escalation(config.threshold, reason=in_force)
        feedback: list[VerifierResult] = []
        try:
            while True:
                decision = await self.decide(
                    record,
                    stage,
                    deterministic=deterministic,
                    reason=esc.reason,
                    excluded=esc.excluded,
                    requested_lane=requested_lane,
                    risk_class=risk_class,
                )
                if not decision.admitted:
                    raise RouteDeferred(decision, run_id=run.run_id, stage=record.name)
                assert decision.lane is not None
                if decision.approval_required and record.key not in run.approved:
                    await self._approve_stage(record, decision)
                owed = esc.receipt_for(decision.lane, config.router.stage_default_lane(stage))
                if owed is not None:
                    await self._receipt(record, decision, owed)
                    esc.receipt_written()
                record.attempts += 1
                esc.attempt_started()
                ctx = self._context(self, record, decision, record.attempts, feedback, max_tokens)
                failed: list[VerifierResult]
                try:
                    output = await fn(ctx, *args, **kwargs)
                    if tool is not None:
                        await self._tool(record, tool, output)
                    results = await self.verify_output(record, output, verify) if verify else []
                    failed = [r for r in results if not r.passed]
                except RetryStage as signal:
                    failed = [
                        VerifierResult("retry", False, "signal", "the stage asked to retry", output=signal.feedback)
                    ]
                except Escalate as signal:
                    config.check_reason(signal.reason, f"Stage {record.name!r} raised Escalate")
                    lane = ctx.lane or decision.lane
                    self.emit(Escalating(run, record, lane, signal.reason))
                    esc.escalate(lane, signal.reason)
                    continue
                if not failed:
                    record.status = "succeeded"
                    record.output_digest = self.digest_output(output)
                    if stage == "planning":
                        run.planned = True
                        record.evidence.setdefault("plan", record.output_digest)
                    self.finish_evidence(record, evidence, esc.reason)
                    return output
                feedback = failed
                lane = ctx.lane or decision.lane
                self.emit(AttemptFailed(run, record, lane, tuple(failed)))
                refs: list[str] = []
                if esc.escalates_next(lane):
                    refs = [
                        config.hasher.digest(f"{r.name}|{r.summary}|{r.output}")
                        for batch in record.verifications[-config.threshold :]
                        for r in batch
                        if not r.passed
                    ]
                if esc.failed(lane, refs) is Next.GIVE_UP:
                    raise VerificationFailed(
                        f"Stage {record.name!r} failed verification on {record.attempts} attempt(s) "
                        f"(last lane {lane}): {'; '.join(r.summary for r in failed)}.",
                        evidence=failed,
                        attempts=record.attempts,
                        run_id=run.run_id,
                        stage=record.name,
                    )
        except BaseException as exc:
            self._fail(record, exc)
            raise
        finally:
            self._end(record)

    async def verify_stage(self, subject: Any, verifiers: Sequence[Verifier], name: str) -> bool:
        """Verifiers as a ``verification`` stage of their own; True when all pass."""
        record = self.new_record(name, "verification", None)
        try:
            results = await self.verify_output(record, subject, verifiers, own_record=record)
        except BaseException as exc:
            self._fail(record, exc)
            raise
        finally:
            self._end(record)
        return all(r.passed for r in results)

    async def verify_output(
        self,
        parent: StageRecord,
        output: Any,
        verifiers: Sequence[Verifier],
        own_record: StageRecord | None = None,
    ) -> list[VerifierResult]:
        config, run = self.config, self.run
        deterministic = [v for v in verifiers if v.deterministic]
        judges = [v for v in verifiers if not v.deterministic]
        record = own_record or self.new_record(f"{parent.name}.verify", "verification", parent)
        results: list[VerifierResult] = []
        try:
            if deterministic:
                decision = await self.decide(
                    record, "verification", deterministic=True, reason=None, excluded=(), requested_lane=None
                )
                if decision.lane != "no-model":
                    raise RouteDeferred(decision, run_id=run.run_id, stage=record.name)
                context = VerifyContext(config.max_log_lines, run.variables)
                for v in deterministic:
                    identity = verifier_identity(v, config.hasher.digest)
                    result = await self.effects.verify(run, record, v, output, context)
                    check = CheckRecord(result, run.next_step(), identity, config.hasher.digest(result_body(result)))
                    results.append(result)
                    record.checks.append(check)
                    self.emit(Verified(run, record, check))
            else:
                if any(getattr(c, "deterministic_required", False) for c in run.ceilings):
                    # a routing ceiling demands deterministic verification: a model judge
                    # is not one (CONTRACT D2); the router defers the stage and says why
                    decision = await self.decide(
                        record, "verification", deterministic=False, reason=None, excluded=(), requested_lane=None
                    )
                    if not decision.admitted:
                        raise RouteDeferred(decision, run_id=run.run_id, stage=record.name)
                # Model judgment only where no deterministic verifier can decide.
                for judge in judges:
                    assert isinstance(judge, ModelVerifier)
                    results.append(await self._judge(record, judge, output))
            record.attempts += 1
            record.verifications.append(results)
            if parent is not record:
                parent.verifications.append(results)
            record.status = "succeeded" if all(r.passed for r in results) else "failed"
            self.finish_evidence(record, {"status": record.status}, None)
        except BaseException as exc:
            if own_record is None:
                self._fail(record, exc)
            raise
        finally:
            if own_record is None:
                self._end(record)
        return results

    async def _judge(self, parent: StageRecord, judge: ModelVerifier, output: Any) -> VerifierResult:
        async def ask(ctx: Any) -> VerifierResult:
            reply = await ctx.complete(judge.prompt(output), max_tokens=judge.max_tokens)
            return judge.verdict(reply.text)

        return await self.stage(
            judge.stage,
            ask,
            (),
            {},
            name=f"{parent.name}.judge",
            deterministic=False,
            escalation_reason=None,
            requested_lane=None,
            verify=(),
            tool=None,
            max_tokens=None,
            evidence=None,
            parent=parent,
            risk_class=None,
        )

    async def _tool(self, parent: StageRecord, tool: Callable[[Any], Any], output: Any) -> None:
        record = self.new_record(f"{parent.name}.tool", "tool-use", parent)
        try:
            decision = await self.decide(
                record, "tool-use", deterministic=True, reason=None, excluded=(), requested_lane=None
            )
            if decision.lane != "no-model":
                raise RouteDeferred(decision, run_id=self.run.run_id, stage=record.name)
            name = tool_name(tool)
            await self.run_tool(record, name, tool, output)
            record.attempts = 1
            record.status = "succeeded"
            record.evidence["toolName"] = self.config.hasher.digest(getattr(tool, "__name__", "tool"))
            self.finish_evidence(record, {"actionClass": "write", "policyDecision": decision.decision_id}, None)
        except BaseException as exc:
            self._fail(record, exc)
            raise
        finally:
            self._end(record)

    async def run_tool(self, record: StageRecord, name: str, fn: Callable[[Any], Any], subject: Any) -> Any:
        """Run a deterministic tool as a recorded step of ``record``'s stage."""
        started = self.effects.now_ns()
        try:
            out = await self.effects.tool(self.run, record, name, fn, subject)
        except BaseException as exc:
            step = self.run.next_step()
            error = getattr(exc, "recorded_type", None) or type(exc).__name__
            done = ToolRecord(name, False, step, None, error, started, self.effects.now_ns())
            record.tools.append(done)
            self.emit(ToolEnded(self.run, record, done, None))
            raise
        step = self.run.next_step()
        text = _json_or_none(out)
        digest = self.config.hasher.digest(text if text is not None else repr(out))
        done = ToolRecord(name, True, step, digest, None, started, self.effects.now_ns())
        record.tools.append(done)
        self.emit(ToolEnded(self.run, record, done, text))
        return out

    # ------------------------------------------------------------------ decisions, receipts, evidence

    async def decide(
        self,
        record: StageRecord,
        stage: str,
        *,
        deterministic: bool,
        reason: str | None,
        excluded: tuple[tuple[str, str], ...],
        requested_lane: str | None,
        ledger_remaining: float | None = None,
        risk_class: str | None = None,
    ) -> RouteDecision:
        run = self.run
        inputs = await self.effects.route_inputs(run, record)
        remaining = inputs.remaining if ledger_remaining is None else min(inputs.remaining, ledger_remaining)
        # Built from checked values: no need to validate it again.
        request = RouteRequest.trusted(
            task_class=run.task_class,
            stage=stage,
            risk_class=risk_class or run.risk_class,
            escalation_reason=reason,
            requested_lane=requested_lane,
            signals=inputs.signals,
            deterministic=deterministic,
            excluded_lanes=excluded,
            budget_window="task",
            budget_remaining=remaining,
            findings=inputs.findings,
            ceilings=inputs.ceilings,
            binding=inputs.binding,
        )
        decision = self.config.router.decide(request, premium_remaining=inputs.premium)
        step = run.next_step()
        record.decisions.append(decision)
        record.decision_steps.append(step)
        record.premium.append(inputs.premium)
        self.emit(Decided(run, record, decision, step))
        return decision

    async def _ask(
        self, record: StageRecord, decision: RouteDecision, from_lane: str | None, reason: str
    ) -> tuple[str | None, str | None]:
        """Ask for a human approval (a recorded step); ``(approver, justification digest)``.

        Raises:
            EscalationDenied: denied, or nobody to ask.
        """
        config, run = self.config, self.run
        assert decision.lane is not None
        request = ApprovalRequest(
            run.run_id,
            record.name,
            run.task_class,
            run.risk_class,
            from_lane or "none",
            decision.lane,
            reason,
            decision.decision_id,
            decision.estimated_cost or 0.0,
        )
        approval = await self.effects.approve(run, record, request)
        approved = approval is not None and approval.approved
        who = None if approval is None else approval.approver
        justification = (
            None if approval is None else approval.justification_digest or config.hasher.digest(approval.justification)
        )
        step = run.next_step()
        record.approvals.append(ApprovalRecord(approved, who, justification, step))
        self.emit(ApprovalAnswered(run, record, approved, who, step))
        if not approved:
            what = (
                f"Escalating stage {record.name!r} to {decision.lane} needs a human justification for task class "
                f"{run.task_class!r}"
                if reason != _CEILING_REVIEW
                else f"Stage {record.name!r} needs a human approval: a routing ceiling requires human review of "
                f"{decision.request.stage} stages"
            )
            raise EscalationDenied(
                f"{what}, and "
                + ("no approver is configured (Lanes(approver=...))." if approval is None else f"{who} denied it."),
                decision=decision,
                approver=who,
                run_id=run.run_id,
                stage=record.name,
            )
        return who, justification

    async def _approve_stage(self, record: StageRecord, decision: RouteDecision) -> None:
        """A routing ceiling (``human_review_required``) holds this stage to an approval."""
        await self._ask(record, decision, decision.lane, _CEILING_REVIEW)
        self.run.approved.add(record.key)

    async def _receipt(self, record: StageRecord, decision: RouteDecision, owed: PendingReceipt) -> None:
        config, run = self.config, self.run
        assert decision.lane is not None
        approver: str | None = None
        justification: str | None = None
        if config.human_justification.get(run.task_class, False):
            approver, justification = await self._ask(record, decision, owed.from_lane, owed.reason)
        body = receipt_body(
            run_id=run.run_id,
            stage=record.name,
            task_class=run.task_class,
            risk_class=run.risk_class,
            from_lane=owed.from_lane,
            to_lane=decision.lane,
            reason=owed.reason,
            decision_id=decision.decision_id,
            evidence_refs=owed.evidence_refs,
            approver=approver,
            justification_digest=justification if approver is not None else None,
            created_at="",
        )
        if decision.warnings:
            body["preservedWarnings"] = list(decision.warnings)  # routing ceilings' must-preserve warnings
        with anyio.CancelScope(shield=True):
            receipt = await self.effects.append_receipt(run, record, body)
        step = run.next_step()
        record.receipts.append(receipt)
        record.receipt_steps.append(step)
        run.receipts.append(receipt)
        self.emit(Escalated(run, record, receipt, step))

    def finish_evidence(self, record: StageRecord, given: Mapping[str, Any] | None, reason: str | None) -> None:
        """Record the given evidence, fill what the runtime knows, report what is missing."""
        run = self.run

        def known(item: str) -> str | None:
            return _evidence.known_item(
                item,
                task_class=run.task_class,
                risk_class=run.risk_class,
                reason=reason,
                status=record.status,
                decisions=record.decisions,
                verifications=record.verifications,
            )

        missing = _evidence.fill(
            record.evidence,
            given=given,
            required=self.config.required_evidence.get(record.stage, ()),
            known=known,
            digest=self.config.hasher.digest,
        )
        record.missing_evidence = missing
        if missing:
            self.emit(EvidenceMissing(run, record, tuple(missing)))
