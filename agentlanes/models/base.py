"""The model interface and the values that cross it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

__all__ = [
    "Message",
    "Model",
    "ModelResponse",
    "ModelSettings",
    "ProviderError",
    "Usage",
    "check_requests_allowed",
]

ALLOW_MODEL_REQUESTS = True
"""When false, real adapters refuse to send anything (see ``agentlanes.testing``)."""


def check_requests_allowed(model: Model) -> None:
    """Raise when real model requests are blocked (tests)."""
    if not ALLOW_MODEL_REQUESTS:
        raise RuntimeError(
            f"{type(model).__name__}({model.name!r}) tried to send a real model request while requests are "
            "blocked (agentlanes.testing.block_model_requests); use a test double such as TestModel."
        )


class Message(NamedTuple):
    """One chat message."""

    role: Literal["system", "user", "assistant"]
    content: str


class Usage(NamedTuple):
    """Token usage of one call, as the provider reported it."""

    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
class ModelSettings:
    """Per-call settings (a value object, like httpx's ``Timeout``).

    Attributes:
        max_tokens: the most output tokens the call may produce; also what the
            budget reserves for the output.
        temperature: sampling temperature, provider default when ``None``.
        timeout: seconds before the call is abandoned (the stage's default if ``None``).
    """

    max_tokens: int = 1024
    temperature: float | None = None
    timeout: float | None = None


@dataclass(frozen=True)
class ModelResponse:
    """What a model returned.

    Attributes:
        text: the reply.
        usage: tokens used (billing).
        model_name: the model that answered (the provider's name for it).
        usage_estimated: true when the provider reported no usage and agentlanes
            estimated it from the text.
    """

    text: str
    usage: Usage
    model_name: str
    usage_estimated: bool = False


class ProviderError(Exception):
    """A provider call failed. Raised by adapters; agentlanes retries the retryable
    ones and, once retries are spent, raises ``ModelError`` from it.

    Attributes:
        retryable: whether trying again may succeed (429, 5xx, timeouts, broken bodies).
        retry_after: seconds the provider asked us to wait, if it said.
        status: the HTTP status, if there was one.
        usage: tokens the failed call still consumed, if known.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        status: int | None = None,
        usage: Usage | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status
        self.usage = usage


class Model(ABC):
    """A model behind a lane.

    Attributes:
        name: the model's name as the provider knows it.
        provider: a label for the provider (used for health tracking and spans).
    """

    name: str
    provider: str

    @abstractmethod
    async def request(self, messages: Sequence[Message], settings: ModelSettings) -> ModelResponse:
        """Send one chat request.

        Raises:
            ProviderError: the call failed; ``retryable`` says whether to try again.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook; most models hold nothing
        """Release connections."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, provider={self.provider!r})"


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate: about four characters per token, at least one."""
    return max(1, (len(text) + 3) // 4)
