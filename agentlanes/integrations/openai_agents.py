"""The OpenAI Agents SDK on lanes: :class:`LaneModelProvider` is an Agents SDK
``ModelProvider`` whose models run every request on the stage's lane.

::

    async def answer(ctx: StageContext, question: str) -> str:
        config = RunConfig(model_provider=LaneModelProvider(ctx))
        result = await Runner.run(agent, question, run_config=config)
        return result.final_output

    async with lanes.run(task_class="routine-code") as run:
        await run.stage("execution", answer, "What is 6 x 7?")

Every model request of the run (tool turns, handoffs, ``Runner.run_streamed``) goes
through ``ctx.model`` (``request``, or ``stream``): the router's lane and its models, a
reservation per request, retries and fallback, settlement, records and exact replay. The
agent's ``model`` name is not used: the lane's model answers (``Agent(model=LaneModel(ctx))``
binds one agent directly instead). The SDK's input items are turned into chat messages
with its own ``Converter``, and the lane's reply (or stream) into Responses output items
(or stream events) with its own ``Converter`` and ``ChatCmplStreamHandler``, as its
chat-completions models do. Function tools, handoffs and structured output (a JSON-schema
response format) are carried; hosted tools, reusable prompts and server-side
conversation state (``previous_response_id``, ``conversation_id``) are not (a
ConfigurationError says so). ``ModelSettings`` carries ``temperature``, ``top_p``,
``max_tokens`` (default: the stage's), penalties, ``tool_choice``,
``parallel_tool_calls``, ``timeout`` and ``extra_body`` / ``extra_args`` (sent to the
lane's server as body fields); ``reasoning`` and ``verbosity`` are not forwarded, since
the SDK sets them for its own default OpenAI model whatever the lane runs (put them in
``extra_body`` for a lane that takes them).

Tool calls get a non-empty id unique in the run (a server's missing or repeated id is
replaced, the same way on replay); ``response_id`` is ``None`` (a lane keeps no
conversation on a server); usage is reported per request and in a stream's completed
event. The SDK's ``Usage`` has no cost: agentlanes charges each request to the run's
budget (``run.records[...].calls``).

**Tracing.** The SDK has a tracing system of its own (not OpenTelemetry), **on by
default, and its default processor uploads traces (inputs and outputs included) to
OpenAI whenever ``OPENAI_API_KEY`` is set**, a dummy key for a local server included.
This module changes nothing global: choose yourself, once, with
``agents.set_trace_processors([...])`` (your own processors instead of the uploader),
``agents.set_tracing_disabled(True)``, or ``RunConfig(tracing_disabled=True)`` per run.
A ``generation`` span is made for each lane request only while the SDK's tracing is on,
with inputs and outputs only when the SDK includes data. agentlanes' own OpenTelemetry
spans (the stage, each ``chat`` call) are unaffected by any of this.

Install with ``pip install 'agentlanes[openai-agents]'``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

import anyio

from agentlanes.errors import AgentLanesError, ConfigurationError
from agentlanes.integrations._common import CallIds, check_running, missing, provider_cause, stage_context
from agentlanes.models import base as lane
from agentlanes.models._wire import completion_chunks, request_from_body

try:
    from agents import ModelBehaviorError, ModelProvider, ModelResponse, ModelSettings, ModelTracing, Usage
    from agents.agent_output import AgentOutputSchemaBase
    from agents.handoffs import Handoff
    from agents.items import TResponseInputItem, TResponseStreamEvent
    from agents.models.chatcmpl_converter import Converter
    from agents.models.chatcmpl_stream_handler import ChatCmplStreamHandler
    from agents.models.fake_id import FAKE_RESPONSES_ID
    from agents.models.interface import Model
    from agents.retry import ModelRetryAdvice, ModelRetryAdviceRequest, ModelRetryNormalizedError
    from agents.tool import Tool
    from agents.tracing import GenerationSpanData, Span, SpanError, generation_span
    from openai import Omit
    from openai.types.chat import ChatCompletionChunk, ChatCompletionMessage
    from openai.types.chat.chat_completion_message_function_tool_call import (
        ChatCompletionMessageFunctionToolCall,
        Function,
    )
    from openai.types.responses import Response
    from openai.types.responses.response_prompt_param import ResponsePromptParam
    from openai.types.responses.response_usage import InputTokensDetails
except ImportError as exc:  # pragma: no cover - exercised in a test that hides the package
    raise missing("agentlanes.integrations.openai_agents", "the OpenAI Agents SDK", "openai-agents", exc) from exc

if TYPE_CHECKING:
    from agentlanes.runtime import StageContext

__all__ = ["LaneModel", "LaneModelProvider"]

_STREAM_ID = "chatcmpl-agentlanes"


def _plain(value: Any) -> Any:
    """The SDK's message params as plain JSON values (its TypedDicts may hold iterators)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return value
    return [_plain(v) for v in value]


class LaneModel(Model):
    """An Agents SDK model that sends every request through a stage's lane (see the
    module docstring). Make it inside the stage function; :class:`LaneModelProvider`
    hands one to every agent of a run."""

    def __init__(self, ctx: StageContext) -> None:
        self._ctx = stage_context(ctx, "LaneModel(ctx)")

    # ---------------------------------------------------------------- request shape

    def _request(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: ResponsePromptParam | None,
    ) -> tuple[list[lane.Message], lane.ModelSettings, list[Any], CallIds]:
        check_running(self._ctx, "LaneModel(ctx)")
        for what, value in (
            ("previous_response_id", previous_response_id),
            ("conversation_id", conversation_id),
            ("prompt", prompt),
        ):
            if value is not None:
                raise ConfigurationError(
                    f"LaneModel: {what}={value!r} needs state kept on OpenAI's servers, which a lane does not "
                    "have; pass the conversation as input (or use a Session) and the instructions on the Agent."
                )
        for what in ("extra_headers", "extra_query"):
            if getattr(model_settings, what):
                raise ConfigurationError(
                    f"LaneModel: ModelSettings.{what} cannot be sent through a lane (the lane's adapter makes the "
                    "HTTP request); put provider fields in extra_body."
                )
        messages = _plain(Converter.items_to_messages(input))
        if system_instructions:
            messages.insert(0, {"role": "system", "content": system_instructions})
        wire_tools = [Converter.tool_to_openai(t) for t in tools]
        wire_tools += [Converter.convert_handoff_tool(h) for h in handoffs]
        body: dict[str, Any] = {
            "messages": messages,
            "max_tokens": model_settings.max_tokens or self._ctx.max_tokens or lane.ModelSettings().max_tokens,
        }
        if wire_tools:
            body["tools"] = _plain(wire_tools)
            if model_settings.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = model_settings.parallel_tool_calls
        choice = Converter.convert_tool_choice(model_settings.tool_choice)
        if not isinstance(choice, Omit) and wire_tools:
            body["tool_choice"] = _plain(choice)
        response_format = Converter.convert_response_format(output_schema)
        if not isinstance(response_format, Omit):
            body["response_format"] = _plain(response_format)
        # `reasoning` and `verbosity` are left out: the SDK fills them in for its own default
        # OpenAI model (an agent without a model name gets gpt-5 defaults), not for the lane's;
        # a lane that wants them gets them through extra_body.
        for key in ("temperature", "top_p", "frequency_penalty", "presence_penalty"):
            value = getattr(model_settings, key)
            if value is not None:
                body[key] = value
        for extra in (model_settings.extra_body, model_settings.extra_args):
            if isinstance(extra, Mapping):
                body.update(extra)
            elif extra is not None:
                raise ConfigurationError(f"LaneModel: extra_body/extra_args={extra!r} must be a mapping of fields.")
        sent, settings, _, _ = request_from_body(body)
        if model_settings.timeout is not None:
            settings = dataclasses.replace(settings, timeout=float(model_settings.timeout))
        ids = CallIds(c.id for m in sent for c in m.tool_calls)
        return sent, settings, messages, ids

    def _span(self, model_settings: ModelSettings, tracing: ModelTracing) -> Span[GenerationSpanData]:
        config = model_settings.to_traceable_dict()
        if not tracing.include_data():
            config.pop("metadata", None)
        config["lane"] = self._ctx.lane
        config["model_impl"] = "agentlanes"
        return generation_span(model=self._ctx.model.name, model_config=config, disabled=tracing.is_disabled())

    @staticmethod
    def _failed(span: Span[GenerationSpanData], exc: BaseException, tracing: ModelTracing) -> None:
        data: dict[str, Any] = {"error.type": type(exc).__name__}
        if tracing.include_data():
            data["message"] = str(exc)
        span.set_error(SpanError(message="Error getting a response from the lane", data=data))

    # ---------------------------------------------------------------- the interface

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None = None,
        conversation_id: str | None = None,
        prompt: ResponsePromptParam | None = None,
    ) -> ModelResponse:
        sent, settings, wire, ids = self._request(
            system_instructions,
            input,
            model_settings,
            tools,
            output_schema,
            handoffs,
            previous_response_id,
            conversation_id,
            prompt,
        )
        with self._span(model_settings, tracing) as span:
            if tracing.include_data():
                span.span_data.input = wire
            try:
                response = await self._ctx.model.request(sent, settings)
            except AgentLanesError as exc:
                self._failed(span, exc, tracing)
                raise
            span.span_data.model = response.model_name
            usage = _usage(response.usage)
            span.span_data.usage = {
                "requests": 1,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "total_tokens": usage.total_tokens,
            }
            calls = [
                ChatCompletionMessageFunctionToolCall(
                    id=ids(c.id), type="function", function=Function(name=c.name, arguments=c.arguments or "{}")
                )
                for c in response.tool_calls
            ]
            message = ChatCompletionMessage(role="assistant", content=response.text or None, tool_calls=calls or None)
            if not response.text and not calls:
                if response.finish_reason == "content_filter":
                    message.refusal = "Response withheld by the provider's content filter."
                elif response.finish_reason == "length":
                    raise ModelBehaviorError(
                        f"The lane's model {response.model_name!r} stopped at max_tokens "
                        f"({settings.max_tokens}) before any text or tool call; raise ModelSettings.max_tokens."
                    )
            if tracing.include_data():
                span.span_data.output = [message.model_dump()]
            items = Converter.message_to_output_items(message, provider_data={"model": response.model_name})
            return ModelResponse(output=items, usage=usage, response_id=None)

    async def stream_response(  # an async generator, as the SDK's own models are
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None = None,
        conversation_id: str | None = None,
        prompt: ResponsePromptParam | None = None,
    ) -> AsyncIterator[TResponseStreamEvent]:
        sent, settings, wire, ids = self._request(
            system_instructions,
            input,
            model_settings,
            tools,
            output_schema,
            handoffs,
            previous_response_id,
            conversation_id,
            prompt,
        )
        with self._span(model_settings, tracing) as span:
            if tracing.include_data():
                span.span_data.input = wire
            events = self._ctx.model.stream(sent, settings)
            choice = model_settings.tool_choice
            shell = Response(
                id=FAKE_RESPONSES_ID,
                created_at=time.time(),
                model=self._ctx.model.name,
                object="response",
                output=[],
                tool_choice=choice if choice in ("auto", "none", "required") else "auto",
                tools=[],
                parallel_tool_calls=bool(settings.parallel_tool_calls),
            )
            chunks = _chunks(events, ids, self._ctx.model.name)
            try:
                async for event in ChatCmplStreamHandler.handle_stream(shell, cast(Any, chunks)):
                    if event.type == "response.completed":
                        final = event.response
                        span.span_data.model = final.model
                        if final.usage is not None:
                            span.span_data.usage = {
                                "requests": 1,
                                "input_tokens": final.usage.input_tokens,
                                "output_tokens": final.usage.output_tokens,
                                "total_tokens": final.usage.total_tokens,
                            }
                        if tracing.include_data():
                            span.span_data.output = [final.model_dump()]
                    yield event
            except AgentLanesError as exc:
                self._failed(span, exc, tracing)
                raise
            finally:
                await _close(chunks)
                await _close(events)

    def get_retry_advice(self, request: ModelRetryAdviceRequest) -> ModelRetryAdvice | None:
        """agentlanes has already retried the lane's models and fallen back to cheaper
        lanes before an error reaches the SDK: it advises against another try, and says
        what the provider last said (status, Retry-After) for a policy of your own."""
        error = request.error
        if not isinstance(error, AgentLanesError):
            return None
        cause = provider_cause(error)
        status = cause.status if cause is not None else None
        retry_after = cause.retry_after if cause is not None else None
        return ModelRetryAdvice(
            suggested=False,
            retry_after=retry_after,
            reason=f"agentlanes already retried and fell back: {type(error).__name__}",
            normalized=ModelRetryNormalizedError(
                status_code=status,
                message=str(error),
                retry_after=retry_after,
            ),
        )


class LaneModelProvider(ModelProvider):
    """An Agents SDK model provider whose every model is the stage's lane:
    ``RunConfig(model_provider=LaneModelProvider(ctx))``. Make it inside the stage
    function (the ``ctx`` it receives). Agents' ``model`` names are not used."""

    def __init__(self, ctx: StageContext) -> None:
        self._model = LaneModel(stage_context(ctx, "LaneModelProvider(ctx)"))

    def get_model(self, model_name: str | None) -> Model:
        return self._model


def _usage(usage: lane.Usage) -> Usage:
    return Usage(
        requests=1,
        input_tokens=int(usage.input_tokens),
        output_tokens=int(usage.output_tokens),
        total_tokens=int(usage.input_tokens) + int(usage.output_tokens),
        input_tokens_details=InputTokensDetails(cached_tokens=int(usage.cached_input_tokens), cache_write_tokens=0),
    )


async def _chunks(events: AsyncIterator[Any], ids: CallIds, model: str) -> AsyncIterator[ChatCompletionChunk]:
    """A lane's stream events as chat-completion chunks (what the SDK's stream handler
    reads); each tool call's first piece gets its run-unique id."""
    call_ids: dict[int, str] = {}
    async for event in events:
        if isinstance(event, lane.ToolCallDelta):
            if event.index not in call_ids:
                call_ids[event.index] = ids(event.id)
                event = dataclasses.replace(event, id=call_ids[event.index])
            elif event.id is not None:
                event = dataclasses.replace(event, id=None)
        elif isinstance(event, lane.TextDelta):
            if not event.text:
                continue  # an empty piece would open an empty message
        elif not isinstance(event, lane.ModelResponse):
            continue
        for chunk in completion_chunks(event, _STREAM_ID, model, include_usage=True):
            yield ChatCompletionChunk.model_validate(chunk)


async def _close(events: AsyncIterator[Any]) -> None:
    aclose: Callable[[], Any] | None = getattr(events, "aclose", None)
    if aclose is not None:
        # closing settles what the stream used: it must run even when cancelled
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await aclose()
