"""The model-call path, as layered handlers (each one concern):

1. :func:`call` — **lane fallback**: when a lane's models are exhausted (or its budget
   cannot hold the call and the optimizer says ``downgrade``), ask the router again with
   that lane excluded, and accept only a lane that is not dearer and not premium (never
   a silent upgrade);
2. :func:`_on_models` — **model fallback**: the lane's models in preference order,
   skipping those cooling down; a model that fails all its retries cools down;
3. :func:`_with_retry` — **retry**: backoff, Retry-After, never retrying cancellation;
   the first attempt runs directly (tenacity is only built after a retryable failure);
4. :func:`_attempt` — **budget** and the **terminal request**: reserve the estimate in
   every window, send through the effects under a timeout, settle the actual price (or
   release) in a shielded scope, record the call.

Streaming is the same path with a twin terminal layer: :func:`open_stream` falls back
and retries like a request until the stream's first event arrives (after that nothing
can be taken back), and :class:`LaneStream` then yields the rest and settles what the
call used when it ends, however it ends (finished, closed early, failed, cancelled).
Nothing here does I/O but through the effects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

import anyio

from agentlanes.budget import Refusal, Reservation, from_micro, to_micro
from agentlanes.effects import Call
from agentlanes.errors import BudgetExhausted, ConfigurationError, ModelError, UnsettledCharge
from agentlanes.events import BudgetRefused, CallEnded, ChargeJournaled, ModelCooled, Rerouted
from agentlanes.lanes import PREMIUM_LANES
from agentlanes.models.base import (
    Message,
    Model,
    ModelResponse,
    ModelSettings,
    ProviderError,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    estimate_input_tokens,
    estimate_tokens,
    prompt_text,
    response_body,
)
from agentlanes.result import CallRecord, RefusalRecord

if TYPE_CHECKING:
    from agentlanes._engine import RunEngine
    from agentlanes.decision import RouteDecision
    from agentlanes.result import StageRecord

__all__ = ["Charge", "LaneModels", "LaneStream", "RetryPolicy", "call", "charge_external", "open_stream"]

T = TypeVar("T")

# Usage beyond this is not a token count any model reports (and would not price exactly).
_MAX_TOKENS = 2**40


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


class LaneModels:
    """The models bound to each lane, and which of them are cooling down."""

    def __init__(self, models: dict[str, tuple[Model, ...]], cooldown: float) -> None:
        self.bound = models
        self.cooldown = cooldown
        self._cooling: dict[int, int] = {}

    @property
    def cooling(self) -> bool:
        """Whether any model is (or was lately) cooling down."""
        return bool(self._cooling)

    def available(self, lane: str, now_ns: int) -> tuple[Model, ...]:
        """The lane's models in preference order, skipping those cooling down."""
        models = self.bound.get(lane, ())
        if not self._cooling:
            return models
        return tuple(m for m in models if self._cooling.get(id(m), 0) <= now_ns)

    def cool(self, model: Model, now_ns: int) -> None:
        self._cooling[id(model)] = now_ns + int(self.cooldown * 1e9)


class Site(Protocol):
    """Where a call is made: a stage context (its decision may change by fallback)."""

    record: StageRecord
    decision: RouteDecision
    name: str
    stage: str


class _Reroute(Exception):
    def __init__(self, lane: str, why: str, remaining: float | None = None) -> None:
        super().__init__(why)
        self.lane = lane
        self.why = why
        self.remaining = remaining


async def call(engine: RunEngine, site: Site, messages: list[Message], settings: ModelSettings) -> ModelResponse:
    """A model request on the stage's lane, through every layer.

    The common case, the lane's first model answering its first attempt, goes straight
    to layers 4-5; the layers above are entered only when that attempt fails (carrying
    the failure, so they go on exactly as if they had made it). That saves three
    coroutine frames per call, in time and in the memory of every call in flight.
    """
    first = _first_model(engine, site)
    failed = None
    if first is not None:
        lane, model = first
        started = engine.effects.now_ns()
        try:
            return await _attempt(engine, site, lane, model, messages, settings, 1)
        except (ProviderError, ModelError, _Reroute) as exc:
            failed = _Failed(lane, model, exc, started)
    return await _on_lanes(engine, site, messages, settings, _attempt, failed)


async def open_stream(engine: RunEngine, site: Site, messages: list[Message], settings: ModelSettings) -> LaneStream:
    """A streamed model request on the stage's lane: the same layers up to the stream's
    first event (with :func:`call`'s shortcut); the caller must close the returned
    stream (``async with``)."""
    first = _first_model(engine, site)
    failed = None
    if first is not None:
        lane, model = first
        started = engine.effects.now_ns()
        try:
            return LaneStream(engine, site, await _open(engine, site, lane, model, messages, settings, 1))
        except (ProviderError, ModelError, _Reroute) as exc:
            failed = _Failed(lane, model, exc, started)
    return LaneStream(engine, site, await _on_lanes(engine, site, messages, settings, _open, failed))


Attempt = Callable[["RunEngine", Site, str, Model, Sequence[Message], ModelSettings, int], Awaitable[T]]


class _Failed(NamedTuple):
    """The first attempt :func:`call` made on its own, which the layers carry on from."""

    lane: str
    """Where it was made (the stage's lane may have changed meanwhile, by another call's fallback)."""
    model: Model
    error: ProviderError | ModelError | _Reroute
    started: int
    """When it started (``now_ns``): the retry layer's ``max_delay`` counts from there."""


def _first_model(engine: RunEngine, site: Site) -> tuple[str, Model] | None:
    """The stage's lane and its first available model, or ``None`` where the layers
    must decide (no model lane, nothing bound, every model cooling down)."""
    lane = site.decision.lane
    if lane is None or lane == "no-model":
        return None
    models = engine.models.bound.get(lane)
    if not models:
        return None
    if engine.models.cooling:
        models = engine.models.available(lane, engine.effects.now_ns())
        if not models:
            return None
    return lane, models[0]


async def _on_lanes(
    engine: RunEngine,
    site: Site,
    messages: list[Message],
    settings: ModelSettings,
    attempt: Attempt[T],
    failed: _Failed | None = None,
) -> T:
    """Layer 1: run the call on the stage's lane, falling back to cheaper lanes."""
    tried: list[tuple[str, str]] = []
    last_error: BaseException | None = None
    while True:
        lane = site.decision.lane
        if lane is None or lane == "no-model":
            raise ConfigurationError(
                f"Stage {site.name!r} runs on the no-model lane (deterministic code); it cannot call a model. "
                "Route it without deterministic=True, or do the work in code."
            )
        if not engine.models.bound.get(lane):
            raise ConfigurationError(
                f"Stage {site.name!r} was routed to lane {lane!r}, but no model is bound to it "
                f"(bound lanes: {', '.join(engine.models.bound) or 'none'}); add one in Lanes(models={{...}})."
            )
        try:
            if failed is not None:
                made, failed = failed, None
                if isinstance(made.error, _Reroute):
                    raise made.error
                # its retries go on where it was made, as they would have in the layers
                return await _on_models(engine, site, made.lane, messages, settings, attempt, made)
            return await _on_models(engine, site, lane, messages, settings, attempt)
        except _Reroute as signal:
            if signal.__cause__ is not None:
                last_error = signal.__cause__
            tried.append((signal.lane, signal.why))
            request = site.decision.request
            decision = await engine.decide(
                site.record,
                site.stage,
                deterministic=False,
                reason=request.escalation_reason,
                excluded=(*request.excluded_lanes, *tried),
                requested_lane=None,
                ledger_remaining=signal.remaining,
                risk_class=request.risk_class,
            )
            old_cost = site.decision.estimated_cost or 0.0
            if (
                not decision.admitted
                or decision.lane is None
                or decision.estimated_cost is None
                or decision.estimated_cost > old_cost
                # a premium lane needs an escalation with a receipt, never a fallback
                or decision.lane in PREMIUM_LANES
            ):
                if signal.why == "budget-pressure":
                    refusal = site.record.refusals[-1]
                    raise BudgetExhausted(
                        f"Stage {site.name!r}: {_refusal_text(engine, refusal)} The optimizer says 'downgrade', but "
                        f"no cheaper feasible lane remains. {_budget_fix(refusal)}",
                        refusal=Refusal(refusal.window, engine.run.run_id, refusal.reason, refusal.available),
                        run_id=engine.run.run_id,
                        stage=site.name,
                    ) from None
                last = f" The last error: {str(last_error)[:400]}" if last_error is not None else ""
                raise ModelError(
                    f"Stage {site.name!r}: every model on lane {signal.lane} failed, and no feasible lane that "
                    f"is not dearer remains (never a silent upgrade).{last}",
                    run_id=engine.run.run_id,
                    stage=site.name,
                ) from last_error
            site.decision = decision
            engine.emit(Rerouted(engine.run, site.record, signal.lane, decision.lane, signal.why, decision))


async def _on_models(
    engine: RunEngine,
    site: Site,
    lane: str,
    messages: list[Message],
    settings: ModelSettings,
    attempt: Attempt[T],
    failed: _Failed | None = None,
) -> T:
    """Layer 2: the lane's models in order; one that fails all retries cools down.
    With ``failed``, its model goes first, its first attempt already made."""
    last: ModelError | None = None
    models = engine.models.available(lane, engine.effects.now_ns())
    if failed is not None:
        models = (failed.model, *(m for m in models if m is not failed.model))
    for model in models:
        try:
            if failed is not None:
                made, failed = failed, None
                if not isinstance(made.error, ProviderError):
                    raise made.error  # a ModelError, as _with_retry would have raised it: handled below
                return await _with_retry(
                    engine, site, lane, model, messages, settings, attempt, made.error, made.started
                )
            return await _with_retry(engine, site, lane, model, messages, settings, attempt)
        except ModelError as exc:
            if not exc.retryable:
                # The request itself was refused (a 4xx): another model or lane would
                # get the same request, and the model is not unhealthy.
                raise
            last = exc
            engine.models.cool(model, engine.effects.now_ns())
            engine.emit(ModelCooled(engine.run, site.record, lane, model.name, engine.models.cooldown))
    raise _Reroute(lane, "provider-unavailable") from last


async def _with_retry(
    engine: RunEngine,
    site: Site,
    lane: str,
    model: Model,
    messages: list[Message],
    settings: ModelSettings,
    attempt: Attempt[T],
    failed: ProviderError | None = None,
    started: int | None = None,
) -> T:
    """Layer 3: retry one model with backoff; ``ModelError`` once retries are spent.
    With ``failed``, the first attempt was made (from ``started``) and failed so."""
    policy = engine.config.retry
    effects = engine.effects

    def backoff(attempt_number: int, exc: BaseException | None) -> float:
        wait = min(policy.max_wait, policy.initial_wait * 2 ** (attempt_number - 1))
        asked = getattr(exc, "retry_after", None)
        return float(min(policy.max_wait, max(wait, asked))) if asked is not None else wait

    def fail(exc: ProviderError, attempts: int) -> ModelError:
        return ModelError(
            f"Stage {site.name!r}: {model.provider}/{model.name} failed: {exc} (after {attempts} attempt(s)).",
            run_id=engine.run.run_id,
            stage=site.name,
            retryable=exc.retryable,
        )

    # The first attempt runs directly: tenacity's machinery is only built once a
    # retryable failure has happened (it is most of a stage's overhead otherwise).
    if failed is None or started is None:
        started = effects.now_ns()
        try:
            return await attempt(engine, site, lane, model, messages, settings, 1)
        except ProviderError as exc:
            failed = exc
    first = failed
    if not first.retryable or policy.attempts <= 1:
        raise fail(first, 1) from first
    await effects.sleep(backoff(1, first))
    # ... and tenacity itself is only imported then: a program whose calls succeed never loads it.
    from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, stop_after_delay

    elapsed = (effects.now_ns() - started) / 1e9
    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.attempts - 1) | stop_after_delay(max(0.0, policy.max_delay - elapsed)),
        wait=lambda state: backoff(state.attempt_number + 1, state.outcome.exception() if state.outcome else None),
        retry=retry_if_exception(lambda e: isinstance(e, ProviderError) and e.retryable),
        sleep=effects.sleep,
        reraise=True,
    )
    try:
        async for trying in retrying:
            with trying:
                number = trying.retry_state.attempt_number + 1
                return await attempt(engine, site, lane, model, messages, settings, number)
    except ProviderError as exc:
        raise fail(exc, 1 + int(retrying.statistics.get("attempt_number", 1))) from exc
    raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover


def _refusal_text(engine: RunEngine, refusal: RefusalRecord) -> str:
    share = {"cap": "its cap", "high-end-share": "its high-end share", "pro-share": "its pro share"}.get(
        refusal.reason, refusal.reason
    )
    return (
        f"the {refusal.window!r} budget window cannot hold a call on {refusal.lane}: {share} has "
        f"{from_micro(refusal.available)} {engine.config.currency} left and the call's estimate is "
        f"{from_micro(refusal.estimate)}."
    )


def _budget_fix(refusal: RefusalRecord) -> str:
    what = {"cap": "maxSpend", "high-end-share": "highEndMaxShare", "pro-share": "proMaxShare"}.get(
        refusal.reason, "maxSpend"
    )
    return (
        f"To allow more, raise {what} of the {refusal.window!r} window in the optimizer document "
        "(budgetPolicy.windows) and pass it as Lanes(optimizer=...), price the lane lower in the catalog "
        "(Lanes(catalog=...)), or ask for fewer tokens (max_tokens)."
    )


class _AnyioDeadline:
    """``anyio.fail_after`` as an async context manager (event loops other than asyncio)."""

    __slots__ = ("_scope",)

    def __init__(self, seconds: float) -> None:
        self._scope = anyio.fail_after(seconds)

    async def __aenter__(self) -> None:
        self._scope.__enter__()

    async def __aexit__(self, *exc: Any) -> bool | None:
        return self._scope.__exit__(*exc)


def _deadline(engine: RunEngine, seconds: float) -> contextlib.AbstractAsyncContextManager[Any]:
    """A model call's deadline: ``TimeoutError`` when it passes. On asyncio, its own
    timeout (a third of the cost of an anyio cancel scope, on every call); anyio's
    elsewhere (trio)."""
    return asyncio.timeout(seconds) if engine.on_asyncio else _AnyioDeadline(seconds)


_UNGUARDED = contextlib.nullcontext()


def _guarded(effects: Any) -> contextlib.AbstractContextManager[Any]:
    """A shielded scope for a budget operation that must not be cut halfway (a
    reservation made must be seen, to be released; a charge must be recorded), unless
    the effects' operations cannot be interrupted anyway (no awaits: nothing to pay)."""
    return _UNGUARDED if effects.cancel_safe else anyio.CancelScope(shield=True)


def valid_usage(usage: Any) -> bool:
    """Token counts a price can be computed from: non-negative integers in range."""
    if not isinstance(usage, Usage):
        return False
    for n in usage:
        whole = isinstance(n, int) and not isinstance(n, bool)
        if not whole and not (isinstance(n, float) and math.isfinite(n) and float(n).is_integer()):
            return False
        if not 0 <= n <= _MAX_TOKENS:
            return False
    return usage.cached_input_tokens <= usage.input_tokens


async def _reserve(
    engine: RunEngine,
    site: Site,
    lane: str,
    messages: Sequence[Message],
    settings: ModelSettings,
    est_in: int | None = None,
) -> tuple[Reservation, int]:
    """Layer 4, budget: reserve the call's estimate (``est_in`` input tokens, else
    estimated from the messages), or refuse (a recorded step)."""
    config, effects, run, record = engine.config, engine.effects, engine.run, site.record
    if est_in is None:
        est_in = estimate_input_tokens(messages, settings)
    estimate = to_micro(config.router.call_cost(lane, input_tokens=est_in, output_tokens=settings.max_tokens))
    # A reservation made must be seen, to be released: shield it (unless the effects
    # cannot be interrupted halfway anyway).
    with _guarded(effects):
        held = await effects.reserve(run, record, lane, estimate)
    if isinstance(held, Refusal):
        refusal = RefusalRecord(lane, held.window, held.reason, held.available, estimate, run.next_step())
        record.refusals.append(refusal)
        engine.emit(BudgetRefused(run, record, lane, held, estimate, refusal.step))
        if config.on_budget_pressure == "downgrade":
            raise _Reroute(lane, "budget-pressure", float(from_micro(held.available)))
        raise BudgetExhausted(
            f"Stage {site.name!r}: {_refusal_text(engine, refusal)} The optimizer says "
            f"{config.on_budget_pressure!r} under budget pressure. {_budget_fix(refusal)}",
            refusal=held,
            run_id=run.run_id,
            stage=site.name,
        )
    return held, estimate


def _begin(
    engine: RunEngine,
    site: Site,
    lane: str,
    model: Model,
    messages: Sequence[Message],
    settings: ModelSettings,
    number: int,
    estimate: int,
    *,
    streamed: bool,
) -> tuple[CallRecord, str]:
    """The call's record, numbered: what the record keeps before the request is sent."""
    config, run = engine.config, engine.run
    text = prompt_text(messages, settings)  # digest and stored body
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
        prompt_digest=config.hasher.digest(text),
    )
    call.max_tokens = settings.max_tokens
    call.streamed = streamed
    if config.capture_content:
        call.prompt_text = engine.messages_json(messages)
        if settings.tools:
            call.tool_definitions = json.dumps(
                [
                    {"type": "function", "name": t.name, "description": t.description, "parameters": dict(t.parameters)}
                    for t in settings.tools
                ],
                ensure_ascii=False,
                default=str,
            )
    site.record.calls.append(call)
    call.step = run.next_step()
    call.started_ns = engine.effects.now_ns()
    return call, text


async def _failed(
    engine: RunEngine,
    site: Site,
    call: CallRecord,
    reservation: Reservation,
    exc: BaseException,
    prompt: str,
    used: Usage | None = None,
    partial: ModelResponse | None = None,
) -> None:
    """A call ended in an error: charge what it used (what the error says, or ``used``
    when part of a stream arrived), else release; record it (with ``partial``, what of
    a stream arrived before it ended)."""
    effects = engine.effects
    call.duration = (effects.now_ns() - call.started_ns) / 1e9
    usage = getattr(exc, "usage", None)
    if not valid_usage(usage):
        usage = used
    with _guarded(effects):
        if usage is not None and valid_usage(usage):
            call.usage = usage
            call.usage_estimated = used is not None and usage is used
            call.charged = await _settle(engine, site, call, reservation, usage)
        else:
            await effects.release(reservation)
    call.error = getattr(exc, "recorded_type", None) or type(exc).__name__
    call.status = getattr(exc, "status", None)
    call.retryable = bool(getattr(exc, "retryable", False))
    body = None
    if partial is not None:
        body, call.output_format = response_body(partial)
        call.output_digest = engine.config.hasher.digest(body)
    engine.emit(CallEnded(engine.run, site.record, call, prompt, body))


async def _succeeded(
    engine: RunEngine, site: Site, call: CallRecord, reservation: Reservation, response: ModelResponse, prompt: str
) -> None:
    """A call answered: settle its actual price, record it (the body for replay too)."""
    config, effects, run = engine.config, engine.effects, engine.run
    call.duration = (effects.now_ns() - call.started_ns) / 1e9
    if not valid_usage(response.usage):
        # The call reached the model: charge what was reserved, never hold it.
        with _guarded(effects):
            call.charged = await _settle(engine, site, call, reservation, None)
        call.error = "ModelError"
        engine.emit(CallEnded(run, site.record, call, prompt, None))
        raise ModelError(
            f"Stage {site.name!r}: {call.provider}/{call.model} reported usage that is not a token count "
            f"({response.usage!r}); the call was charged its reserved {from_micro(reservation.amount)} "
            f"{config.currency}.",
            run_id=run.run_id,
            stage=site.name,
        )
    with _guarded(effects):
        call.charged = await _settle(engine, site, call, reservation, response.usage)
    body, form = response_body(response)
    call.ok = True
    call.usage = response.usage
    call.usage_estimated = response.usage_estimated
    call.response_model = response.model_name
    call.finish_reason = response.finish_reason
    call.output_format = form
    call.tool_calls = len(response.tool_calls)
    call.output_digest = config.hasher.digest(body)
    if config.capture_content:
        call.output_text = engine.response_json(response)
    engine.emit(CallEnded(run, site.record, call, prompt, body))


async def _attempt(
    engine: RunEngine,
    site: Site,
    lane: str,
    model: Model,
    messages: Sequence[Message],
    settings: ModelSettings,
    number: int,
) -> ModelResponse:
    """Layers 4 and 5: reserve, send (under a timeout), settle, record."""
    reservation, estimate = await _reserve(engine, site, lane, messages, settings)
    call, prompt = _begin(engine, site, lane, model, messages, settings, number, estimate, streamed=False)
    timeout = settings.timeout or engine.config.call_timeout
    try:
        async with _deadline(engine, timeout):
            response = await engine.effects.request(
                Call(
                    engine.run,
                    site.record,
                    call.step,
                    lane,
                    model,
                    list(messages),
                    settings,
                    call.prompt_digest or "",
                    prompt,
                )
            )
    except TimeoutError as exc:
        # our own deadline: recorded as what it becomes, a retryable provider error
        err = ProviderError(f"{model.provider}: no answer within {timeout:g}s", retryable=True)
        await _failed(engine, site, call, reservation, err, prompt)
        raise err from exc
    except BaseException as exc:
        await _failed(engine, site, call, reservation, exc, prompt)
        raise
    await _succeeded(engine, site, call, reservation, response, prompt)
    return response


async def _settle(
    engine: RunEngine, site: Site, call: CallRecord, reservation: Reservation, usage: Usage | None
) -> int:
    """Charge a call that reached its model: the price of ``usage``, or the reserved
    amount when there is no usage or its price is out of range. A charge the store
    could not record but the ledger journaled is reported and the stage goes on (the
    money is accounted for; the next reservation fails closed if the store stays down);
    one recorded nowhere fails the stage."""
    effects = engine.effects
    amount = reservation.amount
    if usage is not None:
        try:
            amount = _price(engine, call.lane, usage)
        except ConfigurationError:
            call.usage_estimated = True  # a price beyond range: the reserved amount stands in
    try:
        return await effects.settle(reservation, amount)
    except UnsettledCharge as exc:
        if exc.journal is None:
            exc.run_id, exc.stage = engine.run.run_id, site.name
            call.charged = exc.amount
            raise
        engine.emit(ChargeJournaled(engine.run, site.record, call, exc.amount, str(exc.journal), str(exc)))
        return exc.amount


def _price(engine: RunEngine, lane: str, usage: Usage) -> int:
    cached = int(usage.cached_input_tokens)
    return to_micro(
        engine.config.router.call_cost(
            lane,
            input_tokens=int(usage.input_tokens) - cached,
            output_tokens=int(usage.output_tokens),
            cache_read_tokens=cached,
        )
    )


# ------------------------------------------------------------------ streaming


@dataclass
class _Opened:
    """A stream whose first event arrived (what the layers above return)."""

    events: AsyncIterator[Any]
    first: Any
    call: CallRecord
    reservation: Reservation
    prompt: str
    timeout: float
    estimate_in: int


async def _open(
    engine: RunEngine,
    site: Site,
    lane: str,
    model: Model,
    messages: Sequence[Message],
    settings: ModelSettings,
    number: int,
) -> _Opened:
    """The terminal layer's streaming twin: reserve, open the stream, wait (under the
    timeout) for its first event. A failure up to here is retried like a request's."""
    reservation, estimate = await _reserve(engine, site, lane, messages, settings)
    call, prompt = _begin(engine, site, lane, model, messages, settings, number, estimate, streamed=True)
    timeout = settings.timeout or engine.config.call_timeout
    events = engine.effects.stream(
        Call(
            engine.run, site.record, call.step, lane, model, list(messages), settings, call.prompt_digest or "", prompt
        )
    )
    try:
        async with _deadline(engine, timeout):
            first = await events.__anext__()
    except BaseException as exc:
        await _close(events)
        cause = exc
        if isinstance(exc, StopAsyncIteration):
            exc = ProviderError(f"{model.provider}: the stream ended before any event", retryable=True)
        elif isinstance(exc, TimeoutError):
            exc = ProviderError(f"{model.provider}: no answer within {timeout:g}s", retryable=True)
        await _failed(engine, site, call, reservation, exc, prompt)
        if exc is cause:
            raise
        raise exc from cause
    return _Opened(events, first, call, reservation, prompt, timeout, estimate_input_tokens(messages, settings))


async def _close(events: AsyncIterator[Any]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        # a broken stream must not hide why it is being closed
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await aclose()


class LaneStream:
    """A model reply as it streams: iterate for :class:`TextDelta` and
    :class:`ToolCallDelta` events; :attr:`response` is the whole reply once the stream
    has ended. Use it as an async context manager (``async with ctx.stream(...) as s``):
    leaving the block closes the stream and settles what the call used, however it ends
    (a stream cut short is charged for the prompt and what arrived, estimated)."""

    def __init__(self, engine: RunEngine, site: Site, opened: _Opened) -> None:
        self._engine = engine
        self._site = site
        self._opened = opened
        self._text: list[str] = []
        self._calls: dict[int, list[tuple[str | None, str | None, str]]] = {}
        self._done = False
        self.response: ModelResponse | None = None
        """The whole reply, once the stream has ended (``None`` before)."""

    @property
    def text(self) -> str:
        """The text received so far."""
        return "".join(self._text)

    async def __aenter__(self) -> LaneStream:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[TextDelta | ToolCallDelta]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[TextDelta | ToolCallDelta]:
        opened = self._opened
        event, opened.first = opened.first, None
        while not self._done:
            if event is None:
                try:
                    async with _deadline(self._engine, opened.timeout):
                        event = await opened.events.__anext__()
                except StopAsyncIteration:
                    await self._fail(
                        ProviderError(f"{opened.call.provider}: the stream ended without a reply", retryable=False)
                    )
                except BaseException as exc:
                    if isinstance(exc, TimeoutError):
                        exc = ProviderError(
                            f"{opened.call.provider}: the stream stalled for {opened.timeout:g}s", retryable=False
                        )
                    await self._fail(exc)
            if isinstance(event, ModelResponse):
                await self._finish(event)
                return
            if isinstance(event, TextDelta):
                self._text.append(event.text)
            elif isinstance(event, ToolCallDelta):
                self._calls.setdefault(event.index, []).append((event.id, event.name, event.arguments))
            yield event
            event = None

    def _used(self) -> Usage:
        """What a stream cut short used, estimated: the prompt and what arrived."""
        out = estimate_tokens(self.text) + sum(
            estimate_tokens("".join(f"{n or ''}{a}" for _, n, a in p)) for p in self._calls.values()
        )
        return Usage(self._opened.estimate_in, out)

    def _partial(self) -> ModelResponse:
        """What of the reply arrived, as a response (finish reason ``incomplete``)."""
        calls = tuple(
            ToolCall(pieces[0][0] or "", pieces[0][1] or "", "".join(p[2] for p in pieces))
            for _, pieces in sorted(self._calls.items())
        )
        return ModelResponse(self.text, self._used(), self._opened.call.model, True, calls, "incomplete")

    async def _fail(self, exc: BaseException) -> None:
        self._done = True
        opened = self._opened
        await _close(opened.events)
        await _failed(
            self._engine, self._site, opened.call, opened.reservation, exc, opened.prompt, self._used(), self._partial()
        )
        engine = self._engine
        if isinstance(exc, ProviderError):
            # part of the reply may already be with the caller: nothing is retried
            raise ModelError(
                f"Stage {self._site.name!r}: {opened.call.provider}/{opened.call.model} failed mid-stream: {exc}.",
                run_id=engine.run.run_id,
                stage=self._site.name,
                retryable=False,
            ) from exc
        raise exc

    async def _finish(self, response: ModelResponse) -> None:
        self._done = True
        opened = self._opened
        await _close(opened.events)
        self.response = response
        await _succeeded(self._engine, self._site, opened.call, opened.reservation, response, opened.prompt)

    async def aclose(self) -> None:
        """Close the stream; a reply not read to its end is charged for what it used."""
        if self._done:
            return
        self._done = True
        opened = self._opened
        await _close(opened.events)
        with anyio.CancelScope(shield=True):
            await _failed(
                self._engine,
                self._site,
                opened.call,
                opened.reservation,
                _StreamClosed(),
                opened.prompt,
                self._used(),
                self._partial(),
            )


class _StreamClosed(Exception):
    """The caller closed a stream before its end (recorded as the call's outcome)."""

    recorded_type = "StreamClosed"


# ------------------------------------------------------------------ calls made elsewhere


class Charge:
    """A model call made outside agentlanes, reserved up front; report what it used
    with :meth:`usage` (see ``StageContext.charge``)."""

    def __init__(self) -> None:
        self.reported: Usage | None = None

    def usage(self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> None:
        """What the call used, as the provider reported it."""
        self.reported = Usage(input_tokens, output_tokens, cached_input_tokens)


class _External(Model):
    def __init__(self, name: str) -> None:
        self.name = name
        self.provider = "external"

    async def request(self, messages: Sequence[Message], settings: ModelSettings) -> ModelResponse:  # pragma: no cover
        raise AssertionError("a call made outside agentlanes is never sent by it")


@asynccontextmanager
async def charge_external(
    engine: RunEngine, site: Site, input_tokens: int, output_tokens: int, model_name: str
) -> AsyncIterator[Charge]:
    """Reserve, then settle what the caller reports (or the estimate), for a call made
    outside agentlanes on the stage's lane; recorded like any call."""
    lane = site.decision.lane
    if lane is None or lane == "no-model":
        raise ConfigurationError(f"Stage {site.name!r} runs on the no-model lane; it has no model calls to charge.")
    for what, value in (("input_tokens", input_tokens), ("output_tokens", output_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_TOKENS:
            raise ConfigurationError(f"ctx.charge({what}={value!r}): a token count must be a non-negative integer.")
    model = _External(model_name)
    estimate_usage = Usage(input_tokens, output_tokens)
    settings = ModelSettings(max_tokens=max(output_tokens, 1))
    try:
        reservation, estimate = await _reserve(engine, site, lane, (), settings, input_tokens)
    except _Reroute:
        # budget pressure would move a call agentlanes makes to a cheaper lane; this one
        # is the caller's own, already made for this lane
        refusal = site.record.refusals[-1]
        raise BudgetExhausted(
            f"Stage {site.name!r}: {_refusal_text(engine, refusal)} A call made outside agentlanes (ctx.charge) "
            f"cannot move to a cheaper lane. {_budget_fix(refusal)}",
            refusal=Refusal(refusal.window, engine.run.run_id, refusal.reason, refusal.available),
            run_id=engine.run.run_id,
            stage=site.name,
        ) from None
    call_record, prompt = _begin(engine, site, lane, model, [], settings, 1, estimate, streamed=False)
    try:
        await engine.effects.external(
            Call(
                engine.run,
                site.record,
                call_record.step,
                lane,
                model,
                [],
                settings,
                call_record.prompt_digest or "",
                prompt,
            )
        )
    except BaseException as exc:
        await _failed(engine, site, call_record, reservation, exc, prompt)
        raise
    charge = Charge()
    try:
        yield charge
    except BaseException as exc:
        # it may have reached the model: what was reported, else the whole estimate
        used = charge.reported if charge.reported is not None and valid_usage(charge.reported) else estimate_usage
        await _failed(engine, site, call_record, reservation, exc, prompt, used)
        raise
    reported = charge.reported
    if reported is not None and not valid_usage(reported):
        await _failed(engine, site, call_record, reservation, ModelError("invalid usage"), prompt, estimate_usage)
        raise ConfigurationError(
            f"Stage {site.name!r}: charge.usage{tuple(reported)!r} is not a token count; the call was charged its "
            "estimate."
        )
    usage = reported if reported is not None else estimate_usage
    response = ModelResponse("", usage, model_name, reported is None)
    await _succeeded(engine, site, call_record, reservation, response, prompt)
