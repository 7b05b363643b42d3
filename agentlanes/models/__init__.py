"""Model adapters: one ABC, one required async method.

``Model.request(messages, settings) -> ModelResponse`` is all an adapter implements
(``Model.stream`` answers in one piece unless the adapter streams for real).
``OpenAIChatModel`` (extra ``agentlanes[openai]``) speaks to any OpenAI-compatible
server; the test doubles live in :mod:`agentlanes.testing`.
"""

from agentlanes.models.base import (
    Message,
    Model,
    ModelResponse,
    ModelSettings,
    ProviderError,
    ResponseFormat,
    StreamEvent,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    Usage,
    WrapperModel,
)

__all__ = [
    "Message",
    "Model",
    "ModelResponse",
    "ModelSettings",
    "ProviderError",
    "ResponseFormat",
    "StreamEvent",
    "TextDelta",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
    "WrapperModel",
]


def __getattr__(name: str) -> object:
    # The OpenAI adapter imports the optional `openai` package only when asked for.
    if name == "OpenAIChatModel":
        from agentlanes.models.openai import OpenAIChatModel

        return OpenAIChatModel
    raise AttributeError(f"module 'agentlanes.models' has no attribute {name!r}")
