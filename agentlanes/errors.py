"""Errors that say whose fault it is.

::

    AgentLanesError
    ├── ConfigurationError      your mistake, found at load or call time
    │   ├── PolicyError         a broken document; .source and .pointer name where
    │   └── RouteInputError     a request the documents cannot answer (unknown stage...)
    └── RunError                something went wrong during a run (.run_id, .stage)
        └── RouteDeferred       .decision carries the full decision and its reasons

Messages are full sentences that carry the bad value and what is allowed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentlanes.decision import RouteDecision

__all__ = [
    "AgentLanesError",
    "ConfigurationError",
    "PolicyError",
    "RouteDeferred",
    "RouteInputError",
    "RunError",
]


class AgentLanesError(Exception):
    """Base class of every error agentlanes raises on purpose."""


class ConfigurationError(AgentLanesError):
    """The caller's configuration or input is wrong; fix it and call again."""


class PolicyError(ConfigurationError):
    """A routing document is broken.

    Attributes:
        source: the file (or ``<memory>``) the document came from.
        pointer: RFC 6901 JSON pointer to the offending value, ``""`` for the root.
        problems: every problem found, as ``(pointer, message)`` pairs; the first one
            is also the error's message.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str = "<memory>",
        pointer: str = "",
        problems: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.source = source
        self.pointer = pointer
        self.problems: list[tuple[str, str]] = problems if problems is not None else [(pointer, message)]


class RouteInputError(ConfigurationError):
    """A route request names something the documents do not define."""


class RunError(AgentLanesError):
    """Something went wrong while a run was executing.

    Attributes:
        run_id: the run, when known.
        stage: the stage, when known.
    """

    def __init__(self, message: str, *, run_id: str | None = None, stage: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.stage = stage


class RouteDeferred(RunError):
    """The router admitted no lane for a stage (status ``deferred`` or ``denied``).

    Attributes:
        decision: the full decision, with every candidate and its reasons.
    """

    def __init__(self, decision: RouteDecision, *, run_id: str | None = None, stage: str | None = None) -> None:
        reasons = ", ".join(decision.reasons) or decision.reason
        super().__init__(
            f"Stage {decision.stage!r} was {decision.status} by the router ({reasons}); "
            "no lane may run it under the current policy and signals.",
            run_id=run_id,
            stage=stage if stage is not None else decision.stage,
        )
        self.decision = decision
