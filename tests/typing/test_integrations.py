"""Static checks of the framework integrations' types (run by `mypy --strict tests/typing`
in CI): each is its framework's own model type, usable where the framework takes one."""

from __future__ import annotations

from pathlib import Path
from typing import assert_type

import agents
import pydantic_ai
import pydantic_ai.models

from agentlanes import Lanes, StageContext
from agentlanes.integrations.openai_agents import LaneModel as AgentsLaneModel
from agentlanes.integrations.openai_agents import LaneModelProvider
from agentlanes.integrations.pydantic_ai import LaneModel
from agentlanes.stores import MemoryStore
from agentlanes.testing import TestModel
from tests.conftest import healthy


async def test_integration_types(tmp_path: Path) -> None:
    lanes = Lanes({"standard": TestModel(text="ok")}, signals=healthy(), store=MemoryStore(), data_dir=tmp_path,
                  log=False)

    async def step(ctx: StageContext) -> str:
        model = LaneModel(ctx)
        assert_type(model, LaneModel)
        result = await pydantic_ai.Agent(name="typed").run("hi", model=model)
        assert_type(result.output, str)
        provider = LaneModelProvider(ctx)
        assert_type(provider.get_model(None), agents.Model)
        config = agents.RunConfig(model_provider=provider, tracing_disabled=True)
        ran = await agents.Runner.run(agents.Agent(name="typed", model=AgentsLaneModel(ctx)), "hi", run_config=config)
        assert isinstance(model, pydantic_ai.models.Model) and isinstance(provider, agents.ModelProvider)
        return f"{result.output} {ran.final_output}"

    async with lanes.run(task_class="routine-code") as run:
        assert await run.stage("execution", step) == "ok ok"
