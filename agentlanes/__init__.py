"""agentlanes: run each stage of an agent's work on the cheapest lane that can safely do it.

    documents (policies/*.json) --load_bundle--> PolicyBundle --Router--> decide(RouteRequest)
    resource signals ----------> SignalSnapshot ------------------^         |
                                                        RouteDecision (native | upstream JSON)
The router is pure and synchronous; chains, budgets, telemetry and replay build on it.
"""

from agentlanes.decision import Candidate, RouteDecision, RouteRequest, Upgrade
from agentlanes.errors import (
    AgentLanesError,
    ConfigurationError,
    PolicyError,
    RouteDeferred,
    RouteInputError,
    RunError,
)
from agentlanes.lanes import Lane
from agentlanes.policy import (
    PolicyBundle,
    PriceCatalog,
    RoutingOptimizer,
    RoutingPolicy,
    load_bundle,
    load_document,
)
from agentlanes.router import Router
from agentlanes.signals import ResourceSignals, SignalSnapshot

__version__ = "0.1.0"

__all__ = [
    "AgentLanesError",
    "Candidate",
    "ConfigurationError",
    "Lane",
    "PolicyBundle",
    "PolicyError",
    "PriceCatalog",
    "ResourceSignals",
    "RouteDecision",
    "RouteDeferred",
    "RouteInputError",
    "RouteRequest",
    "Router",
    "RoutingOptimizer",
    "RoutingPolicy",
    "RunError",
    "SignalSnapshot",
    "Upgrade",
    "load_bundle",
    "load_document",
]
