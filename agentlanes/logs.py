"""structlog events for runs: JSON lines on stderr by default, never content.

Events carry ids, stages, lanes, costs and digests only. If the application has
configured structlog, agentlanes logs through that configuration; otherwise through its
own JSON-to-stderr logger, at the level in ``AGENTLANES_LOG_LEVEL`` (``debug``,
``info`` (default), ``warning``, ``error``, or ``off``).

:class:`LogProcessor` is the run processor that turns run events into these lines (one
``info`` event per stage; routing and call details at ``debug``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from agentlanes.budget import from_micro
from agentlanes.events import (
    AttemptFailed,
    BudgetRefused,
    CallEnded,
    ChargeJournaled,
    Decided,
    Escalated,
    Escalating,
    EvidenceMissing,
    ModelCooled,
    Rerouted,
    RunEnded,
    RunStarted,
    StageEnded,
    Verified,
)

__all__ = ["LogProcessor", "get_logger"]

# "off" uses the highest level structlog filters at; agentlanes never logs at critical.
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "off": 50}


def _level() -> int:
    return _LEVELS.get(os.environ.get("AGENTLANES_LOG_LEVEL", "info").lower(), 20)


def get_logger(**bound: Any) -> Any:
    """A logger bound with ``bound`` (run id, stage, lane...)."""
    import structlog  # on the first run, not when agentlanes is imported

    if structlog.is_configured():
        return structlog.get_logger("agentlanes").bind(**bound)
    level = _level()
    logger = structlog.wrap_logger(
        structlog.WriteLogger(sys.stderr),  # one write per line (PrintLogger makes two)
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_name="agentlanes",
    )
    return logger.bind(**bound)


# Events with a line above debug (Decided and Verified are debug only).
_ABOVE_DEBUG = (
    RunStarted,
    RunEnded,
    StageEnded,
    CallEnded,
    ChargeJournaled,
    AttemptFailed,
    Escalating,
    Escalated,
    BudgetRefused,
    ModelCooled,
    Rerouted,
    EvidenceMissing,
)


class LogProcessor:
    """Run events as log lines (see the module docstring).

    Args:
        exporter: the span exporter, if any, whose dropped spans are reported when a run ends.
    """

    def __init__(self, exporter: Any = None) -> None:
        self.exporter = exporter
        self._logs: dict[str, Any] = {}

    @property
    def event_types(self) -> tuple[type, ...] | None:
        """What this processor logs at the level in force: every event at ``debug`` (or
        when the application configured structlog), else those with an info, warning
        or error line."""
        import structlog

        if structlog.is_configured() or _level() <= _LEVELS["debug"]:
            return None
        return _ABOVE_DEBUG

    def on_event(self, event: Any) -> None:
        kind = type(event)
        run = event.run
        log = self._logs.get(run.run_id)
        if log is None:
            if kind is not RunStarted:
                return
            log = self._logs[run.run_id] = get_logger(run_id=run.run_id)
        if kind is StageEnded:
            record = event.record
            if record.status == "succeeded":
                if record.parent is None:
                    decision = record.decisions[-1] if record.decisions else None
                    # One info event per stage: routing and call details are debug events.
                    log.info(
                        "stage.succeeded",
                        stage=record.name,
                        lane=record.lane,
                        decision_id=decision.decision_id if decision is not None else None,
                        reason=decision.reason if decision is not None else None,
                        attempts=record.attempts,
                        calls=len(record.calls),
                        cost=str(from_micro(record.cost)),
                    )
            elif record.status == "failed" and record.parent is None:
                log.warning("stage.failed", stage=record.name, error=record.error)
        elif kind is Decided:
            d = event.decision
            log.debug(
                "stage.routed",
                stage=event.record.name,
                lane=d.lane,
                status=d.status,
                reason=d.reason,
                decision_id=d.decision_id,
                estimated_cost=d.estimated_cost,
            )
        elif kind is CallEnded:
            call = event.call
            if call.ok:
                log.debug(
                    "model.call",
                    stage=event.record.name,
                    lane=call.lane,
                    model=call.model,
                    attempt=call.attempt,
                    input_tokens=call.usage.input_tokens if call.usage else 0,
                    output_tokens=call.usage.output_tokens if call.usage else 0,
                    reserved=call.reserved,
                    charged=call.charged,
                )
            else:
                log.warning(
                    "model.call_failed",
                    stage=event.record.name,
                    lane=call.lane,
                    model=call.model,
                    attempt=call.attempt,
                    error=call.error,
                    status=call.status,
                )
        elif kind is Verified:
            result = event.check.result
            log.debug(
                "verifier.result",
                stage=event.record.name,
                verifier=result.name,
                passed=result.passed,
                exit_status=result.exit_status,
            )
        elif kind is AttemptFailed:
            log.info(
                "stage.attempt_failed",
                stage=event.record.name,
                lane=event.lane,
                attempt=event.record.attempts,
                failed=[r.name for r in event.failed],
            )
        elif kind is Escalating:
            log.info("stage.escalating", stage=event.record.name, from_lane=event.from_lane, reason=event.reason)
        elif kind is Escalated:
            body = event.receipt.body
            log.info(
                "stage.escalated",
                stage=event.record.name,
                from_lane=body.get("fromLane"),
                to_lane=body.get("toLane"),
                reason=body.get("reason"),
                receipt=event.receipt.receipt_id,
                digest=event.receipt.digest,
            )
        elif kind is BudgetRefused:
            log.warning(
                "budget.refused",
                stage=event.record.name,
                lane=event.lane,
                window=event.refusal.window,
                why=event.refusal.reason,
                available=event.refusal.available,
                estimate=event.estimate,
            )
        elif kind is ChargeJournaled:
            log.warning(
                "budget.charge_journaled",
                stage=event.record.name,
                lane=event.call.lane,
                charged=event.amount,
                journal=event.journal,
                why=event.why,
            )
        elif kind is ModelCooled:
            log.warning(
                "model.cooldown", stage=event.record.name, lane=event.lane, model=event.model, seconds=event.seconds
            )
        elif kind is Rerouted:
            log.info(
                "stage.fallback",
                stage=event.record.name,
                from_lane=event.from_lane,
                to_lane=event.to_lane,
                why=event.why,
                decision_id=event.decision.decision_id,
            )
        elif kind is EvidenceMissing:
            log.warning("evidence.missing", stage=event.record.name, missing=list(event.missing))
        elif kind is RunStarted:
            log.info("run.start", task_class=run.task_class, risk_class=run.risk_class)
        elif kind is RunEnded:
            del self._logs[run.run_id]
            exporter = self.exporter
            if exporter is not None and exporter.dropped:
                log.warning("telemetry.dropped_spans", dropped=exporter.dropped, exported=exporter.exported)
            log.info("run.end", status=run.status, cost=str(from_micro(run.cost_micro)), receipts=len(run.receipts))
