"""benchmarks/bench_stage.py keeps working: its smoke mode (tiny counts) runs every
section, its A/B mode and its profile mode, and reports every figure with its target.

No speed is asserted here (figures at smoke counts mean nothing); only that each figure
was measured, is a finite positive number, or names why it was not.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "bench_stage.py"


def bench(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--smoke", *args],
        capture_output=True,
        text=True,
        timeout=600,  # a guard against a hang, not a speed check
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def test_every_figure_is_measured_against_its_baseline_and_reported(tmp_path: Path) -> None:
    text = bench("--json", str(tmp_path / "figures.json"))
    for needle in (
        "1. Stage overhead",
        "target <= 3 spans",
        "2. Peers",
        "3. Throughput",
        "target <= 10 %",
        "time to first token",
        "target <= 1.1x",
        "4. Memory in flight",
        "target <= 2x",
    ):
        assert needle in text, needle
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["mode"] == "smoke"
    for unit in ("span", "bare_call"):
        assert positive(figures[unit]["wall_us"]) and positive(figures[unit]["cpu_us"]), figures[unit]
        assert figures[unit]["passes"] >= 3
    for level in ("tracing off", "record only", "tracing on"):
        for store in ("memory", "default"):
            row = figures["stage_overhead"][f"{level}/{store}"]
            for key in ("stage_wall_us", "stage_cpu_us", "added_wall_spans", "added_cpu_spans"):
                assert positive(row[key]), (level, store, row)
    for peer, module in (("pydantic_ai", "pydantic_ai"), ("openai_agents", "agents")):
        row = figures["peers"][peer]
        if installed(module):
            assert positive(row["stage_over_peer_wall"]) and positive(row["stage_over_peer_cpu"]), row
        else:
            assert "not installed" in row["skipped"]
    throughput = figures["throughput"]
    for case in ("bare", "model", "stage/memory", "stage/default", "client/memory", "pydantic_ai", "pydantic_ai/lane"):
        if case.startswith("pydantic_ai") and case in throughput:  # skipped: the reason is given
            assert throughput[case]["skipped"].startswith(("not installed", "not in this checkout")), throughput[case]
            continue
        for concurrency in figures["concurrency"]:
            row = throughput[f"{case}@{concurrency}"]
            assert positive(row["requests_per_s"]) and positive(row["cpu_us_per_request"]), (case, row)
            assert math.isfinite(row["lost_pct"])
    if installed("pydantic_ai"):
        assert f"pydantic_ai@{figures['concurrency'][0]}" in throughput
    if installed("pydantic_ai") and installed("agentlanes.integrations.pydantic_ai"):
        assert positive(throughput[f"pydantic_ai/lane@{figures['concurrency'][-1]}"]["ratio_to_pydantic_ai"])
    for case in ("bare", "stage/memory", "stage/default"):
        assert positive(throughput["ttft"][case]["ms"]) and positive(throughput["ttft"][case]["ratio"])
    memory = figures["memory"]
    assert positive(memory["stage_bytes"]) and positive(memory["bare_task_bytes"]) and positive(memory["ratio"])


def test_compare_measures_both_trees() -> None:
    result = json.loads(bench("--json", "-", "--compare", "HEAD"))["compare"]
    assert result["rev"] == "HEAD"
    for tree in ("this tree", "HEAD"):
        row = result[tree]["tracing on/default"]
        assert positive(row["stage_cpu_us"]) and positive(row["added_cpu_spans"]), row


def test_profile_prints_the_hot_functions() -> None:
    text = bench("--profile", "memory")
    assert "top 25 by own time" in text and "tottime" in text and "agentlanes" in text


def test_import_benchmark_measures_every_case_against_its_baselines(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_import.py"), "--smoke", "--json", str(tmp_path / "f.json")],
        capture_output=True,
        text=True,
        timeout=600,  # a guard against a hang, not a speed check
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "target <= 1.5x core deps" in done.stdout
    figures = json.loads((tmp_path / "f.json").read_text())
    base = figures["groups"]["baseline"]
    for name in ("core dependencies", "declared dependencies", "interpreter alone (process)"):
        assert positive(base[name]["wall_ms"]) and positive(base[name]["cpu_ms"]), name
    rows = figures["groups"]["this tree"]
    for name in (
        "import agentlanes",
        "from agentlanes import Lanes, Router",
        "... + Router() + one decision",
        "Lanes() + a run's first stage",
        "agentlanes route --batch (process)",
    ):
        assert positive(rows[name]["wall_ms"]) and positive(rows[name]["over_core_wall"]), (name, rows[name])
    assert positive(rows["import agentlanes"]["over_declared_wall"])
    assert "agentlanes" in figures["loaded"]["this tree"]["agentlanes_modules"]
