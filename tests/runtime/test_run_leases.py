"""Runs whose process died: killed with SIGKILL mid-stage (a real child process on the
default SQLite store), they are marked ``abandoned`` by the next run once their lease
passed, and ``agentlanes runs --repair`` does it on demand; a run whose process still
lives is never marked, however old its lease; receipts a killed run wrote are counted
from the ledger."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

from agentlanes import ConfigurationError, Lanes, StageContext
from agentlanes.history import list_runs
from agentlanes.testing import TestModel
from tests.conftest import healthy

ROOT = Path(__file__).resolve().parents[2]

# A run that escalates once (a receipt in the ledger), then blocks in its next stage
# until it is killed; it prints its run id when it is blocked.
CHILD = textwrap.dedent(
    """
    import sys, anyio
    from agentlanes import Lanes
    from agentlanes.runtime import RetryPolicy
    from agentlanes.testing import ScriptedModel, TestModel
    from agentlanes.verifiers import CallableVerifier

    async def ask(ctx):
        return (await ctx.complete("do it", max_tokens=8)).text

    async def block(ctx):
        print(ctx.run.run_id, flush=True)
        await anyio.sleep(3600)

    async def main():
        lanes = Lanes(
            {"standard": ScriptedModel(["v1", "v2"]), "high-end": ScriptedModel(["v3"]),
             "cheap": TestModel(text="c")},
            data_dir=sys.argv[1], signals=%(signals)r, run_lease=float(sys.argv[2]),
            retry=RetryPolicy(attempts=1, initial_wait=0.001, max_wait=0.01),
        )
        async with lanes.run(task_class="routine-code") as run:
            if sys.argv[3] == "escalate":
                await run.stage_with("execution", ask, verify=[CallableVerifier(lambda o: o == "v3", name="v3")])
            await run.stage("finalization", block)

    anyio.run(main)
    """
) % {"signals": healthy()}


def start_child(data_dir: Path, lease: float, mode: str = "plain") -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data_dir), str(lease), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    run_id = proc.stdout.readline().strip()
    if not run_id:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the child run did not start: {err[-2000:]}")
    return proc, run_id


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()


def status(data_dir: Path) -> dict[str, dict[str, object]]:
    return {r["runId"]: r for r in anyio.run(list_runs, data_dir)}


def next_run(data_dir: Path) -> str:
    async def plan(ctx: StageContext) -> str:
        return (await ctx.complete("x", max_tokens=4)).text

    async def main() -> str:
        lanes = Lanes({"standard": TestModel(text="s")}, data_dir=data_dir, signals=healthy())
        async with lanes.run(task_class="routine-code") as run:
            await run.stage("planning", plan)
        return run.run_id

    return anyio.run(main)


def test_a_killed_run_is_marked_abandoned_by_the_next_run_once_its_lease_passed(tmp_path: Path) -> None:
    proc, killed = start_child(tmp_path, lease=1.0)
    kill(proc)
    assert status(tmp_path)[killed]["status"] == "running"  # what the index says until someone looks
    time.sleep(1.2)  # the lease passes
    ok = next_run(tmp_path)
    runs = status(tmp_path)
    assert runs[ok]["status"] == "succeeded"
    assert runs[killed]["status"] == "abandoned" and "abandonedAt" in runs[killed]
    assert runs[killed]["owner"]["pid"] == proc.pid  # type: ignore[index]


def test_a_killed_run_within_its_lease_and_a_live_run_past_it_are_left_running(tmp_path: Path) -> None:
    dead, killed = start_child(tmp_path / "a", lease=3600.0)
    kill(dead)
    next_run(tmp_path / "a")
    assert status(tmp_path / "a")[killed]["status"] == "running"  # its lease has not passed

    live, alive = start_child(tmp_path / "b", lease=1.0)
    try:
        time.sleep(1.2)  # its lease passed (no stage routed to renew it), but its process lives
        next_run(tmp_path / "b")
        assert status(tmp_path / "b")[alive]["status"] == "running"
    finally:
        kill(live)


def test_runs_repair_marks_on_demand_and_counts_receipts_from_the_ledger(tmp_path: Path) -> None:
    proc, killed = start_child(tmp_path, lease=1.0, mode="escalate")
    kill(proc)
    time.sleep(1.2)
    cli = [sys.executable, "-m", "agentlanes", "runs", "--data-dir", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([*cli, "--repair"], capture_output=True, text=True, env=env, check=True).stdout
    assert out.startswith("marked 1 run(s) abandoned") and killed in out.splitlines()[1]
    [row] = [line for line in out.splitlines() if line.startswith(killed) and "abandoned" in line]
    assert row.split()[-2] == "1"  # the receipt column: the escalation receipt it wrote before it died
    again = json.loads(subprocess.run([*cli, "--json", "--repair"], capture_output=True, text=True, env=env,
                                      check=True).stdout)
    [entry] = again
    assert entry["status"] == "abandoned" and entry["receipts"] == 1 and "repaired" not in entry  # marked once


@pytest.mark.parametrize("bad", [0, -5, float("nan"), True, "600", 1e12])
def test_run_lease_must_be_a_sensible_number_of_seconds(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ConfigurationError, match=r"run_lease=.*from 1 to 31536000"):
        Lanes(data_dir=tmp_path, run_lease=bad)  # type: ignore[arg-type]


async def test_a_run_that_ends_while_it_is_being_marked_keeps_how_it_ended(tmp_path: Path) -> None:
    from agentlanes._runindex import repair
    from agentlanes.stores import MemoryStore

    class Racing(MemoryStore):
        async def runs(self) -> list[dict[str, object]]:
            seen = await super().runs()
            # the run ends between the read and the mark (its lease had passed: a long
            # stage on another host, or a clock ahead of its own)
            await self.record_run({"runId": "r1", "status": "succeeded"})
            return seen

    store = Racing()
    gone = {"host": "elsewhere", "pid": 1, "since": None}
    await store.record_run({"runId": "r1", "status": "running", "leaseUntil": "2020-01-01T00:00:00Z", "owner": gone})
    assert await repair(store) == []
    [entry] = await store.runs()
    assert entry["status"] == "succeeded" and "abandonedAt" not in entry
