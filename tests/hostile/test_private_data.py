"""Private by default (issue 10): whatever the umask, every directory agentlanes creates
under its data directory is 0700 and every file 0600, and a second, unprivileged user
reads nothing there: no canary placed in a prompt, an output, a verifier's output, a
tool's argument, the signals or the run's inputs can be read by ``nobody``."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

# Runs in a child process, so the umask under test is the whole process's.
PROGRAM = textwrap.dedent(
    """
    import os, sys
    os.umask(int(sys.argv[2], 8))
    import anyio
    from agentlanes import Lanes
    from agentlanes.runtime import RetryPolicy
    from agentlanes.stores import SQLiteStore
    from agentlanes.testing import ScriptedModel, TestModel
    from agentlanes.verifiers import CallableVerifier
    from tests.conftest import healthy
    from tests.stores.test_ledger_journal import FlakyStore

    home = sys.argv[1]
    C = {k: f"CANARY-{k}-61f0" for k in ("prompt", "output", "verifier", "toolarg", "signal", "input", "system")}

    async def main() -> None:
        signals = healthy(canaryNote=C["signal"])
        std = ScriptedModel([f"bad {C['output']}", f"bad {C['output']}"], name="s")
        hi = TestModel(text=f"good {C['output']}", name="h")
        lanes = Lanes({"standard": std, "high-end": hi}, data_dir=home, signals=signals,
                      retry=RetryPolicy(attempts=1, initial_wait=0.001))

        async def work(ctx, arg):
            return (await ctx.complete(f"{C['prompt']} {arg}", system=C["system"])).text

        def tool(output):
            return f"ran {C['toolarg']}"

        check = CallableVerifier(lambda o: ("good" in o, f"saw {C['verifier']} in {o}"), name="v")
        async with lanes.run(task_class="routine-code", variables={"note": C["input"]}) as run:
            await run.stage_with("execution", work, (C["toolarg"],), tool=tool, verify=[check])
        assert run.receipts, "the run escalated, so the ledger holds a receipt"

        # a charge the store cannot record lands in the journal
        flaky = FlakyStore(SQLiteStore(os.path.join(home, "agentlanes.db")))
        flaky.down = True
        lanes2 = Lanes({"standard": TestModel(text="done", name="s")}, data_dir=home, store=flaky,
                       signals=healthy())
        async with lanes2.run(task_class="routine-code") as run2:
            await run2.stage("execution", work, C["toolarg"])
        assert os.listdir(os.path.join(home, "journal"))

    anyio.run(main)
    """
)

READER = textwrap.dedent(
    """
    import os, sys
    readable, found = [], []
    for top, dirs, files in os.walk(sys.argv[1]):
        for name in files + dirs:
            path = os.path.join(top, name)
            if os.path.isdir(path):
                continue
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            readable.append(path)
            if b"CANARY-" in data:
                found.append(path)
    print(repr((readable, found)))
    """
)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory every user may enter (pytest's own tmp_path is 0700 to its owner, so a
    second user could not even look, and the test would prove nothing)."""
    top = Path(tempfile.mkdtemp(prefix="agentlanes-private-"))
    top.chmod(0o755)
    yield top
    shutil.rmtree(top, ignore_errors=True)


def run_program(home: Path, umask: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AGENTLANES_LOG_LEVEL": "error"}
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(home), f"{umask:o}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def as_nobody(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_everything_under_the_data_directory_is_private_whatever_the_umask(shared_tmp: Path, umask: int) -> None:
    home = shared_tmp / "fresh" / "data"  # two levels agentlanes creates
    run_program(home, umask)
    seen = {p.relative_to(home).parts[0] for p in home.rglob("*")}
    assert {"agentlanes.db", "content", "keys", "traces", "journal"} <= seen, seen
    wider = {
        str(p): oct(stat.S_IMODE(p.lstat().st_mode))
        for p in [shared_tmp / "fresh", home, *home.rglob("*")]
        if stat.S_IMODE(p.lstat().st_mode) != (0o700 if p.is_dir() else 0o600)
    }
    assert not wider, wider


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to become nobody")
@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_a_second_user_reads_no_canary(shared_tmp: Path, umask: int) -> None:
    home = shared_tmp / "data"
    run_program(home, umask)
    files = [p for p in home.rglob("*") if p.is_file()]
    everything = b"".join(p.read_bytes() for p in files)
    for name in ("prompt", "output", "verifier", "system"):
        assert f"CANARY-{name}-61f0".encode() in everything  # the owner's record holds them (replay needs them)
    # the control: nobody reads a world-readable file beside the data directory, so a
    # refusal below is the data directory's modes, not a broken user switch
    control = shared_tmp / "control"
    control.write_text("CANARY-control")
    control.chmod(0o644)
    probe = as_nobody([sys.executable, "-c", READER, str(shared_tmp)])
    assert probe.returncode == 0, probe.stderr
    readable, found = eval(probe.stdout)  # our own repr of two lists of paths
    assert readable == [str(control)] and found == [str(control)], (readable, found)
    # and not through SQLite either (it would open the database read-only)
    query = as_nobody(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True); "
            "print(c.execute('select count(*) from runs').fetchone())",
            str(home / "agentlanes.db"),
        ]
    )
    assert query.returncode != 0 and "unable to open" in query.stderr


def test_existing_directories_agentlanes_names_are_tightened(shared_tmp: Path) -> None:
    home = shared_tmp / "old"
    for sub in ("content", "traces", "keys", "journal"):
        (home / sub).mkdir(parents=True)
        (home / sub).chmod(0o755)
    (home / "agentlanes.db").touch()
    (home / "agentlanes.db").chmod(0o644)
    home.chmod(0o755)
    run_program(home, 0o022)
    for sub in ("content", "traces", "keys", "journal"):
        assert stat.S_IMODE((home / sub).stat().st_mode) == 0o700, sub
    assert stat.S_IMODE((home / "agentlanes.db").stat().st_mode) == 0o600
    # the directory the user named and that existed already is theirs: left as it was
    assert stat.S_IMODE(home.stat().st_mode) == 0o755


def test_the_demo_keeps_its_workspace_private_too(shared_tmp: Path) -> None:
    home = shared_tmp / "demo"
    done = subprocess.run(
        [
            "sh",
            "-c",
            'umask 000; exec "$0" -m agentlanes demo --data-dir "$1" --task "CANARY-task-61f0"',
            sys.executable,
            str(home),
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert any((home / "workspaces").rglob("*.py"))  # the patched project the model wrote
    wider = {
        str(p): oct(stat.S_IMODE(p.lstat().st_mode))
        for p in [home, *home.rglob("*")]
        if stat.S_IMODE(p.lstat().st_mode) != (0o700 if p.is_dir() else 0o600)
    }
    assert not wider, wider
