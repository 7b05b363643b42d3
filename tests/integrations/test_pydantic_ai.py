"""PydanticAI agents on lanes: `LaneModel(ctx)` sends every request of an agent (tool
turns, output tools, streams) through the stage's lane model, charged, recorded,
traced under the stage span, and replayed offline."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_ai import Agent, NativeOutput, capture_run_messages
from pydantic_ai.exceptions import (
    ModelAPIError,
    ModelHTTPError,
    ModelRateLimitError,
    ModelRequestRejectedError,
    UnsupportedSettingWarning,
    UserError,
)
from pydantic_ai.messages import BinaryContent, ModelResponse, ToolCallPart
from pydantic_ai.models.fallback import FallbackModel
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.instrumented import InstrumentationSettings

from agentlanes import BudgetExhausted, ConfigurationError, Lanes, ModelError, ReplayDivergence, StageContext
from agentlanes.integrations.pydantic_ai import LaneModel
from agentlanes.models import Message, ModelSettings, ProviderError, TextDelta, ToolCall, ToolCallDelta, Usage
from agentlanes.models.openai import OpenAIChatModel
from agentlanes.policy import PolicyBundle, load_document
from agentlanes.replay import replay
from agentlanes.router import Router
from agentlanes.testing import FunctionModel as LaneFunctionModel
from agentlanes.testing import ScriptedModel, StreamedReply, TestModel, capture_spans, reply, tool_call
from tests.conftest import bundled_json
from tests.integrations.conftest import (
    ancestors,
    committed,
    make_lanes,
    recorded_steps,
    trace_scopes_and_names,
)
from tests.openai_server import ScriptedOpenAIServer

STANDARD_MIN = 20_000  # micro-units: the bundled catalog's minimum for a standard call

WEATHER: dict[str, str] = {"Paris": "sunny, 21C", "Rome": "cloudy, 18C"}


def get_weather(city: str) -> str:
    """Get the weather for a city."""
    return WEATHER.get(city, "unknown")


def weather_agent(**kw: Any) -> Agent[None, Any]:
    return Agent(instructions="You are a terse weather bot.", name="weather", tools=[get_weather], **kw)


class Answer(BaseModel):
    city: str
    summary: str


async def ask(ctx: StageContext, question: str, **kw: Any) -> Any:
    result = await weather_agent().run(question, model=LaneModel(ctx), **kw)
    return result


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
    assert result.output == "Sunny, 21C in Paris."

    # what the lane's model was sent: instructions first, the tool call and its result
    first, second = lane_model.calls
    assert first == [Message("system", "You are a terse weather bot."), Message("user", "Weather in Paris?")]
    assert second[2:] == [
        Message("assistant", "", (tool_call("get_weather", '{"city":"Paris"}', id="c1"),)),
        Message("tool", "sunny, 21C", tool_call_id="c1"),
    ]
    settings = lane_model.settings[0]
    assert [(t.name, t.description) for t in settings.tools] == [("get_weather", "Get the weather for a city.")]
    assert settings.tools[0].parameters["properties"] == {"city": {"type": "string"}}
    assert (settings.tool_choice, settings.response_format, settings.max_tokens) == ("auto", None, 1024)

    # every request charged and recorded, and the budget store holds it
    [record] = run.records
    assert [(c.ok, c.lane, c.model, c.tool_calls, c.finish_reason) for c in record.calls] == [
        (True, "standard", "lane-small-1", 1, "tool_calls"),
        (True, "standard", "lane-small-1", 0, "stop"),
    ]
    assert [c.charged for c in record.calls] == [STANDARD_MIN, STANDARD_MIN]
    assert await committed(lanes, run.run_id) == (2 * STANDARD_MIN, 0)
    assert run.result.cost_micro == 2 * STANDARD_MIN

    # PydanticAI sees the lane's usage and model, and prices nothing itself
    assert (result.usage.requests, result.usage.input_tokens, result.usage.output_tokens) == (2, 100, 16)
    assert result.usage.cache_read_tokens == 20
    assert result.usage.cost is None
    responses = [m for m in result.all_messages() if isinstance(m, ModelResponse)]
    assert {(r.model_name, r.provider_name) for r in responses} == {("lane-small-1", "agentlanes")}
    assert [r.finish_reason for r in responses] == ["tool_call", "stop"]
    assert responses[0].provider_details == {"lane": "standard", "finish_reason": "tool_calls"}


async def test_test_model_calls_every_tool_then_answers(tmp_path: Path) -> None:
    lane_model = TestModel(text="done", call_tools="all")
    lanes = make_lanes(tmp_path, {"standard": lane_model})
    async with lanes.run(task_class="routine-code") as run:
        result = await run.stage("execution", ask, "Weather?")
    assert result.output == "done"
    assert lane_model.calls[1][-1] == Message("tool", "unknown", tool_call_id="call_0_get_weather")
    assert len(run.records[0].calls) == 2


async def test_run_stream_streams_text_and_tool_call_deltas(tmp_path: Path) -> None:
    lane_model = ScriptedModel(
        [
            StreamedReply(
                [ToolCallDelta(0, "c1", "get_weather", '{"city": "Pa'), ToolCallDelta(0, arguments='ris"}')],
                usage=Usage(30, 8),
            ),
            StreamedReply(["Sunny, ", "21C ", "in Paris."], usage=Usage(50, 6)),
        ]
    )
    lanes = make_lanes(tmp_path, {"standard": lane_model})

    async def streamed(ctx: StageContext) -> tuple[list[str], Any]:
        async with weather_agent().run_stream("Weather in Paris?", model=LaneModel(ctx)) as stream:
            deltas = [d async for d in stream.stream_text(delta=True, debounce_by=None)]
        return deltas, stream

    async with lanes.run(task_class="routine-code") as run:
        deltas, stream = await run.stage("execution", streamed)
    assert deltas == ["Sunny, ", "21C ", "in Paris."]
    messages = stream.all_messages()
    call = messages[1].parts[0]
    assert isinstance(call, ToolCallPart) and (call.tool_call_id, call.args_as_dict()) == ("c1", {"city": "Paris"})
    assert lane_model.calls[1][-1] == Message("tool", "sunny, 21C", tool_call_id="c1")
    assert [(c.streamed, c.ok, c.charged) for c in run.records[0].calls] == [(True, True, STANDARD_MIN)] * 2
    usage = stream.usage
    assert (usage.requests, usage.input_tokens, usage.output_tokens) == (2, 80, 14)


async def test_test_model_streams_in_chunks(tmp_path: Path) -> None:
    lanes = make_lanes(tmp_path, {"standard": TestModel(text="it is sunny", call_tools="all", stream_chunks=3)})

    async def streamed(ctx: StageContext) -> list[str]:
        async with weather_agent().run_stream("Weather?", model=LaneModel(ctx)) as stream:
            return [d async for d in stream.stream_text(delta=True, debounce_by=None)]

    async with lanes.run(task_class="routine-code") as run:
        assert await run.stage("execution", streamed) == ["it i", "s su", "nny"]
    assert [c.streamed for c in run.records[0].calls] == [True, True]


# ------------------------------------------------------------------ structured output


async def test_structured_output_through_an_output_tool(tmp_path: Path) -> None:
    lane_model = ScriptedModel(
        [
            reply(tool_calls=[tool_call("get_weather", {"city": "Rome"}, id="c1")]),
            reply(tool_calls=[tool_call("final_result", {"city": "Rome", "summary": "cloudy"}, id="c2")]),
        ]
    )
    lanes = make_lanes(tmp_path, {"standard": lane_model})
    async with lanes.run(task_class="routine-code") as run:
        result = await run.stage("execution", ask, "Weather in Rome?", output_type=Answer)
    assert result.output == Answer(city="Rome", summary="cloudy")
    settings = lane_model.settings[0]
    assert [t.name for t in settings.tools] == ["get_weather", "final_result"]
    assert settings.tool_choice == "required"  # no text answer is allowed
    assert settings.tools[1].parameters["required"] == ["city", "summary"]
    assert len(run.records[0].calls) == 2


async def test_native_structured_output_sends_a_response_format(tmp_path: Path) -> None:
    lane_model = TestModel()  # answers schema-valid JSON for a response format
    lanes = make_lanes(tmp_path, {"standard": lane_model})

    async def native(ctx: StageContext) -> Any:
        agent = Agent(instructions="Answer as JSON.", output_type=NativeOutput(Answer))
        return (await agent.run("Weather in Rome?", model=LaneModel(ctx))).output

    async with lanes.run(task_class="routine-code") as run:
        assert await run.stage("execution", native) == Answer(city="a", summary="a")
    response_format = lane_model.settings[0].response_format
    assert response_format is not None and response_format.name == "Answer"
    assert response_format.schema["required"] == ["city", "summary"] and response_format.strict is False
    assert lane_model.settings[0].tools == ()

    async def refused(ctx: StageContext) -> Any:
        agent = Agent(output_type=NativeOutput(Answer))
        model = LaneModel(ctx, profile={"supports_json_schema_output": False})
        return await agent.run("Weather?", model=model)

    async with lanes.run(task_class="routine-code") as run:
        with pytest.raises(UserError, match="Native structured output is not supported"):
            await run.stage("execution", refused)


async def test_settings_reach_the_lane(tmp_path: Path) -> None:
    lane_model = TestModel(text="ok")
    lanes = make_lanes(tmp_path, {"standard": lane_model})
    settings: Any = {
        "max_tokens": 77, "temperature": 0.1, "top_p": 0.9, "seed": 7, "stop_sequences": ["END"], "timeout": 5,
        "parallel_tool_calls": False, "presence_penalty": 0.5, "extra_body": {"repetition_penalty": 1.1},
        "tool_choice": "none",
    }
    async with lanes.run(task_class="routine-code") as run:
        await run.stage("execution", ask, "Weather?", model_settings=settings)
    sent = lane_model.settings[0]
    assert (sent.max_tokens, sent.temperature, sent.top_p, sent.seed, sent.stop, sent.timeout) == (
        77, 0.1, 0.9, 7, ("END",), 5.0)
    assert (sent.parallel_tool_calls, sent.tool_choice) == (False, "none")
    assert sent.extra == {"presence_penalty": 0.5, "repetition_penalty": 1.1}

    async with lanes.run(task_class="routine-code") as run:
        with pytest.warns(UnsupportedSettingWarning, match="extra_headers"):
            await run.stage("execution", ask, "Weather?", model_settings={"extra_headers": {"x-a": "1"}})
        with pytest.raises(ConfigurationError, match=r"timeout=.*in seconds"):
            await run.stage("execution", ask, "Weather?", model_settings={"timeout": "soon"})


async def test_the_stage_default_max_tokens_applies(tmp_path: Path) -> None:
    lane_model = TestModel(text="ok")
    lanes = make_lanes(tmp_path, {"standard": lane_model})
    async with lanes.run(task_class="routine-code") as run:
        await run.stage_with("execution", ask, ("Weather?",), max_tokens=200)
    assert lane_model.settings[0].max_tokens == 200


# ------------------------------------------------------------------ ids, content, misuse


async def test_missing_and_repeated_tool_call_ids_are_replaced_the_same_way_every_time(tmp_path: Path) -> None:
    def script() -> ScriptedModel:
        return ScriptedModel([
            reply(tool_calls=[tool_call("get_weather", {"city": "Paris"}, id="call_0")]),
            reply(tool_calls=[tool_call("get_weather", {"city": "Rome"}, id="call_0"),
                              ToolCall("", "get_weather", '{"city": "Oslo"}')]),
            "done",
        ])

    seen: list[list[str]] = []
    for _ in range(2):
        lane_model = script()
        lanes = make_lanes(tmp_path, {"standard": lane_model})
        async with lanes.run(task_class="routine-code") as run:
            await run.stage("execution", ask, "Weather?")
        seen.append([m.tool_call_id for m in lane_model.calls[2] if m.role == "tool"])
    assert seen[0] == ["call_0", "call_lane_2", "call_lane_3"] == seen[1]


async def test_non_text_content_is_refused_clearly(tmp_path: Path) -> None:
    lanes = make_lanes(tmp_path, {"standard": TestModel()})

    async def image(ctx: StageContext) -> Any:
        picture = BinaryContent(data=b"\x89PNG", media_type="image/png")
        return await Agent().run(["What is this?", picture], model=LaneModel(ctx))

    async with lanes.run(task_class="routine-code") as run:
        with pytest.raises(ConfigurationError, match="holds BinaryContent; a lane carries text only"):
            await run.stage("execution", image)
    assert run.records[0].calls == []  # nothing was sent, nothing charged


async def test_misuse_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="takes the StageContext a stage function receives"):
        LaneModel("standard")  # type: ignore[arg-type]
    lanes = make_lanes(tmp_path, {"standard": TestModel()})
    kept: list[LaneModel] = []

    async def keep(ctx: StageContext) -> None:
        kept.append(LaneModel(ctx))

    async with lanes.run(task_class="routine-code") as run:
        await run.stage("execution", keep)
        with pytest.raises(ConfigurationError, match="used after stage 'execution' ended"):
            await Agent().run("hi", model=kept[0])
    assert run.records[0].calls == []


def test_a_missing_pydantic_ai_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pydantic_ai", None)  # import pydantic_ai now fails
    monkeypatch.delitem(sys.modules, "agentlanes.integrations.pydantic_ai")
    with pytest.raises(ConfigurationError, match=r"pip install 'agentlanes\[pydantic-ai\]'") as ei:
        importlib.import_module("agentlanes.integrations.pydantic_ai")
    assert isinstance(ei.value, ImportError)


# ------------------------------------------------------------------ errors


async def test_a_failed_lane_call_is_pydantic_ais_http_error_with_its_category(tmp_path: Path) -> None:
    def busy(messages: list[Message], settings: ModelSettings) -> str:
        raise ProviderError("rate limited", retryable=True, retry_after=0.001, status=429, detail="slow down")

    lanes = make_lanes(tmp_path, {"standard": LaneFunctionModel(busy, name="busy")})
    async with lanes.run(task_class="routine-code") as run:
        with pytest.raises(ModelHTTPError) as ei:
            await run.stage("execution", ask, "Weather?")
    error = ei.value
    assert isinstance(error, ModelRateLimitError)
    assert (error.status_code, error.body, error.retry_after, error.model_name) == (429, "slow down", 0.001, "standard")
    assert isinstance(error.__cause__, ModelError)
    assert [c.status for c in run.records[0].calls] == [429, 429]  # agentlanes retried; PydanticAI does not


async def test_a_refused_request_is_not_retried_and_keeps_the_server_text(tmp_path: Path) -> None:
    def refuse(messages: list[Message], settings: ModelSettings) -> str:
        raise ProviderError("bad request", retryable=False, status=400, detail="context too long")

    lanes = make_lanes(tmp_path, {"standard": LaneFunctionModel(refuse)})
    async with lanes.run(task_class="routine-code") as run:
        with pytest.raises(ModelRequestRejectedError, match="context too long"):
            await run.stage("execution", ask, "Weather?")
    assert len(run.records[0].calls) == 1


async def test_a_failed_lane_falls_back_in_pydantic_ais_fallback_model(tmp_path: Path) -> None:
    def down(messages: list[Message], settings: ModelSettings) -> str:
        raise ProviderError("unavailable", retryable=True, status=503)

    def backup(messages: list[Any], info: AgentInfo) -> ModelResponse:
        from pydantic_ai.messages import TextPart

        return ModelResponse(parts=[TextPart("from the backup")])

    lanes = make_lanes(tmp_path, {"standard": LaneFunctionModel(down)})

    async def with_fallback(ctx: StageContext) -> str:
        model = FallbackModel(LaneModel(ctx), FunctionModel(backup))
        return (await Agent().run("hi", model=model)).output

    async with lanes.run(task_class="routine-code") as run:
        assert await run.stage("execution", with_fallback) == "from the backup"
    assert [c.ok for c in run.records[0].calls] == [False, False]


async def test_a_broken_stream_is_an_in_stream_api_error(tmp_path: Path) -> None:
    lanes = make_lanes(tmp_path, {"standard": ScriptedModel([StreamedReply(["Sunny", " and"], fail_after=1)])})

    async def streamed(ctx: StageContext) -> list[str]:
        async with Agent().run_stream("Weather?", model=LaneModel(ctx)) as stream:
            return [d async for d in stream.stream_text(delta=True, debounce_by=None)]

    async with lanes.run(task_class="routine-code") as run:
        with pytest.raises(ModelAPIError) as ei:
            await run.stage("execution", streamed)
    assert ei.value.in_stream and ei.value.status_code == 502  # type: ignore[attr-defined]
    [call] = run.records[0].calls
    assert (call.ok, call.streamed, call.charged > 0) == (False, True, True)  # what arrived is charged


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
    async with lanes.run(task_class="routine-code") as run:
        with pytest.raises(BudgetExhausted, match="budget window"):
            await run.stage("execution", ask, "Weather?", model_settings={"max_tokens": 64})
    assert len(lane_model.calls) == 2  # the third turn did not fit: refused before it was sent
    assert await committed(lanes, run.run_id) == (2 * STANDARD_MIN, 0)


# ------------------------------------------------------------------ an OpenAI-compatible server behind the lane


async def test_against_an_openai_compatible_server(tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    server.script.extend([
        {"tool_calls": [["call_a", "get_weather", '{"city": "Paris"}']], "usage": [40, 9]},
        {"reply": "Sunny, 21C.", "usage": [60, 5]},
        {"tool_calls": [["call_b", "get_weather", '{"city": "Rome"}']], "usage": [41, 9]},
        {"reply": "Cloudy", "pieces": ["Clo", "udy"], "usage": [61, 3]},
        {"tool_calls": [["call_c", "final_result", '{"city": "Oslo", "summary": "cold"}']], "usage": [70, 12]},
        {"status": 400, "message": "This model's maximum context length is 8192 tokens"},
    ])
    lanes = make_lanes(tmp_path, {"standard": OpenAIChatModel("test-model", base_url=server.base_url, api_key="k")})

    async def loop(ctx: StageContext) -> tuple[str, list[str], Answer]:
        agent = weather_agent()
        first = await agent.run("Weather in Paris?", model=LaneModel(ctx))
        async with agent.run_stream("And Rome?", model=LaneModel(ctx)) as stream:
            deltas = [d async for d in stream.stream_text(delta=True, debounce_by=None)]
        structured = await agent.run("Oslo?", model=LaneModel(ctx), output_type=Answer)
        with pytest.raises(ModelRequestRejectedError, match="maximum context length") as ei:
            await agent.run("Too long", model=LaneModel(ctx))
        assert ei.value.status_code == 400  # type: ignore[attr-defined]
        return first.output, deltas, structured.output

    async with lanes.run(task_class="routine-code") as run:
        output, deltas, structured = await run.stage("execution", loop)
    assert (output, deltas, structured) == ("Sunny, 21C.", ["Clo", "udy"], Answer(city="Oslo", summary="cold"))

    bodies = server.requests
    assert len(bodies) == 6
    assert bodies[0]["messages"] == [
        {"role": "system", "content": "You are a terse weather bot."},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    assert bodies[0]["tools"][0]["function"]["name"] == "get_weather" and bodies[0]["tool_choice"] == "auto"
    assert bodies[1]["messages"][2:] == [
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "content": "sunny, 21C", "tool_call_id": "call_a"},
    ]
    assert [b.get("stream", False) for b in bodies] == [False, False, True, True, False, False]
    assert bodies[4]["tool_choice"] == "required"
    assert [t["function"]["name"] for t in bodies[4]["tools"]] == ["get_weather", "final_result"]

    calls = run.records[0].calls
    assert [(c.ok, c.streamed, c.status) for c in calls] == [
        (True, False, None), (True, False, None), (True, True, None), (True, True, None), (True, False, None),
        (False, False, 400),
    ]
    assert [c.charged for c in calls] == [STANDARD_MIN] * 5 + [0]
    assert await committed(lanes, run.run_id) == (5 * STANDARD_MIN, 0)


# ------------------------------------------------------------------ spans


async def test_pydantic_ai_spans_nest_under_the_stage_span_and_stay_out_of_the_local_trace(tmp_path: Path) -> None:
    capture = capture_spans()
    lane_model = ScriptedModel([reply(tool_calls=[tool_call("get_weather", {"city": "Paris"}, id="c1")]), "Sunny."])
    lanes = make_lanes(tmp_path, {"standard": lane_model}, tracer_provider=capture.provider)

    async def instrumented(ctx: StageContext) -> str:
        agent = weather_agent()
        agent.instrument = InstrumentationSettings(tracer_provider=capture.provider, include_content=False)
        return (await agent.run("Weather in Paris?", model=LaneModel(ctx))).output

    async with lanes.run(task_class="routine-code") as run:
        assert await run.stage("execution", instrumented) == "Sunny."
    spans = capture.spans
    ours = [s for s in spans if s.instrumentation_scope.name == "pydantic-ai"]
    names = sorted(s.name for s in ours)
    assert names == ["chat standard", "chat standard", "execute_tool get_weather", "invoke_agent weather"]
    for span in ours:
        lineage = ancestors(span, spans)
        assert "agentlanes.stage execution" in lineage, (span.name, lineage)
        assert lineage[-1].startswith("invoke_workflow"), lineage
    chat = next(s for s in ours if s.name == "chat standard")
    assert chat.attributes["gen_ai.response.model"] == "scripted-model"
    assert chat.attributes["gen_ai.provider.name"] == "agentlanes"
    assert "Weather in Paris" not in json.dumps(dict(chat.attributes), default=str)  # include_content=False

    scopes, trace_names = trace_scopes_and_names(run.trace_path)
    assert scopes == {"agentlanes"}
    assert not {"invoke_agent weather", "chat standard", "execute_tool get_weather"} & set(trace_names)
    assert "agentlanes.stage execution" in trace_names


# ------------------------------------------------------------------ replay


async def agent_program(lanes: Lanes) -> object:
    """The recorded program: an agent with a tool, run and streamed, inside a stage."""

    async def step(ctx: StageContext, question: str) -> str:
        agent = weather_agent()
        first = await agent.run(question, model=LaneModel(ctx))
        async with agent.run_stream("And Rome?", model=LaneModel(ctx),
                                    message_history=first.all_messages()) as stream:
            await stream.get_output()
        return f"{first.output} / {await stream.get_output()}"

    async with lanes.run(task_class="routine-code", run_id="weather-run") as run:
        run.output = await run.stage("execution", step, QUESTION["text"])
    return run.output


QUESTION = {"text": "Weather in Paris?"}


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
        output = await agent_program(lanes)
    finally:
        await lanes.aclose()
    assert output == "Sunny in Paris. / Cloudy in Rome."
    trace = tmp_path / "traces" / "weather-run.otlp.jsonl"
    steps = recorded_steps(trace)
    assert steps == 5  # a decision and four model calls

    report = await replay("weather-run", entry=agent_program, data_dir=tmp_path)
    assert (report.run_id, report.steps, report.complete) == ("weather-run", steps, True)

    monkeypatch.setitem(WEATHER, "Paris", "raining")  # the tool now says something else
    with pytest.raises(ReplayDivergence, match="the prompt differs") as ei:
        await replay("weather-run", entry=agent_program, data_dir=tmp_path)
    assert ei.value.index == 2  # the second call: it carries the tool's result
    monkeypatch.setitem(WEATHER, "Paris", "sunny, 21C")

    monkeypatch.setitem(QUESTION, "text", "Weather in Lyon?")
    with pytest.raises(ReplayDivergence, match="the prompt differs") as ei:
        await replay("weather-run", entry=agent_program, data_dir=tmp_path)
    assert ei.value.index == 1


async def test_capture_run_messages_sees_what_the_lane_answered(tmp_path: Path) -> None:
    lanes = make_lanes(tmp_path, {"standard": TestModel(text="fine")})

    async def captured(ctx: StageContext) -> list[Any]:
        with capture_run_messages() as messages:
            await Agent(name="plain").run("How are you?", model=LaneModel(ctx))
        return messages

    async with lanes.run(task_class="routine-code") as run:
        messages = await run.stage("execution", captured)
    assert [m.kind for m in messages] == ["request", "response"]
    assert messages[1].model_name == "test-model" and messages[1].usage.output_tokens == 1
    assert json.loads(json.dumps(messages[1].provider_details)) == {"lane": "standard", "finish_reason": "stop"}


async def server_program(lanes: Lanes) -> object:
    """A tool loop, a stream and structured output against whatever serves the lane."""

    async def loop(ctx: StageContext) -> str:
        agent = weather_agent()
        first = await agent.run("Weather in Paris?", model=LaneModel(ctx))
        async with agent.run_stream("And Rome?", model=LaneModel(ctx)) as stream:
            streamed = "".join([d async for d in stream.stream_text(delta=True, debounce_by=None)])
        structured = await agent.run("Oslo?", model=LaneModel(ctx), output_type=Answer)
        return f"{first.output} / {streamed} / {structured.output.summary}"

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
            {"tool_calls": [["call_c", "final_result", '{"city": "Oslo", "summary": "cold"}']]},
        ])
        lanes = make_lanes(tmp_path, {"standard": OpenAIChatModel("test-model", base_url=server.base_url)})
        try:
            assert await server_program(lanes) == "Sunny. / Cloudy / cold"
        finally:
            await lanes.aclose()
        assert len(server.requests) == 5
    steps = recorded_steps(tmp_path / "traces" / "server-run.otlp.jsonl")
    report = await replay("server-run", entry=server_program, data_dir=tmp_path)  # no server any more
    assert (report.steps, report.complete) == (steps, True) and steps == 6


async def test_a_retry_keeps_the_prompt_prefix(tmp_path: Path) -> None:
    # PydanticAI frames validation feedback; with system messages allowed anywhere (the
    # lane profile), what it adds goes after the conversation so far, never before it.
    lane_model = ScriptedModel(["short", "a long enough answer"])
    lanes = make_lanes(tmp_path, {"standard": lane_model})
    agent = Agent(instructions="Answer in full sentences.", retries=2)

    @agent.output_validator
    def long_enough(output: str) -> str:
        if len(output) < 10:
            from pydantic_ai import ModelRetry

            raise ModelRetry("the answer is too short")
        return output

    async def step(ctx: StageContext) -> str:
        return (await agent.run("Explain.", model=LaneModel(ctx))).output

    async with lanes.run(task_class="routine-code") as run:
        assert await run.stage("execution", step) == "a long enough answer"
    first, second = lane_model.calls
    assert second[: len(first)] == first  # the prefix is unchanged
    assert second[len(first)] == Message("assistant", "short")
    added = second[len(first) + 1 :]
    assert any(m.role == "user" and "the answer is too short" in m.content for m in added)
    assert len(run.records[0].calls) == 2
