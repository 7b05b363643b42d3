"""The model interface and the values that cross it.

A model adapter implements one async method, :meth:`Model.request`; streaming is
:meth:`Model.stream`, which every model has (the default answers in one piece) and
adapters of streaming servers override. What crosses the interface:

* :class:`Message`: a chat message (``system``, ``user``, ``assistant`` with
  optional :class:`ToolCall` s, or a ``tool`` result answering one);
* :class:`ModelSettings`: per-call settings (a value object): ``max_tokens``,
  ``temperature``, ``timeout``, :class:`Tool` definitions and ``tool_choice``, a
  :class:`ResponseFormat` for structured output, and provider extras;
* :class:`ModelResponse`: text, tool calls, finish reason and :class:`Usage`;
* while streaming, :class:`TextDelta` and :class:`ToolCallDelta` events, then the
  complete :class:`ModelResponse`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

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
    "check_requests_allowed",
    "estimate_input_tokens",
    "estimate_tokens",
    "prompt_text",
    "response_body",
    "response_from_body",
]

ALLOW_MODEL_REQUESTS = True
"""When false, real adapters refuse to send anything (see ``agentlanes.testing``)."""

Role = Literal["system", "user", "assistant", "tool"]


def check_requests_allowed(model: Model) -> None:
    """Raise when real model requests are blocked (tests)."""
    if not ALLOW_MODEL_REQUESTS:
        raise RuntimeError(
            f"{type(model).__name__}({model.name!r}) tried to send a real model request while requests are "
            "blocked (agentlanes.testing.block_model_requests); use a test double such as TestModel."
        )


class ToolCall(NamedTuple):
    """A tool call the model asked for: ``arguments`` is the JSON text it produced."""

    id: str
    name: str
    arguments: str = "{}"

    def parsed(self) -> Any:
        """The arguments as JSON values (``ValueError`` when the model wrote invalid JSON)."""
        return json.loads(self.arguments or "{}")


class Message(NamedTuple):
    """One chat message.

    Attributes:
        role: ``system``, ``user``, ``assistant`` or ``tool``.
        content: its text (empty for an assistant message that only calls tools).
        tool_calls: the tools an assistant message called.
        tool_call_id: for a ``tool`` message, the call it answers.
        name: an optional participant (or tool) name.
    """

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class Tool:
    """A tool the model may call.

    Attributes:
        name: the function name.
        parameters: a JSON schema of its arguments (an object schema).
        description: what it does, for the model.
        strict: ask the provider to follow the schema exactly (when it can).
    """

    name: str
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    description: str | None = None
    strict: bool | None = None


@dataclass(frozen=True)
class ResponseFormat:
    """Structured output: the reply must be JSON valid against ``schema``."""

    schema: Mapping[str, Any]
    name: str = "output"
    strict: bool = True


class Usage(NamedTuple):
    """Token usage of one call, as the provider reported it.

    Attributes:
        input_tokens: every input token, cached ones included.
        output_tokens: tokens produced (reasoning included).
        cached_input_tokens: the input tokens served from the provider's cache (priced
            at the catalog's ``cacheReadPerMillion``).
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0


@dataclass(frozen=True)
class ModelSettings:
    """Per-call settings (a value object, like httpx's ``Timeout``).

    Attributes:
        max_tokens: the most output tokens the call may produce; also what the
            budget reserves for the output.
        temperature: sampling temperature, provider default when ``None``.
        timeout: seconds before the call is abandoned (the model's or the stage's
            default if ``None``).
        tools: tools the model may call.
        tool_choice: ``"auto"``, ``"none"``, ``"required"`` or a tool's name (that
            tool must be called); the provider's default when ``None``.
        response_format: structured output: a JSON schema the reply must follow.
        top_p / stop / seed / parallel_tool_calls: the usual sampling knobs.
        extra: provider-specific fields sent unchanged (an OpenAI-compatible server
            gets them in the request body).
    """

    max_tokens: int = 1024
    temperature: float | None = None
    timeout: float | None = None
    tools: tuple[Tool, ...] = ()
    tool_choice: str | None = None
    response_format: ResponseFormat | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    parallel_tool_calls: bool | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelResponse:
    """What a model returned.

    Attributes:
        text: the reply's text (empty when it only calls tools).
        usage: tokens used (billing).
        model_name: the model that answered (the provider's name for it).
        usage_estimated: true when the provider reported no usage and agentlanes
            estimated it.
        tool_calls: the tools the model asked to call.
        finish_reason: why it stopped: ``stop``, ``length`` (cut at ``max_tokens``),
            ``tool_calls``, ``content_filter``, or what the provider said.
        response_id: the provider's id for the response, if any.
    """

    text: str
    usage: Usage
    model_name: str
    usage_estimated: bool = False
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None
    response_id: str | None = None


class TextDelta(NamedTuple):
    """A piece of the reply's text, while streaming."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a tool call, while streaming: the first piece of call ``index``
    carries its ``id`` and ``name``; ``arguments`` pieces concatenate."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


StreamEvent = TextDelta | ToolCallDelta


class ProviderError(Exception):
    """A provider call failed. Raised by adapters; agentlanes retries the retryable
    ones and, once retries are spent, raises ``ModelError`` from it.

    Attributes:
        retryable: whether trying again may succeed (429, 5xx, timeouts, broken bodies).
        retry_after: seconds the provider asked us to wait, if it said.
        status: the HTTP status, if there was one.
        usage: tokens the failed call still consumed, if known.
        detail: what the server said about the failure (its error message), if it said;
            kept on the exception only (spans and logs record the status, not this).
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        status: int | None = None,
        usage: Usage | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message if not detail else f"{message}: {detail}")
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status
        self.usage = usage
        self.detail = detail


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

    async def stream(self, messages: Sequence[Message], settings: ModelSettings) -> AsyncIterator[Any]:
        """Send one chat request and yield the reply as it comes: :class:`TextDelta`
        and :class:`ToolCallDelta` events, then the complete :class:`ModelResponse`
        (always last). This default answers in one piece through :meth:`request`;
        adapters of streaming servers override it."""
        response = await self.request(messages, settings)
        if response.text:
            yield TextDelta(response.text)
        for index, call in enumerate(response.tool_calls):
            yield ToolCallDelta(index, call.id, call.name, call.arguments)
        yield response

    async def aclose(self) -> None:  # noqa: B027 - optional hook; most models hold nothing
        """Release connections."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, provider={self.provider!r})"


class WrapperModel(Model):
    """A model that wraps another: subclass it to add behaviour (a cache, a filter, a
    log) and override what you change; everything else goes to ``wrapped``."""

    def __init__(self, wrapped: Model) -> None:
        self.wrapped = wrapped

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.wrapped.name

    @property
    def provider(self) -> str:  # type: ignore[override]
        return self.wrapped.provider

    async def request(self, messages: Sequence[Message], settings: ModelSettings) -> ModelResponse:
        return await self.wrapped.request(messages, settings)

    async def stream(self, messages: Sequence[Message], settings: ModelSettings) -> AsyncIterator[Any]:
        async for event in self.wrapped.stream(messages, settings):
            yield event

    async def aclose(self) -> None:
        await self.wrapped.aclose()


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate: about four characters per token, at least one."""
    return max(1, (len(text) + 3) // 4)


def _plain(messages: Sequence[Message], settings: ModelSettings | None) -> bool:
    if settings is not None and (settings.tools or settings.response_format is not None or settings.tool_choice):
        return False
    return all(not m.tool_calls and m.tool_call_id is None and m.name is None for m in messages)


def prompt_text(messages: Sequence[Message], settings: ModelSettings | None = None) -> str:
    """Everything a request asks, as one text: what its keyed digest (and the local
    record's body) is made of. A plain conversation is ``role:content`` lines; one with
    tool calls, tool results, tool definitions or a response format is canonical JSON
    of all of them, so a change to any of them changes the digest."""
    if _plain(messages, settings):
        return "\n".join(f"{m.role}:{m.content}" for m in messages)
    body: dict[str, Any] = {
        "messages": [
            {
                "role": m.role,
                "content": m.content,
                **({"tool_calls": [list(c) for c in m.tool_calls]} if m.tool_calls else {}),
                **({"tool_call_id": m.tool_call_id} if m.tool_call_id is not None else {}),
                **({"name": m.name} if m.name is not None else {}),
            }
            for m in messages
        ]
    }
    if settings is not None:
        if settings.tools:
            body["tools"] = [
                {"name": t.name, "description": t.description, "parameters": t.parameters, "strict": t.strict}
                for t in settings.tools
            ]
        if settings.tool_choice:
            body["tool_choice"] = settings.tool_choice
        if settings.response_format is not None:
            rf = settings.response_format
            body["response_format"] = {"name": rf.name, "schema": rf.schema, "strict": rf.strict}
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def estimate_input_tokens(messages: Sequence[Message], settings: ModelSettings | None = None) -> int:
    """A tokenizer-free estimate of a request's input: its messages' text and tool-call
    arguments, its tool definitions and its response schema."""
    total = 0
    for m in messages:
        total += estimate_tokens(m.content)
        for call in m.tool_calls:
            total += estimate_tokens(call.name + call.arguments)
    if settings is not None and (settings.tools or settings.response_format is not None):
        extra = {
            "tools": [[t.name, t.description, t.parameters] for t in settings.tools],
            "schema": settings.response_format.schema if settings.response_format is not None else None,
        }
        total += estimate_tokens(json.dumps(extra, default=str))
    return total


RESPONSE_FORMAT = "agentlanes.response/1"
"""How a record keeps a response that is more than text (tool calls, a finish reason
other than ``stop``): canonical JSON of its parts. A plain text reply is kept as is."""


def response_body(response: ModelResponse) -> tuple[str, str | None]:
    """``(body, format)``: what the local record keeps of a response (and digests);
    ``format`` is ``None`` for a plain text reply, else :data:`RESPONSE_FORMAT`."""
    if not response.tool_calls and response.finish_reason in (None, "stop"):
        return response.text, None
    body = {
        "text": response.text,
        "tool_calls": [list(c) for c in response.tool_calls],
        "finish_reason": response.finish_reason,
    }
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":")), RESPONSE_FORMAT


def response_from_body(
    body: str, form: str | None, usage: Usage, model_name: str, finish_reason: str | None = None
) -> ModelResponse:
    """The response a record keeps (see :func:`response_body`)."""
    if form != RESPONSE_FORMAT:
        return ModelResponse(body, usage, model_name, finish_reason=finish_reason)
    data = json.loads(body)
    calls = tuple(ToolCall(str(c[0]), str(c[1]), str(c[2])) for c in data.get("tool_calls") or ())
    return ModelResponse(
        str(data.get("text") or ""), usage, model_name, tool_calls=calls, finish_reason=data.get("finish_reason")
    )
