"""Lanes bound to endpoints from a models file: loading, clear errors, keys kept out of
everything, and the demo against a server the file names."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentlanes import ConfigurationError, Lanes, StageContext, cli
from agentlanes.config import load_models, read_models_file
from agentlanes.demo import _RIGHT, _WRONG_1, _WRONG_2
from agentlanes.models.openai import OpenAIChatModel
from agentlanes.stores import MemoryStore
from tests.conftest import healthy
from tests.openai_server import ScriptedOpenAIServer

KEY = "sk-CANARY-9c1f-do-not-print"


@pytest.fixture
def server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer() as s:
        yield s


def write(tmp_path: Path, text: str, name: str = "models.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_models_file_binds_lanes_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", KEY)
    path = write(tmp_path, """
[[lanes.standard]]
model = "small-a"
base_url = "http://127.0.0.1:9/v1"
api_key_env = "MY_KEY"
timeout = 5

[[lanes.standard]]
model = "small-b"
base_url = "http://127.0.0.1:9/v1"

[[lanes.high-end]]
model = "big"
base_url = "https://example.invalid/v1"
provider = "big-co"
max_tokens_field = "max_completion_tokens"
""")
    models = load_models(path)
    assert [(m.name, m.timeout) for m in models["standard"]] == [("small-a", 5.0), ("small-b", 60.0)]
    big = models["high-end"][0]
    assert isinstance(big, OpenAIChatModel) and big.provider == "big-co"
    assert big.max_tokens_field == "max_completion_tokens"
    lanes = Lanes.from_config(path, signals=healthy(), store=MemoryStore(), data_dir=tmp_path)
    assert [m.name for m in lanes.models["standard"]] == ["small-a", "small-b"]
    assert KEY not in repr(lanes.models) and KEY not in repr(models)


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ('[[lanes.standard]]\nmodel = "m"\ncolour = "red"\n',
         r"\[\[lanes.standard\]\] #1: unknown key\(s\) 'colour' \(keys: api_key_env, base_url, max_tokens_field, "
         r"model, provider, timeout\)"),
        ('[[lanes.turbo]]\nmodel = "m"\n', r"\[\[lanes.turbo\]\]: 'turbo' is not a lane \(lanes: no-model, "),
        ('[lanes.standard]\nmodel = "m"\n', r"must be an array of tables: write \[\[lanes.standard\]\]"),
        ('[[lanes.standard]]\nbase_url = "http://x/v1"\n', r"#1 needs model = "),
        ('[[lanes.standard]]\nmodel = "m"\ntimeout = -1\n', r"timeout must be a positive number of seconds, got -1"),
        ('[[lanes.standard]]\nmodel = "m"\nbase_url = "ftp://x"\n', r"base_url must be an http:// or https:// URL"),
        ('[[lanes.no-model]]\nmodel = "m"\n', r"the no-model lane runs code"),
        ('[models]\nx = 1\n', r"unknown top-level key\(s\) 'models'"),
        ("", r"binds no lane"),
        ("[[lanes.standard]\nmodel=", r"is not valid TOML"),
    ],
    ids=["unknown-key", "unknown-lane", "not-array", "no-model-name", "timeout", "url", "no-model-lane", "top",
         "empty", "not-toml"],
)
def test_a_bad_models_file_names_the_file_the_table_and_the_fix(tmp_path: Path, text: str, expect: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigurationError, match=expect) as ei:
        read_models_file(path)
    assert str(path) in str(ei.value)


def test_a_missing_key_variable_is_named_never_a_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    path = write(tmp_path, '[[lanes.standard]]\nmodel = "m"\napi_key_env = "NOT_SET_ANYWHERE"\n')
    with pytest.raises(ConfigurationError, match=r"reads its key from \$NOT_SET_ANYWHERE, which is not set"):
        load_models(path)


def test_a_fifo_or_device_is_not_a_models_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(ConfigurationError, match="not a regular file"):
            read_models_file(path)


async def test_keys_stay_out_of_errors_logs_and_traces(tmp_path: Path, server: ScriptedOpenAIServer,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MY_KEY", KEY)
    monkeypatch.setenv("AGENTLANES_LOG_LEVEL", "debug")
    path = write(tmp_path, f'[[lanes.standard]]\nmodel = "m"\nbase_url = "{server.base_url}"\napi_key_env = "MY_KEY"\n')
    server.script.append({"status": 401, "message": "bad credentials"})
    lanes = Lanes.from_config(path, signals=healthy(), store=MemoryStore(), data_dir=tmp_path)

    async def ask(ctx: StageContext) -> str:
        return (await ctx.complete("x")).text

    with pytest.raises(Exception) as ei:  # noqa: PT011 - what matters is what it does not say
        async with lanes.run(task_class="routine-code") as run:
            await run.stage("planning", ask)
    texts = [str(ei.value), repr(ei.value), str(ei.value.__cause__), capsys.readouterr().err]
    texts += [p.read_text() for p in (tmp_path / "traces").iterdir()]
    assert all(KEY not in t for t in texts)
    assert "bad credentials" in str(ei.value)
    sent = {k.lower(): v for k, v in server.headers[0].items()}
    assert sent["authorization"] == f"Bearer {KEY}"  # the key went where it belongs
    assert run.status == "failed"


def test_validate_checks_a_models_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, '[[lanes.cheap]]\nmodel = "m"\nbase_url = "http://127.0.0.1:9/v1"\n', "good.toml")
    bad = write(tmp_path, '[[lanes.cheap]]\nmodle = "m"\n', "bad.toml")
    assert cli.main(["validate", str(good)]) == 0
    assert "models file: cheap (1 model(s))" in capsys.readouterr().out
    assert cli.main(["validate", str(bad)]) == 1
    assert "unknown key(s) 'modle'" in capsys.readouterr().err


def test_the_demo_runs_against_a_server_the_file_names(tmp_path: Path, server: ScriptedOpenAIServer,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    url = server.base_url
    tables = [f'[[lanes.{lane}]]\nmodel = "{lane}-model"\nbase_url = "{url}"\n' for lane in ("cheap", "standard",
                                                                                             "high-end")]
    path = write(tmp_path, "\n".join(tables))
    server.script.extend([
        {"reply": "1. Iterate over every item in total()."},
        {"reply": json.dumps({"path": "calc.py", "content": _WRONG_1})},
        {"reply": json.dumps({"path": "calc.py", "content": _WRONG_2})},
        {"reply": json.dumps({"path": "calc.py", "content": _RIGHT})},
        {"reply": "Fixed total()."},
    ])
    home = tmp_path / "home"
    assert cli.main(["demo", "--models", str(path), "--data-dir", str(home)]) == 0
    out = capsys.readouterr().out
    assert f"the lanes are the servers {path} names" in out and "escalation receipts: 1" in out
    assert [r["model"] for r in server.requests] == [
        "standard-model", "standard-model", "standard-model", "high-end-model", "cheap-model"]
    # and the run it recorded replays offline, the server gone
    run_id = next((home / "traces").iterdir()).name.split(".")[0]
    server.script.clear()
    assert cli.main(["replay", run_id, "--data-dir", str(home)]) == 0
    assert len(server.requests) == 5


def test_the_demo_refuses_a_broken_models_file_before_writing_anything(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, '[[lanes.turbo]]\nmodel = "m"\n')
    assert cli.main(["demo", "--models", str(path), "--data-dir", str(tmp_path / "home")]) == 1
    assert "'turbo' is not a lane" in capsys.readouterr().err
    assert not (tmp_path / "home").exists()
