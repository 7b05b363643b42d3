"""What both framework integrations share: the missing-framework error, the check that
a stage context is still usable, and tool-call ids a framework can rely on."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from agentlanes.errors import ConfigurationError
from agentlanes.models.base import ProviderError

if TYPE_CHECKING:
    from agentlanes.runtime import StageContext

__all__ = ["CallIds", "MissingFramework", "check_running", "missing", "provider_cause", "stage_context"]


class MissingFramework(ConfigurationError, ImportError):
    """An integration was imported without its framework installed (also an
    ``ImportError``, so ``try: import ... except ImportError`` keeps working)."""


def missing(module: str, framework: str, extra: str, exc: ImportError) -> MissingFramework:
    return MissingFramework(
        f"{module} needs {framework}, which is not installed ({exc}); install it with "
        f"pip install 'agentlanes[{extra}]'."
    )


def stage_context(ctx: Any, who: str) -> StageContext:
    """``ctx`` as a stage context, or a ConfigurationError saying what to pass."""
    from agentlanes.runtime import StageContext

    if not isinstance(ctx, StageContext):
        raise ConfigurationError(
            f"{who} takes the StageContext a stage function receives (async def step(ctx, ...)), got {ctx!r}."
        )
    return ctx


def check_running(ctx: StageContext, who: str) -> None:
    """A model request outside its stage would be charged and recorded nowhere."""
    if ctx.record.status != "running":
        raise ConfigurationError(
            f"{who} was used after stage {ctx.name!r} ended ({ctx.record.status}); build it inside the stage "
            "function, from the context that stage received, so its requests are routed, charged and recorded."
        )


class CallIds:
    """Tool-call ids that are non-empty and unique in a conversation.

    Servers sometimes send no id, or the same id every turn (``call_0``); the frameworks
    match results to calls by id, so such an id is replaced. The replacement depends
    only on the conversation so far, so a replayed run makes the same ids.
    """

    def __init__(self, seen: Iterable[str]) -> None:
        self._seen = {s for s in seen if s}
        self._n = len(self._seen)

    def __call__(self, given: str | None) -> str:
        if given and given not in self._seen:
            self._seen.add(given)
            return given
        while True:
            self._n += 1
            candidate = f"call_lane_{self._n}"
            if candidate not in self._seen:
                self._seen.add(candidate)
                return candidate


def provider_cause(exc: BaseException) -> ProviderError | None:
    """The provider's last error behind a ``ModelError`` (a lane's fallback wraps the
    model's, which wraps the provider's)."""
    seen: BaseException | None = exc
    for _ in range(8):
        seen = seen.__cause__ if seen is not None else None
        if seen is None or isinstance(seen, ProviderError):
            return seen
    return None
