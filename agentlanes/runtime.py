"""The chain runtime: lane-aware stages around a user's own agent loop.

::

    lanes = Lanes(models={"standard": m1, "high-end": m2}, signals=StaticSignals({...}))
    async with lanes.run(task_class="routine-code") as run:
        plan = await run.stage("planning", make_plan, task)
        patch = await run.stage("execution", write_patch, plan, verify=[CommandVerifier(["pytest"])])
    run.result.cost, run.result.receipts

Each ``run.stage`` asks the router for a decision before anything runs, binds the stage
context's model to the chosen lane, reserves the estimated cost of every model call in
every budget window before the call and settles it after (in shielded scopes), retries
with backoff, falls back only to lanes that are not dearer, verifies deterministically
on ``no-model``, escalates after repeated standard-lane failure with a receipt, and
records everything in :class:`StageRecord` objects.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import anyio
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, stop_after_delay

from agentlanes import attributes as A
from agentlanes.approval import Approval, ApprovalRequest, Approver
from agentlanes.budget import Refusal, Reservation, from_micro, to_micro
from agentlanes.content import ContentHasher, ContentStore
from agentlanes.decision import RouteDecision, RouteRequest
from agentlanes.errors import (
    BudgetExhausted,
    ConfigurationError,
    Escalate,
    EscalationDenied,
    ModelError,
    RetryStage,
    RouteDeferred,
    VerificationFailed,
)
from agentlanes.lanes import PREMIUM_LANES, RANK
from agentlanes.ledger import BudgetLedger
from agentlanes.logs import get_logger
from agentlanes.models.base import Message, Model, ModelResponse, ModelSettings, ProviderError, Usage, estimate_tokens
from agentlanes.policy import PolicyBundle
from agentlanes.receipts import Receipt, ReceiptSigner, receipt_body
from agentlanes.result import CallRecord, RunResult, StageRecord
from agentlanes.router import Router
from agentlanes.sources import LiveSignals, ProviderStats, SignalSource, StaticSignals
from agentlanes.stores import Store, open_store
from agentlanes.telemetry import Telemetry, emit_stage, run_attributes
from agentlanes.verifiers import ModelVerifier, Verifier, VerifierResult, VerifyContext

if TYPE_CHECKING:
    from agentlanes.replay import Replayer

__all__ = [
    "CallRecord",
    "Lanes",
    "RetryPolicy",
    "Run",
    "RunResult",
    "StageContext",
    "StageRecord",
    "resolve_data_dir",
]

T = TypeVar("T")
P = ParamSpec("P")


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The data directory: the argument, else ``AGENTLANES_HOME``, else ``./.agentlanes``."""
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get("AGENTLANES_HOME")
    return Path(env) if env else Path(".agentlanes")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class RetryPolicy:
    """How one model is retried before the runtime falls back.

    Attributes:
        attempts: tries per model, the first included.
        max_delay: give up retrying after this many seconds in total.
        initial_wait: first backoff; doubles per retry up to ``max_wait``. A provider's
            Retry-After wins when it asks for longer (capped at ``max_wait``).
    """

    attempts: int = 3
    max_delay: float = 60.0
    initial_wait: float = 0.5
    max_wait: float = 10.0


class Lanes:
    """Everything runs need: the router, models per lane, signals, budgets, approvals.

    Args:
        models: lane → a model, or several in preference order. ``no-model`` takes none.
        bundle: routing documents (the bundled defaults when omitted); or pass ``router``.
        signals: a :class:`~agentlanes.sources.SignalSource` or a fixed mapping
            (default: :class:`~agentlanes.sources.LiveSignals`, which needs ``static=``
            values for what it cannot measure, or decisions fail closed).
        store: budgets, receipts and the run index (default: ``AGENTLANES_STORE`` if set,
            e.g. a ``postgresql://`` DSN shared by many workers; else SQLite in the data dir).
        data_dir: where records go (default ``AGENTLANES_HOME`` or ``./.agentlanes``).
        approver: asked before escalations of task classes that require a human
            justification; without one they are denied.
        retry: per-model retry policy.
        session_id: key of the ``session`` budget window (default: new per ``Lanes``).
        call_timeout: seconds before a model call is abandoned (and retried).
        cooldown: seconds a model that failed all its retries is skipped.
        observer: called with each :class:`StageRecord` when it finishes (progress
            displays, custom metrics); it must not raise.
        tracing: emit OpenTelemetry spans and write the local trace (default on).
        tracer_provider: the provider to use (default: the application's global SDK
            provider when it has one, else a private one).
        capture_content: record prompts and outputs as text in spans (default: the
            ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` variable, else off).
        otlp_endpoint: also export spans over OTLP/HTTP (``agentlanes[otlp]``).
        record_content: keep prompt/output bodies in ``<data-dir>/content/`` (never
            exported) so runs can be replayed exactly.
    """

    def __init__(
        self,
        models: Mapping[str, Model | Sequence[Model]] | None = None,
        *,
        bundle: PolicyBundle | None = None,
        router: Router | None = None,
        signals: SignalSource | Mapping[str, Any] | None = None,
        store: Store | None = None,
        data_dir: str | Path | None = None,
        approver: Approver | None = None,
        retry: RetryPolicy | None = None,
        session_id: str | None = None,
        call_timeout: float = 120.0,
        cooldown: float = 30.0,
        stats: ProviderStats | None = None,
        observer: Callable[[StageRecord], None] | None = None,
        tracing: bool = True,
        tracer_provider: Any = None,
        capture_content: bool | None = None,
        otlp_endpoint: str | None = None,
        record_content: bool = True,
    ) -> None:
        self.router = router if router is not None else Router(bundle)
        self.observer = observer
        self._tracing = (tracing, tracer_provider, capture_content, otlp_endpoint)
        self._telemetry: Telemetry | None = None
        self.record_content = record_content
        self._content: ContentStore | None = None
        self.replay: Replayer | None = None
        """A :class:`~agentlanes.replay.Replayer` while a recorded run is replayed."""
        self.bundle = self.router.bundle
        self.models: dict[str, tuple[Model, ...]] = {}
        for lane, bound in (models or {}).items():
            if lane not in RANK:
                raise ConfigurationError(f"Model binding for {lane!r}: not a lane (lanes: {', '.join(RANK)}).")
            if lane == "no-model":
                raise ConfigurationError("The no-model lane runs deterministic code; it cannot have a model bound.")
            seq = (
                (bound,) if isinstance(bound, Model) else tuple(bound) if isinstance(bound, (list, tuple)) else (bound,)
            )
            for m in seq:
                if not isinstance(m, Model):
                    raise ConfigurationError(
                        f"Model binding for {lane!r} holds {m!r}, which is not an agentlanes Model "
                        "(wrap it in an adapter such as OpenAIChatModel or FunctionModel)."
                    )
            self.models[lane] = seq
        self.stats = stats or ProviderStats()
        if signals is None:
            self.signals: SignalSource = LiveSignals(stats=self.stats)
        elif isinstance(signals, SignalSource):
            self.signals = signals
        else:
            self.signals = StaticSignals(signals)
        self.data_dir = resolve_data_dir(data_dir)
        self._store = store
        self.approver = approver
        self.retry = retry or RetryPolicy()
        self.session_id = session_id or f"session-{uuid.uuid4().hex[:16]}"
        self.call_timeout = call_timeout
        self.cooldown = cooldown
        self._cooling: dict[int, float] = {}
        self._ledger: BudgetLedger | None = None
        self._hasher: ContentHasher | None = None
        self._signer: ReceiptSigner | None = None
        pol = self.bundle.policy
        self.threshold = pol.escalation_policy.repeated_failure_threshold
        self.deescalate_after_plan = pol.escalation_policy.deescalate_after_plan
        self.max_log_lines = pol.context_policy.max_log_lines_without_approval or 80
        self.required_evidence: dict[str, list[str]] = {s.stage: list(s.required_evidence) for s in pol.chain_stages}
        self.human_justification = {t.task_class: t.requires_human_justification for t in pol.task_classes}
        self.on_budget_pressure = self.bundle.optimizer.budget_policy.on_budget_pressure
        self.currency = self.bundle.optimizer.budget_policy.currency

    @property
    def store(self) -> Store:
        """The store (the SQLite default is opened on first use)."""
        if self._store is None:
            self._store = open_store(None, self.data_dir)
        return self._store

    @property
    def ledger(self) -> BudgetLedger:
        if self._ledger is None:
            self._ledger = BudgetLedger(self.store, self.bundle.optimizer, session_id=self.session_id)
        return self._ledger

    @property
    def telemetry(self) -> Telemetry:
        """Spans and the local trace (created on first use)."""
        if self._telemetry is None:
            enabled, provider, capture, endpoint = self._tracing
            self._telemetry = Telemetry(
                self.data_dir,
                enabled=enabled,
                tracer_provider=provider,
                capture_content=capture,
                otlp_endpoint=endpoint,
            )
        return self._telemetry

    @property
    def content(self) -> ContentStore | None:
        """The local content store for replay bodies (``None`` when off)."""
        if self.record_content and self._content is None:
            self._content = ContentStore(self.data_dir / "content")
        return self._content

    @property
    def signer(self) -> ReceiptSigner:
        """Signs receipts with the installation's Ed25519 key (in the data directory)."""
        if self._signer is None:
            self._signer = ReceiptSigner(self.data_dir / "keys")
        return self._signer

    @property
    def hasher(self) -> ContentHasher:
        """Keyed digests for content (the key lives in the data directory)."""
        if self._hasher is None:
            self._hasher = ContentHasher(self.data_dir / "keys" / "content.key")
        return self._hasher

    def run(
        self,
        *,
        task_class: str,
        risk_class: str = "medium",
        escalation_reason: str | None = None,
        run_id: str | None = None,
        variables: Mapping[str, str] | None = None,
        chain: str | None = None,
    ) -> Run:
        """A run of one task: ``async with lanes.run(...) as run:``.

        Args:
            task_class: a task class of the policy.
            risk_class: low, medium, high or critical.
            escalation_reason: why this task may use premium lanes up to planning
                (de-escalation drops it after the planning stage).
            run_id: an id of your own (default: generated).
            variables: values for ``{name}`` placeholders in command verifiers.
            chain: ``module:attr`` of the chain being run, recorded for replay.
        """
        return Run(
            self,
            task_class=task_class,
            risk_class=risk_class,
            escalation_reason=escalation_reason,
            run_id=run_id,
            variables=variables,
            chain=chain,
        )

    def models_for(self, lane: str) -> tuple[Model, ...]:
        """The lane's models in preference order, skipping those cooling down."""
        now = time.monotonic()
        return tuple(m for m in self.models.get(lane, ()) if self._cooling.get(id(m), 0.0) <= now)

    def cool(self, model: Model) -> None:
        self._cooling[id(model)] = time.monotonic() + self.cooldown

    async def aclose(self) -> None:
        """Close the store and the models."""
        for seq in self.models.values():
            for m in seq:
                await m.aclose()
        if self._store is not None:
            await self._store.aclose()


class _Reroute(Exception):
    def __init__(self, lane: str, why: str, remaining: float | None = None) -> None:
        super().__init__(why)
        self.lane = lane
        self.why = why
        self.remaining = remaining


class _StageLog:
    """Adds ``stage=`` to each event without structlog's per-stage ``bind`` (which costs
    more than most of a stage's bookkeeping)."""

    __slots__ = ("_log", "_stage")

    def __init__(self, log: Any, stage: str) -> None:
        self._log = log
        self._stage = stage

    def debug(self, event: str, **kw: Any) -> None:
        self._log.debug(event, stage=self._stage, **kw)

    def info(self, event: str, **kw: Any) -> None:
        self._log.info(event, stage=self._stage, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._log.warning(event, stage=self._stage, **kw)


class LaneModel(Model):
    """The stage's model: whichever model the router's lane binds, with reservations,
    retries, fallback and accounting around every request."""

    def __init__(self, ctx: StageContext) -> None:
        self._ctx = ctx
        self.provider = "agentlanes"

    @property
    def name(self) -> str:  # type: ignore[override]
        models = self._ctx.run.lanes.models.get(self._ctx.lane or "", ())
        return models[0].name if models else f"<{self._ctx.lane}>"

    async def request(self, messages: Sequence[Message], settings: ModelSettings) -> ModelResponse:
        return await self._ctx.run._call(self._ctx, list(messages), settings)


class StageContext:
    """What a stage function receives.

    Attributes:
        run: the run.
        name: the stage's name (defaults to its chain stage).
        stage: the chain stage (``planning``, ``execution``...).
        decision: the router's decision for this attempt.
        attempt: 1 for the first attempt.
        feedback: the failing verifier results of the previous attempt.
    """

    def __init__(
        self,
        run: Run,
        record: StageRecord,
        decision: RouteDecision,
        attempt: int,
        feedback: Sequence[VerifierResult],
        max_tokens: int | None,
    ) -> None:
        self.run = run
        self.record = record
        self.name = record.name
        self.stage = record.stage
        self.decision = decision
        self.attempt = attempt
        self.feedback = list(feedback)
        self.max_tokens = max_tokens
        self.model: Model = LaneModel(self)

    @property
    def lane(self) -> str | None:
        """The lane the stage runs on now (a fallback may change it mid-stage)."""
        return self.decision.lane

    @property
    def feedback_text(self) -> str:
        """The previous attempt's failures as text for a prompt (empty on attempt 1)."""
        return "\n\n".join(f"{r.name}: {r.summary}\n{r.output}".strip() for r in self.feedback)

    async def complete(
        self,
        prompt: str | Sequence[Message],
        *,
        system: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> ModelResponse:
        """Ask the lane's model; ``prompt`` is a user message or a full message list."""
        messages = [Message("user", prompt)] if isinstance(prompt, str) else list(prompt)
        if system is not None:
            messages.insert(0, Message("system", system))
        settings = ModelSettings(max_tokens=max_tokens or self.max_tokens or 1024, temperature=temperature)
        return await self.model.request(messages, settings)

    def record_evidence(self, name: str, value: Any) -> str:
        """Record a required-evidence item (stored as a keyed digest); returns the digest."""
        digest = self.run.lanes.hasher.digest(value if isinstance(value, (str, bytes)) else repr(value))
        self.record.evidence[name] = digest
        return digest


class Run:
    """One task's run; use ``async with lanes.run(...) as run``. See :class:`Lanes`."""

    def __init__(
        self,
        lanes: Lanes,
        *,
        task_class: str,
        risk_class: str,
        escalation_reason: str | None,
        run_id: str | None,
        variables: Mapping[str, str] | None,
        chain: str | None,
    ) -> None:
        self.lanes = lanes
        self.run_id = run_id or f"run-{uuid.uuid4().hex[:20]}"
        self.task_class = task_class
        self.risk_class = risk_class
        self.escalation_reason = escalation_reason
        self.variables = {"python": sys.executable, **(variables or {})}
        self.chain = chain
        self.records: list[StageRecord] = []
        self.receipts: list[Receipt] = []
        self.status = "created"
        self.output: Any = None
        self.started_at = ""
        self._planned = False
        self._log = get_logger(run_id=self.run_id)
        self._premium: dict[str, tuple[float, float] | None] = {}
        self._steps: dict[str, int] = {}
        self._step = 0
        self._span: Any = trace.INVALID_SPAN
        self._span_ctx: Any = None
        self.trace_path: Path | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Run:
        self.lanes.router.check(task_class=self.task_class, risk_class=self.risk_class)
        self.status = "running"
        self.started_at = _now_iso()
        telemetry = self.lanes.telemetry
        self._span = telemetry.tracer.start_span(
            f"invoke_workflow {self.chain or self.task_class}",
            attributes=run_attributes(self.run_id, self.task_class, self.risk_class, self.chain),
        )
        self._span_ctx = trace.set_span_in_context(self._span)
        self.trace_path = telemetry.start_run(self.run_id, self._span)
        await self.lanes.store.record_run(self._index_entry())
        self._log.info("run.start", task_class=self.task_class, risk_class=self.risk_class)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        self.status = (
            "succeeded"
            if exc is None
            else ("cancelled" if isinstance(exc, anyio.get_cancelled_exc_class()) else "failed")
        )
        if self._span.is_recording():
            self._span.set_attribute(A.RUN_STATUS, self.status)
            self._span.set_attribute(A.COST_ACTUAL, float(from_micro(self.cost_micro)))
            if exc is not None:
                self._span.set_status(Status(StatusCode.ERROR))
                self._span.set_attribute(A.ERROR_TYPE, type(exc).__name__)
        self._span.end()
        self.lanes.telemetry.end_run(self._span)
        exporter = self.lanes.telemetry.exporter
        if exporter is not None and exporter.dropped:
            self._log.warning("telemetry.dropped_spans", dropped=exporter.dropped, exported=exporter.exported)
        with anyio.CancelScope(shield=True):
            await self.lanes.store.record_run({**self._index_entry(), "endedAt": _now_iso()})
        self._log.info(
            "run.end", status=self.status, cost=str(from_micro(self.cost_micro)), receipts=len(self.receipts)
        )

    def record_inputs(self, inputs: Mapping[str, Any]) -> None:
        """Keep the run's inputs (the task, variables) for exact replay: the text goes to
        the local content store, the trace holds only its digest."""
        text = json.dumps(dict(inputs), sort_keys=True, ensure_ascii=False)
        digest = self.lanes.hasher.digest(text)
        store = self.lanes.content
        if store is not None:
            store.put(digest, text)
        if self._span.is_recording():
            self._span.set_attribute(A.RUN_INPUT_DIGEST, digest)
            # A marker span that ends now: the first line of the local trace, so that a
            # run cut short by a kill still says what it was given and which chain ran.
            marker = self.lanes.telemetry.tracer.start_span(
                "agentlanes.run.inputs",
                context=self._span_ctx,
                attributes={
                    **run_attributes(self.run_id, self.task_class, self.risk_class, self.chain),
                    A.RUN_INPUT_DIGEST: digest,
                },
            )
            marker.end()

    def _index_entry(self) -> dict[str, Any]:
        return {
            "runId": self.run_id,
            "startedAt": self.started_at,
            "taskClass": self.task_class,
            "riskClass": self.risk_class,
            "status": self.status,
            "cost": str(from_micro(self.cost_micro)),
            "currency": self.lanes.currency,
            "chain": self.chain,
            "receipts": len(self.receipts),
            "tracePath": str(self.trace_path) if self.trace_path else None,
        }

    @property
    def cost_micro(self) -> int:
        return sum(r.cost for r in self.records)

    @property
    def result(self) -> RunResult:
        """The run as it stands (final once the ``async with`` block has exited)."""
        return RunResult(
            self.run_id,
            self.status,
            self.output,
            tuple(self.records),
            tuple(self.receipts),
            self.cost_micro,
            self.lanes.currency,
        )

    # ------------------------------------------------------------------ stages

    async def stage(
        self,
        stage: str,
        fn: Callable[Concatenate[StageContext, P], Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run one step of your loop as a lane-aware stage.

        ``fn(ctx, *args, **kwargs)`` runs with ``ctx.model`` bound to the lane the
        router chose. Stage options are keyword-only and prefixed-free; pass them with
        :meth:`stage_with` when ``fn`` takes keywords of the same names.
        """
        return await self.stage_with(stage, fn, args, kwargs)

    async def stage_with(
        self,
        stage: str,
        fn: Callable[..., Awaitable[T]],
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        deterministic: bool = False,
        escalation_reason: str | None = None,
        requested_lane: str | None = None,
        verify: Sequence[Verifier] = (),
        tool: Callable[[Any], Any] | None = None,
        max_tokens: int | None = None,
        evidence: Mapping[str, Any] | None = None,
        parent: str | None = None,
        risk_class: str | None = None,
    ) -> T:
        """:meth:`stage` with every option.

        Args:
            stage: the chain stage (``planning``, ``execution``, ``verification``...).
            fn: ``async fn(ctx, *args, **kwargs)``.
            name: a name for this step (default: the stage).
            deterministic: the step is deterministic code (tests, tools): it routes to
                ``no-model`` for verification / tool-use / retrieval stages.
            escalation_reason: this stage's own escalation reason (after planning the
                run's reason no longer applies).
            requested_lane: a lane to ask for (never used silently above the router's).
            verify: verifiers for the output; failures retry the stage with feedback
                and escalate after repeated standard-lane failure.
            tool: a deterministic tool applied to the output before verifying (a
                ``tool-use`` stage on ``no-model``), e.g. writing a patch to disk.
            max_tokens: default ``max_tokens`` for the stage's model calls.
            evidence: required-evidence items known up front.
            risk_class: this stage's own risk class, when it differs from the run's
                (a summary is a low-risk chore even in a medium-risk task).
        """
        kwargs = dict(kwargs or {})
        record = StageRecord(name=name or stage, stage=stage, started=time.perf_counter(), parent=parent)
        if parent is not None:
            self._adopt(record, parent)
        self.records.append(record)
        log = _StageLog(self._log, record.name)
        own_reason = escalation_reason
        in_force = own_reason or (
            self.escalation_reason if not (self._planned and self.lanes.deescalate_after_plan) else None
        )
        excluded: tuple[tuple[str, str], ...] = ()
        feedback: list[VerifierResult] = []
        pending: tuple[str | None, str, list[str]] | None = None  # escalation awaiting its receipt
        escalated = False
        standard_failures = 0
        lane_attempts = 0
        ctx: StageContext | None = None
        try:
            while True:
                decision = await self._decide(
                    stage,
                    deterministic=deterministic,
                    reason=in_force,
                    excluded=excluded,
                    requested_lane=requested_lane,
                    risk_class=risk_class,
                )
                record.decisions.append(decision)
                log.debug(
                    "stage.routed",
                    lane=decision.lane,
                    status=decision.status,
                    reason=decision.reason,
                    decision_id=decision.decision_id,
                    estimated_cost=decision.estimated_cost,
                )
                if not decision.admitted:
                    raise RouteDeferred(decision, run_id=self.run_id, stage=record.name)
                assert decision.lane is not None
                if pending is not None or decision.lane in PREMIUM_LANES:
                    from_lane, why, refs = pending or (self._default_lane(stage), in_force or "", [])
                    await self._receipt(record, decision, from_lane=from_lane, reason=why, evidence_refs=refs)
                    pending = None
                record.attempts += 1
                lane_attempts += 1
                ctx = StageContext(self, record, decision, record.attempts, feedback, max_tokens)
                failed: list[VerifierResult]
                try:
                    output = await fn(ctx, *args, **kwargs)
                    if tool is not None:
                        await self._tool(record, tool, output)
                    results = await self._verify_output(record, output, verify) if verify else []
                    failed = [r for r in results if not r.passed]
                except RetryStage as signal:
                    failed = [
                        VerifierResult("retry", False, "signal", "the stage asked to retry", output=signal.feedback)
                    ]
                except Escalate as signal:
                    lane = ctx.lane or decision.lane
                    excluded = self._exclude_up_to(lane, f"escalated-from:{lane}")
                    in_force = signal.reason
                    pending = (lane, signal.reason, [])
                    lane_attempts = 0
                    log.info("stage.escalating", from_lane=lane, reason=signal.reason)
                    continue
                if not failed:
                    record.status = "succeeded"
                    record.output_digest = self.lanes.hasher.digest(output if isinstance(output, str) else repr(output))
                    if stage == "planning":
                        self._planned = True
                        record.evidence.setdefault("plan", record.output_digest)
                    self._finish_evidence(record, evidence, in_force)
                    # One info event per stage: routing and call details are debug events.
                    log.info(
                        "stage.succeeded",
                        lane=ctx.lane,
                        decision_id=ctx.decision.decision_id,
                        reason=ctx.decision.reason,
                        attempts=record.attempts,
                        calls=len(record.calls),
                        cost=str(from_micro(record.cost)),
                    )
                    return output
                feedback = failed
                lane = ctx.lane or decision.lane
                log.info("stage.attempt_failed", lane=lane, attempt=record.attempts, failed=[r.name for r in failed])
                if lane == "standard":
                    standard_failures += 1
                if not escalated and lane == "standard" and standard_failures >= self.lanes.threshold:
                    escalated = True
                    in_force = "repeated-standard-lane-failure"
                    excluded = self._exclude_up_to("standard", "escalated-from:standard")
                    refs = [
                        self.lanes.hasher.digest(f"{r.name}|{r.summary}|{r.output}")
                        for batch in record.verifications[-self.lanes.threshold :]
                        for r in batch
                        if not r.passed
                    ]
                    pending = ("standard", in_force, refs)
                    lane_attempts = 0
                    continue
                if escalated or lane_attempts >= self.lanes.threshold:
                    raise VerificationFailed(
                        f"Stage {record.name!r} failed verification on {record.attempts} attempt(s) "
                        f"(last lane {lane}): {'; '.join(r.summary for r in failed)}.",
                        evidence=failed,
                        attempts=record.attempts,
                        run_id=self.run_id,
                        stage=record.name,
                    )
        except BaseException as exc:
            record.status = "failed" if not isinstance(exc, anyio.get_cancelled_exc_class()) else "cancelled"
            record.error = type(exc).__name__
            if record.status == "failed":
                log.warning("stage.failed", error=type(exc).__name__)
            raise
        finally:
            record.ended = time.perf_counter()
            self._observe(record)

    def _adopt(self, child: StageRecord, parent_name: str) -> None:
        """Attach a sub-stage to its parent: the latest still-running stage of that name."""
        for record in reversed(self.records):
            if record.name == parent_name and record.status == "running":
                record.children.append(child)
                return

    def _observe(self, record: StageRecord) -> None:
        if record.parent is None and self._span.is_recording():
            emit_stage(self, record, self._span_ctx)
        if self.lanes.observer is not None:
            self.lanes.observer(record)

    async def verify(self, subject: Any, verifiers: Sequence[Verifier], *, name: str = "verification") -> bool:
        """Run verifiers as a ``verification`` stage of their own; True when all pass."""
        record = StageRecord(name=name, stage="verification", started=time.perf_counter())
        self.records.append(record)
        try:
            results = await self._verify_output(record, subject, verifiers, own_record=record)
        finally:
            record.ended = time.perf_counter()
            self._observe(record)
        return all(r.passed for r in results)

    # ------------------------------------------------------------------ internals

    def _default_lane(self, stage: str) -> str | None:
        return self.lanes.router.stage_default_lane(stage)

    @staticmethod
    def _exclude_up_to(lane: str, why: str) -> tuple[tuple[str, str], ...]:
        return tuple((name, why) for name, rank in RANK.items() if rank <= RANK[lane] and name != "no-model")

    async def _decide(
        self,
        stage: str,
        *,
        deterministic: bool,
        reason: str | None,
        excluded: tuple[tuple[str, str], ...],
        requested_lane: str | None,
        ledger_remaining: float | None = None,
        risk_class: str | None = None,
    ) -> RouteDecision:
        replay = self.lanes.replay
        if replay is not None:
            # the signals and budget this decision saw in the recorded run
            signals, remaining, premium = replay.decision_inputs()
        else:
            signals = await self.lanes.signals.snapshot()
            remaining, premium = await self.lanes.ledger.headroom(self.run_id, "task")
            if ledger_remaining is not None:
                remaining = min(remaining, ledger_remaining)
        # Built by the runtime from checked values: no need to validate it again.
        request = RouteRequest.trusted(
            task_class=self.task_class,
            stage=stage,
            risk_class=risk_class or self.risk_class,
            escalation_reason=reason,
            requested_lane=requested_lane,
            signals=signals,
            deterministic=deterministic,
            excluded_lanes=excluded,
            budget_window="task",
            budget_remaining=remaining,
        )
        decision = self.lanes.router.decide(request, premium_remaining=premium)
        self._premium[decision.decision_id] = premium
        self._steps[decision.decision_id] = self._next_step()
        if replay is not None:
            replay.check_decision(decision)
        return decision

    def _next_step(self) -> int:
        """Order of the run's recorded steps (decisions, calls, verifier results,
        escalations): what exact replay follows."""
        self._step += 1
        return self._step

    def _finish_evidence(self, record: StageRecord, given: Mapping[str, Any] | None, reason: str | None) -> None:
        """Record the given evidence, fill the stage's required items that the runtime
        knows itself, and report what is still missing."""
        hasher = self.lanes.hasher
        for key, value in (given or {}).items():
            record.evidence.setdefault(key, hasher.digest(value if isinstance(value, str) else repr(value)))
        required = self.lanes.required_evidence.get(record.stage, ())
        missing = []
        for item in required:
            if item in record.evidence:
                continue
            value = self._known_evidence(item, record, reason)
            if value is None:
                missing.append(item)
            else:
                record.evidence[item] = hasher.digest(value)
        record.missing_evidence = missing
        if missing:
            self._log.warning("evidence.missing", stage=record.name, missing=missing)

    def _known_evidence(self, item: str, record: StageRecord, reason: str | None) -> str | None:
        """The value of a required-evidence item the runtime knows without being told."""
        decisions = record.decisions
        if item == "taskClass":
            return self.task_class
        if item == "riskClass":
            return self.risk_class
        if item == "escalationReasonIfAny":
            return reason or "none"
        if item == "status":
            return record.status
        if decisions and item in ("initialLane", "routingReason", "reviewLane", "policyDecision"):
            first, last = decisions[0], decisions[-1]
            return {
                "initialLane": first.lane or "",
                "routingReason": last.reason,
                "reviewLane": last.lane or "",
                "policyDecision": last.decision_id,
            }[item]
        if item in ("tests", "linters") and record.verifications:
            return ",".join(sorted({r.name for batch in record.verifications for r in batch}))
        return None

    async def _receipt(
        self,
        record: StageRecord,
        decision: RouteDecision,
        *,
        from_lane: str | None,
        reason: str,
        evidence_refs: Sequence[str],
    ) -> Receipt:
        assert decision.lane is not None
        approval: Approval | None = None
        if self.lanes.human_justification.get(self.task_class, False):
            approver = self.lanes.approver
            request = ApprovalRequest(
                self.run_id,
                record.name,
                self.task_class,
                self.risk_class,
                from_lane or "none",
                decision.lane,
                reason,
                decision.decision_id,
                decision.estimated_cost or 0.0,
            )
            if self.lanes.replay is not None:
                approval = self.lanes.replay.serve_approval()
            else:
                approval = await approver(request) if approver is not None else None
            if approval is None or not approval.approved:
                who = None if approval is None else approval.approver
                raise EscalationDenied(
                    f"Escalating stage {record.name!r} to {decision.lane} needs a human justification for task "
                    f"class {self.task_class!r}, and "
                    + ("no approver is configured (Lanes(approver=...))." if approval is None else f"{who} denied it."),
                    decision=decision,
                    approver=who,
                    run_id=self.run_id,
                    stage=record.name,
                )
        body = receipt_body(
            run_id=self.run_id,
            stage=record.name,
            task_class=self.task_class,
            risk_class=self.risk_class,
            from_lane=from_lane,
            to_lane=decision.lane,
            reason=reason,
            decision_id=decision.decision_id,
            evidence_refs=evidence_refs,
            approver=None if approval is None else approval.approver,
            justification_digest=None if approval is None else self.lanes.hasher.digest(approval.justification),
            created_at=_now_iso(),
        )
        with anyio.CancelScope(shield=True):
            stored = await self.lanes.store.append_receipt(self.run_id, body, self.lanes.signer.seal)
        receipt = Receipt.from_text(stored.text)
        self._steps[receipt.receipt_id] = self._next_step()
        if self.lanes.replay is not None:
            self.lanes.replay.check_escalation(from_lane, decision.lane, reason, decision.decision_id)
        record.receipts.append(receipt)
        self.receipts.append(receipt)
        self._log.info(
            "stage.escalated",
            stage=record.name,
            from_lane=from_lane,
            to_lane=decision.lane,
            reason=reason,
            receipt=receipt.receipt_id,
            digest=receipt.digest,
        )
        return receipt

    async def _tool(self, parent: StageRecord, tool: Callable[[Any], Any], output: Any) -> None:
        record = StageRecord(
            name=f"{parent.name}.tool", stage="tool-use", started=time.perf_counter(), parent=parent.name
        )
        parent.children.append(record)
        self.records.append(record)
        try:
            decision = await self._decide("tool-use", deterministic=True, reason=None, excluded=(), requested_lane=None)
            record.decisions.append(decision)
            if decision.lane != "no-model":
                raise RouteDeferred(decision, run_id=self.run_id, stage=record.name)
            out = tool(output)
            if hasattr(out, "__await__"):
                await out
            record.attempts = 1
            record.status = "succeeded"
            record.evidence["toolName"] = self.lanes.hasher.digest(getattr(tool, "__name__", "tool"))
            self._finish_evidence(record, {"actionClass": "write", "policyDecision": decision.decision_id}, None)
        except BaseException:
            record.status = "failed"
            raise
        finally:
            record.ended = time.perf_counter()
            self._observe(record)

    async def _verify_output(
        self, parent: StageRecord, output: Any, verifiers: Sequence[Verifier], own_record: StageRecord | None = None
    ) -> list[VerifierResult]:
        deterministic = [v for v in verifiers if v.deterministic]
        judges = [v for v in verifiers if not v.deterministic]
        record = own_record or StageRecord(
            name=f"{parent.name}.verify", stage="verification", started=time.perf_counter(), parent=parent.name
        )
        if own_record is None:
            parent.children.append(record)
        if own_record is None:
            self.records.append(record)
        results: list[VerifierResult] = []
        try:
            if deterministic:
                decision = await self._decide(
                    "verification", deterministic=True, reason=None, excluded=(), requested_lane=None
                )
                record.decisions.append(decision)
                if decision.lane != "no-model":
                    raise RouteDeferred(decision, run_id=self.run_id, stage=record.name)
                context = VerifyContext(self.lanes.max_log_lines, self.variables)
                for v in deterministic:
                    step = self._next_step()
                    if self.lanes.replay is not None:
                        result = self.lanes.replay.serve_verifier(v.name)
                    else:
                        result = await v.verify(output, context)
                    results.append(result)
                    record.result_steps.append(step)
                    self._log.debug(
                        "verifier.result",
                        stage=record.name,
                        verifier=v.name,
                        passed=results[-1].passed,
                        exit_status=results[-1].exit_status,
                    )
            else:
                # Model judgment only where no deterministic verifier can decide.
                for judge in judges:
                    assert isinstance(judge, ModelVerifier)
                    results.append(await self._judge(record, judge, output))
            record.attempts += 1
            record.verifications.append(results)
            if parent is not record:
                parent.verifications.append(results)
            record.status = "succeeded" if all(r.passed for r in results) else "failed"
            self._finish_evidence(record, {"status": record.status}, None)
        finally:
            record.ended = time.perf_counter()
            if own_record is None:
                self._observe(record)
        return results

    async def _judge(self, parent: StageRecord, judge: ModelVerifier, output: Any) -> VerifierResult:
        async def ask(ctx: StageContext) -> VerifierResult:
            reply = await ctx.complete(
                f"{judge.instructions}\n\nAnswer PASS or FAIL on the first line, then one line of reasons.\n\n"
                f"---\n{output}",
                max_tokens=200,
            )
            verdict = reply.text.strip().upper().startswith("PASS")
            first_line = reply.text.strip().splitlines()[0][:200] if reply.text.strip() else ""
            return VerifierResult(
                judge.name, verdict, "model", f"model judged {'PASS' if verdict else 'FAIL'}", output=first_line
            )

        return await self.stage_with(judge.stage, ask, name=f"{parent.name}.judge", parent=parent.name)

    # ------------------------------------------------------------------ model calls

    async def _call(self, ctx: StageContext, messages: list[Message], settings: ModelSettings) -> ModelResponse:
        lanes = self.lanes
        tried: list[tuple[str, str]] = []
        last_error: BaseException | None = None
        while True:
            lane = ctx.lane
            if lane is None or lane == "no-model":
                raise ConfigurationError(
                    f"Stage {ctx.name!r} runs on the no-model lane (deterministic code); it cannot call a model. "
                    "Route it without deterministic=True, or do the work in code."
                )
            models = lanes.models_for(lane)
            if not lanes.models.get(lane):
                raise ConfigurationError(
                    f"Stage {ctx.name!r} was routed to lane {lane!r}, but no model is bound to it "
                    f"(bound lanes: {', '.join(lanes.models) or 'none'}); add one in Lanes(models={{...}})."
                )
            try:
                for model in models:
                    try:
                        return await self._call_model(ctx, model, messages, settings)
                    except ModelError as exc:
                        last_error = exc
                        lanes.cool(model)
                        self._log.warning(
                            "model.cooldown", stage=ctx.name, lane=lane, model=model.name, seconds=lanes.cooldown
                        )
                raise _Reroute(lane, "provider-unavailable")
            except _Reroute as signal:
                tried.append((signal.lane, signal.why))
                decision = await self._decide(
                    ctx.stage,
                    deterministic=False,
                    reason=ctx.decision.request.escalation_reason,
                    excluded=(*ctx.decision.request.excluded_lanes, *tried),
                    requested_lane=None,
                    ledger_remaining=signal.remaining,
                    risk_class=ctx.decision.request.risk_class,
                )
                old_cost = ctx.decision.estimated_cost or 0.0
                if (
                    not decision.admitted
                    or decision.lane is None
                    or decision.estimated_cost is None
                    or decision.estimated_cost > old_cost
                    # a premium lane needs an escalation with a receipt, never a fallback
                    or decision.lane in PREMIUM_LANES
                ):
                    if signal.why == "budget-pressure":
                        refusal = Refusal("task", self.run_id, "cap", to_micro(signal.remaining or 0))
                        raise BudgetExhausted(
                            f"Stage {ctx.name!r}: the budget cannot hold a call on {signal.lane} and no cheaper "
                            "lane is feasible.",
                            refusal=refusal,
                            run_id=self.run_id,
                            stage=ctx.name,
                        ) from None
                    raise ModelError(
                        f"Stage {ctx.name!r}: every model on lane {signal.lane} failed, and no feasible lane that "
                        f"is not dearer remains (never a silent upgrade).",
                        run_id=self.run_id,
                        stage=ctx.name,
                    ) from last_error
                ctx.record.decisions.append(decision)
                ctx.decision = decision
                self._log.info(
                    "stage.fallback",
                    stage=ctx.name,
                    from_lane=signal.lane,
                    to_lane=decision.lane,
                    why=signal.why,
                    decision_id=decision.decision_id,
                )

    async def _call_model(
        self, ctx: StageContext, model: Model, messages: list[Message], settings: ModelSettings
    ) -> ModelResponse:
        policy = self.lanes.retry

        def backoff(attempt_number: int, exc: BaseException | None) -> float:
            wait = min(policy.max_wait, policy.initial_wait * 2 ** (attempt_number - 1))
            asked = getattr(exc, "retry_after", None)
            return float(min(policy.max_wait, max(wait, asked))) if asked is not None else wait

        def fail(exc: ProviderError, attempts: int) -> ModelError:
            return ModelError(
                f"Stage {ctx.name!r}: {model.provider}/{model.name} failed: {exc} (after {attempts} attempt(s)).",
                run_id=self.run_id,
                stage=ctx.name,
            )

        started = time.monotonic()
        # The first attempt runs directly: tenacity's machinery is only built once a
        # retryable failure has happened (it is most of a stage's overhead otherwise).
        try:
            return await self._attempt(ctx, model, messages, settings, 1)
        except ProviderError as exc:
            if not exc.retryable or policy.attempts <= 1:
                raise fail(exc, 1) from exc
            first = exc
        await anyio.sleep(backoff(1, first))
        retrying = AsyncRetrying(
            stop=stop_after_attempt(policy.attempts - 1)
            | stop_after_delay(max(0.0, policy.max_delay - (time.monotonic() - started))),
            wait=lambda state: backoff(state.attempt_number + 1, state.outcome.exception() if state.outcome else None),
            retry=retry_if_exception(lambda e: isinstance(e, ProviderError) and e.retryable),
            sleep=anyio.sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(ctx, model, messages, settings, attempt.retry_state.attempt_number + 1)
        except ProviderError as exc:
            raise fail(exc, 1 + int(retrying.statistics.get("attempt_number", 1))) from exc
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    async def _attempt(
        self, ctx: StageContext, model: Model, messages: list[Message], settings: ModelSettings, number: int
    ) -> ModelResponse:
        lanes = self.lanes
        lane = ctx.lane
        assert lane is not None
        est_in = sum(estimate_tokens(m.content) for m in messages)
        estimate = to_micro(lanes.router.call_cost(lane, input_tokens=est_in, output_tokens=settings.max_tokens))
        # A reservation made must be seen, to be released: shield it (unless the store
        # cannot be interrupted halfway anyway).
        with anyio.CancelScope(shield=not lanes.store.cancel_safe):
            held = await lanes.ledger.reserve(self.run_id, lane, estimate)
        if isinstance(held, Refusal):
            self._log.warning(
                "budget.refused",
                stage=ctx.name,
                lane=lane,
                window=held.window,
                why=held.reason,
                available=held.available,
                estimate=estimate,
            )
            if lanes.on_budget_pressure == "downgrade":
                raise _Reroute(lane, "budget-pressure", float(from_micro(held.available)))
            raise BudgetExhausted(
                f"Stage {ctx.name!r}: the {held.window} budget window cannot hold a call on {lane} "
                f"({held.reason}; {from_micro(held.available)} left, {from_micro(estimate)} needed) and the "
                f"optimizer says {lanes.on_budget_pressure}.",
                refusal=held,
                run_id=self.run_id,
                stage=ctx.name,
            )
        reservation: Reservation = held
        prompt_text = "\n".join(f"{m.role}:{m.content}" for m in messages)  # digest and stored body
        call = CallRecord(
            lane,
            model.name,
            model.provider,
            number,
            estimate,
            0,
            None,
            False,
            0.0,
            prompt_digest=lanes.hasher.digest(prompt_text),
        )
        call.max_tokens = settings.max_tokens
        call.started_ns = time.time_ns()
        telemetry = lanes.telemetry
        if telemetry.capture_content:
            call.prompt_text = json.dumps(
                [{"role": m.role, "content": m.content} for m in messages], ensure_ascii=False
            )
        if lanes.content is not None:
            lanes.content.put(call.prompt_digest or "", prompt_text)
        ctx.record.calls.append(call)
        started = time.perf_counter()
        timeout = settings.timeout or lanes.call_timeout
        try:
            call.step = self._next_step()
            with anyio.fail_after(timeout):
                if lanes.replay is not None:
                    response = lanes.replay.serve_call(lane, call.prompt_digest or "")
                else:
                    response = await model.request(messages, settings)
        except BaseException as exc:
            call.duration = time.perf_counter() - started
            usage = getattr(exc, "usage", None)
            with anyio.CancelScope(shield=not lanes.store.cancel_safe):
                if isinstance(usage, Usage):
                    call.charged = await lanes.ledger.settle(reservation, self._price(lane, usage))
                else:
                    await lanes.ledger.release(reservation)
            call.error = type(exc).__name__
            call.status = getattr(exc, "status", None)
            call.retryable = bool(getattr(exc, "retryable", False))
            if not isinstance(exc, anyio.get_cancelled_exc_class()):
                lanes.stats.record(model.provider, False, call.duration * 1000)
                self._log.warning(
                    "model.call_failed",
                    stage=ctx.name,
                    lane=lane,
                    model=model.name,
                    attempt=number,
                    error=type(exc).__name__,
                    status=call.status,
                )
            if isinstance(exc, TimeoutError):
                raise ProviderError(f"{model.provider}: no answer within {timeout:g}s", retryable=True) from exc
            raise
        call.duration = time.perf_counter() - started
        actual = self._price(lane, response.usage)
        with anyio.CancelScope(shield=not lanes.store.cancel_safe):
            call.charged = await lanes.ledger.settle(reservation, actual)
        call.ok = True
        call.usage = response.usage
        call.usage_estimated = response.usage_estimated
        call.response_model = response.model_name
        call.output_digest = lanes.hasher.digest(response.text)
        if telemetry.capture_content:
            call.output_text = response.text
        if lanes.content is not None:
            lanes.content.put(call.output_digest, response.text)
        lanes.stats.record(model.provider, True, call.duration * 1000)
        self._log.debug(
            "model.call",
            stage=ctx.name,
            lane=lane,
            model=model.name,
            attempt=number,
            input_tokens=response.usage.input_tokens,
            output_tokens=response.usage.output_tokens,
            reserved=estimate,
            charged=call.charged,
        )
        return response

    def _price(self, lane: str, usage: Usage) -> int:
        return to_micro(
            self.lanes.router.call_cost(lane, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens)
        )
