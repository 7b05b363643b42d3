"""OpenAI Agents SDK agents on lanes: `LaneModelProvider(ctx)` runs every request of a
run (tool turns, handoffs, streams) on the stage's lane model, charged, recorded and
replayed offline.

The SDK's own tracing uploads traces to OpenAI whenever OPENAI_API_KEY is set, unless
its processors are replaced: every test here runs with a local processor only (the
fixture below), and one test checks that nothing put the uploader back.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agents import (
    Agent,
    RunConfig,
    Runner,
    TracingProcessor,
    UserError,
    WebSearchTool,
    function_tool,
    set_trace_processors,
)
from agents import ModelSettings as AgentModelSettings
from agents.retry import ModelRetryAdviceRequest
from agents.testing import ScriptedModel as SdkScriptedModel
from agents.testing import assistant_message
from agents.tracing import get_trace_provider
from agents.tracing.processors import BatchTraceProcessor
from pydantic import BaseModel

from agentlanes import BudgetExhausted, ConfigurationError, Lanes, ModelError, ReplayDivergence, StageContext
from agentlanes.integrations.openai_agents import LaneModel, LaneModelProvider
from agentlanes.models import Message, ModelSettings, ProviderError, TextDelta, ToolCallDelta, Usage
from agentlanes.models.openai import OpenAIChatModel
from agentlanes.policy import PolicyBundle, load_document
from agentlanes.replay import replay
from agentlanes.router import Router
from agentlanes.testing import FunctionModel, ScriptedModel, StreamedReply, TestModel, reply, tool_call
from tests.conftest import bundled_json
from tests.integrations.conftest import committed, make_lanes, recorded_steps
from tests.openai_server import ScriptedOpenAIServer

STANDARD_MIN = 20_000


class LocalSpans(TracingProcessor):
    """Keeps the SDK's spans in memory: the only trace processor while these tests run."""

    def __init__(self) -> None:
        self.spans: list[Any] = []

    def on_trace_start(self, trace: Any) -> None:
        pass

    def on_trace_end(self, trace: Any) -> None:
        pass

    def on_span_start(self, span: Any) -> None:
        pass

    def on_span_end(self, span: Any) -> None:
        self.spans.append(span)

    def shutdown(self) -> None:
        pass

    def force_flush(self) -> None:
        pass


LOCAL = LocalSpans()


@pytest.fixture(autouse=True)
def local_tracing_only() -> Iterator[LocalSpans]:
    set_trace_processors([LOCAL])  # replaces the default uploader to OpenAI
    LOCAL.spans.clear()
    yield LOCAL
    assert sdk_processors() == (LOCAL,), "a trace processor other than the local one was installed"


def sdk_processors() -> tuple[Any, ...]:
    # the SDK has no public getter for its processors
    return tuple(get_trace_provider()._multi_processor._processors)  # type: ignore[attr-defined]


WEATHER: dict[str, str] = {"Paris": "sunny, 21C", "Rome": "cloudy, 18C"}


@function_tool
def get_weather(city: str) -> str:
    """Get the weather for a city."""
    return WEATHER.get(city, "unknown")


def weather_agent(**kw: Any) -> Agent[Any]:
    kw.setdefault("model", "gpt-4.1")  # a name the lane ignores
    kw.setdefault("tools", [get_weather])
    return Agent(name="weather", instructions="You are a terse weather bot.", **kw)


class Answer(BaseModel):
    city: str
    summary: str


async def ask(ctx: StageContext, question: str, agent: Agent[Any] | None = None, **config: Any) -> Any:
    run_config = RunConfig(model_provider=LaneModelProvider(ctx), **config)
    return await Runner.run(agent or weather_agent(), question, run_config=run_config)


# ------------------------------------------------------------------ the tool loop, charged and recorded


async def test_a_tool_loop_runs_every_request_on_the_lane_and_charges_each(tmp_path: Path) -> None:
    lane_model = ScriptedModel(
        [
            reply(tool_calls=[tool_call("get_weather", {"city": "Paris"}, id="c1")], usage=Usage(40, 9),
                  model="lane-small-1"),
            reply("Sunny, 21C in Paris.", usage=Usage(60, 7, 20), model="lane-small-1"),
        ],
        name="lane-small-1",
    )
    lanes = make_lanes(tmp_path, {"standard": lane_model})
    async with lanes.run(task_class="routine-code") as run:
        result = await run.stage("execution", ask, "Weather in Paris?")
    lane_model.assert_complete()
    assert result.final_output == "Sunny, 21C in Paris."

    first, second = lane_model.calls
    assert first == [Message("system", "You are a terse weather bot."), Message("user", "Weather in Paris?")]
    assert second[2:] == [
        Message("assistant", "", (tool_call("get_weather", {"city": "Paris"}, id="c1"),)),
        Message("tool", "sunny, 21C", tool_call_id="c1"),
    ]
    settings = lane_model.settings[0]
    assert [(t.name, t.description, t.strict) for t in settings.tools] == [
        ("get_weather", "Get the weather for a city.", True)]
    assert settings.tools[0].parameters["required"] == ["city"]
    assert (settings.tool_choice, settings.response_format, settings.max_tokens) == (None, None, 1024)

    [record] = run.records
    assert [(c.ok, c.model, c.tool_calls) for c in record.calls] == [(True, "lane-small-1", 1),
                                                                       (True, "lane-small-1", 0)]
    assert [c.charged for c in record.calls] == [STANDARD_MIN, STANDARD_MIN]
    assert await committed(lanes, run.run_id) == (2 * STANDARD_MIN, 0)

    usage = result.context_wrapper.usage
    assert (usage.requests, usage.input_tokens, usage.output_tokens, usage.total_tokens) == (2, 100, 16, 116)
    assert usage.input_tokens_details.cached_tokens == 20
    assert [r.response_id for r in result.raw_responses] == [None, None]


async def test_test_model_calls_every_tool_then_answers(tmp_path: Path) -> None:
    lane_model = TestModel(text="done", call_tools="all")
    lanes = make_lanes(tmp_path, {"standard": lane_model})
    async with lanes.run(task_class="routine-code") as run:
        result = await run.stage("execution", ask, "Weather?")
    assert result.final_output == "done"
    assert lane_model.calls[1][-1] == Message("tool", "unknown", tool_call_id="call_0_get_weather")


async def test_run_streamed_streams_text_and_tool_calls_with_usage_at_the_end(tmp_path: Path) -> None:
    lane_model = ScriptedModel([
        StreamedReply([ToolCallDelta(0, "c1", "get_weather", '{"city": "Pa'), ToolCallDelta(0, arguments='ris"}')],
                      usage=Usage(30, 8)),
        StreamedReply(["Sunny, ", "21C ", "in Paris."], usage=Usage(50, 6)),
    ])
    lanes = make_lanes(tmp_path, {"standard": lane_model})

    async def streamed(ctx: StageContext) -> tuple[list[str], list[Any], Any]:
        result = Runner.run_streamed(weather_agent(), "Weather in Paris?",
                                     run_config=RunConfig(model_provider=LaneModelProvider(ctx)))
        deltas: list[str] = []
        completed: list[Any] = []
        async for event in result.stream_events():
            if event.type == "raw_response_event":
                if event.data.type == "response.output_text.delta":
                    deltas.append(event.data.delta)
                elif event.data.type == "response.completed":
                    completed.append(event.data.response)
        return deltas, completed, result

    async with lanes.run(task_class="routine-code") as run:
        deltas, completed, result = await run.stage("execution", streamed)
    assert deltas == ["Sunny, ", "21C ", "in Paris."]
    assert result.final_output == "Sunny, 21C in Paris."
    assert [(r.usage.input_tokens, r.usage.output_tokens) for r in completed] == [(30, 8), (50, 6)]
    assert [o.type for o in completed[0].output] == ["function_call"]
    assert completed[0].output[0].call_id == "c1" and completed[0].output[0].arguments == '{"city": "Paris"}'
    assert lane_model.calls[1][-1] == Message("tool", "sunny, 21C", tool_call_id="c1")
    usage = result.context_wrapper.usage
    assert (usage.requests, usage.input_tokens, usage.output_tokens) == (2, 80, 14)
    assert [(c.streamed, c.ok, c.charged) for c in run.records[0].calls] == [(True, True, STANDARD_MIN)] * 2


async def test_test_model_streams_in_chunks(tmp_path: Path) -> None:
    lanes = make_lanes(tmp_path, {"standard": TestModel(text="it is sunny", call_tools="all", stream_chunks=3)})

    async def streamed(ctx: StageContext) -> list[str]:
        result = Runner.run_streamed(weather_agent(), "Weather?",
                                     run_config=RunConfig(model_provider=LaneModelProvider(ctx)))
        return [e.data.delta async for e in result.stream_events()
                if e.type == "raw_response_event" and e.data.type == "response.output_text.delta"]

    async with lanes.run(task_class="routine-code") as run:
        assert await run.stage("execution", streamed) == ["it i", "s su", "nny"]
    assert [c.streamed for c in run.records[0].calls] == [True, True]


# ------------------------------------------------------------------ structured output, handoffs, settings


async def test_structured_output_is_a_json_schema_response_format(tmp_path: Path) -> None:
    lane_model = TestModel()  # answers schema-valid JSON for a response format
    lanes = make_lanes(tmp_path, {"standard": lane_model})
    agent = Agent(name="structured", instructions="Answer as JSON.", output_type=Answer, model="gpt-4.1")
    async with lanes.run(task_class="routine-code") as run:
        result = await run.stage("execution", ask, "Weather in Rome?", agent)
    assert result.final_output == Answer(city="a", summary="a")
    response_format = lane_model.settings[0].response_format
    assert response_format is not None and (response_format.name, response_format.strict) == ("final_output", True)
    assert response_format.schema["required"] == ["city", "summary"]


async def test_a_handoff_is_a_tool_call_on_the_lane(tmp_path: Path) -> None:
    lane_model = ScriptedModel([
        reply(tool_calls=[tool_call("transfer_to_weather", {}, id="h1")]),
        "Sunny in Paris.",
    ])
    lanes = make_lanes(tmp_path, {"standard": lane_model})
    triage = Agent(name="triage", instructions="Route the question.", handoffs=[weather_agent()], model="gpt-4.1")
    async with lanes.run(task_class="routine-code") as run:
        result = await run.stage("execution", ask, "Weather in Paris?", triage)
    assert (result.final_output, result.last_agent.name) == ("Sunny in Paris.", "weather")
    assert [t.name for t in lane_model.settings[0].tools] == ["transfer_to_weather"]
    assert lane_model.calls[1][0] == Message("system", "You are a terse weather bot.")
    assert len(run.records[0].calls) == 2


async def test_an_agent_with_a_model_of_its_own_is_not_on_the_lane(tmp_path: Path) -> None:
    # The SDK's own test double, bound to one agent: the provider is bypassed for it, so
    # its requests are neither routed nor charged (only the triage turn is).
    own = SdkScriptedModel([[assistant_message("from the SDK's double")]])
    lanes = make_lanes(tmp_path, {"standard": ScriptedModel([reply(tool_calls=[tool_call("transfer_to_w", {})])])})
    triage = Agent(name="triage", handoffs=[Agent(name="w", model=own)], model="gpt-4.1")
    async with lanes.run(task_class="routine-code") as run:
        result = await run.stage("execution", ask, "hi", triage)
    assert result.final_output == "from the SDK's double"
    own.assert_complete()
    assert len(run.records[0].calls) == 1


async def test_settings_reach_the_lane(tmp_path: Path) -> None:
    lane_model = TestModel(text="ok")
    lanes = make_lanes(tmp_path, {"standard": lane_model})
    agent = weather_agent(model_settings=AgentModelSettings(
        max_tokens=77, temperature=0.1, top_p=0.9, tool_choice="none", parallel_tool_calls=False,
        presence_penalty=0.5, extra_body={"repetition_penalty": 1.1}, extra_args={"seed": 7}, timeout=5.0,
    ))
    async with lanes.run(task_class="routine-code") as run:
        await run.stage("execution", ask, "Weather?", agent)
    sent = lane_model.settings[0]
    assert (sent.max_tokens, sent.temperature, sent.top_p, sent.seed, sent.timeout) == (77, 0.1, 0.9, 7, 5.0)
    assert (sent.tool_choice, sent.parallel_tool_calls) == ("none", False)
    assert sent.extra == {"presence_penalty": 0.5, "repetition_penalty": 1.1}


async def test_the_sdks_defaults_for_its_own_model_are_not_sent(tmp_path: Path) -> None:
    lane_model = TestModel(text="ok")
    lanes = make_lanes(tmp_path, {"standard": lane_model})
    agent = Agent(name="no-model", instructions="hi")  # the SDK gives it gpt-5 reasoning defaults
    async with lanes.run(task_class="routine-code") as run:
        await run.stage_with("execution", ask, ("Weather?", agent), max_tokens=300)
    sent = lane_model.settings[0]
    assert (sent.extra, sent.max_tokens) == ({}, 300)  # no reasoning_effort / verbosity; the stage's max_tokens


# ------------------------------------------------------------------ ids and misuse


async def test_missing_and_repeated_tool_call_ids_are_replaced_the_same_way_every_time(tmp_path: Path) -> None:
    def script() -> ScriptedModel:
        return ScriptedModel([
            reply(tool_calls=[tool_call("get_weather", {"city": "Paris"}, id="call_0")]),
            StreamedReply([ToolCallDelta(0, "call_0", "get_weather", '{"city": "Rome"}'),
                           ToolCallDelta(1, "", "get_weather", '{"city": "Oslo"}')]),
            "done",
        ])

    async def mixed(ctx: StageContext) -> None:
        result = Runner.run_streamed(weather_agent(), "Weather?",
                                     run_config=RunConfig(model_provider=LaneModelProvider(ctx)))
        async for _ in result.stream_events():
            pass

    seen: list[list[str | None]] = []
    for _ in range(2):
        lane_model = script()
        lanes = make_lanes(tmp_path, {"standard": lane_model})
        async with lanes.run(task_class="routine-code") as run:
            await run.stage("execution", mixed)
        seen.append([m.tool_call_id for m in lane_model.calls[2] if m.role == "tool"])
    assert seen[0] == ["call_0", "call_lane_2", "call_lane_3"] == seen[1]


async def test_misuse_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="takes the StageContext a stage function receives"):
        LaneModelProvider(None)  # type: ignore[arg-type]
    lanes = make_lanes(tmp_path, {"standard": TestModel()})
    kept: list[LaneModelProvider] = []

    async def keep(ctx: StageContext) -> None:
        kept.append(LaneModelProvider(ctx))

    async def server_state(ctx: StageContext) -> Any:
        return await Runner.run(weather_agent(), "hi", previous_response_id="resp_1",
                                run_config=RunConfig(model_provider=LaneModelProvider(ctx)))

    async def headers(ctx: StageContext) -> Any:
        agent = weather_agent(model_settings=AgentModelSettings(extra_headers={"x-a": "1"}))
        return await ask(ctx, "hi", agent)

    async def hosted(ctx: StageContext) -> Any:
        return await ask(ctx, "hi", Agent(name="search", tools=[WebSearchTool()], model="gpt-4.1"))

    async with lanes.run(task_class="routine-code") as run:
        await run.stage("execution", keep)
        with pytest.raises(ConfigurationError, match="used after stage 'execution' ended"):
            await Runner.run(weather_agent(), "hi", run_config=RunConfig(model_provider=kept[0]))
        with pytest.raises(ConfigurationError, match="previous_response_id='resp_1' needs state kept on"):
            await run.stage("execution", server_state)
        with pytest.raises(ConfigurationError, match="extra_headers cannot be sent through a lane"):
            await run.stage("execution", headers)
        with pytest.raises(UserError, match="Hosted tools are not supported"):
            await run.stage("execution", hosted)
    assert all(r.calls == [] for r in run.records)  # nothing was sent, nothing charged


def test_a_missing_agents_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "agents", None)
    monkeypatch.delitem(sys.modules, "agentlanes.integrations.openai_agents")
    with pytest.raises(ConfigurationError, match=r"pip install 'agentlanes\[openai-agents\]'") as ei:
        importlib.import_module("agentlanes.integrations.openai_agents")
    assert isinstance(ei.value, ImportError)


# ------------------------------------------------------------------ errors


async def test_a_failed_lane_call_propagates_with_retry_advice(tmp_path: Path) -> None:
    def busy(messages: list[Message], settings: ModelSettings) -> str:
        raise ProviderError("rate limited", retryable=True, retry_after=0.001, status=429)

    lanes = make_lanes(tmp_path, {"standard": FunctionModel(busy)})
    async with lanes.run(task_class="routine-code") as run:
        with pytest.raises(ModelError) as ei:
            await run.stage("execution", ask, "Weather?")
        advice = LaneModel.get_retry_advice(
            LaneModel.__new__(LaneModel), ModelRetryAdviceRequest(error=ei.value, attempt=1, stream=False))
    assert [c.status for c in run.records[0].calls] == [429, 429]  # agentlanes retried; the SDK does not
    assert advice is not None and advice.suggested is False and advice.retry_after == 0.001
    assert advice.normalized is not None and advice.normalized.status_code == 429


async def test_agentlanes_refusals_propagate_as_themselves(tmp_path: Path) -> None:
    opt = bundled_json("optimizer.json")
    opt["budgetPolicy"]["windows"][0]["maxSpend"] = 0.05
    opt["budgetPolicy"]["onBudgetPressure"] = "defer"
    bundle = PolicyBundle.from_loaded(load_document(bundled_json("policy.json")), load_document(opt),
                                      load_document(bundled_json("price-catalog.json")))
    lane_model = ScriptedModel([
        reply(tool_calls=[tool_call("get_weather", {"city": "Paris"}, id="c1")]),
        reply(tool_calls=[tool_call("get_weather", {"city": "Rome"}, id="c2")]),
        "never sent",
    ])
    lanes = make_lanes(tmp_path, {"standard": lane_model}, router=Router(bundle))
    agent = weather_agent(model_settings=AgentModelSettings(max_tokens=64))
    async with lanes.run(task_class="routine-code") as run:
        with pytest.raises(BudgetExhausted, match="budget window"):
            await run.stage("execution", ask, "Weather?", agent)
    assert len(lane_model.calls) == 2
    assert await committed(lanes, run.run_id) == (2 * STANDARD_MIN, 0)


# ------------------------------------------------------------------ tracing


async def test_generation_spans_only_while_the_sdks_tracing_is_on_and_globals_untouched(tmp_path: Path) -> None:
    before = sdk_processors()
    lane_model = ScriptedModel([reply(tool_calls=[tool_call("get_weather", {"city": "Paris"}, id="c1")],
                                      model="lane-small-1"), "Sunny.", "Sunny again.", "Sunny, untraced."],
                               name="lane-small-1")
    lanes = make_lanes(tmp_path, {"standard": lane_model})
    async with lanes.run(task_class="routine-code") as run:
        await run.stage("execution", ask, "Weather in Paris?", None, workflow_name="lanes")
        generations = [s for s in LOCAL.spans if s.span_data.type == "generation"]
        assert len(generations) == 2
        assert {s.span_data.model for s in generations} == {"lane-small-1"}
        assert generations[0].span_data.usage["requests"] == 1
        assert generations[0].span_data.model_config["lane"] == "standard"
        assert generations[0].span_data.input[1] == {"role": "user", "content": "Weather in Paris?"}

        LOCAL.spans.clear()
        await run.stage("execution", ask, "Weather in Paris?", None, trace_include_sensitive_data=False)
        [generation] = [s for s in LOCAL.spans if s.span_data.type == "generation"]
        assert generation.span_data.input is None and generation.span_data.output is None

        LOCAL.spans.clear()
        await run.stage("execution", ask, "Weather?", weather_agent(tools=[]), tracing_disabled=True)
        assert LOCAL.spans == []
    assert len(run.records[-1].calls) == 1  # the request ran, untraced by the SDK
    # the integration changed no global tracing state; the OpenAI uploader is not installed
    assert sdk_processors() == before == (LOCAL,)
    assert not any(isinstance(p, BatchTraceProcessor) for p in sdk_processors())


# ------------------------------------------------------------------ an OpenAI-compatible server behind the lane


async def test_against_an_openai_compatible_server(tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    server.script.extend([
        {"tool_calls": [["call_a", "get_weather", '{"city": "Paris"}']], "usage": [40, 9]},
        {"reply": "Sunny, 21C.", "usage": [60, 5]},
        {"tool_calls": [["call_b", "get_weather", '{"city": "Rome"}']], "usage": [41, 9]},
        {"reply": "Cloudy", "pieces": ["Clo", "udy"], "usage": [61, 3]},
        {"status": 400, "message": "This model's maximum context length is 8192 tokens"},
    ])
    lanes = make_lanes(tmp_path, {"standard": OpenAIChatModel("test-model", base_url=server.base_url, api_key="k")})

    async def loop(ctx: StageContext) -> tuple[Any, list[str], Any]:
        config = RunConfig(model_provider=LaneModelProvider(ctx))
        first = await Runner.run(weather_agent(), "Weather in Paris?", run_config=config)
        streamed = Runner.run_streamed(weather_agent(), "And Rome?", run_config=config)
        deltas = [e.data.delta async for e in streamed.stream_events()
                  if e.type == "raw_response_event" and e.data.type == "response.output_text.delta"]
        with pytest.raises(ModelError, match="maximum context length") as ei:
            await Runner.run(weather_agent(), "Too long", run_config=config)
        assert ei.value.retryable is False
        return first, deltas, streamed

    async with lanes.run(task_class="routine-code") as run:
        first, deltas, streamed = await run.stage("execution", loop)
    assert (first.final_output, deltas, streamed.final_output) == ("Sunny, 21C.", ["Clo", "udy"], "Cloudy")
    assert (streamed.context_wrapper.usage.input_tokens, streamed.context_wrapper.usage.output_tokens) == (102, 12)

    bodies = server.requests
    assert [b.get("stream", False) for b in bodies] == [False, False, True, True, False]
    assert bodies[0]["messages"] == [
        {"role": "system", "content": "You are a terse weather bot."},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    assert bodies[0]["tools"][0]["function"]["name"] == "get_weather"
    assert bodies[1]["messages"][2:] == [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_a", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "content": "sunny, 21C", "tool_call_id": "call_a"},
    ]
    calls = run.records[0].calls
    assert [(c.ok, c.streamed, c.status) for c in calls] == [
        (True, False, None), (True, False, None), (True, True, None), (True, True, None), (False, False, 400)]
    assert [c.charged for c in calls] == [STANDARD_MIN] * 4 + [0]
    assert await committed(lanes, run.run_id) == (4 * STANDARD_MIN, 0)


# ------------------------------------------------------------------ replay


QUESTION = {"text": "Weather in Paris?"}


async def agent_program(lanes: Lanes) -> object:
    """The recorded program: an agent with a function tool, run and streamed, in a stage."""

    async def step(ctx: StageContext, question: str) -> str:
        config = RunConfig(model_provider=LaneModelProvider(ctx), tracing_disabled=True)
        first = await Runner.run(weather_agent(), question, run_config=config)
        streamed = Runner.run_streamed(weather_agent(), [*first.to_input_list(), {"role": "user", "content": "Rome?"}],
                                       run_config=config)
        async for _ in streamed.stream_events():
            pass
        return f"{first.final_output} / {streamed.final_output}"

    async with lanes.run(task_class="routine-code", run_id="agents-run") as run:
        run.output = await run.stage("execution", step, QUESTION["text"])
    return run.output


def recorded_models() -> dict[str, Any]:
    return {"standard": ScriptedModel([
        reply(tool_calls=[tool_call("get_weather", {"city": "Paris"}, id="c1")]),
        reply("Sunny in Paris."),
        StreamedReply([ToolCallDelta(0, "c2", "get_weather", '{"city": "Rome"}')]),
        StreamedReply([TextDelta("Cloudy "), TextDelta("in Rome.")]),
    ], name="lane-small-1")}


async def test_an_agent_run_replays_offline_and_a_change_diverges(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    lanes = make_lanes(tmp_path, recorded_models())
    try:
        assert await agent_program(lanes) == "Sunny in Paris. / Cloudy in Rome."
    finally:
        await lanes.aclose()
    steps = recorded_steps(tmp_path / "traces" / "agents-run.otlp.jsonl")
    assert steps == 5  # a decision and four model calls

    report = await replay("agents-run", entry=agent_program, data_dir=tmp_path)
    assert (report.run_id, report.steps, report.complete) == ("agents-run", steps, True)

    monkeypatch.setitem(WEATHER, "Rome", "snowing")  # the tool now says something else
    with pytest.raises(ReplayDivergence, match="the prompt differs") as ei:
        await replay("agents-run", entry=agent_program, data_dir=tmp_path)
    assert ei.value.index == 4  # the last call: it carries Rome's weather
    monkeypatch.setitem(WEATHER, "Rome", "cloudy, 18C")

    monkeypatch.setitem(QUESTION, "text", "Weather in Lyon?")
    with pytest.raises(ReplayDivergence, match="the prompt differs") as ei:
        await replay("agents-run", entry=agent_program, data_dir=tmp_path)
    assert ei.value.index == 1



async def server_program(lanes: Lanes) -> object:
    """A tool loop and a stream against whatever serves the lane."""

    async def loop(ctx: StageContext) -> str:
        config = RunConfig(model_provider=LaneModelProvider(ctx))
        first = await Runner.run(weather_agent(), "Weather in Paris?", run_config=config)
        streamed = Runner.run_streamed(weather_agent(), "And Rome?", run_config=config)
        async for _ in streamed.stream_events():
            pass
        return f"{first.final_output} / {streamed.final_output}"

    async with lanes.run(task_class="routine-code", run_id="server-run") as run:
        run.output = await run.stage("execution", loop)
    return run.output


async def test_a_run_against_the_server_replays_once_the_server_is_gone(tmp_path: Path) -> None:
    with ScriptedOpenAIServer() as server:
        server.script.extend([
            {"tool_calls": [["call_a", "get_weather", '{"city": "Paris"}']]},
            {"reply": "Sunny."},
            {"tool_calls": [["call_b", "get_weather", '{"city": "Rome"}']]},
            {"reply": "Cloudy", "pieces": ["Clo", "udy"]},
        ])
        lanes = make_lanes(tmp_path, {"standard": OpenAIChatModel("test-model", base_url=server.base_url)})
        try:
            assert await server_program(lanes) == "Sunny. / Cloudy"
        finally:
            await lanes.aclose()
        assert len(server.requests) == 4
    steps = recorded_steps(tmp_path / "traces" / "server-run.otlp.jsonl")
    report = await replay("server-run", entry=server_program, data_dir=tmp_path)  # no server any more
    assert (report.steps, report.complete) == (steps, True) and steps == 5
