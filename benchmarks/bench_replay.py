"""Counterfactual replay throughput: re-decisions per second from recorded traces.

Records one real run (the demo chain, offline), copies its trace into many traces,
then re-decides every recorded decision under a changed policy, reading every trace
file. Prints decisions/s per core; the baseline is the router's own warm decision in the
same run (replay adds trace reading and JSON parsing). Target >= 50,000 re-decisions/s.

Usage: python benchmarks/bench_replay.py [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agentlanes import Router, RouteRequest  # noqa: E402
from agentlanes.demo import run_demo  # noqa: E402
from agentlanes.history import counterfactual  # noqa: E402
from agentlanes.policy import PolicyBundle, load_document  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    copies = 200 if args.quick else 2000
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        import os

        os.environ["AGENTLANES_LOG_LEVEL"] = "off"
        result = anyio.run(run_demo, "fix calc", home, io.StringIO())
        source = home / "traces" / f"{result.run_id}.otlp.jsonl"
        text = source.read_text()
        traces = home / "many"
        traces.mkdir()
        for i in range(copies):
            (traces / f"run-{i:06d}.otlp.jsonl").write_text(text.replace(result.run_id, f"run-{i:06d}"))
        policy = json.loads((ROOT / "policies/policy.json").read_text())
        for task in policy["taskClasses"]:
            if task["taskClass"] == "routine-code":
                task["allowedEscalationLanes"] = []
        router = Router(PolicyBundle.from_loaded(load_document(policy), load_document(ROOT / "policies/optimizer.json"),
                                                 load_document(ROOT / "policies/price-catalog.json")))
        paths = sorted(traces.iterdir())
        t0 = time.perf_counter()
        report = counterfactual(paths, router)
        took = time.perf_counter() - t0
        # baseline: the same number of warm decisions straight through the router
        from agentlanes.demo import DEMO_SIGNALS

        req = RouteRequest(task_class="routine-code", stage="execution", signals=DEMO_SIGNALS)
        t1 = time.perf_counter()
        for _ in range(report.decisions):
            router.decide(req)
        base = time.perf_counter() - t1
    print(f"counterfactual replay: {report.decisions:,} decisions from {copies:,} traces in {took:.2f} s = "
          f"{report.decisions / took:,.0f} re-decisions/s (one core; target >= 50,000)")
    print(f"  of which routing alone (same count, warm): {report.decisions / base:,.0f} decisions/s; "
          f"the rest is reading and parsing the traces")
    print(f"  found: {len(report.escalations_lost):,} escalations no longer allowed, "
          f"cost {report.recorded_cost:.2f} -> {report.new_cost:.2f}")


if __name__ == "__main__":
    main()
