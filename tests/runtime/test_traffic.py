"""Real agent traffic through stages: tool loops, structured output, streaming, the
user's own openai client bound to a lane, calls made elsewhere, and all of it recorded
and replayed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from agentlanes import BudgetExhausted, Lanes, ModelError, StageContext
from agentlanes.models import Message, ModelSettings, ProviderError, TextDelta, Tool, ToolCallDelta, Usage
from agentlanes.models.openai import OpenAIChatModel
from agentlanes.replay import replay
from agentlanes.runtime import RetryPolicy
from agentlanes.stores import MemoryStore
from agentlanes.testing import FunctionModel, ScriptedModel, StreamedReply, TestModel, reply, tool_call
from agentlanes.tracefile import load_record
from tests.conftest import ROOT, healthy
from tests.openai_server import ScriptedOpenAIServer

WEATHER = Tool(
    "get_weather",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "The weather in a city.",
)


def get_weather(city: str) -> str:
    return f"sunny, 21C in {city}"


def make(tmp_path: Path, models: dict[str, Any], **kw: Any) -> Lanes:
    kw.setdefault("signals", healthy())
    kw.setdefault("store", MemoryStore())
    kw.setdefault("retry", RetryPolicy(attempts=2, initial_wait=0.01, max_wait=0.05))
    return Lanes(models, data_dir=tmp_path, **kw)


async def committed(lanes: Lanes, run_id: str) -> tuple[int, int]:
    [task] = [s for s in await lanes.store.window_states(lanes.ledger.specs(run_id)) if s.spec.window == "task"]
    return task.committed, task.reserved


@pytest.fixture
def server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer() as s:
        yield s


# ------------------------------------------------------------------ a tool loop by hand


async def tool_loop(ctx: StageContext, question: str) -> str:
    """A hand-written agent loop: ask, run the tools it calls, feed the results back."""
    messages = [Message("user", question)]
    for _ in range(5):
        answer = await ctx.complete(messages, tools=[WEATHER], max_tokens=200)
        if not answer.tool_calls:
            return answer.text
        messages.append(Message("assistant", answer.text, answer.tool_calls))
        for call in answer.tool_calls:
            messages.append(Message("tool", get_weather(**call.parsed()), tool_call_id=call.id))
    raise AssertionError("the loop did not end")


async def test_a_tool_loop_charges_every_turn(tmp_path: Path) -> None:
    model = ScriptedModel([
        reply(tool_calls=[tool_call("get_weather", {"city": "Paris"}, id="c1")], usage=Usage(40, 12)),
        reply("It is sunny in Paris.", usage=Usage(70, 8)),
    ], name="scripted")
    lanes = make(tmp_path, {"standard": model})
    async with lanes.run(task_class="routine-code") as run:
        out = await run.stage("planning", tool_loop, "Weather in Paris?")
    assert out == "It is sunny in Paris."
    calls = run.records[0].calls
    assert [(c.ok, c.tool_calls, c.finish_reason) for c in calls] == [(True, 1, "tool_calls"), (True, 0, "stop")]
    assert all(c.reserved > 0 and c.charged > 0 for c in calls)  # each turn reserved and settled on its own
    second = model.calls[1]
    assert [m.role for m in second] == ["user", "assistant", "tool"]
    assert second[1].tool_calls[0].name == "get_weather" and second[2].tool_call_id == "c1"
    assert model.settings[0].tools == (WEATHER,)
    assert await committed(lanes, run.run_id) == (sum(c.charged for c in calls), 0)


class Answer(BaseModel):
    city: str
    degrees: int


async def test_structured_output_goes_to_the_model(tmp_path: Path) -> None:
    model = TestModel(name="structured")
    lanes = make(tmp_path, {"standard": model})

    async def ask(ctx: StageContext) -> Answer:
        reply_ = await ctx.complete("Weather?", response_format=Answer)
        return Answer.model_validate_json(reply_.text)

    async with lanes.run(task_class="routine-code") as run:
        answer = await run.stage("planning", ask)
    assert isinstance(answer, Answer)
    rf = model.settings[0].response_format
    assert rf is not None and rf.name == "Answer" and rf.schema["required"] == ["city", "degrees"]


# ------------------------------------------------------------------ streaming


async def test_a_stream_is_charged_from_its_reported_usage(tmp_path: Path) -> None:
    model = ScriptedModel([StreamedReply(["The ", "weather ", "is fine."], usage=Usage(30, 6))], name="streamer")
    lanes = make(tmp_path, {"standard": model})
    seen: list[str] = []

    async def ask(ctx: StageContext) -> str:
        async with ctx.stream("Weather?") as stream:
            async for event in stream:
                assert isinstance(event, TextDelta)
                seen.append(event.text)
        assert stream.response is not None
        return stream.response.text

    async with lanes.run(task_class="routine-code") as run:
        assert await run.stage("planning", ask) == "The weather is fine."
    assert seen == ["The ", "weather ", "is fine."]
    [call] = run.records[0].calls
    assert call.streamed and call.ok and call.usage == Usage(30, 6) and not call.usage_estimated
    assert await committed(lanes, run.run_id) == (call.charged, 0)


async def test_streamed_tool_calls_assemble(tmp_path: Path) -> None:
    events = [ToolCallDelta(0, "c7", "get_weather", '{"ci'), ToolCallDelta(0, None, None, 'ty": "Oslo"}')]
    lanes = make(tmp_path, {"standard": ScriptedModel([StreamedReply(events, usage=Usage(20, 9))])})

    async def ask(ctx: StageContext) -> Any:
        async with ctx.stream("Weather?", tools=[WEATHER]) as stream:
            got = [e async for e in stream]
        assert len(got) == 2
        assert stream.response is not None
        return stream.response.tool_calls

    async with lanes.run(task_class="routine-code") as run:
        calls = await run.stage("planning", ask)
    assert [(c.id, c.name, c.parsed()) for c in calls] == [("c7", "get_weather", {"city": "Oslo"})]
    assert run.records[0].calls[0].tool_calls == 1


async def test_a_stream_cut_short_settles_what_it_used(tmp_path: Path) -> None:
    """Closed early by the caller, or broken by the server after its first event: the
    call reached the model, so it is charged (an estimate) and nothing stays reserved."""
    model = ScriptedModel([
        StreamedReply(["one ", "two ", "three"], usage=Usage(30, 6)),
        StreamedReply(["partial ", "reply"], fail_after=1),
    ])
    lanes = make(tmp_path, {"standard": model})

    async def early(ctx: StageContext) -> str:
        async with ctx.stream("count") as stream:
            async for event in stream:
                return event.text if isinstance(event, TextDelta) else ""
        return ""

    async def broken(ctx: StageContext) -> str:
        async with ctx.stream("again") as stream:
            return "".join([e.text async for e in stream if isinstance(e, TextDelta)])

    async with lanes.run(task_class="routine-code") as run:
        assert await run.stage("planning", early) == "one "
        with pytest.raises(ModelError, match="failed mid-stream"):
            await run.stage("planning", broken)
    first, second = run.records[0].calls[0], run.records[1].calls[0]
    assert (first.error, first.ok) == ("StreamClosed", False) and first.charged > 0 and first.usage_estimated
    assert second.error == "ProviderError" and second.charged > 0
    assert len(run.records[1].calls) == 1  # nothing was retried once part of the reply had arrived
    assert await committed(lanes, run.run_id) == (first.charged + second.charged, 0)


async def test_a_stream_that_fails_before_its_first_event_is_retried(tmp_path: Path) -> None:
    model = ScriptedModel([StreamedReply(["x"], fail_after=0), StreamedReply(["fine"], usage=Usage(5, 1))])
    lanes = make(tmp_path, {"standard": model})

    async def ask(ctx: StageContext) -> str:
        async with ctx.stream("go") as stream:
            return "".join([e.text async for e in stream if isinstance(e, TextDelta)])

    async with lanes.run(task_class="routine-code") as run:
        assert await run.stage("planning", ask) == "fine"
    assert [c.ok for c in run.records[0].calls] == [False, True]


# ------------------------------------------------------------------ the user's own openai client


async def openai_loop(ctx: StageContext, question: str) -> str:
    """The same tool loop, written against an unchanged openai client."""
    client = ctx.openai_client()
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": dict(WEATHER.parameters)}}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
    for _ in range(5):
        completion = await client.chat.completions.create(model="whatever", messages=messages, tools=tools)
        message = completion.choices[0].message
        if not message.tool_calls:
            return str(message.content)
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            args = json.loads(call.function.arguments)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": get_weather(**args)})
    raise AssertionError("the loop did not end")


async def test_an_unchanged_openai_client_runs_on_the_lane(tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    server.script.extend([
        {"tool_calls": [["c1", "get_weather", '{"city": "Paris"}']], "usage": [40, 12]},
        {"reply": "Sunny in Paris.", "usage": [70, 8, 64]},
    ])
    lanes = make(tmp_path, {"standard": OpenAIChatModel("lane-model", base_url=server.base_url)})
    async with lanes.run(task_class="routine-code") as run:
        out = await run.stage("planning", openai_loop, "Weather in Paris?")
    assert out == "Sunny in Paris."
    assert [r["model"] for r in server.requests] == ["lane-model", "lane-model"]  # the lane's model, not "whatever"
    assert server.requests[0]["tools"][0]["function"]["name"] == "get_weather"
    assert server.requests[1]["messages"][2] == {"role": "tool", "tool_call_id": "c1",
                                                 "content": "sunny, 21C in Paris"}
    calls = run.records[0].calls
    assert [c.usage for c in calls] == [Usage(40, 12), Usage(70, 8, 64)]
    assert all(c.charged > 0 for c in calls)
    assert await committed(lanes, run.run_id) == (sum(c.charged for c in calls), 0)


async def test_the_openai_client_streams_with_usage(tmp_path: Path) -> None:
    lanes = make(tmp_path, {"standard": ScriptedModel([StreamedReply(["Hel", "lo"], usage=Usage(9, 2))])})

    async def ask(ctx: StageContext) -> str:
        client = ctx.openai_client()
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True})
        text, usage = [], None
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta.content:
                    text.append(choice.delta.content)
        assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (9, 2)
        return "".join(text)

    async with lanes.run(task_class="routine-code") as run:
        assert await run.stage("planning", ask) == "Hello"
    [call] = run.records[0].calls
    assert call.streamed and call.usage == Usage(9, 2)


async def test_agentlanes_refusals_reach_the_client_as_http_errors(tmp_path: Path) -> None:
    import openai

    lanes = make(tmp_path, {"standard": FunctionModel(lambda m, s: "x")})

    async def images(ctx: StageContext) -> None:
        client = ctx.openai_client()
        with pytest.raises(openai.BadRequestError, match="text content only"):
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])
        with pytest.raises(openai.NotFoundError, match="chat completions only"):
            await client.embeddings.create(model="m", input="x")

    async with lanes.run(task_class="routine-code") as run:
        await run.stage("planning", images)
    assert run.records[0].calls == []


# ------------------------------------------------------------------ the adapter's defects


async def test_a_tool_call_reply_with_no_content_is_a_charged_reply(tmp_path: Path,
                                                                    server: ScriptedOpenAIServer) -> None:
    server.script.append({"tool_calls": [["c1", "get_weather", '{"city": "Rome"}']], "usage": [30, 10]})
    model = OpenAIChatModel("m", base_url=server.base_url)
    out = await model.request([Message("user", "weather?")], ModelSettings(tools=(WEATHER,), tool_choice="required"))
    assert out.text == "" and out.finish_reason == "tool_calls" and out.usage == Usage(30, 10)
    assert [(c.id, c.name, c.parsed()) for c in out.tool_calls] == [("c1", "get_weather", {"city": "Rome"})]
    sent = server.requests[0]
    assert sent["tool_choice"] == "required" and sent["tools"][0]["function"]["description"] == WEATHER.description


async def test_finish_reason_length_is_surfaced(server: ScriptedOpenAIServer) -> None:
    server.script.append({"reply": "cut sh", "finish": "length"})
    out = await OpenAIChatModel("m", base_url=server.base_url).request([Message("user", "x")], ModelSettings())
    assert out.finish_reason == "length"


async def test_a_refused_request_keeps_the_servers_text_and_cools_nothing(tmp_path: Path,
                                                                          server: ScriptedOpenAIServer) -> None:
    server.script.extend([{"status": 400, "message": "request exceeds the available context size"},
                          {"reply": "fine"}])
    lanes = make(tmp_path, {"standard": OpenAIChatModel("m", base_url=server.base_url)})

    async def ask(ctx: StageContext, prompt: str) -> str:
        return (await ctx.complete(prompt)).text

    async with lanes.run(task_class="routine-code") as run:
        with pytest.raises(ModelError, match="HTTP 400: request exceeds the available context size") as ei:
            await run.stage("planning", ask, "too long")
        assert isinstance(ei.value.__cause__, ProviderError)
        assert ei.value.__cause__.detail == "request exceeds the available context size"
        assert await run.stage("planning", ask, "short") == "fine"  # no cooldown: the next call is sent
    assert len(server.requests) == 2  # a 400 is not retried
    trace = run.trace_path.read_text() if run.trace_path else ""
    assert "available context size" not in trace  # the text stays on the exception


async def test_each_model_keeps_its_own_timeout(server: ScriptedOpenAIServer) -> None:
    quick = OpenAIChatModel("quick", base_url=server.base_url, timeout=0.3)
    patient = OpenAIChatModel("patient", base_url=server.base_url, timeout=5)
    server.script.extend([{"delay": 1.0, "reply": "late"}, {"delay": 1.0, "reply": "late but fine"}])
    with pytest.raises(ProviderError, match="timed out"):
        await quick.request([Message("user", "x")], ModelSettings())
    assert (await patient.request([Message("user", "x")], ModelSettings())).text == "late but fine"


def test_the_client_works_across_event_loops(server: ScriptedOpenAIServer) -> None:
    code = textwrap.dedent(f"""
        import asyncio
        from agentlanes.models import Message, ModelSettings
        from agentlanes.models.openai import OpenAIChatModel
        model = OpenAIChatModel("m", base_url={server.base_url!r})
        for _ in range(3):
            print(asyncio.run(model.request([Message("user", "x")], ModelSettings())).text)
    """)
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["ok", "ok", "ok"]


async def test_openai_streaming_adapter(server: ScriptedOpenAIServer) -> None:
    server.script.append({"pieces": ["Hel", "lo"], "tool_calls": [["c2", "get_weather", '{"city": "Bern"}']],
                          "usage": [12, 5]})
    model = OpenAIChatModel("m", base_url=server.base_url)
    events = [e async for e in model.stream([Message("user", "x")], ModelSettings(tools=(WEATHER,)))]
    *deltas, final = events
    assert [d.text for d in deltas if isinstance(d, TextDelta)] == ["Hel", "lo"]
    assert "".join(d.arguments for d in deltas if isinstance(d, ToolCallDelta)) == '{"city": "Bern"}'
    assert final.text == "Hello" and final.usage == Usage(12, 5) and not final.usage_estimated
    assert [(c.id, c.name) for c in final.tool_calls] == [("c2", "get_weather")]
    assert server.requests[0]["stream_options"] == {"include_usage": True}


# ------------------------------------------------------------------ calls made elsewhere


async def test_charge_a_call_agentlanes_cannot_see(tmp_path: Path) -> None:
    lanes = make(tmp_path, {"standard": TestModel()})

    async def elsewhere(ctx: StageContext) -> str:
        async with ctx.charge(input_tokens=2000, output_tokens=500) as charge:
            charge.usage(1500, 300)
        async with ctx.charge(input_tokens=100, output_tokens=50):
            pass  # nothing reported: the estimate is charged
        with pytest.raises(RuntimeError):
            async with ctx.charge(input_tokens=100, output_tokens=50):
                raise RuntimeError("the call failed somewhere")
        return "done"

    async with lanes.run(task_class="routine-code") as run:
        await run.stage("planning", elsewhere)
    calls = run.records[0].calls
    assert [(c.provider, c.ok, c.usage_estimated) for c in calls] == [
        ("external", True, False), ("external", True, True), ("external", False, True)]
    assert calls[0].usage == Usage(1500, 300)
    assert all(c.charged > 0 for c in calls)
    assert await committed(lanes, run.run_id) == (sum(c.charged for c in calls), 0)


# ------------------------------------------------------------------ budgets people can live with


async def test_budget_exhausted_says_which_window_refused_and_how_to_change_it(tmp_path: Path) -> None:
    from agentlanes.approval import CallbackApprover

    lanes = make(tmp_path, {"high-end": TestModel(text="deep")}, approver=CallbackApprover(lambda r: True))

    async def think(ctx: StageContext) -> str:
        for _ in range(4):
            await ctx.complete("think harder", max_tokens=100)
        return "x"

    async with lanes.run(task_class="architecture-decision", risk_class="high",
                         escalation_reason="architecture-decision") as run:
        with pytest.raises(BudgetExhausted) as ei:
            await run.stage("planning", think)
    message = str(ei.value)
    assert "the 'task' budget window cannot hold a call on high-end" in message
    assert "its high-end share has" in message and "left and the call's estimate is 0.25" in message
    assert "highEndMaxShare" in message and "Lanes(optimizer=...)" in message


# ------------------------------------------------------------------ recorded and replayed


async def main_loop(lanes: Lanes) -> object:
    async with lanes.run(task_class="routine-code") as run:
        out = await run.stage("planning", openai_loop, "Weather in Paris?")

        async def streamed(ctx: StageContext) -> str:
            async with ctx.stream("summarise", tools=[WEATHER]) as stream:
                return "".join([e.text async for e in stream if isinstance(e, TextDelta)])

        await run.stage_with("finalization", streamed, risk_class="low")
        run.output = out
    return out


def scripted_models() -> dict[str, Any]:
    return {
        "standard": ScriptedModel([
            reply(tool_calls=[tool_call("get_weather", {"city": "Paris"}, id="c1")], usage=Usage(40, 12)),
            reply("Sunny in Paris.", usage=Usage(70, 8)),
        ], name="std"),
        "cheap": ScriptedModel([StreamedReply(["Sun", "ny."], usage=Usage(10, 3))], name="cheap"),
    }


async def test_tool_loops_and_streams_replay_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lanes = make(tmp_path, scripted_models(), store=None)
    await main_loop(lanes)
    await lanes.aclose()
    [trace] = (tmp_path / "traces").iterdir()
    record = load_record(trace)
    assert [s.kind for s in record.steps].count("call") == 3
    report = await replay(trace, entry=main_loop, data_dir=tmp_path)
    assert report.complete and report.steps == len(record.steps)
    # the tool returns something else now: the next prompt (carrying the tool's result) diverges
    monkeypatch.setattr(sys.modules[__name__], "get_weather", lambda city: f"rain in {city}")
    from agentlanes import ReplayDivergence

    with pytest.raises(ReplayDivergence, match=r"the prompt differs: the record has at character \d+: .*sunny, 21C"):
        await replay(trace, entry=main_loop, data_dir=tmp_path)


def test_spans_of_the_users_own_code_nest_under_the_stage(tmp_path: Path) -> None:
    from agentlanes.testing import capture_spans

    cap = capture_spans()
    lanes = make(tmp_path, {"standard": TestModel()}, tracer_provider=cap.provider)
    tracer = cap.provider.get_tracer("app")

    async def work(ctx: StageContext) -> str:
        with tracer.start_as_current_span("my tool"):
            return (await ctx.complete("x")).text

    async def go() -> None:
        async with lanes.run(task_class="routine-code") as run:
            await run.stage("planning", work)
        assert run.trace_path is not None
        local = {json.loads(line)["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["name"]
                 for line in run.trace_path.read_text().splitlines()}
        assert "my tool" not in local  # the local record holds agentlanes' spans only

    anyio.run(go)
    by_id = {s.context.span_id: s for s in cap.spans}
    mine = next(s for s in cap.spans if s.name == "my tool")
    assert mine.parent is not None and by_id[mine.parent.span_id].name == "agentlanes.stage planning"
