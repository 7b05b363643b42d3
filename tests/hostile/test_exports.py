"""What the CLI writes outside the data directory on the user's behalf is private too,
and a reader that goes away mid-output ends the command quietly."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def agentlanes(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", "import os, sys; os.umask(0o022); from agentlanes.cli import main; sys.exit(main())",
         *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("exports")
    done = agentlanes("demo", "--data-dir", str(where / "home"), cwd=where)
    assert done.returncode == 0, done.stderr[-2000:]
    return where


@pytest.mark.parametrize("command", [["receipts", "export"], ["receipts", "head"]])
def test_written_files_are_private_under_a_permissive_umask(home: Path, command: list[str]) -> None:
    out = home / f"{command[1]}.out"
    done = agentlanes(*command, "--data-dir", str(home / "home"), "--output", str(out), cwd=home)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size > 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_a_reader_that_goes_away_ends_the_export_quietly(home: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first record is written
    try:
        done = subprocess.run(
            [sys.executable, "-m", "agentlanes", "receipts", "export", "--data-dir", str(home / "home")],
            stdout=write, stderr=subprocess.PIPE, env=env, cwd=home, text=True, timeout=60,
        )
    finally:
        os.close(write)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "None" not in done.stderr
