"""PydanticAI on lanes: :class:`LaneModel` is a PydanticAI ``Model`` whose every request
runs on the stage's lane.

::

    async def answer(ctx: StageContext, question: str) -> str:
        result = await agent.run(question, model=LaneModel(ctx))
        return result.output

    async with lanes.run(task_class="routine-code") as run:
        await run.stage("execution", answer, "What is 6 x 7?")

Every model request of the agent, tool turns and output-tool turns included, goes
through ``ctx.model`` (``request``, or ``stream`` for ``agent.run_stream``): the router's
lane and its models, a reservation per request, retries and fallback, settlement,
records, spans and exact replay. PydanticAI's messages, tool definitions, ``tool_choice``,
structured output (output tools by default, ``NativeOutput`` as a JSON-schema response
format) and settings are carried over to agentlanes' model interface; text only (images,
audio and documents are refused with a ConfigurationError).

Choices made here:

* the profile says ``supports_inline_system_prompts=True``: a chat server takes system
  messages anywhere, so a mid-conversation system prompt stays one, and PydanticAI's
  framing announcement (when it is needed at all) arrives as a mid-conversation system
  message instead of being put in front of the system prompt, so the prompt prefix
  (and agentlanes' prompt digests) stay the same through a run;
* ``ModelResponse.model_name`` is the model that answered; ``provider_name`` is
  ``"agentlanes"``, which PydanticAI's price list does not know, so ``usage.cost`` stays
  ``None``: agentlanes charges each request to the run's budget (``run.records[...]
  .calls``) and PydanticAI does not price it a second time;
* a model call that fails after agentlanes' retries and fallbacks (``ModelError``) is
  raised as PydanticAI's ``ModelHTTPError`` (with the error category of its status) or
  ``ModelAPIError``, so ``FallbackModel`` and user code react as to any provider error;
  agentlanes' own refusals (``BudgetExhausted``, ``ConfigurationError``...) propagate
  unchanged;
* agentlanes' ``block_model_requests()`` guards the real adapters behind the lane;
  PydanticAI's ``ALLOW_MODEL_REQUESTS`` is not consulted, as a lane may well be served by
  an agentlanes test double.

Install with ``pip install 'agentlanes[pydantic-ai]'``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

import anyio

from agentlanes.errors import ConfigurationError, ModelError
from agentlanes.integrations._common import CallIds, check_running, missing, provider_cause, stage_context
from agentlanes.models import base as lane

try:
    from pydantic_ai import RunContext
    from pydantic_ai.exceptions import (
        ModelAPIError,
        ModelAuthenticationError,
        ModelHTTPError,
        ModelNotFoundError,
        ModelQuotaExceededError,
        ModelRateLimitError,
        ModelRequestRejectedError,
        ModelServerError,
        ModelUnavailableError,
    )
    from pydantic_ai.messages import (
        CachePoint,
        InstructionPart,
        ModelMessage,
        ModelRequest,
        ModelResponse,
        ModelResponsePart,
        ModelResponseStreamEvent,
        RetryPromptPart,
        SystemPromptPart,
        TextContent,
        TextPart,
        ToolCallPart,
        ToolReturnPart,
        UserPromptPart,
    )
    from pydantic_ai.models import Model, ModelRequestParameters, StreamedResponse
    from pydantic_ai.profiles import ModelProfile, ModelProfileSpec, merge_profile
    from pydantic_ai.settings import ModelSettingName, ModelSettings
    from pydantic_ai.usage import RequestUsage
except ImportError as exc:  # pragma: no cover - exercised in a test that hides the package
    raise missing("agentlanes.integrations.pydantic_ai", "PydanticAI (pydantic-ai-slim)", "pydantic-ai", exc) from exc

_resolve_tool_choice: Callable[[ModelSettings | None, ModelRequestParameters], Any] | None
try:  # how PydanticAI's own adapters read `tool_choice`; its module is private, so not relied on
    from pydantic_ai.models._tool_choice import resolve_tool_choice as _resolve_tool_choice
except ImportError:  # pragma: no cover - a later PydanticAI moved it
    _resolve_tool_choice = None

if TYPE_CHECKING:
    from agentlanes.runtime import StageContext

__all__ = ["LANE_PROFILE", "LaneModel"]

LANE_PROFILE = ModelProfile(
    supports_tools=True,
    supports_json_schema_output=True,
    supports_json_object_output=False,
    supports_inline_system_prompts=True,
    supports_image_input=False,
    supports_audio_input=False,
    supports_document_input=False,
    supports_audio_file_input=False,
    supports_video_input=False,
    default_structured_output_mode="tool",
    context_window=None,
)
"""The profile a :class:`LaneModel` starts from (a ``profile=`` given to it is merged on
top): tools, output tools and JSON-schema structured output, system messages anywhere,
text only. ``context_window`` is not looked up by name (the lane's models decide it)."""

_FINISH: dict[str, Any] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_call",
    "function_call": "tool_call",
    "content_filter": "content_filter",
}

_CATEGORIES: dict[int, type[Any]] = {
    401: ModelAuthenticationError,
    402: ModelQuotaExceededError,
    403: ModelAuthenticationError,
    404: ModelNotFoundError,
    429: ModelRateLimitError,
    503: ModelUnavailableError,
}


def _category(status: int) -> type[Any] | None:
    if status in _CATEGORIES:
        return _CATEGORIES[status]
    if status >= 500:
        return ModelServerError
    if 400 <= status < 500:
        return ModelRequestRejectedError
    return None


def _api_error(exc: ModelError, model_name: str, *, in_stream: bool = False) -> ModelAPIError:
    """PydanticAI's error for a lane call that failed after agentlanes' retries."""
    cause = provider_cause(exc)
    status = cause.status if cause is not None else None
    retry_after = cause.retry_after if cause is not None else None
    if cause is not None and status is not None and status >= 400:
        detail = cause.detail
        return ModelHTTPError.for_category(
            _category(status),
            status_code=status,
            model_name=model_name,
            body=detail if detail is not None else str(exc),
            retry_after=retry_after,
            in_stream=in_stream,
        )
    return ModelAPIError(model_name, str(exc), retry_after=retry_after, in_stream=in_stream)


# ------------------------------------------------------------------ PydanticAI -> agentlanes


def _user_text(part: UserPromptPart) -> str:
    if isinstance(part.content, str):
        return part.content
    texts: list[str] = []
    for item in part.content:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, TextContent):
            texts.append(item.content)
        elif isinstance(item, CachePoint):
            continue  # a cache marker, not content
        else:
            raise ConfigurationError(
                f"LaneModel: a user prompt holds {type(item).__name__}; a lane carries text only. Send text (or "
                "call a multimodal model directly, outside the lane)."
            )
    return "".join(texts)


def _request_messages(message: ModelRequest) -> Iterator[lane.Message]:
    for part in message.parts:
        if isinstance(part, SystemPromptPart):
            yield lane.Message("system", part.content)
        elif isinstance(part, UserPromptPart):
            yield lane.Message("user", _user_text(part))
        elif isinstance(part, ToolReturnPart):
            text, files = part.model_response_str_and_user_content()
            if files:
                raise ConfigurationError(
                    f"LaneModel: tool {part.tool_name!r} returned {len(files)} file(s); a lane carries text only. "
                    "Return text from the tool."
                )
            yield lane.Message("tool", text, tool_call_id=part.tool_call_id)
        elif isinstance(part, RetryPromptPart):  # deprecated; reaches only a model called directly
            if part.tool_name is None:
                yield lane.Message("user", part.model_response())
            else:
                yield lane.Message("tool", part.model_response(), tool_call_id=part.tool_call_id)
        else:
            raise ConfigurationError(
                f"LaneModel cannot send a {type(part).__name__}: call model.prepare_messages(messages) first and "
                "pass its result (an Agent does this for you)."
            )


def _response_message(message: ModelResponse) -> lane.Message | None:
    texts: list[str] = []
    calls: list[lane.ToolCall] = []
    for part in message.parts:
        if isinstance(part, TextPart):
            texts.append(part.content)
        elif isinstance(part, ToolCallPart):
            calls.append(lane.ToolCall(part.tool_call_id, part.tool_name, part.args_as_json_str()))
        # thinking and other providers' native parts are not sent back to a chat model
    if not texts and not calls:
        return None
    return lane.Message("assistant", "".join(texts), tuple(calls))


def _instructions(messages: list[ModelMessage], params: ModelRequestParameters) -> str | None:
    if params.instruction_parts is not None:
        return InstructionPart.join(params.instruction_parts) if params.instruction_parts else None
    for message in reversed(messages):  # a direct request: the latest instructions in the history
        if isinstance(message, ModelRequest) and message.instructions:
            return message.instructions
    return None


def lane_messages(messages: list[ModelMessage], params: ModelRequestParameters) -> list[lane.Message]:
    """PydanticAI's (prepared) messages as agentlanes messages; the instructions become a
    system message after the leading ones."""
    out: list[lane.Message] = []
    for message in messages:
        if isinstance(message, ModelRequest):
            out.extend(_request_messages(message))
        else:
            mapped = _response_message(message)
            if mapped is not None:
                out.append(mapped)
    instructions = _instructions(messages, params)
    if instructions:
        lead = 0
        while lead < len(out) and out[lead].role == "system":
            lead += 1
        out.insert(lead, lane.Message("system", instructions))
    return out


def _tool_choice(
    settings: ModelSettings | None, params: ModelRequestParameters, tools: tuple[lane.Tool, ...]
) -> tuple[tuple[lane.Tool, ...], str | None]:
    """The tools to send and agentlanes' ``tool_choice`` (a subset is sent as fewer tools)."""
    if not tools:
        return tools, None
    if _resolve_tool_choice is None:  # pragma: no cover - only if PydanticAI moved its resolver
        return tools, "auto" if params.allow_text_output else "required"
    resolved = _resolve_tool_choice(settings, params)
    if isinstance(resolved, str):
        return tools, resolved
    mode, names = resolved
    chosen = tuple(t for t in tools if t.name in names)
    if mode == "required" and len(chosen) == 1:
        return tools, chosen[0].name
    return chosen, mode


def lane_settings(
    settings: ModelSettings | None, params: ModelRequestParameters, default_max_tokens: int
) -> lane.ModelSettings:
    """PydanticAI's (prepared) settings and parameters as agentlanes settings."""
    s: Mapping[str, Any] = settings or {}
    tools = tuple(
        lane.Tool(t.name, dict(t.parameters_json_schema), t.description, t.strict)
        for t in params.declared_tool_defs.values()
    )
    tools, choice = _tool_choice(settings, params, tools)
    response_format = None
    if params.output_mode == "native" and params.output_object is not None:
        o = params.output_object
        response_format = lane.ResponseFormat(dict(o.json_schema), o.name or "final_result", bool(o.strict))
    timeout = s.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))):
        raise ConfigurationError(
            f"LaneModel: model_settings timeout={timeout!r}; give it in seconds (a number), or use request_timeout."
        )
    extra: dict[str, Any] = {
        k: s[k] for k in ("presence_penalty", "frequency_penalty", "logit_bias", "top_k") if k in s
    }
    body = s.get("extra_body")
    if body is not None:
        if not isinstance(body, Mapping):
            raise ConfigurationError(f"LaneModel: model_settings extra_body={body!r} must be a mapping of fields.")
        extra.update(body)
    stop = s.get("stop_sequences")
    return lane.ModelSettings(
        max_tokens=s.get("max_tokens") or default_max_tokens,
        temperature=s.get("temperature"),
        timeout=float(timeout) if timeout is not None else None,
        tools=tools,
        tool_choice=choice,
        response_format=response_format,
        top_p=s.get("top_p"),
        stop=tuple(stop or ()),
        seed=s.get("seed"),
        parallel_tool_calls=s.get("parallel_tool_calls") if tools else None,
        extra=extra,
    )


def _seen_ids(messages: list[ModelMessage]) -> CallIds:
    return CallIds(
        p.tool_call_id for m in messages if isinstance(m, ModelResponse) for p in m.parts if isinstance(p, ToolCallPart)
    )


def _usage(usage: lane.Usage) -> RequestUsage:
    return RequestUsage(
        input_tokens=int(usage.input_tokens),
        output_tokens=int(usage.output_tokens),
        cache_read_tokens=int(usage.cached_input_tokens),
    )


def _details(ctx: StageContext, response: lane.ModelResponse) -> dict[str, Any]:
    details: dict[str, Any] = {"lane": ctx.lane}
    if response.finish_reason is not None:
        details["finish_reason"] = response.finish_reason
    if response.usage_estimated:
        details["usage_estimated"] = True  # agentlanes estimated it: the server reported none
    return details


# ------------------------------------------------------------------ the model


class LaneModel(Model):
    """A PydanticAI model that sends every request through a stage's lane.

    Args:
        ctx: the :class:`~agentlanes.StageContext` of the stage the agent runs in; make
            the model inside the stage function (a model outlives nothing: a request
            after its stage ended is refused).
        settings: PydanticAI model settings used as defaults for every request.
        profile: a PydanticAI profile (or a function of one) applied on top of
            :data:`LANE_PROFILE`, e.g. ``{"supports_json_schema_output": False}`` for
            a lane whose server cannot follow a response schema.
    """

    unsupported_settings: ClassVar[frozenset[ModelSettingName]] = frozenset({"extra_headers", "max_retries"})
    """Settings a lane cannot carry: headers are the adapter's, retries agentlanes'."""

    def __init__(
        self, ctx: StageContext, *, settings: ModelSettings | None = None, profile: ModelProfileSpec | None = None
    ) -> None:
        self._ctx = stage_context(ctx, "LaneModel(ctx)")
        spec: ModelProfileSpec
        if profile is None:
            spec = LANE_PROFILE
        elif callable(profile):
            user = profile

            def spec_fn(base: ModelProfile) -> ModelProfile:
                return user(merge_profile(base, LANE_PROFILE))

            spec = spec_fn
        else:
            spec = merge_profile(LANE_PROFILE, profile)
        super().__init__(settings=settings, profile=spec)

    @property
    def model_name(self) -> str:
        """The lane the stage runs on now (``standard``...); the model that answered is
        each response's ``model_name``."""
        return self._ctx.lane or "no-model"

    @property
    def system(self) -> str:
        return "agentlanes"

    @property
    def base_url(self) -> str | None:
        return None

    def _prepare(
        self, messages: list[ModelMessage], settings: ModelSettings | None, params: ModelRequestParameters
    ) -> tuple[list[lane.Message], lane.ModelSettings, ModelRequestParameters, CallIds]:
        check_running(self._ctx, "LaneModel(ctx)")
        settings, params = self.prepare_request(settings, params)
        default_max = self._ctx.max_tokens or lane.ModelSettings().max_tokens
        return (
            lane_messages(messages, params),
            lane_settings(settings, params, default_max),
            params,
            _seen_ids(messages),
        )

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        sent, settings, _, ids = self._prepare(messages, model_settings, model_request_parameters)
        try:
            response = await self._ctx.model.request(sent, settings)
        except ModelError as exc:
            raise _api_error(exc, self.model_name) from exc
        parts: list[ModelResponsePart] = []
        if response.text:
            parts.append(TextPart(response.text))
        parts.extend(ToolCallPart(call.name, call.arguments or None, ids(call.id)) for call in response.tool_calls)
        return ModelResponse(
            parts=parts,
            usage=_usage(response.usage),
            model_name=response.model_name,
            provider_name="agentlanes",
            provider_response_id=response.response_id,
            finish_reason=_FINISH.get(response.finish_reason or ""),
            provider_details=_details(self._ctx, response),
        )

    @asynccontextmanager
    async def request_stream(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
        run_context: RunContext[Any] | None = None,
    ) -> AsyncGenerator[StreamedResponse]:
        sent, settings, params, ids = self._prepare(messages, model_settings, model_request_parameters)
        events = self._ctx.model.stream(sent, settings)
        try:
            # The lane opens the stream (routing, reservation, retries, fallback) up to
            # its first event; a failure here is a failed request, not a broken stream.
            first = await anext(aiter(events))
        except ModelError as exc:
            raise _api_error(exc, self.model_name) from exc
        except StopAsyncIteration:  # pragma: no cover - the lane's stream always ends with its reply
            raise ModelAPIError(self.model_name, "the lane's stream ended before any event") from None
        stream = _LaneStreamedResponse(
            model_request_parameters=params,
            _ctx=self._ctx,
            _lane=self.model_name,
            _events=events,
            _first=first,
            _ids=ids,
        )
        try:
            yield stream
        finally:
            await _close(events)


async def _close(events: AsyncIterator[Any]) -> None:
    aclose: Callable[[], Any] | None = getattr(events, "aclose", None)
    if aclose is not None:
        # closing settles what the stream used: it must run even when cancelled
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await aclose()


@dataclass
class _LaneStreamedResponse(StreamedResponse):
    """A lane's stream (text and tool-call deltas, then the whole reply) as PydanticAI's
    stream events."""

    _ctx: StageContext
    _lane: str
    _events: AsyncIterator[Any]
    _first: Any
    _ids: CallIds
    _timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))
    _answered_by: str | None = None
    _call_ids: dict[int, str] = field(default_factory=dict)

    async def _get_event_iterator(self) -> AsyncIterator[ModelResponseStreamEvent]:
        event, self._first = self._first, None
        while True:
            if isinstance(event, lane.TextDelta):
                for out in self._parts_manager.handle_text_delta(vendor_part_id="content", content=event.text):
                    yield out
            elif isinstance(event, lane.ToolCallDelta):
                call_id = None
                if event.index not in self._call_ids:
                    call_id = self._call_ids[event.index] = self._ids(event.id)
                for out in self._parts_manager.handle_tool_call_delta_events(
                    vendor_part_id=("tool", event.index),
                    tool_name=event.name,
                    args=event.arguments or None,
                    tool_call_id=call_id,
                ):
                    yield out
            elif isinstance(event, lane.ModelResponse):
                self._usage = _usage(event.usage)
                self.finish_reason = _FINISH.get(event.finish_reason or "")
                self.provider_response_id = event.response_id
                self.provider_details = _details(self._ctx, event)
                self._answered_by = event.model_name
                return
            try:
                event = await anext(aiter(self._events))
            except StopAsyncIteration:
                return
            except ModelError as exc:
                raise _api_error(exc, self._lane, in_stream=True) from exc

    async def close_stream(self) -> None:
        await _close(self._events)

    @property
    def model_name(self) -> str:
        return self._answered_by or self._lane

    @property
    def provider_name(self) -> str | None:
        return "agentlanes"

    @property
    def provider_url(self) -> str | None:
        return None

    @property
    def timestamp(self) -> datetime:
        return self._timestamp
