"""OpenAIChatModel and the stage call path against a LiteLLM proxy with mock models: an
OpenAI-compatible server nobody here wrote (tests/servers/litellm_proxy.py starts it).

Each test compares what agentlanes makes of a reply with what the proxy itself sends for
the same request (raw HTTP, ``litellm_proxy.post``/``stream``), and counts the attempts the
proxy saw in its access log. What the proxy cannot do, and so is not asserted here: its
mocks accept any request body (messages, tools, tool_choice and response_format are not
validated, so a 200 proves nothing about our encoding: tests/runtime covers that against
our own scripted server); non-streamed mock usage is a constant 10/20; and no built-in
mock gives a 429 with Retry-After, streamed tool calls or an error mid-stream (the
scripted handler in litellm_proxy.py does, and only those).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import openai
import pytest

from agentlanes import Lanes, ModelError, Router
from agentlanes.budget import to_micro
from agentlanes.models import (
    Message,
    ModelResponse,
    ModelSettings,
    ProviderError,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from agentlanes.models.base import estimate_input_tokens, estimate_tokens
from agentlanes.models.openai import OpenAIChatModel
from agentlanes.policy import load_bundle
from agentlanes.runtime import RetryPolicy
from agentlanes.stores import MemoryStore
from tests.conftest import bundled_json, healthy
from tests.servers.litellm_proxy import LiteLLMProxy

QUESTION = "What is the weather in Paris?"
MESSAGES = [Message("user", QUESTION)]
WIRE_MESSAGES = [{"role": "user", "content": QUESTION}]
WEATHER = Tool(
    "get_weather",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "Weather for a city",
)
PARIS = ToolCall("call_mock_1", "get_weather", '{"city": "Paris"}')
MOCK_REPLY = "Hello from the mock model."


def priced_router() -> Router:
    """The bundled documents, with the standard lane priced by the token only (no base
    cost, no minimum): a charge then shows which usage it was computed from."""
    catalog = copy.deepcopy(bundled_json("price-catalog.json"))
    [standard] = [lane for lane in catalog["lanes"] if lane["laneId"] == "standard"]
    for profile in standard["profiles"]:
        profile["pricing"].update(requestBaseCost=0, minCost=0, inputPerMillion=100.0, outputPerMillion=400.0)
    return Router(load_bundle(catalog=catalog))


ROUTER = priced_router()


def model(proxy: LiteLLMProxy, name: str, **options: Any) -> OpenAIChatModel:
    return OpenAIChatModel(name, base_url=proxy.base_url, api_key=proxy.master_key, **options)


def lanes(proxy: LiteLLMProxy, tmp_path: Path, *names: str, attempts: int = 3) -> Lanes:
    """The standard lane bound to these proxy models, in order."""
    return Lanes(
        {"standard": tuple(model(proxy, name) for name in names)},
        router=ROUTER,
        signals=healthy(),
        store=MemoryStore(),
        data_dir=tmp_path,
        retry=RetryPolicy(attempts=attempts, initial_wait=0.01, max_wait=10.0),
    )


def price(usage: Usage) -> int:
    cached = usage.cached_input_tokens
    return to_micro(
        ROUTER.call_cost(
            "standard",
            input_tokens=usage.input_tokens - cached,
            output_tokens=usage.output_tokens,
            cache_read_tokens=cached,
        )
    )


async def windows(lanes_: Lanes, run_id: str) -> dict[str, tuple[int, int]]:
    """``window -> (committed, reserved)`` for the run's budget windows."""
    states = await lanes_.store.window_states(lanes_.ledger.specs(run_id))
    return {state.spec.window: (state.committed, state.reserved) for state in states}


def sent_usage(events: list[Any]) -> Usage:
    """The usage the proxy put in a stream (its last chunk with usage)."""
    [usage] = [e["usage"] for e in events if isinstance(e, dict) and e.get("usage")]
    return Usage(usage["prompt_tokens"], usage["completion_tokens"])


def sent_text(events: list[Any]) -> str:
    return "".join(
        choice["delta"].get("content") or "" for e in events if isinstance(e, dict) for choice in e.get("choices") or ()
    )


def body(name: str, **fields: Any) -> dict[str, Any]:
    return {"model": name, "messages": WIRE_MESSAGES, **fields}


# ------------------------------------------------------------------ the adapter alone


async def test_chat_reply_and_usage_are_the_proxys(litellm_proxy: LiteLLMProxy) -> None:
    status, _, sent = litellm_proxy.post(body("mock-chat"))
    assert status == 200
    out = await model(litellm_proxy, "mock-chat").request(MESSAGES, ModelSettings(max_tokens=64))
    [choice] = sent["choices"]
    assert out.text == choice["message"]["content"] == MOCK_REPLY
    assert out.usage == Usage(sent["usage"]["prompt_tokens"], sent["usage"]["completion_tokens"]) == Usage(10, 20)
    assert (out.usage_estimated, out.finish_reason, out.tool_calls) == (False, "stop", ())
    assert out.model_name == "mock-chat" and (out.response_id or "").startswith("chatcmpl-")


async def test_stream_yields_text_deltas_then_the_response_with_the_streamed_usage(
    litellm_proxy: LiteLLMProxy,
) -> None:
    sent = litellm_proxy.stream(body("mock-chat"))
    events = [e async for e in model(litellm_proxy, "mock-chat").stream(MESSAGES, ModelSettings(max_tokens=64))]
    *deltas, last = events
    assert len(deltas) > 1 and all(isinstance(d, TextDelta) for d in deltas)  # the proxy sends 3-character pieces
    assert "".join(d.text for d in deltas) == sent_text(sent) == MOCK_REPLY
    assert isinstance(last, ModelResponse)
    assert (last.text, last.finish_reason, last.usage_estimated) == (MOCK_REPLY, "stop", False)
    assert last.usage == sent_usage(sent)  # the streamed usage chunk, not the constant 10/20 of a plain reply


@pytest.mark.parametrize(
    ("name", "text", "finish", "usage"),
    [
        ("mock-tool", "", "stop", Usage(10, 20)),  # mock_tool_calls: content "" and finish_reason "stop"
        ("mock-tool-dict", "", "tool_calls", Usage(11, 7)),  # content null
    ],
)
async def test_tool_calls_are_read_from_the_reply(
    litellm_proxy: LiteLLMProxy, name: str, text: str, finish: str, usage: Usage
) -> None:
    status, _, sent = litellm_proxy.post(body(name, tools=[{"type": "function", "function": {"name": "get_weather"}}]))
    assert status == 200
    [choice] = sent["choices"]
    out = await model(litellm_proxy, name).request(
        MESSAGES, ModelSettings(max_tokens=64, tools=(WEATHER,), tool_choice="auto")
    )
    assert out.tool_calls == (PARIS,)
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in choice["message"]["tool_calls"]] == [
        tuple(PARIS)
    ]
    assert out.tool_calls[0].parsed() == {"city": "Paris"}
    assert (out.text, out.finish_reason) == (text, choice["finish_reason"]) == (text, finish)
    assert (out.usage, out.usage_estimated) == (usage, False)


async def test_streamed_tool_call_deltas_match_the_proxys_chunks(litellm_proxy: LiteLLMProxy) -> None:
    sent = litellm_proxy.stream(body("scripted-tool"))
    sent_deltas = [
        (call["index"], call.get("id"), call["function"].get("name"), call["function"].get("arguments") or "")
        for e in sent
        if isinstance(e, dict)
        for choice in e.get("choices") or ()
        for call in choice["delta"].get("tool_calls") or ()
    ]
    settings = ModelSettings(max_tokens=64, tools=(WEATHER,), tool_choice="required")
    *deltas, last = [e async for e in model(litellm_proxy, "scripted-tool").stream(MESSAGES, settings)]
    assert [(d.index, d.id, d.name, d.arguments) for d in deltas if isinstance(d, ToolCallDelta)] == sent_deltas
    assert sent_deltas == [(0, "call_mock_1", "get_weather", '{"city": '), (0, None, None, '"Paris"}')]
    assert all(isinstance(d, ToolCallDelta) for d in deltas)
    assert isinstance(last, ModelResponse)
    assert (last.tool_calls, last.finish_reason, last.text) == ((PARIS,), "tool_calls", "")
    assert (last.usage, last.usage_estimated) == (sent_usage(sent), False) == (Usage(11, 7), False)


async def test_a_400_keeps_the_servers_text_and_is_not_retryable(litellm_proxy: LiteLLMProxy) -> None:
    status, _, sent = litellm_proxy.post(body("mock-400"))
    assert status == 400
    with pytest.raises(ProviderError) as caught:
        await model(litellm_proxy, "mock-400").request(MESSAGES, ModelSettings(max_tokens=64))
    error = caught.value
    assert (error.status, error.retryable, error.retry_after) == (400, False, None)
    assert error.detail == sent["error"]["message"].strip()
    assert "this is a mock context window exceeded error" in str(error)


@pytest.mark.parametrize(
    ("name", "status", "retry_after"),
    [("mock-500", 500, None), ("mock-timeout", 408, None), ("scripted-429", 429, 1.0)],
)
async def test_server_errors_are_retryable_and_carry_retry_after(
    litellm_proxy: LiteLLMProxy, name: str, status: int, retry_after: float | None
) -> None:
    sent_status, headers, sent = litellm_proxy.post(body(name))
    assert sent_status == status
    with pytest.raises(ProviderError) as caught:
        await model(litellm_proxy, name).request(MESSAGES, ModelSettings(max_tokens=64))
    error = caught.value
    assert (error.status, error.retryable) == (status, True)
    assert error.retry_after == retry_after
    assert error.retry_after == (float(headers["retry-after"]) if "retry-after" in headers else None)
    assert error.detail == sent["error"]["message"].strip()


# ------------------------------------------------------------------ through a stage


async def test_a_stage_is_charged_from_the_reported_usage(litellm_proxy: LiteLLMProxy, tmp_path: Path) -> None:
    lanes_ = lanes(litellm_proxy, tmp_path, "mock-chat")

    async def ask(ctx):  # type: ignore[no-untyped-def]
        return (await ctx.complete(QUESTION)).text

    async with lanes_.run(task_class="routine-code") as run:
        assert await run.stage("planning", ask) == MOCK_REPLY
    [call] = run.records[0].calls
    assert (call.lane, call.ok, call.usage, call.usage_estimated) == ("standard", True, Usage(10, 20), False)
    assert call.charged == price(Usage(10, 20)) < call.reserved  # the usage's price, not the estimate
    assert (await windows(lanes_, run.run_id))["task"] == (call.charged, 0)


async def test_a_400_is_not_retried_and_does_not_cool_the_model(litellm_proxy: LiteLLMProxy, tmp_path: Path) -> None:
    # The proxy refuses per-request mock parameters with a 400 of its own: a request it
    # rejects, on a model that is fine.
    lanes_ = lanes(litellm_proxy, tmp_path, "mock-chat", attempts=3)
    refused: list[ModelError] = []

    async def ask(ctx):  # type: ignore[no-untyped-def]
        try:
            await ctx.complete(QUESTION, settings=ModelSettings(extra={"mock_testing_fallbacks": True}))
        except ModelError as exc:
            refused.append(exc)
        return (await ctx.complete(QUESTION)).text

    mark = len(litellm_proxy.chat_statuses())
    async with lanes_.run(task_class="routine-code") as run:
        assert await run.stage("planning", ask) == MOCK_REPLY  # right after the 400, on the same model
    assert litellm_proxy.statuses_after(mark, 2) == [400, 200]
    [error] = refused
    assert error.retryable is False
    cause = error.__cause__
    assert isinstance(cause, ProviderError) and cause.status == 400
    assert "Mock testing request params are disabled" in (cause.detail or "")
    assert "Mock testing request params are disabled" in str(error)
    calls = run.records[0].calls
    assert [(c.ok, c.status, c.attempt) for c in calls] == [(False, 400, 1), (True, None, 1)]
    assert calls[0].charged == 0  # no usage reported: the reservation was released
    assert (await windows(lanes_, run.run_id))["task"] == (calls[1].charged, 0)


async def test_a_500_is_retried_then_the_next_model_answers(litellm_proxy: LiteLLMProxy, tmp_path: Path) -> None:
    lanes_ = lanes(litellm_proxy, tmp_path, "mock-500", "mock-chat", attempts=3)

    async def ask(ctx):  # type: ignore[no-untyped-def]
        return (await ctx.complete(QUESTION)).text

    mark = len(litellm_proxy.chat_statuses())
    async with lanes_.run(task_class="routine-code") as run:
        assert await run.stage("planning", ask) == MOCK_REPLY
    assert litellm_proxy.statuses_after(mark, 4) == [500, 500, 500, 200]
    calls = run.records[0].calls
    assert [(c.model, c.ok, c.status, c.attempt) for c in calls] == [
        ("mock-500", False, 500, 1),
        ("mock-500", False, 500, 2),
        ("mock-500", False, 500, 3),
        ("mock-chat", True, None, 1),
    ]
    assert all(c.retryable for c in calls[:3])
    assert (await windows(lanes_, run.run_id))["task"] == (price(Usage(10, 20)), 0)


async def test_a_429s_retry_after_is_honoured(litellm_proxy: LiteLLMProxy, tmp_path: Path) -> None:
    # The runtime's own backoff here is 0.01 s; the proxy asks for 1 s.
    lanes_ = lanes(litellm_proxy, tmp_path, "scripted-429", "mock-chat", attempts=2)

    async def ask(ctx):  # type: ignore[no-untyped-def]
        return (await ctx.complete(QUESTION)).text

    mark = len(litellm_proxy.chat_statuses())
    async with lanes_.run(task_class="routine-code") as run:
        assert await run.stage("planning", ask) == MOCK_REPLY
    assert litellm_proxy.statuses_after(mark, 3) == [429, 429, 200]
    first, second, answered = run.records[0].calls
    assert [(c.status, c.attempt) for c in (first, second)] == [(429, 1), (429, 2)]
    waited = (second.started_ns - first.started_ns) / 1e9 - first.duration
    assert 0.9 <= waited < 9.0  # generous: Retry-After 1 s, capped by max_wait 10 s
    assert answered.ok and answered.model == "mock-chat"


async def test_a_streamed_stage_is_charged_from_the_streamed_usage(litellm_proxy: LiteLLMProxy, tmp_path: Path) -> None:
    sent = litellm_proxy.stream(body("mock-chat"))
    lanes_ = lanes(litellm_proxy, tmp_path, "mock-chat")
    pieces: list[str] = []

    async def ask(ctx):  # type: ignore[no-untyped-def]
        async with ctx.stream(QUESTION) as stream:
            async for event in stream:
                assert isinstance(event, TextDelta)
                pieces.append(event.text)
        return stream.response

    async with lanes_.run(task_class="routine-code") as run:
        response = await run.stage("planning", ask)
    assert len(pieces) > 1 and "".join(pieces) == response.text == sent_text(sent) == MOCK_REPLY
    [call] = run.records[0].calls
    assert (call.streamed, call.ok, call.usage_estimated, call.finish_reason) == (True, True, False, "stop")
    assert call.usage == response.usage == sent_usage(sent)
    assert call.charged == price(sent_usage(sent))
    assert (await windows(lanes_, run.run_id))["task"] == (call.charged, 0)


@pytest.mark.parametrize(("name", "streamed"), [("mock-tool-dict", False), ("scripted-tool", True)])
async def test_tool_call_replies_are_charged(
    litellm_proxy: LiteLLMProxy, tmp_path: Path, name: str, streamed: bool
) -> None:
    lanes_ = lanes(litellm_proxy, tmp_path, name)

    async def ask(ctx):  # type: ignore[no-untyped-def]
        if not streamed:
            return await ctx.complete(QUESTION, tools=[WEATHER], tool_choice="get_weather")
        async with ctx.stream(QUESTION, tools=[WEATHER], tool_choice="get_weather") as stream:
            assert all([isinstance(event, ToolCallDelta) async for event in stream])
        return stream.response

    async with lanes_.run(task_class="routine-code") as run:
        response = await run.stage("planning", ask)
    assert (response.tool_calls, response.finish_reason) == ((PARIS,), "tool_calls")
    [call] = run.records[0].calls
    assert (call.ok, call.streamed, call.tool_calls, call.finish_reason) == (True, streamed, 1, "tool_calls")
    assert (call.usage, call.usage_estimated) == (Usage(11, 7), False)
    assert call.charged == price(Usage(11, 7)) > 0
    assert (await windows(lanes_, run.run_id))["task"] == (call.charged, 0)


async def test_a_stream_broken_midway_settles_an_estimate(litellm_proxy: LiteLLMProxy, tmp_path: Path) -> None:
    sent = litellm_proxy.stream(body("scripted-midstream"))
    assert sent_text(sent) == "partial " and "[DONE]" not in sent
    assert sent[-1]["error"]["message"] == "litellm.InternalServerError: scripted failure mid-stream"
    lanes_ = lanes(litellm_proxy, tmp_path, "scripted-midstream", attempts=3)
    received: list[Any] = []

    async def ask(ctx):  # type: ignore[no-untyped-def]
        async with ctx.stream(QUESTION) as stream:
            async for event in stream:
                received.append(event)

    mark = len(litellm_proxy.chat_statuses())
    with pytest.raises(ModelError, match="failed mid-stream") as caught:
        async with lanes_.run(task_class="routine-code") as run:
            await run.stage("planning", ask)
    assert "scripted failure mid-stream" in str(caught.value)
    assert received == [TextDelta("partial ")]
    assert litellm_proxy.statuses_after(mark, 1) == [200]  # not retried: part of the reply was out
    [call] = run.records[0].calls
    used = Usage(estimate_input_tokens(MESSAGES), estimate_tokens("partial "))
    assert (call.ok, call.streamed, call.usage, call.usage_estimated) == (False, True, used, True)
    assert call.charged == price(used) > 0
    states = await windows(lanes_, run.run_id)
    assert states and all(reserved == 0 for _, reserved in states.values())
    assert states["task"] == (call.charged, 0)


# ------------------------------------------------------------------ the user's own openai client in a stage


async def test_an_unchanged_openai_client_runs_on_the_lane(litellm_proxy: LiteLLMProxy, tmp_path: Path) -> None:
    sent = litellm_proxy.stream(body("mock-chat"))
    lanes_ = lanes(litellm_proxy, tmp_path, "mock-chat")

    async def ask(ctx):  # type: ignore[no-untyped-def]
        client = ctx.openai_client()
        reply = await client.chat.completions.create(model="gpt-4.1-mini", messages=WIRE_MESSAGES)
        chunks = [
            chunk
            async for chunk in await client.chat.completions.create(
                model="gpt-4.1-mini", messages=WIRE_MESSAGES, stream=True, stream_options={"include_usage": True}
            )
        ]
        return reply, chunks

    async with lanes_.run(task_class="routine-code") as run:
        reply, chunks = await run.stage("planning", ask)
    assert reply.choices[0].message.content == MOCK_REPLY
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (10, 20)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == MOCK_REPLY
    [usage] = [c.usage for c in chunks if c.usage is not None]
    assert Usage(usage.prompt_tokens, usage.completion_tokens) == sent_usage(sent)
    plain, streamed = run.records[0].calls
    assert (plain.model, plain.streamed, plain.charged) == ("mock-chat", False, price(Usage(10, 20)))
    assert (streamed.streamed, streamed.usage_estimated, streamed.charged) == (True, False, price(sent_usage(sent)))
    assert (await windows(lanes_, run.run_id))["task"] == (plain.charged + streamed.charged, 0)


async def test_an_openai_client_tool_loop_is_charged_turn_by_turn(litellm_proxy: LiteLLMProxy, tmp_path: Path) -> None:
    lanes_ = lanes(litellm_proxy, tmp_path, "mock-tool-dict")
    tools = [{"type": "function", "function": {"name": WEATHER.name, "parameters": dict(WEATHER.parameters)}}]

    async def loop(ctx):  # type: ignore[no-untyped-def]
        client = ctx.openai_client()
        messages: list[dict[str, Any]] = list(WIRE_MESSAGES)
        calls = []
        for _ in range(2):
            reply = await client.chat.completions.create(model="any", messages=messages, tools=tools)
            message = reply.choices[0].message
            calls.extend(message.tool_calls or ())
            messages.append(message.model_dump(exclude_none=True))
            for call in message.tool_calls or ():
                messages.append({"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 21}'})
        return calls

    async with lanes_.run(task_class="routine-code") as run:
        calls = await run.stage("planning", loop)
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [tuple(PARIS)] * 2
    records = run.records[0].calls
    assert [(r.ok, r.tool_calls, r.usage) for r in records] == [(True, 1, Usage(11, 7))] * 2
    assert records[1].reserved > records[0].reserved  # the second turn's estimate holds the first turn's messages
    assert (await windows(lanes_, run.run_id))["task"] == (2 * price(Usage(11, 7)), 0)


async def test_an_openai_client_sees_the_servers_400(litellm_proxy: LiteLLMProxy, tmp_path: Path) -> None:
    lanes_ = lanes(litellm_proxy, tmp_path, "mock-400", attempts=3)

    async def ask(ctx):  # type: ignore[no-untyped-def]
        with pytest.raises(openai.BadRequestError) as caught:
            await ctx.openai_client().chat.completions.create(model="any", messages=WIRE_MESSAGES)
        return caught.value

    mark = len(litellm_proxy.chat_statuses())
    async with lanes_.run(task_class="routine-code") as run:
        error = await run.stage("planning", ask)
    assert error.status_code == 400
    assert "this is a mock context window exceeded error" in str(error)
    assert litellm_proxy.statuses_after(mark, 1) == [400]
    assert [(c.ok, c.status) for c in run.records[0].calls] == [(False, 400)]


# ------------------------------------------------------------------ timeouts


async def test_a_per_call_timeout_beats_a_slow_reply_and_wins_over_the_models(litellm_proxy: LiteLLMProxy) -> None:
    with pytest.raises(ProviderError, match="timed out") as caught:
        await model(litellm_proxy, "mock-slow", timeout=30).request(MESSAGES, ModelSettings(timeout=0.5))
    assert caught.value.retryable and caught.value.status is None
    with pytest.raises(ProviderError, match="timed out"):
        await model(litellm_proxy, "mock-slow", timeout=0.5).request(MESSAGES, ModelSettings())
    out = await model(litellm_proxy, "mock-slow", timeout=0.5).request(MESSAGES, ModelSettings(timeout=15))
    assert out.text == "Slow hello."  # the same model answers when the call allows it the time


async def test_a_stage_retries_a_timed_out_call_then_fails(litellm_proxy: LiteLLMProxy, tmp_path: Path) -> None:
    lanes_ = lanes(litellm_proxy, tmp_path, "mock-slow", attempts=2)

    async def ask(ctx):  # type: ignore[no-untyped-def]
        return (await ctx.complete(QUESTION, timeout=0.5)).text

    with pytest.raises(ModelError, match="every model on lane standard failed") as caught:
        async with lanes_.run(task_class="routine-code") as run:
            await run.stage("planning", ask)
    inner = caught.value.__cause__
    assert isinstance(inner, ModelError) and inner.retryable
    assert isinstance(inner.__cause__, ProviderError) and inner.__cause__.retryable
    calls = run.records[0].calls
    assert [(c.ok, c.attempt, c.status, c.charged) for c in calls] == [(False, 1, None, 0), (False, 2, None, 0)]
    # the runtime's deadline and the client's (the same 0.5 s) race: either may be recorded
    assert all(c.error in ("TimeoutError", "ProviderError") for c in calls)
    states = await windows(lanes_, run.run_id)
    assert all(state == (0, 0) for state in states.values())


def test_the_proxy_reached_nothing_beyond_loopback(litellm_proxy: LiteLLMProxy) -> None:
    # Every lookup or connection the proxy tried beyond loopback (startup included) was
    # refused and noted by its launcher's audit hook, which checks itself at start. (Started
    # without LITELLM_LOCAL_MODEL_COST_MAP, it notes three lookups of raw.githubusercontent.com.)
    assert litellm_proxy.blocked() == []
