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

Streaming will add one twin per layer. Nothing here does I/O but through the effects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, stop_after_delay

from agentlanes.budget import Refusal, Reservation, from_micro, to_micro
from agentlanes.effects import Call
from agentlanes.errors import BudgetExhausted, ConfigurationError, ModelError
from agentlanes.events import BudgetRefused, CallEnded, ModelCooled, Rerouted
from agentlanes.lanes import PREMIUM_LANES
from agentlanes.models.base import Message, Model, ModelResponse, ModelSettings, ProviderError, Usage, estimate_tokens
from agentlanes.result import CallRecord, RefusalRecord

if TYPE_CHECKING:
    from agentlanes._engine import RunEngine
    from agentlanes.decision import RouteDecision
    from agentlanes.result import StageRecord

__all__ = ["LaneModels", "RetryPolicy", "call"]

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
            return await _on_models(engine, site, lane, messages, settings)
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
                        f"no cheaper feasible lane remains. {_budget_fix()}",
                        refusal=Refusal(refusal.window, engine.run.run_id, refusal.reason, refusal.available),
                        run_id=engine.run.run_id,
                        stage=site.name,
                    ) from None
                raise ModelError(
                    f"Stage {site.name!r}: every model on lane {signal.lane} failed, and no feasible lane that "
                    f"is not dearer remains (never a silent upgrade).",
                    run_id=engine.run.run_id,
                    stage=site.name,
                ) from last_error
            site.decision = decision
            engine.emit(Rerouted(engine.run, site.record, signal.lane, decision.lane, signal.why, decision))


async def _on_models(
    engine: RunEngine, site: Site, lane: str, messages: list[Message], settings: ModelSettings
) -> ModelResponse:
    """Layer 2: the lane's models in order; one that fails all retries cools down."""
    last: ModelError | None = None
    for model in engine.models.available(lane, engine.effects.now_ns()):
        try:
            return await _with_retry(engine, site, lane, model, messages, settings)
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
    engine: RunEngine, site: Site, lane: str, model: Model, messages: list[Message], settings: ModelSettings
) -> ModelResponse:
    """Layer 3: retry one model with backoff; ``ModelError`` once retries are spent."""
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

    started = effects.now_ns()
    # The first attempt runs directly: tenacity's machinery is only built once a
    # retryable failure has happened (it is most of a stage's overhead otherwise).
    try:
        return await _attempt(engine, site, lane, model, messages, settings, 1)
    except ProviderError as exc:
        if not exc.retryable or policy.attempts <= 1:
            raise fail(exc, 1) from exc
        first = exc
    await effects.sleep(backoff(1, first))
    elapsed = (effects.now_ns() - started) / 1e9
    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.attempts - 1) | stop_after_delay(max(0.0, policy.max_delay - elapsed)),
        wait=lambda state: backoff(state.attempt_number + 1, state.outcome.exception() if state.outcome else None),
        retry=retry_if_exception(lambda e: isinstance(e, ProviderError) and e.retryable),
        sleep=effects.sleep,
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                number = attempt.retry_state.attempt_number + 1
                return await _attempt(engine, site, lane, model, messages, settings, number)
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


def _budget_fix() -> str:
    return (
        "Raise the window's maxSpend (or highEndMaxShare / proMaxShare) in the optimizer document and pass it as "
        "Lanes(bundle=load_bundle(optimizer=...)), or lower the call's max_tokens."
    )


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
    return True


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
    config, effects, run, record = engine.config, engine.effects, engine.run, site.record
    est_in = sum(estimate_tokens(m.content) for m in messages)
    estimate = to_micro(config.router.call_cost(lane, input_tokens=est_in, output_tokens=settings.max_tokens))
    shield = not effects.cancel_safe
    # A reservation made must be seen, to be released: shield it (unless the effects
    # cannot be interrupted halfway anyway).
    with anyio.CancelScope(shield=shield):
        held = await effects.reserve(run, record, lane, estimate)
    if isinstance(held, Refusal):
        refusal = RefusalRecord(lane, held.window, held.reason, held.available, estimate, run.next_step())
        record.refusals.append(refusal)
        engine.emit(BudgetRefused(run, record, lane, held, estimate, refusal.step))
        if config.on_budget_pressure == "downgrade":
            raise _Reroute(lane, "budget-pressure", float(from_micro(held.available)))
        raise BudgetExhausted(
            f"Stage {site.name!r}: {_refusal_text(engine, refusal)} The optimizer says "
            f"{config.on_budget_pressure!r} under budget pressure. {_budget_fix()}",
            refusal=held,
            run_id=run.run_id,
            stage=site.name,
        )
    reservation: Reservation = held
    prompt_text = "\n".join(f"{m.role}:{m.content}" for m in messages)  # digest and stored body
    digest = config.hasher.digest(prompt_text)
    call = CallRecord(lane, model.name, model.provider, number, estimate, 0, None, False, 0.0, prompt_digest=digest)
    call.max_tokens = settings.max_tokens
    if config.capture_content:
        call.prompt_text = engine.messages_json(messages)
    record.calls.append(call)
    call.step = run.next_step()
    call.started_ns = started = effects.now_ns()
    timeout = settings.timeout or config.call_timeout
    try:
        with anyio.fail_after(timeout):
            response = await effects.request(
                Call(run, record, call.step, lane, model, list(messages), settings, digest, prompt_text)
            )
    except BaseException as exc:
        call.duration = (effects.now_ns() - started) / 1e9
        usage = getattr(exc, "usage", None)
        with anyio.CancelScope(shield=shield):
            if isinstance(usage, Usage) and valid_usage(usage):
                call.charged = await effects.settle(reservation, _price(engine, lane, usage))
            else:
                await effects.release(reservation)
        call.error = getattr(exc, "recorded_type", None) or type(exc).__name__
        call.status = getattr(exc, "status", None)
        call.retryable = bool(getattr(exc, "retryable", False))
        engine.emit(CallEnded(run, record, call, prompt_text, None))
        if isinstance(exc, TimeoutError):
            raise ProviderError(f"{model.provider}: no answer within {timeout:g}s", retryable=True) from exc
        raise
    call.duration = (effects.now_ns() - started) / 1e9
    if not valid_usage(response.usage):
        # The call reached the model: charge what was reserved, never hold it.
        with anyio.CancelScope(shield=shield):
            call.charged = await effects.settle(reservation, reservation.amount)
        call.error = "ModelError"
        engine.emit(CallEnded(run, record, call, prompt_text, None))
        raise ModelError(
            f"Stage {site.name!r}: {model.provider}/{model.name} reported usage that is not a token count "
            f"({response.usage!r}); the call was charged its reserved {from_micro(reservation.amount)} "
            f"{config.currency}.",
            run_id=run.run_id,
            stage=site.name,
        )
    actual = _price(engine, lane, response.usage)
    with anyio.CancelScope(shield=shield):
        call.charged = await effects.settle(reservation, actual)
    call.ok = True
    call.usage = response.usage
    call.usage_estimated = response.usage_estimated
    call.response_model = response.model_name
    call.output_digest = config.hasher.digest(response.text)
    if config.capture_content:
        call.output_text = response.text
    engine.emit(CallEnded(run, record, call, prompt_text, response.text))
    return response


def _price(engine: RunEngine, lane: str, usage: Usage) -> int:
    return to_micro(
        engine.config.router.call_cost(
            lane, input_tokens=int(usage.input_tokens), output_tokens=int(usage.output_tokens)
        )
    )
