"""Lane-aware stages around a user's own agent loop: the façade users touch.

::

    lanes = Lanes(models={"standard": m1, "high-end": m2}, signals=StaticSignals({...}))
    async with lanes.run(task_class="routine-code") as run:
        plan = await run.stage("planning", make_plan, task)
        patch = await run.stage("execution", write_patch, plan, verify=[CommandVerifier(["pytest"])])
    run.result.cost, run.result.receipts

:class:`Lanes` holds the configuration (router, models per lane, signals, store,
approver, records); :class:`Run` is one task's run; :class:`StageContext` is what a
stage function receives. The stage engine itself (:mod:`agentlanes._engine`) does no
I/O: every effect goes through the run's :class:`~agentlanes.effects.Effects`, and what
happens reaches the run's processors (spans, the local record, logs, the observer) as
typed events.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import anyio
import anyio.to_thread
from pydantic import BaseModel

from agentlanes._calls import Charge, LaneModels, LaneStream, RetryPolicy, call, charge_external, open_stream
from agentlanes._engine import EngineConfig, RunEngine, tool_name
from agentlanes._runindex import DEFAULT_LEASE
from agentlanes.approval import Approver
from agentlanes.binding import BindingRequest
from agentlanes.ceiling import Ceiling, load_ceiling, parse_ceiling
from agentlanes.content import ContentHasher, ContentStore
from agentlanes.decision import RouteDecision
from agentlanes.effects import Effects, LiveEffects
from agentlanes.errors import ConfigurationError
from agentlanes.events import RunProcessor, StageEnded
from agentlanes.findings import Findings, parse_findings
from agentlanes.lanes import RANK
from agentlanes.ledger import BudgetLedger
from agentlanes.logs import LogProcessor
from agentlanes.models.base import Message, Model, ModelResponse, ModelSettings, ResponseFormat, Tool
from agentlanes.policy import PolicyBundle, load_bundle
from agentlanes.receipts import Receipt, ReceiptSigner
from agentlanes.result import CallRecord, RunResult, RunState, StageRecord
from agentlanes.router import Router
from agentlanes.sources import LiveSignals, ProviderStats, SignalSource, StaticSignals
from agentlanes.stores import MemoryStore, Store, open_store
from agentlanes.telemetry import OTLPExport, Telemetry, TraceProcessor
from agentlanes.tracefile import RUN_ID_RE, trace_path
from agentlanes.verifiers import Verifier, VerifierResult

if TYPE_CHECKING:
    from types import TracebackType

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


def _ceilings(docs: Sequence[Any]) -> tuple[Ceiling, ...]:
    """Routing ceilings from paths, mappings or parsed ceilings (a malformed document is
    kept as an invalid ceiling, which fails decisions closed)."""
    if isinstance(docs, (str, Path, Mapping)):
        docs = [docs]
    out = []
    for doc in docs:
        if isinstance(doc, Ceiling):
            out.append(doc)
        elif isinstance(doc, (str, Path)):
            out.append(load_ceiling(doc))
        else:
            out.append(parse_ceiling(doc))
    return tuple(out)


class _Observer:
    """Calls the user's observer with each stage record when it finishes."""

    event_types = (StageEnded,)

    def __init__(self, fn: Callable[[StageRecord], None]) -> None:
        self.fn = fn

    def on_event(self, event: Any) -> None:
        if type(event) is StageEnded:
            self.fn(event.record)


class Lanes:
    """Everything runs need: the router, models per lane, signals, budgets, approvals,
    records.

    Args:
        models: lane → a model, or several in preference order. ``no-model`` takes none.
        bundle: routing documents (the bundled defaults when omitted); or pass ``router``.
        policy / optimizer / catalog: any of the three documents (a path, a mapping or
            a loaded document), the bundled defaults for the others: e.g. an optimizer
            whose budget windows fit a tool loop on a premium lane.
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
        run_lease: seconds a run's index entry stays ``running`` without renewal; a run
            renews it as it routes stages, and one whose lease passed while its process
            is gone is marked ``abandoned`` by the next run (``agentlanes runs --repair``
            does it on demand). Make it longer than your longest stage.
        observer: called with each :class:`StageRecord` when it finishes (progress
            displays, custom metrics); it must not raise.
        tracing: emit OpenTelemetry spans (default on).
        tracer_provider: the provider to use (default: the application's global SDK
            provider when it has one, else a private one).
        capture_content: record prompts and outputs as text in spans (default: the
            ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` variable, else off).
        otlp_endpoint: also export spans over OTLP/HTTP (``agentlanes[otlp]``).
        otlp: the same with headers and a timeout (an :class:`~agentlanes.telemetry.OTLPExport`).
        resource_attributes: the resource of agentlanes' own tracer provider (when the
            application has none), e.g. ``{"service.name": "my-agent"}``.
        record: write each run's local record, ``<data-dir>/traces/<run-id>.otlp.jsonl``
            (independent of ``tracing``): what ``agentlanes show`` and ``replay`` read.
        record_content: keep prompt/output/verifier bodies in ``<data-dir>/content/``
            (never exported) so runs can be replayed exactly.
        findings_source: where each stage's sandbox findings come from (a function,
            sync or async, returning the findings document; CONTRACT D1): hosted lanes
            are removed for what the findings require (a source that returns nothing
            fails the stage closed).
        ceilings: routing-ceiling documents (paths, mappings or parsed ``Ceiling`` s)
            in force for every run (CONTRACT D2).
        binding: a local + personal binding request (``agentlanes.binding.BindingRequest``)
            for every run's decisions (CONTRACT D3).
        processors: more run processors fed every run event (see :mod:`agentlanes.events`).
        log: write structlog events (see :mod:`agentlanes.logs`).
        effects: where effects go (default: :class:`~agentlanes.effects.LiveEffects`);
            replay and durable-execution backends pass their own.
        hasher: keyed digests for content (default: the data directory's key).
    """

    def __init__(
        self,
        models: Mapping[str, Model | Sequence[Model]] | None = None,
        *,
        bundle: PolicyBundle | None = None,
        policy: str | Path | Mapping[str, Any] | None = None,
        optimizer: str | Path | Mapping[str, Any] | None = None,
        catalog: str | Path | Mapping[str, Any] | None = None,
        router: Router | None = None,
        signals: SignalSource | Mapping[str, Any] | None = None,
        store: Store | None = None,
        data_dir: str | Path | None = None,
        approver: Approver | None = None,
        retry: RetryPolicy | None = None,
        session_id: str | None = None,
        call_timeout: float = 120.0,
        cooldown: float = 30.0,
        run_lease: float = DEFAULT_LEASE,
        stats: ProviderStats | None = None,
        observer: Callable[[StageRecord], None] | None = None,
        tracing: bool = True,
        tracer_provider: Any = None,
        capture_content: bool | None = None,
        otlp_endpoint: str | None = None,
        otlp: OTLPExport | None = None,
        resource_attributes: Mapping[str, Any] | None = None,
        record: bool = True,
        record_content: bool = True,
        findings_source: Callable[[], Any] | None = None,
        ceilings: Sequence[Any] = (),
        binding: BindingRequest | None = None,
        processors: Sequence[RunProcessor] = (),
        log: bool = True,
        effects: Effects | None = None,
        hasher: ContentHasher | None = None,
    ) -> None:
        if policy is not None or optimizer is not None or catalog is not None:
            if bundle is not None or router is not None:
                raise ConfigurationError(
                    "Pass the routing documents one way: bundle=, router=, or policy=/optimizer=/catalog=."
                )
            bundle = load_bundle(policy, optimizer, catalog)
        self.router = router if router is not None else Router(bundle)
        self.bundle = self.router.bundle
        self.observer = observer
        self._tracing = (tracing, tracer_provider, capture_content, otlp_endpoint, otlp, resource_attributes)
        self._telemetry: Telemetry | None = None
        self.record = record
        self.record_content = record_content
        self._content: ContentStore | None = None
        bound: dict[str, tuple[Model, ...]] = {}
        if models is not None and not isinstance(models, Mapping):
            raise ConfigurationError(
                f"Lanes(models=...) takes a mapping of lane to model(s), not {type(models).__name__} "
                f"({models!r:.80}); for example Lanes({{'cheap': model, 'standard': [primary, fallback]}})."
            )
        for lane, given in (models or {}).items():
            if lane not in RANK:
                raise ConfigurationError(f"Model binding for {lane!r}: not a lane (lanes: {', '.join(RANK)}).")
            if lane == "no-model":
                raise ConfigurationError("The no-model lane runs deterministic code; it cannot have a model bound.")
            seq = (
                (given,) if isinstance(given, Model) else tuple(given) if isinstance(given, (list, tuple)) else (given,)
            )
            for m in seq:
                if not isinstance(m, Model):
                    raise ConfigurationError(
                        f"Model binding for {lane!r} holds {m!r}, which is not an agentlanes Model "
                        "(wrap it in an adapter such as OpenAIChatModel or FunctionModel)."
                    )
            bound[lane] = seq
        self._models = LaneModels(bound, cooldown)
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
        self.session_id = session_id or f"session-{os.urandom(8).hex()}"
        self.call_timeout = call_timeout
        self.cooldown = cooldown
        self._ledger: BudgetLedger | None = None
        self._hasher = hasher
        self._signer: ReceiptSigner | None = None
        self._user_processors = tuple(processors)
        self._log = log
        self._processors: tuple[RunProcessor, ...] | None = None
        self._config: EngineConfig | None = None
        self.findings_source = findings_source
        self.ceilings = _ceilings(ceilings)
        self.binding = binding
        if (
            isinstance(run_lease, bool)
            or not isinstance(run_lease, (int, float))
            or not 1.0 <= run_lease <= 365 * 86_400
        ):
            raise ConfigurationError(
                f"Lanes(run_lease={run_lease!r}): give the seconds a run's index entry stays 'running' "
                "without renewal, from 1 to 31536000 (default 600)."
            )
        self.effects: Effects = effects or LiveEffects(
            signals=self.signals,
            ledger=lambda: self.ledger,
            store=lambda: self.store,
            approver=approver,
            signer=lambda: self.signer,
            findings_source=findings_source,
            run_lease=float(run_lease),
        )
        self.currency = self.bundle.optimizer.budget_policy.currency

    @classmethod
    def from_config(cls, path: str | Path, **kwargs: Any) -> Lanes:
        """Lanes whose models are bound to endpoints by a models file (TOML; see
        :mod:`agentlanes.config`); ``kwargs`` are the other :class:`Lanes` arguments."""
        from agentlanes.config import load_models

        if "models" in kwargs:
            raise ConfigurationError("Lanes.from_config() binds the models from the file; do not pass models= too.")
        return cls(load_models(path), **kwargs)

    @property
    def models(self) -> dict[str, tuple[Model, ...]]:
        """The models bound to each lane, in preference order."""
        return self._models.bound

    @property
    def store(self) -> Store:
        """The store (the SQLite default is opened on first use)."""
        if self._store is None:
            self._store = open_store(None, self.data_dir)
        return self._store

    @property
    def ledger(self) -> BudgetLedger:
        if self._ledger is None:
            store = self.store
            # A charge the store could not record is journaled on disk and applied when
            # it answers again; a memory store always answers and dies with the process.
            journal = None if isinstance(store, MemoryStore) else self.data_dir / "journal"
            self._ledger = BudgetLedger(store, self.bundle.optimizer, session_id=self.session_id, journal_dir=journal)
        return self._ledger

    @property
    def telemetry(self) -> Telemetry:
        """Spans (created on first use)."""
        if self._telemetry is None:
            enabled, provider, capture, endpoint, otlp, resource = self._tracing
            self._telemetry = Telemetry(
                enabled=enabled,
                tracer_provider=provider,
                capture_content=capture,
                otlp_endpoint=endpoint,
                otlp=otlp,
                resource_attributes=resource,
            )
        return self._telemetry

    @property
    def content(self) -> ContentStore | None:
        """The local content store for replay bodies (``None`` when off)."""
        if self.record and self.record_content and self._content is None:
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

    @property
    def config(self) -> EngineConfig:
        if self._config is None:
            self._config = EngineConfig.from_bundle(
                self.router,
                self.bundle,
                retry=self.retry,
                call_timeout=self.call_timeout,
                hasher=self.hasher,
                capture_content=self.telemetry.capture_content,
            )
        return self._config

    def processors(self) -> tuple[RunProcessor, ...]:
        """The processors every run of these lanes feeds (built on first use)."""
        if self._processors is None:
            tracing = self._tracing[0]
            telemetry = self.telemetry
            procs: list[RunProcessor] = []
            if tracing or self.record:
                procs.append(
                    TraceProcessor(
                        telemetry if tracing else None,
                        record=self.record,
                        content=self.content,
                        capture_content=telemetry.capture_content,
                    )
                )
            if self._log:
                procs.append(LogProcessor(telemetry.exporter))
            procs.append(self.stats)
            if self.observer is not None:
                procs.append(_Observer(self.observer))
            procs.extend(self._user_processors)
            self._processors = tuple(procs)
        return self._processors

    def run(
        self,
        *,
        task_class: str,
        risk_class: str = "medium",
        escalation_reason: str | None = None,
        run_id: str | None = None,
        variables: Mapping[str, str] | None = None,
        chain: str | None = None,
        findings: Any = None,
        ceilings: Sequence[Any] = (),
        binding: BindingRequest | None = None,
    ) -> Run:
        """A run of one task: ``async with lanes.run(...) as run:``.

        Args:
            task_class: a task class of the policy.
            risk_class: low, medium, high or critical.
            escalation_reason: why this task may use premium lanes up to planning
                (de-escalation drops it after the planning stage); one of the policy's
                allowed reasons.
            run_id: an id of your own (default: generated); letters, digits and
                ``._:-``, as it names the run's trace file.
            variables: values for ``{name}`` placeholders in command verifiers.
            chain: a name for the chain being run, recorded with the run (never
                imported back by replay; name the code there).
            findings: sandbox findings for every stage of this run (instead of the
                ``findings_source``): a findings document or a parsed ``Findings``.
            ceilings: more routing ceilings, for this run (added to the Lanes' ones).
            binding: a binding request for this run (instead of the Lanes' one).
        """
        if run_id is not None and not RUN_ID_RE.match(run_id):
            raise ConfigurationError(
                f"Run id {run_id!r} may hold only letters, digits, '.', '_', ':' and '-' (at most 200), "
                "as it names the run's trace file."
            )
        run = Run(
            self,
            task_class=task_class,
            risk_class=risk_class,
            escalation_reason=escalation_reason,
            run_id=run_id,
            variables=variables,
            chain=chain,
        )
        state = run._state
        if findings is not None:
            state.findings = findings if isinstance(findings, Findings) else parse_findings(findings)
        state.ceilings = (*self.ceilings, *_ceilings(ceilings))
        state.binding = binding if binding is not None else self.binding
        return run

    def models_for(self, lane: str) -> tuple[Model, ...]:
        """The lane's models in preference order, skipping those cooling down."""
        return self._models.available(lane, self.effects.now_ns())

    async def aclose(self) -> None:
        """Close the store, the effects and the models, and send the spans still queued
        for export (bounded by the export timeout)."""
        if self._telemetry is not None and self._telemetry.exporter_processor is not None:
            await anyio.to_thread.run_sync(self._telemetry.shutdown_export)
        for seq in self._models.bound.values():
            for m in seq:
                await m.aclose()
        await self.effects.aclose()
        if self._store is not None:
            await self._store.aclose()


class LaneModel(Model):
    """The stage's model: whichever model the router's lane binds, with reservations,
    retries, fallback and accounting around every request (and stream)."""

    def __init__(self, ctx: StageContext) -> None:
        self._ctx = ctx
        self.provider = "agentlanes"

    @property
    def name(self) -> str:  # type: ignore[override]
        models = self._ctx.run.lanes.models.get(self._ctx.lane or "", ())
        return models[0].name if models else f"<{self._ctx.lane}>"

    async def request(self, messages: Sequence[Message], settings: ModelSettings) -> ModelResponse:
        return await call(self._ctx._engine, self._ctx, list(messages), settings)

    async def stream(self, messages: Sequence[Message], settings: ModelSettings) -> AsyncIterator[Any]:
        lane_stream = await open_stream(self._ctx._engine, self._ctx, list(messages), settings)
        async with lane_stream:
            async for event in lane_stream:
                yield event
            if lane_stream.response is not None:
                yield lane_stream.response


class _Opening:
    """``async with ctx.stream(...) as stream``: opens on entry, closes on exit."""

    def __init__(self, ctx: StageContext, messages: list[Message], settings: ModelSettings) -> None:
        self._ctx = ctx
        self._messages = messages
        self._settings = settings
        self._stream: LaneStream | None = None

    async def __aenter__(self) -> LaneStream:
        self._stream = await open_stream(self._ctx._engine, self._ctx, self._messages, self._settings)
        return self._stream

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._stream is not None:
            await self._stream.aclose()


class StageContext:
    """What a stage function receives.

    Attributes:
        run: the run.
        name: the stage's name (defaults to its chain stage).
        stage: the chain stage (``planning``, ``execution``...).
        decision: the router's decision for this attempt.
        attempt: 1 for the first attempt.
        feedback: the failing verifier results of the previous attempt.
        model: the lane's model (``await ctx.model.request(messages, settings)``).
    """

    def __init__(
        self,
        run: Run,
        engine: RunEngine,
        record: StageRecord,
        decision: RouteDecision,
        attempt: int,
        feedback: Sequence[VerifierResult],
        max_tokens: int | None,
    ) -> None:
        self.run = run
        self._engine = engine
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

    def _request(
        self,
        prompt: str | Sequence[Message],
        system: str | None,
        settings: ModelSettings | None,
        options: dict[str, Any],
    ) -> tuple[list[Message], ModelSettings]:
        messages = [Message("user", prompt)] if isinstance(prompt, str) else list(prompt)
        for i, m in enumerate(messages):
            if not isinstance(m, Message):
                raise ConfigurationError(
                    f"Stage {self.name!r}: message {i} is {m!r}, not a Message (Message('user', 'text'))."
                )
        if system is not None:
            messages.insert(0, Message("system", system))
        fields = {k: v for k, v in options.items() if v is not None}
        tools = fields.get("tools")
        if tools is not None:
            if tools:
                fields["tools"] = tuple(tools)
            else:
                del fields["tools"]
        response_format = fields.get("response_format")
        if isinstance(response_format, type) and issubclass(response_format, BaseModel):
            fields["response_format"] = ResponseFormat(response_format.model_json_schema(), response_format.__name__)
        elif isinstance(response_format, Mapping):
            fields["response_format"] = ResponseFormat(dict(response_format))
        if settings is None:
            return messages, ModelSettings(**{"max_tokens": self.max_tokens or 1024, **fields})
        return messages, dataclasses.replace(settings, **fields) if fields else settings

    async def complete(
        self,
        prompt: str | Sequence[Message],
        *,
        system: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        tools: Sequence[Tool] = (),
        tool_choice: str | None = None,
        response_format: ResponseFormat | type[BaseModel] | Mapping[str, Any] | None = None,
        timeout: float | None = None,
        settings: ModelSettings | None = None,
    ) -> ModelResponse:
        """Ask the lane's model; ``prompt`` is a user message or a full message list
        (with tool calls and tool results, for a tool loop).

        Args:
            system: a system message put first.
            max_tokens / temperature / timeout: per-call settings.
            tools: tools the model may call (its reply's ``tool_calls``).
            tool_choice: ``"auto"``, ``"none"``, ``"required"`` or a tool's name.
            response_format: structured output: a pydantic model, a JSON schema, or a
                :class:`~agentlanes.models.ResponseFormat`.
            settings: a whole :class:`~agentlanes.models.ModelSettings` (the other
                keywords override its fields).
        """
        messages, merged = self._request(
            prompt,
            system,
            settings,
            {
                "max_tokens": max_tokens,
                "temperature": temperature,
                "tools": tools,
                "tool_choice": tool_choice,
                "response_format": response_format,
                "timeout": timeout,
            },
        )
        if type(self.model) is LaneModel:  # what its request does, without its frame (a parked stage's memory)
            return await call(self._engine, self, messages, merged)
        return await self.model.request(messages, merged)

    def stream(
        self,
        prompt: str | Sequence[Message],
        *,
        system: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        tools: Sequence[Tool] = (),
        tool_choice: str | None = None,
        response_format: ResponseFormat | type[BaseModel] | Mapping[str, Any] | None = None,
        timeout: float | None = None,
        settings: ModelSettings | None = None,
    ) -> AbstractAsyncContextManager[LaneStream]:
        """:meth:`complete`, streamed: ``async with ctx.stream(prompt) as stream: async
        for event in stream: ...``; ``stream.response`` is the whole reply at the end.
        Leaving the block early closes the stream and settles what it used."""
        messages, merged = self._request(
            prompt,
            system,
            settings,
            {
                "max_tokens": max_tokens,
                "temperature": temperature,
                "tools": tools,
                "tool_choice": tool_choice,
                "response_format": response_format,
                "timeout": timeout,
            },
        )
        return _Opening(self, messages, merged)

    def openai_client(self, **client_kwargs: Any) -> Any:
        """An ``openai.AsyncOpenAI`` bound to this stage's lane: keep your loop's own
        ``client.chat.completions.create(model=..., messages=..., tools=..., stream=...)``;
        each request runs on the lane's model (``model`` is replaced), reserved, settled
        from its reported usage, recorded, traced and replayable. Chat completions only
        (``agentlanes[openai]``)."""
        from agentlanes._client import lane_client

        return lane_client(self, **client_kwargs)

    def charge(
        self, *, input_tokens: int = 0, output_tokens: int = 1024, model: str = "external"
    ) -> AbstractAsyncContextManager[Charge]:
        """Account for a model call agentlanes cannot see (your own HTTP client, an SDK
        it does not wrap): reserves the estimate on this stage's lane up front, and
        settles what you report with ``charge.usage(...)``, or the whole estimate when
        you report nothing (the call may have reached the model)::

            async with ctx.charge(input_tokens=2000, output_tokens=500) as charge:
                reply = await my_client.generate(...)
                charge.usage(reply.usage.prompt_tokens, reply.usage.completion_tokens)

        Exact replay cannot serve such a call: it runs your code again."""
        return charge_external(self._engine, self, input_tokens, output_tokens, model)

    async def tool(self, fn: Callable[[Any], Any], subject: Any, *, name: str | None = None) -> Any:
        """Run a deterministic tool (sync or async ``fn(subject)``) as a recorded step of
        this stage. Exact replay serves its result from the record instead of running it
        again, so give tools JSON results (``name`` defaults to the function's)."""
        if not callable(fn):
            raise ConfigurationError(f"ctx.tool() needs a function, got {fn!r}.")
        return await self._engine.run_tool(self.record, name or tool_name(fn), fn, subject)

    def record_evidence(self, name: str, value: Any) -> str:
        """Record a required-evidence item (stored as a keyed digest); returns the digest."""
        digest = self._engine.config.hasher.digest(value if isinstance(value, (str, bytes)) else repr(value))
        self.record.evidence[name] = digest
        return digest


def _is_async_callable(fn: Any) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - callable objects with an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


_SIGNATURES: dict[tuple[Any, int, tuple[str, ...]], str | None] = {}


def _argument_problem(fn: Any, nargs: int, keys: tuple[str, ...]) -> str | None:
    """Why ``fn(ctx, *args, **kwargs)`` cannot be called with that many arguments, or
    ``None`` (cached per function and call shape: the stage hot path pays a lookup)."""
    # Closures made per call share their code object: key on it where there is one.
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    cache_key: Any = (code if code is not None else fn, nargs, keys)
    try:
        return _SIGNATURES[cache_key]
    except KeyError:
        pass
    except TypeError:  # an unhashable callable: check every time
        cache_key = None
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        problem = None
    else:
        try:
            signature.bind(object(), *range(nargs), **dict.fromkeys(keys))
            problem = None
        except TypeError as exc:
            problem = f"{exc} (its signature is {getattr(fn, '__name__', 'fn')}{signature})"
    if cache_key is not None and len(_SIGNATURES) < 4096:
        _SIGNATURES[cache_key] = problem
    return problem


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
        self._state = RunState(
            run_id=run_id or lanes.effects.new_id("run"),
            task_class=task_class,
            risk_class=risk_class,
            escalation_reason=escalation_reason,
            chain=chain,
            variables={"python": sys.executable, **(variables or {})},
            currency=lanes.currency,
        )
        if lanes.record:
            self._state.trace_path = trace_path(lanes.data_dir, self._state.run_id)
        self._engine: RunEngine | None = None

    # ------------------------------------------------------------------ state

    @property
    def run_id(self) -> str:
        return self._state.run_id

    @property
    def task_class(self) -> str:
        return self._state.task_class

    @property
    def risk_class(self) -> str:
        return self._state.risk_class

    @property
    def escalation_reason(self) -> str | None:
        return self._state.escalation_reason

    @property
    def variables(self) -> dict[str, str]:
        return self._state.variables

    @property
    def chain(self) -> str | None:
        return self._state.chain

    @property
    def status(self) -> str:
        """``created``, ``running``, ``succeeded``, ``failed`` or ``cancelled``."""
        return self._state.status

    @property
    def records(self) -> list[StageRecord]:
        """Every stage record so far, in the order stages started."""
        return self._state.records

    @property
    def receipts(self) -> list[Receipt]:
        return self._state.receipts

    @property
    def trace_path(self) -> Path | None:
        """The run's local record (``None`` with ``Lanes(record=False)``)."""
        return self._state.trace_path

    @property
    def output(self) -> Any:
        """The run's output, when the code sets it (recorded as a digest, and compared
        by exact replay)."""
        return self._state.output

    @output.setter
    def output(self, value: Any) -> None:
        self._state.output = value

    @property
    def cost_micro(self) -> int:
        return self._state.cost_micro

    @property
    def result(self) -> RunResult:
        """The run as it stands (final once the ``async with`` block has exited)."""
        return self._state.result()

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Run:
        if self._engine is not None:
            raise ConfigurationError(f"Run {self.run_id} was already entered; start another with lanes.run(...).")
        lanes = self.lanes
        self._engine = RunEngine(
            self._state,
            lanes.config,
            lanes.effects,
            lanes._models,
            lanes.processors(),
            lambda engine, record, decision, attempt, feedback, max_tokens: StageContext(
                self, engine, record, decision, attempt, feedback, max_tokens
            ),
        )
        await self._engine.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._engine is not None
        await self._engine.end(exc)

    def record_inputs(self, inputs: Mapping[str, Any]) -> str:
        """Keep the run's inputs (the task, variables) for exact replay: the text goes to
        the local content store, the trace holds only its digest. Returns the digest."""
        return self._running("record_inputs()").record_inputs(inputs)

    def _running(self, what: str) -> RunEngine:
        engine = self._engine
        if engine is None or self._state.status != "running":
            when = "before" if engine is None else "after"
            raise ConfigurationError(
                f"run.{what} was called {when} `async with lanes.run(...) as run:`; stages run inside that "
                "block (nothing was routed, spent or signed)."
            )
        return engine

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
        engine = self._running(f"stage({stage!r}, ...)")
        verifiers = self._check_stage(stage, fn, args, kwargs, (), None, None, engine)
        # stage_with's work with its defaults, one coroutine frame fewer for every stage
        return await engine.stage(
            stage,
            fn,
            args,
            kwargs,
            name=None,
            deterministic=False,
            escalation_reason=None,
            requested_lane=None,
            verify=verifiers,
            tool=None,
            max_tokens=None,
            evidence=None,
            parent=None,
            risk_class=None,
        )

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
        verify: Sequence[Verifier] | Verifier = (),
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
                run's reason no longer applies); one of the policy's allowed reasons.
            requested_lane: a lane to ask for (never used silently above the router's).
            verify: verifiers for the output; failures retry the stage with feedback
                and escalate after repeated standard-lane failure.
            tool: a deterministic tool applied to the output before verifying (a
                ``tool-use`` stage on ``no-model``), e.g. writing a patch to disk.
            max_tokens: default ``max_tokens`` for the stage's model calls.
            evidence: required-evidence items known up front.
            parent: run as a sub-stage of the running stage of that name.
            risk_class: this stage's own risk class, when it differs from the run's
                (a summary is a low-risk chore even in a medium-risk task).
        """
        engine = self._running(f"stage({stage!r}, ...)")
        kwargs = dict(kwargs or {})
        verifiers = self._check_stage(stage, fn, args, kwargs, verify, tool, escalation_reason, engine)
        parent_record = None
        if parent is not None:
            parent_record = engine.find_parent(parent)
            if parent_record is None:
                raise ConfigurationError(f"parent={parent!r} names no stage that is running in run {self.run_id}.")
        return await engine.stage(
            stage,
            fn,
            args,
            kwargs,
            name=name,
            deterministic=deterministic,
            escalation_reason=escalation_reason,
            requested_lane=requested_lane,
            verify=verifiers,
            tool=tool,
            max_tokens=max_tokens,
            evidence=evidence,
            parent=parent_record,
            risk_class=risk_class,
        )

    def _check_stage(
        self,
        stage: str,
        fn: Any,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        verify: Sequence[Verifier] | Verifier,
        tool: Any,
        escalation_reason: str | None,
        engine: RunEngine,
    ) -> tuple[Verifier, ...]:
        """Misuse fails loudly, before anything is routed, spent or signed."""
        where = f"Stage {stage!r}"
        if not isinstance(stage, str):
            raise ConfigurationError(f"The stage must be a chain stage name such as 'planning', got {stage!r}.")
        if not callable(fn):
            raise ConfigurationError(f"{where}: the stage function must be an async function, got {fn!r}.")
        if not _is_async_callable(fn) and getattr(fn, "__name__", None) != "<lambda>":
            raise ConfigurationError(
                f"{where}: {getattr(fn, '__qualname__', fn)!r} is a plain function; a stage function must be "
                f"`async def {getattr(fn, '__name__', 'step')}(ctx, ...)` (it awaits the lane's model)."
            )
        problem = _argument_problem(fn, len(args), tuple(kwargs))
        if problem is not None:
            raise ConfigurationError(
                f"{where}: {getattr(fn, '__qualname__', fn)!r} cannot be called with the stage context plus "
                f"{len(args)} positional and {len(kwargs)} keyword argument(s): {problem}. Pass exactly what it "
                "takes after ctx."
            )
        verifiers = (verify,) if isinstance(verify, Verifier) else tuple(verify)
        for v in verifiers:
            if not isinstance(v, Verifier):
                raise ConfigurationError(
                    f"{where}: verify=[...] holds {v!r}, which is not a Verifier; wrap a function in "
                    "CallableVerifier(fn), a command in CommandVerifier([...])."
                )
        if tool is not None and not callable(tool):
            raise ConfigurationError(f"{where}: tool= must be a function applied to the output, got {tool!r}.")
        engine.config.check_reason(escalation_reason, where)
        return verifiers

    async def verify(self, subject: Any, verifiers: Sequence[Verifier], *, name: str = "verification") -> bool:
        """Run verifiers as a ``verification`` stage of their own; True when all pass."""
        engine = self._running("verify(...)")
        checked = (verifiers,) if isinstance(verifiers, Verifier) else tuple(verifiers)
        for v in checked:
            if not isinstance(v, Verifier):
                raise ConfigurationError(
                    f"run.verify() got {v!r}, which is not a Verifier; wrap a function in CallableVerifier(fn)."
                )
        return await engine.verify_stage(subject, checked, name)
