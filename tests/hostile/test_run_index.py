"""The run index under hostile rows and on read-only media (issue 10): ``agentlanes
runs`` lists what it can read, names what it skipped, never writes to a directory it
cannot write, and ``runs --repair`` marks runs a dead process left running."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentlanes import Lanes, StageContext
from agentlanes.testing import TestModel
from tests.conftest import ROOT, healthy


def cli(*argv: str, nobody: bool = False) -> subprocess.CompletedProcess[str]:
    prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] if nobody else []
    return subprocess.run(
        [*prefix, sys.executable, "-m", "agentlanes", *argv],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )


async def one_run(home: Path) -> str:
    lanes = Lanes({"standard": TestModel(text="ok")}, data_dir=home, signals=healthy())

    async def stage(ctx: StageContext) -> str:
        return (await ctx.complete("hi")).text

    async with lanes.run(task_class="routine-code") as run:
        await run.stage("execution", stage)
    await lanes.aclose()
    return run.run_id


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


async def test_hostile_index_rows_are_skipped_and_named_and_repair_marks_dead_runs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    good = await one_run(home)
    import socket

    dead = {
        "runId": "run-dead",
        "status": "running",
        "startedAt": iso(time.time() - 7200),
        "leaseUntil": iso(time.time() - 3600),
        "owner": {"host": socket.gethostname(), "pid": dead_pid()},
    }
    alive = {**dead, "runId": "run-alive", "owner": {"host": socket.gethostname(), "pid": os.getpid()}}
    huge_pid = {**dead, "runId": "run-huge-pid", "owner": {"host": socket.gethostname(), "pid": 10**30}}
    rows = [
        json.dumps(dead),
        json.dumps(alive),
        json.dumps(huge_pid),
        b"\x80\xff",
        "[" * 5000,
        '"text"',
        '{"runId": 5}',
        "{}",
        json.dumps({"runId": "run-odd", "cost": {"a": 1}, "status": [1]}),
    ]
    with sqlite3.connect(home / "agentlanes.db") as db:
        for i, row in enumerate(rows):
            prefix = '{"runId": "'  # the table is keyed by the entry's own run id, as the store writes it
            key = row[len(prefix) :].split('"')[0] if isinstance(row, str) and row.startswith(prefix) else ""
            db.execute("INSERT INTO runs VALUES (?, ?, ?)", (key or f"row-{i}", 100 + i, row))

    listed = cli("runs", "--data-dir", str(home))
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    assert "damaged run index entr" in listed.stderr and str(home) in listed.stderr
    assert good in listed.stdout and "run-odd" in listed.stdout

    repaired = cli("runs", "--repair", "--data-dir", str(home))
    assert repaired.returncode == 0 and "Traceback" not in repaired.stderr, repaired.stderr
    assert "marked 2 run(s) abandoned" in repaired.stdout, repaired.stdout
    listed = cli("runs", "--json", "--data-dir", str(home))
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    status = {r["runId"]: r["status"] for r in json.loads(listed.stdout)}
    # a dead owner on this host, and an owner that cannot be a process, past their lease
    assert status["run-dead"] == "abandoned" and status["run-huge-pid"] == "abandoned"
    assert status["run-alive"] == "running" and status[good] == "succeeded"


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    top = Path(tempfile.mkdtemp(prefix="agentlanes-ro-"))
    top.chmod(0o755)
    yield top
    shutil.rmtree(top, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to become nobody")
async def test_runs_on_a_directory_the_user_cannot_write(shared_tmp: Path) -> None:
    home = shared_tmp / "home"
    run_id = await one_run(home)
    for p in [home, *home.rglob("*")]:  # readable by all, writable by its owner (root) only
        p.chmod(0o755 if p.is_dir() else 0o644)
    before = sorted((str(p), p.stat().st_mtime_ns) for p in home.rglob("*"))
    done = cli("runs", "--data-dir", str(home), nobody=True)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert run_id in done.stdout
    assert sorted((str(p), p.stat().st_mtime_ns) for p in home.rglob("*")) == before


def test_runs_count_receipts_from_the_ledger_not_from_a_killed_runs_entry(tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = cli("demo", "--data-dir", str(home))
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(home / "agentlanes.db") as db:
        [(run_id, entry)] = db.execute("SELECT run_id, entry FROM runs").fetchall()
        # what a run killed after writing its receipt leaves: started, running, 0 receipts
        killed = {**json.loads(entry), "status": "running", "receipts": 0}
        db.execute("UPDATE runs SET entry=? WHERE run_id=?", (json.dumps(killed), run_id))
    listed = cli("runs", "--json", "--data-dir", str(home))
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert row["runId"] == run_id and row["receipts"] == 1


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to become nobody")
def test_every_reading_command_works_on_a_data_directory_it_cannot_write(shared_tmp: Path) -> None:
    home = shared_tmp / "home"
    done = cli("demo", "--data-dir", str(home))
    assert done.returncode == 0, done.stderr
    for p in [home, *home.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    [trace] = (home / "traces").iterdir()
    run_id = trace.name.split(".")[0]
    before = sorted((str(p), p.stat().st_mtime_ns) for p in home.rglob("*"))
    for argv in (
        ["runs"],
        ["runs", "--json"],
        ["show", run_id],
        ["replay", run_id],
        ["receipts", "verify"],
        ["receipts", "head"],
        ["receipts", "export"],
        ["receipts", "public-key"],
    ):
        done = cli(*argv, "--data-dir", str(home), nobody=True)
        assert done.returncode == 0 and "Traceback" not in done.stderr, (argv, done.stderr[-2000:])
    # writing is refused with a message, not a traceback
    done = cli("runs", "--repair", "--data-dir", str(home), nobody=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr and "as its owner" in done.stderr, done.stderr
    done = cli("demo", "--data-dir", str(home), nobody=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr and str(home) in done.stderr, done.stderr
    assert sorted((str(p), p.stat().st_mtime_ns) for p in home.rglob("*")) == before
