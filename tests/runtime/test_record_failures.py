"""A run whose record cannot be written fails cleanly: the stage that could not be
recorded raises RecordError (never a bare OSError), no later stage starts, the trace
file is closed, the run is marked failed in the index, and what was written still reads.

The disk fills up for real: the run goes on in a child process whose file-size limit
(RLIMIT_FSIZE, with SIGXFSZ ignored) makes the kernel refuse the trace's growth with
EFBIG, as a full disk refuses it with ENOSPC, without needing root or a small mount.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT

CHILD = textwrap.dedent(
    """
    import json, os, resource, signal, sys
    import anyio
    from agentlanes import Lanes, RecordError
    from agentlanes.stores import MemoryStore
    from agentlanes.testing import TestModel

    data, limit, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if name == "LONE-SURROGATE":
        name = "step" + chr(0xD800)  # cannot travel in argv
    signals = json.load(open(sys.argv[4]))
    store = MemoryStore()  # the index and budgets in memory: the disk fills for the record alone

    async def ask(ctx):
        return (await ctx.complete("hi " * 50)).text

    async def main():
        lanes = Lanes({"standard": TestModel(text="ok " * 50)}, signals=signals, store=store, data_dir=data)
        async with lanes.run(task_class="routine-code") as warm:
            await warm.stage("planning", ask)  # opens what the run needs, before the limit
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        out = {"stages": 0, "errors": [], "run_id": None}
        try:
            async with lanes.run(task_class="routine-code") as run:
                out["run_id"] = run.run_id
                for _ in range(400):
                    try:
                        await run.stage(name, ask)
                        out["stages"] += 1
                    except RecordError as exc:
                        out["errors"].append([type(exc).__name__, str(exc), exc.path, exc.run_id])
                        if len(out["errors"]) == 2:
                            break
        except RecordError as exc:
            out["errors"].append(["at-exit", str(exc), exc.path, exc.run_id])
        out["status"] = run.result.status
        fds = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                fds.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                pass  # the descriptor listdir itself used
        out["open_traces"] = [f for f in fds if f.endswith(".otlp.jsonl")]
        out["index"] = [r for r in await store.runs() if r["runId"] == out["run_id"]]
        print(json.dumps(out))

    anyio.run(main)
    """
)


def run_child(tmp_path: Path, limit: int, name: str = "execution") -> dict[str, object]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    signals = ROOT / "examples/signals/healthy-local.json"
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "data"), str(limit), name, str(signals)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "AGENTLANES_LOG_LEVEL": "off", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    out: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/fd; RLIMIT_FSIZE semantics are Linux's")
def test_a_full_disk_fails_the_stage_and_the_run_cleanly(tmp_path: Path) -> None:
    out = run_child(tmp_path, 64 * 1024)
    errors = out["errors"]
    assert isinstance(errors, list) and len(errors) == 3
    first, second, at_exit = errors
    assert first[0] == "RecordError"
    assert "could not be written" in first[1] and "File too large" in first[1] and "Lanes(record=False)" in first[1]
    assert first[2].endswith(".otlp.jsonl") and first[3] == out["run_id"]
    assert "no stage can start" in second[1]  # nothing runs unrecorded after the failure
    assert at_exit[0] == "at-exit" and at_exit[1] == first[1]  # caught inside the run, it still ends it
    assert out["stages"] > 0  # stages ran until the disk filled
    assert out["status"] == "failed"
    assert out["open_traces"] == []  # the trace file was closed
    [entry] = out["index"]  # type: ignore[misc]
    assert entry["status"] == "failed"
    # what was written still reads: every stage that returned is in the trace
    from agentlanes.tracefile import load_record

    run_id = str(out["run_id"])
    recorded = load_record(tmp_path / "data" / "traces" / f"{run_id}.otlp.jsonl")
    assert sum(1 for key in recorded.stages if key.startswith("execution#")) >= out["stages"]  # type: ignore[operator]


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/fd")
def test_a_name_no_encoder_can_write_fails_cleanly(tmp_path: Path) -> None:
    out = run_child(tmp_path, 1 << 40, name="LONE-SURROGATE")
    errors = out["errors"]
    assert isinstance(errors, list) and errors
    assert errors[0][0] == "RecordError" and "not valid Unicode" in errors[0][1]
    assert out["status"] == "failed"
    assert out["open_traces"] == []
