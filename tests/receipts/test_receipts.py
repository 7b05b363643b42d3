"""Signed receipts: export, verify, and every kind of tampering, plus kill -9 during writes."""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

from agentlanes import cli
from agentlanes.receipts import Receipt, ReceiptSigner, load_public_key, receipt_body, verify_records
from agentlanes.stores import SQLiteStore
from tests.conftest import ROOT


def body(run: str, i: int) -> dict[str, object]:
    return receipt_body(run_id=run, stage="execution", task_class="routine-code", risk_class="medium",
                        from_lane="standard", to_lane="high-end", reason="repeated-standard-lane-failure",
                        decision_id=f"urn:agentlanes:route-decision:{i:032x}", evidence_refs=[f"hmac-sha256:{i}"],
                        approver=None, justification_digest=None, created_at="2026-11-22T00:00:00Z")


@pytest.fixture
def ledger(tmp_path: Path) -> tuple[Path, list[str]]:
    """A data dir whose SQLite ledger holds two runs' chains, interleaved."""
    signer = ReceiptSigner(tmp_path / "keys")

    async def write() -> list[str]:
        store = SQLiteStore(tmp_path / "agentlanes.db")
        for i in range(4):
            for run in ("run-a", "run-b"):
                await store.append_receipt(run, body(run, i), signer.seal)
        texts = [r.text for r in await store.receipts()]
        await store.aclose()
        return texts

    return tmp_path, anyio.run(write)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_export_and_verify_the_ledger(ledger: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    home, texts = ledger
    code, out, err = run_cli(capsys, "receipts", "verify", "--data-dir", str(home))
    assert code == 0, err
    assert "ok: 8 receipt(s) in 2 run chain(s) verified" in out
    code, out, _ = run_cli(capsys, "receipts", "export", "--data-dir", str(home))
    lines = out.splitlines()
    assert code == 0 and lines == texts
    assert [json.loads(x)["runId"] for x in lines] == ["run-a"] * 4 + ["run-b"] * 4  # chain order per run
    code, out, _ = run_cli(capsys, "receipts", "export", "--data-dir", str(home), "--run", "run-b")
    assert [json.loads(x)["seq"] for x in out.splitlines()] == [0, 1, 2, 3]
    exported = home / "receipts.jsonl"
    run_cli(capsys, "receipts", "export", "--data-dir", str(home), "-o", str(exported))
    code, out, _ = run_cli(capsys, "receipts", "verify", str(exported), "--data-dir", str(home))
    assert code == 0 and "ok: 8 receipt(s)" in out
    code, out, _ = run_cli(capsys, "receipts", "public-key", "--data-dir", str(home))
    assert out.startswith("-----BEGIN PUBLIC KEY-----")
    pub = home / "pub.pem"
    pub.write_text(out)
    code, out, _ = run_cli(capsys, "receipts", "verify", str(exported), "--public-key", str(pub))
    assert code == 0


def check(tmp: Path, lines: list[str], capsys: pytest.CaptureFixture[str], home: Path) -> tuple[int, str]:
    path = tmp / "tampered.jsonl"
    path.write_text("\n".join(lines) + "\n")
    code, _, err = run_cli(capsys, "receipts", "verify", str(path), "--data-dir", str(home))
    return code, err


def test_any_flipped_byte_is_caught(ledger: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str],
                                    tmp_path: Path) -> None:
    home, texts = ledger
    rng = random.Random(11)
    for _ in range(150):
        lines = list(texts)
        i = rng.randrange(len(lines))
        raw = bytearray(lines[i].encode())
        j = rng.randrange(len(raw))
        raw[j] ^= 1 << rng.randrange(7)
        lines[i] = raw.decode("utf-8", "replace")
        code, err = check(tmp_path, lines, capsys, home)
        assert code == 1, (i, j)
        assert f"record {i + 1}" in err, err


@pytest.mark.parametrize(
    ("tamper", "expect"),
    [
        (lambda t: [t[1], t[0], *t[2:]], "record 1 (run-a/receipt/1): expected receipt 0"),
        (lambda t: [*t[:1], *t[2:]], "record 2 (run-a/receipt/2): expected receipt 1"),
        (lambda t: [*t[:2], t[1], *t[2:]], "record 3 (run-a/receipt/1): duplicate"),
        (lambda t: t[:3], None),  # a chain cut at its end is consistent: nothing after it to contradict
    ],
)
def test_reordering_dropping_duplicating(ledger: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path, tamper: object, expect: str | None) -> None:
    home, texts = ledger
    code, err = check(tmp_path, tamper(texts), capsys, home)  # type: ignore[operator]
    if expect is None:
        assert code == 0
    else:
        assert code == 1 and expect in err, err


def test_a_receipt_moved_or_spliced_from_another_run(ledger: tuple[Path, list[str]],
                                                     capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    home, texts = ledger
    b1 = json.loads(texts[5])  # run-b/receipt/1
    moved = dict(b1, runId="run-a", seq=1, prev=json.loads(texts[0])["digest"])
    lines = [texts[0], json.dumps(moved, sort_keys=True, separators=(",", ":"), ensure_ascii=False), *texts[2:]]
    code, err = check(tmp_path, lines, capsys, home)
    assert code == 1 and "record 2" in err and "moved or spliced from another run" in err
    spliced = [texts[0], texts[5], *texts[1:5], *texts[6:]]
    code, err = check(tmp_path, spliced, capsys, home)
    assert code == 1 and "record 2 (run-b/receipt/1): expected receipt 0 of run run-b" in err


def test_signature_from_another_key_fails(ledger: tuple[Path, list[str]], tmp_path: Path) -> None:
    _, texts = ledger
    other = ReceiptSigner()
    report = verify_records(texts, other.public_key)
    assert not report.ok and report.problem is not None
    assert report.problem[0] == 0 and "signed by another key" in report.problem[1]


def test_resigned_payload_with_a_forged_body_fails(ledger: tuple[Path, list[str]], tmp_path: Path) -> None:
    home, texts = ledger
    record = json.loads(texts[0])
    forged = json.loads(base64.b64decode(record["envelope"]["payload"]))
    forged["toLane"] = "pro"
    record["envelope"]["payload"] = base64.b64encode(json.dumps(forged).encode()).decode()
    key = load_public_key((home / "keys" / "receipts-ed25519.pub.pem").read_bytes())
    report = verify_records([json.dumps(record, sort_keys=True, separators=(",", ":")), *texts[1:]], key)
    assert report.problem is not None and "signature does not verify" in report.problem[1]


def test_receipt_from_text_round_trip(ledger: tuple[Path, list[str]]) -> None:
    _, texts = ledger
    r = Receipt.from_text(texts[1])
    assert (r.run_id, r.seq, r.receipt_id) == ("run-a", 1, "run-a/receipt/1")
    assert r.body["toLane"] == "high-end" and r.prev == json.loads(texts[0])["digest"]


WRITER = textwrap.dedent("""
    import sys, anyio
    from pathlib import Path
    from agentlanes.receipts import ReceiptSigner, receipt_body
    from agentlanes.stores import SQLiteStore

    async def main(home):
        signer = ReceiptSigner(Path(home) / "keys")
        store = SQLiteStore(Path(home) / "agentlanes.db")
        run = sys.argv[2]
        i = 0
        while True:
            body = receipt_body(run_id=run, stage="s", task_class="routine-code", risk_class="medium",
                                from_lane="standard", to_lane="high-end", reason="hard-debugging",
                                decision_id=f"d{i}", evidence_refs=[], approver=None, justification_digest=None,
                                created_at="2026-11-22T00:00:00Z")
            stored = await store.append_receipt(run, body, signer.seal)
            print("ack", stored.seq, stored.digest, flush=True)
            i += 1

    anyio.run(main, sys.argv[1])
""")


def test_kill_9_during_receipt_writes_loses_no_acknowledged_receipt(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ReceiptSigner(home / "keys")
    rng = random.Random(5)
    acked: dict[str, list[tuple[int, str]]] = {}
    for k in range(12):
        run = f"run-{k % 3}"  # several kills land in the same chain
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(home), run], cwd=ROOT, stdout=subprocess.PIPE,
                                text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        time.sleep(rng.uniform(0.4, 1.2))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        for line in out.splitlines():
            parts = line.split()
            # the kill may tear the last line: a torn ack was never fully acknowledged
            if len(parts) == 3 and parts[0] == "ack" and len(parts[2]) == len("sha256:") + 64:
                acked.setdefault(run, []).append((int(parts[1]), parts[2]))
    assert sum(len(v) for v in acked.values()) > 20

    async def read() -> list[str]:
        store = SQLiteStore(home / "agentlanes.db")
        try:
            return [r.text for r in await store.receipts()]
        finally:
            await store.aclose()

    texts = anyio.run(read)
    key = load_public_key((home / "keys" / "receipts-ed25519.pub.pem").read_bytes())
    report = verify_records(texts, key)
    assert report.ok, report.problem
    stored = {(json.loads(t)["runId"], json.loads(t)["seq"]): json.loads(t)["digest"] for t in texts}
    for run, items in acked.items():
        for seq, digest in items:
            assert stored[(run, seq)] == digest
