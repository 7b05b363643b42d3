"""Test doubles, public API: build and test agentlanes code without a model server.

* :class:`TestModel`: answers every request with schema-valid output (or fixed text);
  knobs such as ``fail_times`` make it fail first, ``call_tools`` make it call the
  tools it is given (with schema-valid arguments) before it answers, ``stream_chunks``
  stream its answer in pieces.
* :class:`FunctionModel`: answers with a function of the messages (sync or async).
* :class:`ScriptedModel`: answers from a script of steps (text, a :func:`reply` with
  tool calls, a :class:`StreamedReply`, an exception); ``.calls`` records every
  request and :meth:`ScriptedModel.assert_complete` checks the script was used up.
* :func:`block_model_requests`: make any *real* adapter raise instead of sending.
* :func:`capture_spans`: spans of runs, kept in memory (and as a snapshot tree).
* :func:`assert_replays` / :func:`assert_replays_async`: a recorded run as a regression test.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import anyio
from pydantic import BaseModel

from agentlanes.models import base as _base
from agentlanes.models.base import (
    Message,
    Model,
    ModelResponse,
    ModelSettings,
    ProviderError,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    estimate_input_tokens,
    estimate_tokens,
)

__all__ = [
    "FunctionModel",
    "ScriptedModel",
    "SpanCapture",
    "StreamedReply",
    "TestModel",
    "assert_replays",
    "assert_replays_async",
    "block_model_requests",
    "capture_spans",
    "reply",
    "tool_call",
]


@contextmanager
def block_model_requests() -> Iterator[None]:
    """Within the block, real model adapters raise instead of sending a request.

    Use it (or an autouse fixture around it) in test suites so that a missing test
    double can never turn into a real, billed request.
    """
    previous = _base.ALLOW_MODEL_REQUESTS
    _base.ALLOW_MODEL_REQUESTS = False
    try:
        yield
    finally:
        _base.ALLOW_MODEL_REQUESTS = previous


def _usage(messages: Sequence[Message], text: str, settings: ModelSettings | None = None) -> Usage:
    return Usage(estimate_input_tokens(messages, settings), estimate_tokens(text))


def tool_call(name: str, arguments: Any = None, *, id: str | None = None) -> ToolCall:
    """A tool call for a scripted reply: ``arguments`` is a JSON value (or JSON text)."""
    text = arguments if isinstance(arguments, str) else json.dumps(arguments if arguments is not None else {})
    return ToolCall(id or f"call_{name}", name, text)


def reply(
    text: str = "",
    *,
    tool_calls: Sequence[ToolCall] = (),
    finish_reason: str | None = None,
    usage: Usage | None = None,
    model: str = "scripted-model",
) -> ModelResponse:
    """A scripted reply: text and/or tool calls (``finish_reason`` defaults to
    ``tool_calls`` when it calls tools, else ``stop``)."""
    calls = tuple(tool_calls)
    return ModelResponse(
        text,
        usage or Usage(0, estimate_tokens(text + "".join(c.arguments for c in calls))),
        model,
        tool_calls=calls,
        finish_reason=finish_reason or ("tool_calls" if calls else "stop"),
    )


class StreamedReply:
    """A scripted reply that streams: ``events`` (text pieces as ``str``, or
    :class:`~agentlanes.models.TextDelta` / :class:`~agentlanes.models.ToolCallDelta`)
    arrive one by one; with ``fail_after=n`` the stream fails after ``n`` events (a
    server that drops mid-stream), with ``usage=None`` it ends without reporting usage."""

    def __init__(
        self,
        events: Sequence[str | TextDelta | ToolCallDelta],
        *,
        usage: Usage | None = None,
        fail_after: int | None = None,
        finish_reason: str | None = None,
        delay: float = 0.0,
    ) -> None:
        self.events = [TextDelta(e) if isinstance(e, str) else e for e in events]
        self.usage = usage
        self.fail_after = fail_after
        self.finish_reason = finish_reason
        self.delay = delay

    def response(self, messages: Sequence[Message], settings: ModelSettings | None, model: str) -> ModelResponse:
        text = "".join(e.text for e in self.events if isinstance(e, TextDelta))
        calls: dict[int, list[str]] = {}
        for e in self.events:
            if isinstance(e, ToolCallDelta):
                slot = calls.setdefault(e.index, ["", "", ""])
                slot[0] = e.id or slot[0]
                slot[1] = e.name or slot[1]
                slot[2] += e.arguments
        tool_calls = tuple(ToolCall(*c) for _, c in sorted(calls.items()))
        usage = self.usage or _usage(messages, text, settings)
        finish = self.finish_reason or ("tool_calls" if tool_calls else "stop")
        return ModelResponse(text, usage, model, self.usage is None, tool_calls, finish)

    async def stream(self, messages: Sequence[Message], settings: ModelSettings, model: str) -> Any:
        for i, event in enumerate(self.events):
            if self.fail_after is not None and i >= self.fail_after:
                raise ProviderError("test: the stream broke", retryable=True, status=502)
            if self.delay:
                await anyio.sleep(self.delay)
            yield event
        if self.fail_after is not None and self.fail_after >= len(self.events):
            raise ProviderError("test: the stream broke before its end", retryable=True, status=502)
        yield self.response(messages, settings, model)


def _example(schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    """A minimal value valid against a (pydantic-generated) JSON schema."""
    if "$ref" in schema:
        return _example(defs[schema["$ref"].split("/")[-1]], defs)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return _example(schema[key][0], defs)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: _example(props[name], defs) for name in schema.get("required", list(props))}
    if kind == "array":
        return [_example(schema["items"], defs)] * int(schema.get("minItems", 0)) if "items" in schema else []
    if kind == "integer":
        return int(schema.get("minimum", 0))
    if kind == "number":
        return float(schema.get("minimum", 0))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "a" * int(schema.get("minLength", 1))


class TestModel(Model):
    """Answers with schema-valid JSON for ``output`` (a pydantic model or JSON schema),
    or with ``text``.

    Args:
        output: what the answer must validate against; ``None`` for plain text.
        text: the plain-text answer (default ``"ok"``).
        fail_times: fail this many requests first (retryable ``ProviderError``).
        fail_status: the HTTP status those failures carry.
        delay: seconds to wait before answering.
        name: the model's name; ``provider`` its provider label.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        output: type[BaseModel] | dict[str, Any] | None = None,
        *,
        text: str = "ok",
        fail_times: int = 0,
        fail_status: int = 503,
        delay: float = 0.0,
        name: str = "test-model",
        provider: str = "test",
        call_tools: Sequence[str] | Literal["all"] = (),
        stream_chunks: int = 1,
    ) -> None:
        self.name = name
        self.provider = provider
        self.fail_times = fail_times
        self.fail_status = fail_status
        self.delay = delay
        self.call_tools = call_tools
        self.stream_chunks = max(1, stream_chunks)
        self.calls: list[list[Message]] = []
        self.settings: list[ModelSettings] = []
        self._structured = output
        if output is None:
            self._text = text
        else:
            schema = output.model_json_schema() if isinstance(output, type) else dict(output)
            self._text = json.dumps(_example(schema, schema.get("$defs", {})))

    async def request(self, messages: Sequence[Message], settings: ModelSettings) -> ModelResponse:
        self.calls.append(list(messages))
        self.settings.append(settings)
        if self.delay:
            await anyio.sleep(self.delay)
        if self.fail_times > 0:
            self.fail_times -= 1
            raise ProviderError(
                f"{self.provider}: scripted failure (HTTP {self.fail_status})", retryable=True, status=self.fail_status
            )
        wanted = [t for t in settings.tools if self.call_tools == "all" or t.name in self.call_tools]
        answered = any(m.role == "tool" for m in messages)
        if wanted and not answered and settings.tool_choice != "none":
            calls = tuple(
                ToolCall(f"call_{i}_{t.name}", t.name, json.dumps(_example(dict(t.parameters), {})))
                for i, t in enumerate(wanted)
            )
            text = "".join(c.arguments for c in calls)
            return ModelResponse(
                "", _usage(messages, text, settings), self.name, tool_calls=calls, finish_reason="tool_calls"
            )
        text = self._text
        if settings.response_format is not None and self._structured is None:
            schema = dict(settings.response_format.schema)
            text = json.dumps(_example(schema, schema.get("$defs", {})))
        return ModelResponse(text, _usage(messages, text, settings), self.name, finish_reason="stop")

    async def stream(self, messages: Sequence[Message], settings: ModelSettings) -> Any:
        response = await self.request(messages, settings)
        text, n = response.text, self.stream_chunks
        size = max(1, -(-len(text) // n))
        for i in range(0, len(text), size):
            if self.delay:
                await anyio.sleep(self.delay)
            yield TextDelta(text[i : i + size])
        for index, call in enumerate(response.tool_calls):
            yield ToolCallDelta(index, call.id, call.name, call.arguments)
        yield response


Reply = str | ModelResponse


class FunctionModel(Model):
    """Answers with ``fn(messages, settings)`` (sync or async), which returns the text
    or a full :class:`ModelResponse`, or raises ``ProviderError``."""

    def __init__(
        self,
        fn: Callable[[list[Message], ModelSettings], Reply | Awaitable[Reply]],
        *,
        name: str = "function-model",
        provider: str = "test",
    ) -> None:
        self.fn = fn
        self.name = name
        self.provider = provider
        self.calls: list[list[Message]] = []

    async def request(self, messages: Sequence[Message], settings: ModelSettings) -> ModelResponse:
        msgs = list(messages)
        self.calls.append(msgs)
        out = self.fn(msgs, settings)
        if inspect.isawaitable(out):
            out = await out
        if isinstance(out, ModelResponse):
            return out
        return ModelResponse(out, _usage(msgs, out, settings), self.name, finish_reason="stop")


Step = str | ModelResponse | BaseException | Callable[[list[Message]], Reply] | StreamedReply


class ScriptedModel(Model):
    """Answers from a script, one step per request: a string or ``ModelResponse`` is
    returned, an exception is raised, a callable is called with the messages.

    Attributes:
        calls: the messages of every request, in order.
    """

    def __init__(self, steps: Sequence[Step], *, name: str = "scripted-model", provider: str = "test") -> None:
        self.steps = list(steps)
        self.name = name
        self.provider = provider
        self.calls: list[list[Message]] = []
        self.settings: list[ModelSettings] = []

    def _next(self, messages: Sequence[Message], settings: ModelSettings) -> Any:
        msgs = list(messages)
        self.calls.append(msgs)
        self.settings.append(settings)
        if len(self.calls) > len(self.steps):
            raise AssertionError(
                f"ScriptedModel({self.name!r}) got request {len(self.calls)} but its script has "
                f"{len(self.steps)} step(s)."
            )
        step = self.steps[len(self.calls) - 1]
        if isinstance(step, BaseException):
            raise step
        if callable(step) and not isinstance(step, StreamedReply):
            step = step(msgs)
        return step

    async def request(self, messages: Sequence[Message], settings: ModelSettings) -> ModelResponse:
        step = self._next(messages, settings)
        if isinstance(step, StreamedReply):
            return step.response(messages, settings, self.name)
        if isinstance(step, ModelResponse):
            return step
        return ModelResponse(step, _usage(messages, step, settings), self.name, finish_reason="stop")

    async def stream(self, messages: Sequence[Message], settings: ModelSettings) -> Any:
        step = self._next(messages, settings)
        if isinstance(step, StreamedReply):
            async for event in step.stream(messages, settings, self.name):
                yield event
            return
        response = (
            step
            if isinstance(step, ModelResponse)
            else ModelResponse(step, _usage(messages, step, settings), self.name, finish_reason="stop")
        )
        if response.text:
            yield TextDelta(response.text)
        for index, call in enumerate(response.tool_calls):
            yield ToolCallDelta(index, call.id, call.name, call.arguments)
        yield response

    def assert_complete(self) -> None:
        """Raise ``AssertionError`` unless every scripted step was used."""
        if len(self.calls) != len(self.steps):
            raise AssertionError(
                f"ScriptedModel({self.name!r}) used {len(self.calls)} of its {len(self.steps)} step(s)."
            )


class SpanCapture:
    """Spans of runs made with ``Lanes(tracer_provider=capture.provider)``, kept in memory.

    Attributes:
        provider: the TracerProvider to give to :class:`~agentlanes.Lanes`.
    """

    def __init__(self) -> None:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self._exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self._exporter))

    @property
    def spans(self) -> list[Any]:
        """Every finished span (``ReadableSpan``), in the order they ended."""
        return list(self._exporter.get_finished_spans())

    def tree(self, keys: Sequence[str] = ("agentlanes.lane", "gen_ai.operation.name")) -> list[Any]:
        """The spans as a nested, time-ordered tree of ``[name, kind, {key attributes},
        [event names], [children]]`` — stable across runs, for snapshot tests."""
        spans = sorted(self.spans, key=lambda s: (s.start_time, s.name))
        by_parent: dict[int | None, list[Any]] = {}
        for s in spans:
            by_parent.setdefault(s.parent.span_id if s.parent else None, []).append(s)

        def node(s: Any) -> list[Any]:
            attrs = {k: s.attributes[k] for k in keys if s.attributes and k in s.attributes}
            return [
                s.name,
                s.kind.name,
                attrs,
                [e.name for e in s.events],
                [node(c) for c in by_parent.get(s.context.span_id, [])],
            ]

        return [node(s) for s in by_parent.get(None, [])]


def capture_spans() -> SpanCapture:
    """A :class:`SpanCapture` (pass ``.provider`` to ``Lanes(tracer_provider=...)``)."""
    return SpanCapture()


def assert_replays(
    trace: str | Path,
    *,
    data_dir: str | Path,
    entry: Any = None,
    chain: Any = None,
    bundle: Any = None,
) -> int:
    """A pytest helper: replay a recorded run exactly and fail on any divergence.

    Turn a recorded run into a regression test::

        def test_my_loop_still_behaves():
            assert assert_replays("recorded/traces/run-x.otlp.jsonl", data_dir="recorded", entry=main) > 0

    ``entry`` is the code that made the run (``async def main(lanes)``), or ``chain`` a
    declared chain (the bundled chains need neither). Returns the number of steps
    replayed. Raises ``ReplayDivergence`` (which fails the test with the step, what was
    recorded and what happened). Inside async code (an async test), use
    :func:`assert_replays_async`.
    """
    try:
        asyncio.get_running_loop()  # only to say what to do instead; anyio.run would fail obscurely
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "assert_replays() blocks, so it cannot run inside an event loop (an async test); use "
            "`await assert_replays_async(...)` there."
        )
    return anyio.run(lambda: assert_replays_async(trace, data_dir=data_dir, entry=entry, chain=chain, bundle=bundle))


async def assert_replays_async(
    trace: str | Path,
    *,
    data_dir: str | Path,
    entry: Any = None,
    chain: Any = None,
    bundle: Any = None,
) -> int:
    """:func:`assert_replays` for async code: ``assert await assert_replays_async(...) > 0``."""
    from agentlanes.replay import replay

    report = await replay(trace, data_dir=data_dir, entry=entry, chain=chain, bundle=bundle)
    return report.steps
