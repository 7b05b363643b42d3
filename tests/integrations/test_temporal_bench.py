"""benchmarks/bench_temporal.py keeps working: its smoke mode (tiny counts) measures
every figure against its same-run baseline. No speed is asserted here."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_every_figure_is_measured(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_temporal.py"), "--smoke", "--json", str(tmp_path / "f.json")],
        capture_output=True,
        text=True,
        timeout=600,  # a guard against a hang, not a speed check
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "1. Overhead per stage" in done.stdout and "4 worker processes" in done.stdout
    figures = json.loads((tmp_path / "f.json").read_text())
    values = [*figures["overhead"].values(), *figures["throughput"].values()]
    assert len(values) == 12
    assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in values), figures
