"""OpenAIChatModel end to end against an OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentlanes import Lanes, ModelError
from agentlanes.models import Message, ModelSettings, ProviderError
from agentlanes.models.openai import OpenAIChatModel
from agentlanes.runtime import RetryPolicy
from agentlanes.stores import MemoryStore
from agentlanes.testing import block_model_requests
from tests.conftest import healthy
from tests.openai_server import ScriptedOpenAIServer

MSG = [Message("user", "hello")]


@pytest.fixture
def server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer() as s:
        yield s


async def test_reply_and_usage(server: ScriptedOpenAIServer) -> None:
    server.script.append({"reply": "hi there", "usage": [21, 3]})
    model = OpenAIChatModel("test-model", base_url=server.base_url, api_key="k")
    out = await model.request(MSG, ModelSettings(max_tokens=50, temperature=0.2))
    assert (out.text, out.usage.input_tokens, out.usage.output_tokens) == ("hi there", 21, 3)
    assert out.usage_estimated is False
    sent = server.requests[0]
    assert sent["messages"] == [{"role": "user", "content": "hello"}]
    assert sent["max_tokens"] == 50 and sent["temperature"] == 0.2
    assert model.provider == "127.0.0.1"


async def test_missing_usage_is_estimated(server: ScriptedOpenAIServer) -> None:
    server.script.append({"reply": "four", "usage": None})
    out = await OpenAIChatModel("m", base_url=server.base_url).request(MSG, ModelSettings())
    assert out.usage_estimated and out.usage.output_tokens >= 1


async def test_rate_limit_carries_retry_after_and_client_does_not_retry(server: ScriptedOpenAIServer) -> None:
    server.script.append({"status": 429, "headers": {"Retry-After": "3"}})
    with pytest.raises(ProviderError) as ei:
        await OpenAIChatModel("m", base_url=server.base_url).request(MSG, ModelSettings())
    assert (ei.value.status, ei.value.retryable, ei.value.retry_after) == (429, True, 3.0)
    assert len(server.requests) == 1  # the openai client's own retries are off


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (503, True), (400, False), (401, False)])
async def test_status_errors(server: ScriptedOpenAIServer, status: int, retryable: bool) -> None:
    server.script.append({"status": status})
    with pytest.raises(ProviderError) as ei:
        await OpenAIChatModel("m", base_url=server.base_url).request(MSG, ModelSettings())
    assert (ei.value.status, ei.value.retryable) == (status, retryable)


@pytest.mark.parametrize("raw", ["not json at all", '{"choices": []}', '{"choices": [{"message": {}}]}'])
async def test_malformed_bodies_are_retryable_provider_errors(server: ScriptedOpenAIServer, raw: str) -> None:
    server.script.append({"raw": raw})
    with pytest.raises(ProviderError, match=r"malformed|no choices|no message") as ei:
        await OpenAIChatModel("m", base_url=server.base_url).request(MSG, ModelSettings())
    assert ei.value.retryable


async def test_slow_reply_times_out(server: ScriptedOpenAIServer) -> None:
    server.script.append({"delay": 1.5})
    with pytest.raises(ProviderError, match="timed out") as ei:
        await OpenAIChatModel("m", base_url=server.base_url).request(MSG, ModelSettings(timeout=0.3))
    assert ei.value.retryable


async def test_one_client_per_base_url_and_key(server: ScriptedOpenAIServer) -> None:
    a = OpenAIChatModel("a", base_url=server.base_url, api_key="k1")
    b = OpenAIChatModel("b", base_url=server.base_url, api_key="k1")
    c = OpenAIChatModel("c", base_url=server.base_url, api_key="k2")
    assert a.client is b.client
    assert a.client is not c.client
    assert a.client.max_retries == 0


async def test_blocked_in_tests(server: ScriptedOpenAIServer) -> None:
    model = OpenAIChatModel("m", base_url=server.base_url)
    with block_model_requests(), pytest.raises(RuntimeError, match="requests are blocked"):
        await model.request(MSG, ModelSettings())
    assert server.requests == []


async def test_runtime_retries_with_retry_after_and_charges_each_attempt(server: ScriptedOpenAIServer,
                                                                          tmp_path: Path) -> None:
    server.script.extend([{"status": 429, "headers": {"Retry-After": "0.3"}}, {"status": 500},
                          {"reply": "plan", "usage": [100, 50]}])
    model = OpenAIChatModel("test-model", base_url=server.base_url)
    store = MemoryStore()
    lanes = Lanes({"standard": model}, signals=healthy(), store=store, data_dir=tmp_path,
                  retry=RetryPolicy(attempts=3, initial_wait=0.05, max_wait=1.0))

    async def plan(ctx):  # type: ignore[no-untyped-def]
        return (await ctx.complete("plan it", max_tokens=64)).text

    started = time.perf_counter()
    async with lanes.run(task_class="routine-code") as run:
        assert await run.stage("planning", plan) == "plan"
    elapsed = time.perf_counter() - started
    calls = run.records[0].calls
    assert [(c.ok, c.status) for c in calls] == [(False, 429), (False, 500), (True, None)]
    assert all(c.reserved > 0 for c in calls)  # every attempt reserved
    assert [c.charged for c in calls][:2] == [0, 0] and calls[2].charged == 20_000  # standard's minCost
    assert elapsed >= 0.3  # the provider's Retry-After was honoured
    [task] = [s for s in await store.window_states(lanes.ledger.specs(run.run_id)) if s.spec.window == "task"]
    assert (task.committed, task.reserved) == (20_000, 0)


async def test_runtime_gives_up_after_retries_and_names_the_provider(server: ScriptedOpenAIServer,
                                                                     tmp_path: Path) -> None:
    server.script.extend([{"status": 503}] * 3)
    lanes = Lanes({"standard": OpenAIChatModel("m", base_url=server.base_url)}, signals=healthy(),
                  store=MemoryStore(), data_dir=tmp_path, retry=RetryPolicy(attempts=3, initial_wait=0.01))

    async def plan(ctx):  # type: ignore[no-untyped-def]
        return (await ctx.complete("plan it")).text

    with pytest.raises(ModelError, match="every model on lane standard failed") as ei:
        async with lanes.run(task_class="routine-code") as run:
            await run.stage("planning", plan)
    assert isinstance(ei.value.__cause__, ModelError)
    assert isinstance(ei.value.__cause__.__cause__, ProviderError)
    assert len(server.requests) == 3
