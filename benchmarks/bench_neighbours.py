"""Neighbours' inputs and evidence: what they cost next to a plain warm decision.

Prints figures, asserts nothing. The baseline is measured in the same run (these
machines are shared and noisy), so the ratios are what to read:

* ``plain``: a warm decision without findings, ceilings or a binding (the hot path that
  must not change); every other row is a ratio to it;
* ``+findings`` / ``+ceilings`` / ``+binding`` / ``+all three``: warm decisions whose
  request carries checked inputs (their reasons are compiled into the cached plan, so
  a warm decision only adds the inputs' digests to the plan key);
* ``receipt`` / ``guardrail`` / ``journal line``: building the evidence for one decision.

Usage: python benchmarks/bench_neighbours.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentlanes import Router, RouteRequest
from agentlanes.binding import BindingRequest
from agentlanes.ceiling import parse_ceiling
from agentlanes.evidence import JournalWriter, StageEvidence, guardrail_decisions, lane_receipt
from agentlanes.findings import parse_findings
from agentlanes.signals import SignalSnapshot

ROOT = Path(__file__).resolve().parents[1]
SIGNALS = SignalSnapshot(json.loads((ROOT / "examples/signals/healthy-local.json").read_text()))
CEILING = {
    "schema_version": "1.0",
    "policy_id": "bench:ceiling",
    "routing_consequence": {
        "autonomy_ceiling": "advisory", "model_lane_ceiling": "standard", "high_end_allowed": False,
        "pro_allowed": False, "deterministic_verification_required": True, "fallback_posture": "x",
        "must_preserve_warnings": ["bench"],
    },
}
BINDING = {
    "schemaVersion": "v0.1", "kind": "LocalPersonalRouteBinding",
    "bindingId": "urn:socioprophet:model-router-binding:bench",
    "subject": {"userRef": "u", "workspaceRef": "w"},
    "defaultLocalProfileRef": "urn:srcos:model-profile:bench",
    "personalization": {"enabled": False, "governanceContractRef": None, "artifactRef": None,
                        "defaultState": "disabled"},
    "routes": [{"routeId": "r", "taskClass": "complex-reasoning", "preferredTarget": "hosted"}],
    "policy": {"localFirst": True, "promptEgressDefault": "deny", "hostedFallbackRequiresPolicy": True,
               "promptHashOnlyEvidence": True},
    "evidence": {"emitRouteDecision": True, "emitRuntimeHealth": True, "emitGovernanceRefs": True},
}


def median_ns(fn: Callable[[], Any], loops: int, repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(loops):
            fn()
        samples.append((time.perf_counter_ns() - t0) / loops)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    loops, repeats = (2000, 7) if args.quick else (20000, 15)
    router = Router()
    findings = parse_findings({"findings": [], "metadata": {"anonymize.requires_local_model": "true"}})
    ceilings = (parse_ceiling(CEILING),)
    binding = BindingRequest(binding=BINDING, task="complex-reasoning", now="2026-06-01T00:00:00Z").decide(SIGNALS)

    def request(**extra: Any) -> RouteRequest:
        return RouteRequest.trusted(task_class="log-triage", stage="classification", risk_class="low",
                                    signals=SIGNALS, requested_lane=None, escalation_reason=None,
                                    budget_window="task", budget_remaining=2.0, deterministic=False,
                                    excluded_lanes=(), **extra)

    rows = {
        "plain": request(),
        "+findings": request(findings=findings),
        "+ceilings": request(ceilings=ceilings),
        "+binding": request(binding=binding),
        "+all three": request(findings=findings, ceilings=ceilings, binding=binding),
    }
    decide = router.decide
    base = median_ns(lambda: decide(rows["plain"]), loops, repeats)
    print(f"python {sys.version.split()[0]}, warm decisions (log-triage / classification / low)")
    print(f"  plain          median {base / 1000:8.2f} us   1.00x")
    for name, req in list(rows.items())[1:]:
        ns = median_ns(lambda req=req: decide(req), loops, repeats)
        print(f"  {name:<14} median {ns / 1000:8.2f} us   {ns / base:.2f}x plain")
    decision = decide(rows["+all three"])
    ctx = StageEvidence(run_id="bench", issued_at="2026-06-01T00:00:00Z", prompt_digest="hmac-sha256:" + "a" * 64)
    writer = JournalWriter()
    receipt = lane_receipt(decision, ctx)
    for name, fn in (
        ("receipt", lambda: lane_receipt(decision, ctx)),
        ("guardrail", lambda: guardrail_decisions(decision, ctx)),
        ("journal line", lambda: writer.append(receipt, appended_at=ctx.issued_at)),
    ):
        ns = median_ns(fn, max(loops // 10, 100), repeats)
        print(f"  {name:<14} median {ns / 1000:8.2f} us   {ns / base:.1f}x a plain decision")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
