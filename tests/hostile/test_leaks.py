"""No leaks through side doors (issue 10): a free-text escalation reason, a schema
failure and other libraries' spans under the run never put content in the local
record, the logs or an error message agentlanes composes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from pydantic import BaseModel

from agentlanes import Lanes, StageContext
from agentlanes.errors import ConfigurationError, Escalate, VerificationFailed
from agentlanes.testing import TestModel, capture_spans
from agentlanes.verifiers import SchemaVerifier
from tests.conftest import healthy


def everything_recorded(home: Path) -> str:
    """Every byte agentlanes wrote under ``home`` except the content store (which holds
    bodies for exact replay on purpose)."""
    return "\n".join(
        p.read_bytes().decode("latin-1") for p in home.rglob("*") if p.is_file() and "content" not in p.parts
    )


@pytest.mark.parametrize("reason", ["CANARY reason from the model: rm -rf /", "x" * 65 + "CANARY", "CANARY\nline"])
async def test_a_free_text_escalation_reason_is_refused_without_being_repeated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, reason: str
) -> None:
    monkeypatch.setenv("AGENTLANES_LOG_LEVEL", "debug")
    cap = capture_spans()
    lanes = Lanes(
        {"standard": TestModel(text="ok")}, data_dir=tmp_path, signals=healthy(), tracer_provider=cap.provider
    )

    async def stage(ctx: StageContext) -> str:
        await ctx.complete("hello")
        raise Escalate(reason)

    with pytest.raises(
        ConfigurationError, match=r"escalation reason of \d+ character\(s\) that is not a reason name"
    ) as err:
        async with lanes.run(task_class="routine-code") as run:
            await run.stage("execution", stage)
    assert "CANARY" not in str(err.value)
    assert "CANARY" not in capsys.readouterr().err
    spans = json.dumps(
        [[s.name, dict(s.attributes or {}), [dict(e.attributes or {}) for e in s.events]] for s in cap.spans],
        default=str,
    )
    assert "CANARY" not in spans
    assert "CANARY" not in everything_recorded(tmp_path)
    assert run.records[-1].status == "failed"


async def test_a_schema_failure_names_the_pointer_and_the_rule_not_the_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    class Patch(BaseModel):
        path: str
        lines: int

    outputs = ['{"path": "a.py", "lines": "CANARY-out"}', '{"path": ["CANARY-out"], "lines": 1}', "CANARY-out {"]
    for i, text in enumerate(outputs):
        lanes = Lanes(
            {"standard": TestModel(text=text), "high-end": TestModel(text=text)},
            data_dir=tmp_path / str(i),
            signals=healthy(),
        )

        async def stage(ctx: StageContext) -> str:
            return (await ctx.complete("write the patch")).text

        with pytest.raises(VerificationFailed) as err:
            async with lanes.run(task_class="routine-code") as run:
                await run.stage_with("execution", stage, verify=[SchemaVerifier(Patch)])
        message = str(err.value)
        assert "CANARY" not in message and ("schema error" in message or "not JSON" in message), message
        assert "CANARY" not in everything_recorded(tmp_path / str(i))
        summaries = [r.summary for batch in run.records[-1].verifications for r in batch]
        assert summaries and not any("CANARY" in s for s in summaries)
    assert "CANARY" not in capsys.readouterr().err


async def test_other_libraries_spans_in_the_run_stay_out_of_the_local_trace(tmp_path: Path) -> None:
    provider = TracerProvider()
    other = provider.get_tracer("another.instrumentation")
    lanes = Lanes({"standard": TestModel(text="ok")}, data_dir=tmp_path, signals=healthy(), tracer_provider=provider)

    async def stage(ctx: StageContext) -> str:
        # what an instrumented framework does inside a stage: a chat span with the raw prompt
        with other.start_as_current_span("chat gpt", attributes={"gen_ai.input.messages": "CANARY-prompt"}):
            pass
        return (await ctx.complete("hello")).text

    results: list[Any] = []
    with other.start_as_current_span("application request", attributes={"user.query": "CANARY-app"}):
        async with lanes.run(task_class="routine-code") as run:
            results.append(await run.stage("execution", stage))
    [trace] = (tmp_path / "traces").iterdir()
    text = trace.read_text()
    assert results == ["ok"] and "agentlanes.stage execution" in text
    assert "CANARY" not in text and "another.instrumentation" not in text
    assert "CANARY" not in everything_recorded(tmp_path)
