"""agentlanes: run each stage of an agent's work on the cheapest lane that can safely do it.

    documents (policies/) -> PolicyBundle -> Router.decide(RouteRequest) -> RouteDecision
    Lanes(models, signals, store) -> run.stage(fn) / Chain(stages/) -> route, reserve, call,
        settle, verify on no-model, escalate with a receipt -> StageRecord, RunResult
The router is pure and synchronous; the runtime (anyio) wraps it around your loop.
"""

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
