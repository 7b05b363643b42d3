"""What anchoring costs: closing a run, and verifying a ledger with its closing records.

On the SQLite store (the default, ``synchronous = FULL``): the time to close a run that
wrote one receipt (read its chain, append the ledger entry, append the closing record),
as a ratio to the time of appending that one receipt in the same run; and the time to
verify a ledger of closed runs, as a ratio to verifying the same receipts written before
closing records existed (no ledger chain).

Usage: python benchmarks/bench_receipts.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agentlanes.receipts import ReceiptSigner, close_run, receipt_body, verify_records  # noqa: E402
from agentlanes.stores import SQLiteStore  # noqa: E402


def body(run: str) -> dict[str, object]:
    return receipt_body(run_id=run, stage="execution", task_class="routine-code", risk_class="medium",
                        from_lane="standard", to_lane="high-end", reason="repeated-standard-lane-failure",
                        decision_id="urn:agentlanes:route-decision:0", evidence_refs=[], approver=None,
                        justification_digest=None, created_at="2026-11-22T00:00:00Z")  # fmt: skip


async def measure(home: Path, runs: int, close: bool) -> tuple[float, float, list[str]]:
    signer = ReceiptSigner(home.parent / "keys")  # one key for both ledgers
    home.mkdir()
    store = SQLiteStore(home / "agentlanes.db")
    append = closing = 0.0
    for i in range(runs):
        t0 = time.perf_counter()
        await store.append_receipt(f"run-{i}", body(f"run-{i}"), signer.seal)
        t1 = time.perf_counter()
        if close:
            await close_run(store, signer, f"run-{i}", status="succeeded")
        append += t1 - t0
        closing += time.perf_counter() - t1
    texts = [r.text for r in await store.receipts()]
    await store.aclose()
    return append, closing, texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    runs = 100 if args.quick else 1000
    with tempfile.TemporaryDirectory() as tmp:
        append, closing, closed = anyio.run(measure, Path(tmp) / "closed", runs, True)
        _, _, old = anyio.run(measure, Path(tmp) / "old", runs, False)
        key = ReceiptSigner(Path(tmp) / "keys").public_key
        t0 = time.perf_counter()
        assert verify_records(old, key).ok
        t1 = time.perf_counter()
        assert verify_records(closed, key).ok
        t2 = time.perf_counter()
    print(f"runs: {runs}, one receipt each")
    print(f"close_run / one receipt append: {closing / append:.2f}x")
    print(f"verify closed ledger / verify the same receipts unanchored: {(t2 - t1) / (t1 - t0):.2f}x "
          f"({len(closed)} vs {len(old)} records)")  # fmt: skip


if __name__ == "__main__":
    main()
