"""agentlanes: run each stage of an agent's work on the cheapest lane that can safely do it.

    documents (policies/) -> PolicyBundle -> Router.decide(RouteRequest) -> RouteDecision
    Lanes(models, signals, store) -> run.stage(fn) / Chain(stages/) -> route, reserve, call,
        settle, verify on no-model, escalate with a receipt -> StageRecord, RunResult
The router is pure and synchronous; the runtime (anyio) wraps it around your loop.
"""

import typing as _typing

if _typing.TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs
    from agentlanes.chain import Chain
    from agentlanes.decision import Candidate, RouteDecision, RouteRequest, Upgrade
    from agentlanes.errors import (
        AgentLanesError,
        BudgetExhausted,
        ConfigurationError,
        Escalate,
        EscalationDenied,
        ModelError,
        PolicyError,
        RecordError,
        ReplayDivergence,
        RetryStage,
        RouteDeferred,
        RouteInputError,
        RunError,
        StoreError,
        StoreUnavailable,
        UnsettledCharge,
        VerificationFailed,
    )
    from agentlanes.lanes import Lane
    from agentlanes.models import Model, ModelResponse, ModelSettings
    from agentlanes.policy import (
        PolicyBundle,
        PriceCatalog,
        RoutingOptimizer,
        RoutingPolicy,
        load_bundle,
        load_document,
    )
    from agentlanes.router import Router
    from agentlanes.runtime import Lanes, RetryPolicy, Run, RunResult, StageContext, StageRecord
    from agentlanes.signals import ResourceSignals, SignalSnapshot

__version__ = "0.1.0"

# Every public name, and the module that defines it. The names are imported on first
# access (PEP 562), so `import agentlanes` costs almost nothing and `from agentlanes import
# Router` loads the router and what it needs, not the runtime, OpenTelemetry or cryptography.
_EXPORTS: dict[str, str] = {
    "AgentLanesError": "agentlanes.errors",
    "BudgetExhausted": "agentlanes.errors",
    "Candidate": "agentlanes.decision",
    "Chain": "agentlanes.chain",
    "ConfigurationError": "agentlanes.errors",
    "Escalate": "agentlanes.errors",
    "EscalationDenied": "agentlanes.errors",
    "Lane": "agentlanes.lanes",
    "Lanes": "agentlanes.runtime",
    "Model": "agentlanes.models",
    "ModelError": "agentlanes.errors",
    "ModelResponse": "agentlanes.models",
    "ModelSettings": "agentlanes.models",
    "PolicyBundle": "agentlanes.policy",
    "PolicyError": "agentlanes.errors",
    "PriceCatalog": "agentlanes.policy",
    "RecordError": "agentlanes.errors",
    "ReplayDivergence": "agentlanes.errors",
    "ResourceSignals": "agentlanes.signals",
    "RetryPolicy": "agentlanes.runtime",
    "RetryStage": "agentlanes.errors",
    "RouteDecision": "agentlanes.decision",
    "RouteDeferred": "agentlanes.errors",
    "RouteInputError": "agentlanes.errors",
    "RouteRequest": "agentlanes.decision",
    "Router": "agentlanes.router",
    "RoutingOptimizer": "agentlanes.policy",
    "RoutingPolicy": "agentlanes.policy",
    "Run": "agentlanes.runtime",
    "RunError": "agentlanes.errors",
    "RunResult": "agentlanes.runtime",
    "SignalSnapshot": "agentlanes.signals",
    "StageContext": "agentlanes.runtime",
    "StageRecord": "agentlanes.runtime",
    "StoreError": "agentlanes.errors",
    "StoreUnavailable": "agentlanes.errors",
    "UnsettledCharge": "agentlanes.errors",
    "Upgrade": "agentlanes.decision",
    "VerificationFailed": "agentlanes.errors",
    "load_bundle": "agentlanes.policy",
    "load_document": "agentlanes.policy",
}

__all__ = [
    "AgentLanesError",
    "BudgetExhausted",
    "Candidate",
    "Chain",
    "ConfigurationError",
    "Escalate",
    "EscalationDenied",
    "Lane",
    "Lanes",
    "Model",
    "ModelError",
    "ModelResponse",
    "ModelSettings",
    "PolicyBundle",
    "PolicyError",
    "PriceCatalog",
    "RecordError",
    "ReplayDivergence",
    "ResourceSignals",
    "RetryPolicy",
    "RetryStage",
    "RouteDecision",
    "RouteDeferred",
    "RouteInputError",
    "RouteRequest",
    "Router",
    "RoutingOptimizer",
    "RoutingPolicy",
    "Run",
    "RunError",
    "RunResult",
    "SignalSnapshot",
    "StageContext",
    "StageRecord",
    "StoreError",
    "StoreUnavailable",
    "UnsettledCharge",
    "Upgrade",
    "VerificationFailed",
    "load_bundle",
    "load_document",
]


if not _typing.TYPE_CHECKING:  # hidden from type checkers, so a misspelt name stays a type error

    def __getattr__(name: str) -> _typing.Any:
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module 'agentlanes' has no attribute {name!r}")
        from importlib import import_module

        value = getattr(import_module(module), name)
        globals()[name] = value  # the next access is a plain module attribute
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
