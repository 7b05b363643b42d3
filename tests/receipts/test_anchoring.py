"""Receipts anchored beyond the data directory: closing records, the ledger chain, the
signed head and pinned keys, against every attack a data directory's owner can make
without the pinned key: deleting, truncating, reordering, re-signing with a swapped key."""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from agentlanes import cli
from agentlanes.errors import ConfigurationError, RunError
from agentlanes.receipts import (
    CLOSE_SCHEMA,
    LEDGER_CHAIN,
    LEDGER_SCHEMA,
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    LedgerHead,
    Receipt,
    ReceiptSigner,
    close_run,
    ledger_head,
    receipt_body,
    verify_records,
)
from agentlanes.stores import MemoryStore, SQLiteStore, Store
from agentlanes.stores.base import Sealer, StoredReceipt
from agentlanes.stores.readonly import read_ledger
from tests.conftest import ROOT
from tests.stores.conftest import PG_DSN, drop_schema, pg_schema

RUNS = {"run-a": 3, "run-b": 2, "run-c": 1}


def body(run: str, i: int) -> dict[str, Any]:
    return receipt_body(run_id=run, stage="execution", task_class="routine-code", risk_class="medium",
                        from_lane="standard", to_lane="high-end", reason="repeated-standard-lane-failure",
                        decision_id=f"urn:agentlanes:route-decision:{i:032x}", evidence_refs=[f"hmac-sha256:{i}"],
                        approver=None, justification_digest=None, created_at="2026-11-22T00:00:00Z")  # fmt: skip


async def fill(store: Store, signer: ReceiptSigner, runs: dict[str, int], *, close: bool = True) -> None:
    for i in range(max(runs.values())):  # interleaved, as concurrent runs write them
        for run, n in runs.items():
            if i < n:
                await store.append_receipt(run, body(run, i), signer.seal)
    if close:
        for run in runs:
            await close_run(store, signer, run, status="succeeded")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A data directory: run-a, run-b, run-c closed; run-open still running."""
    home = tmp_path / "home"
    signer = ReceiptSigner(home / "keys")

    async def write() -> None:
        store = SQLiteStore(home / "agentlanes.db")
        await fill(store, signer, RUNS)
        await store.append_receipt("run-open", body("run-open", 0), signer.seal)
        await store.aclose()

    anyio.run(write)
    return home


def texts_of(home: Path) -> list[str]:
    return [r.text for r in read_ledger(home / "agentlanes.db").receipts]


def sql(home: Path, statement: str, *params: object) -> None:
    db = sqlite3.connect(home / "agentlanes.db")
    with db:
        db.execute(statement, params)
    db.close()


def index_of(texts: list[str], chain: str, seq: int) -> int:
    """1-based position of a record in the ledger as verification reads it."""
    for i, text in enumerate(texts):
        record = json.loads(text)
        if (record["runId"], record["seq"]) == (chain, seq):
            return i + 1
    raise AssertionError((chain, seq))


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def verify(capsys: pytest.CaptureFixture[str], home: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli(capsys, "receipts", "verify", "--data-dir", str(home), *extra)


def payload(text: str) -> dict[str, Any]:
    return json.loads(base64.b64decode(json.loads(text)["envelope"]["payload"]))  # type: ignore[no-any-return]


# ------------------------------------------------------------------- the format


def test_closing_records_and_ledger_entries(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    texts = texts_of(home)
    ledger = [payload(t) for t in texts if json.loads(t)["runId"] == LEDGER_CHAIN]
    assert [(e["closedRun"], e["receiptCount"], e["seq"]) for e in ledger] == [
        ("run-a", 3, 0), ("run-b", 2, 1), ("run-c", 1, 2)
    ]  # fmt: skip
    for entry in ledger:  # names, counts and digests only: no content
        assert set(entry) == {"schemaVersion", "kind", "runId", "closedRun", "receiptCount", "headDigest", "status",
                              "closedAt", "seq", "prev"}  # fmt: skip
        assert entry["schemaVersion"] == LEDGER_SCHEMA and entry["status"] == "succeeded"
    chain_a = [payload(t) for t in texts if json.loads(t)["runId"] == "run-a"]
    close = chain_a[-1]
    assert close["kind"] == "RunClose" and close["schemaVersion"] == CLOSE_SCHEMA
    assert (close["seq"], close["receiptCount"], close["headDigest"]) == (3, 3, close["prev"])
    assert close["ledgerSeq"] == 0
    assert close["ledgerDigest"] == json.loads(next(t for t in texts if json.loads(t)["runId"] == LEDGER_CHAIN))[
        "digest"
    ]
    assert set(close) == {"schemaVersion", "kind", "runId", "receiptCount", "headDigest", "ledgerSeq",
                          "ledgerDigest", "status", "closedAt", "seq", "prev"}  # fmt: skip
    code, out, err = verify(capsys, home)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"ok: 7 receipt(s) in 4 run chain(s) verified ({home / 'agentlanes.db'})"
    assert lines[1].startswith("anchored: 3 run(s) closed in a ledger chain of 3 entries, head sha256:")
    assert "not anchored in the ledger" in out and "run-open" in out
    key_id = ReceiptSigner(home / "keys").key_id
    assert lines[-1] == (
        f"verified with the key found in the data directory, {key_id}; pin it with --public-key to detect a "
        "swapped key"
    )
    code, out, err = verify(capsys, home, "--key-id", key_id)
    assert code == 0, err
    assert out.splitlines()[-1] == f"verified with the key found in the data directory, {key_id}, which matches " \
        "--key-id"  # fmt: skip


def test_the_head_is_kept_and_a_growing_ledger_still_extends_it(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    head_file = tmp_path / "head.json"
    code, out, err = run_cli(capsys, "receipts", "head", "--data-dir", str(home), "-o", str(head_file))
    assert code == 0, err
    head = json.loads(head_file.read_text())
    signer = ReceiptSigner(home / "keys")
    last_entry = [t for t in texts_of(home) if json.loads(t)["runId"] == LEDGER_CHAIN][-1]
    assert head["count"] == 3 and head["digest"] == json.loads(last_entry)["digest"] and head["record"] == last_entry
    assert head["keyId"] == signer.key_id and head["publicKey"] == signer.public_pem()
    assert head["time"] == payload(last_entry)["closedAt"] and head["schemaVersion"] == "agentlanes.ledger-head/1"
    code, out, _ = run_cli(capsys, "receipts", "head", "--data-dir", str(home))
    assert json.loads(out) == head  # stdout by default

    async def more() -> None:
        store = SQLiteStore(home / "agentlanes.db")
        await fill(store, signer, {"run-d": 2, "run-e": 1})
        await store.aclose()

    anyio.run(more)
    code, out, err = verify(capsys, home, "--head", str(head_file))
    assert code == 0, err
    assert f"extends the head {head_file} (3 entries, {head['digest']})" in out
    assert f"verified with the key pinned by the head {head_file}, {signer.key_id}" in out
    assert "anchored: 5 run(s) closed in a ledger chain of 5 entries" in out


def test_an_empty_ledger_has_an_empty_head(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    signer = ReceiptSigner(home / "keys")
    SQLiteStore(home / "agentlanes.db")
    code, out, err = run_cli(capsys, "receipts", "head", "--data-dir", str(home))
    assert code == 0 and "no run has been closed" in err
    assert json.loads(out)["count"] == 0 and json.loads(out)["keyId"] == signer.key_id
    (tmp_path / "h.json").write_text(out)
    code, out, err = verify(capsys, home, "--head", str(tmp_path / "h.json"))
    assert code == 0, err


# ---------------------------------------------------------------------- close_run


async def test_close_run_is_idempotent_and_skips_runs_without_receipts(tmp_path: Path) -> None:
    signer = ReceiptSigner(tmp_path / "keys")
    store = MemoryStore()
    assert await close_run(store, signer, "run-quiet", status="succeeded") is None
    assert await store.receipts() == []  # a run without receipts writes nothing
    await fill(store, signer, {"run-a": 2}, close=False)
    first = await close_run(store, signer, "run-a", status="failed")
    assert first is not None and first.kind == "RunClose" and first.receipt_id == "run-a/receipt/2"
    assert first.body["status"] == "failed" and first.body["receiptCount"] == 2
    again = await close_run(store, signer, "run-a", status="succeeded")
    assert again is not None and again.digest == first.digest
    assert len(await store.receipts(LEDGER_CHAIN)) == 1
    report = verify_records([r.text for r in await store.receipts()], signer.public_key)
    assert report.ok and report.closed == 1 and report.unanchored == () and report.notes == ()


async def test_reserved_chain_ids_cannot_be_run_ids(tmp_path: Path) -> None:
    signer = ReceiptSigner(tmp_path / "keys")
    for bad in (LEDGER_CHAIN, "@anything", ""):
        with pytest.raises(ConfigurationError, match="reserved for the receipt ledger"):
            body(bad, 0)
        with pytest.raises(ConfigurationError, match="reserved for the receipt ledger"):
            await close_run(MemoryStore(), signer, bad)
    # a receipt forced into the ledger chain (bypassing receipt_body) does not verify
    store = MemoryStore()
    await store.append_receipt(LEDGER_CHAIN, {**body("run-x", 0), "runId": LEDGER_CHAIN}, signer.seal)
    report = verify_records([r.text for r in await store.receipts()], signer.public_key)
    assert report.problem == (0, f"record 1 ({LEDGER_CHAIN}/receipt/0): only ledger entries may stand in the "
                                 f"reserved chain {LEDGER_CHAIN}")  # fmt: skip


class FailingOnce(MemoryStore):
    """Fails the first append to the run's own chain (the process dies between writes)."""

    def __init__(self, run: str) -> None:
        super().__init__()
        self.run, self.failed = run, False

    async def append_receipt(self, run_id: str, body: dict[str, Any], seal: Sealer) -> StoredReceipt:
        if run_id == self.run and body.get("kind") == "RunClose" and not self.failed:
            self.failed = True
            raise OSError("disk full")
        return await super().append_receipt(run_id, body, seal)


async def test_a_close_cut_between_its_two_writes_verifies_and_closing_again_completes_it(tmp_path: Path) -> None:
    signer = ReceiptSigner(tmp_path / "keys")
    store = FailingOnce("run-a")
    await fill(store, signer, {"run-a": 2}, close=False)
    with pytest.raises(OSError, match="disk full"):
        await close_run(store, signer, "run-a")
    report = verify_records([r.text for r in await store.receipts()], signer.public_key)
    assert report.ok and report.closed == 1
    assert report.notes == (
        "1 run(s) anchored in the ledger without a closing record in their chain (the process stopped between the "
        "two writes): run-a",
    )
    closed = await close_run(store, signer, "run-a")
    assert closed is not None and closed.body["ledgerSeq"] == 1  # a second entry, naming the same receipts
    report = verify_records([r.text for r in await store.receipts()], signer.public_key)
    assert report.ok and report.notes == () and report.ledger_entries == 2


class InterleavingStore(MemoryStore):
    """Appends one more receipt to the run just before its first closing record: the close must notice."""

    def __init__(self, signer: ReceiptSigner) -> None:
        super().__init__()
        self.signer, self.done = signer, False

    async def append_receipt(self, run_id: str, body_: dict[str, Any], seal: Sealer) -> StoredReceipt:
        if body_.get("kind") == "RunClose" and not self.done:
            self.done = True
            await super().append_receipt(run_id, body(run_id, 99), self.signer.seal)
        return await super().append_receipt(run_id, body_, seal)


async def test_a_receipt_written_while_the_run_closes_is_closed_in_too(tmp_path: Path) -> None:
    signer = ReceiptSigner(tmp_path / "keys")
    store = InterleavingStore(signer)
    await fill(store, signer, {"run-a": 2}, close=False)
    closed = await close_run(store, signer, "run-a")
    assert closed is not None and closed.body["receiptCount"] == 3 and closed.seq == 3
    chain = await store.receipts("run-a")
    assert [Receipt.from_text(r.text).kind for r in chain] == ["EscalationReceipt"] * 3 + ["RunClose"]
    report = verify_records([r.text for r in await store.receipts()], signer.public_key)
    assert report.ok and report.unanchored == () and report.ledger_entries == 2, report


class AlwaysInterleaving(InterleavingStore):
    async def append_receipt(self, run_id: str, body_: dict[str, Any], seal: Sealer) -> StoredReceipt:
        self.done = False
        return await super().append_receipt(run_id, body_, seal)


async def test_a_run_that_never_stops_writing_cannot_be_closed(tmp_path: Path) -> None:
    signer = ReceiptSigner(tmp_path / "keys")
    store = AlwaysInterleaving(signer)
    await fill(store, signer, {"run-a": 1}, close=False)
    with pytest.raises(RunError, match="receipts kept being appended"):
        await close_run(store, signer, "run-a")
    assert verify_records([r.text for r in await store.receipts()], signer.public_key).ok


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Callable[[], Store]]:
    schema = pg_schema()
    stores: list[Store] = []

    def make() -> Store:
        if request.param == "postgres":
            from agentlanes.stores.postgres import PostgresStore

            s: Store = PostgresStore(PG_DSN, schema=schema)
        elif request.param == "sqlite":
            s = SQLiteStore(tmp_path / "agentlanes.db")
        else:
            s = stores[0] if stores else MemoryStore()
        stores.append(s)
        return s

    yield make
    for s in {id(s): s for s in stores}.values():
        await s.aclose()
    if request.param == "postgres":
        await drop_schema(schema)


async def test_concurrent_closes_of_one_run_write_one_closing_record(
    any_store: Callable[[], Store], tmp_path: Path
) -> None:
    signer = ReceiptSigner(tmp_path / "keys")
    await fill(any_store(), signer, {"run-a": 3, "run-b": 1}, close=False)
    closes: list[Receipt | None] = []

    async def close(run: str) -> None:
        closes.append(await close_run(any_store(), signer, run, status="succeeded"))

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(close, "run-a" if i % 2 else "run-b")
    assert len({c.digest for c in closes if c is not None and c.run_id == "run-a"}) == 1
    assert len({c.digest for c in closes if c is not None and c.run_id == "run-b"}) == 1
    texts = [r.text for r in await any_store().receipts()]
    assert sum(1 for t in texts if payload(t)["kind"] == "RunClose") == 2
    report = verify_records(texts, signer.public_key)
    assert report.ok and report.closed == 2 and report.unanchored == (), report


class Racing(Store):
    """Holds every closing record back until all racers have written their ledger entry,
    so each close reads the chain before any of them ends it."""

    def __init__(self, inner: Store, racers: int, state: dict[str, int]) -> None:
        self.inner, self.racers, self.state = inner, racers, state

    async def append_receipt(self, run_id: str, body_: dict[str, Any], seal: Sealer) -> StoredReceipt:
        if body_.get("kind") != "RunClose":
            stored = await self.inner.append_receipt(run_id, body_, seal)
            self.state["entries"] += body_.get("kind") == "LedgerEntry"
            return stored
        while self.state["entries"] < self.racers:
            await anyio.sleep(0.005)

        def counting(full: dict[str, Any]) -> tuple[str, str]:
            try:
                return seal(full)
            except Exception:
                self.state["refused"] += 1
                raise

        return await self.inner.append_receipt(run_id, body_, counting)

    async def receipts(self, run_id: str | None = None) -> list[StoredReceipt]:
        return await self.inner.receipts(run_id)

    async def reserve(self, *a: Any, **k: Any) -> Any:
        raise NotImplementedError

    async def settle(self, *a: Any, **k: Any) -> Any:
        raise NotImplementedError

    async def release(self, *a: Any, **k: Any) -> Any:
        raise NotImplementedError

    async def window_states(self, *a: Any, **k: Any) -> Any:
        raise NotImplementedError

    async def record_run(self, *a: Any, **k: Any) -> Any:
        raise NotImplementedError

    async def runs(self) -> Any:
        raise NotImplementedError


async def test_closes_racing_from_several_workers_end_the_chain_once(
    any_store: Callable[[], Store], tmp_path: Path
) -> None:
    signer = ReceiptSigner(tmp_path / "keys")
    await fill(any_store(), signer, {"run-a": 3}, close=False)
    state = {"entries": 0, "refused": 0}
    closes: list[Receipt | None] = []

    async def close() -> None:
        closes.append(await close_run(Racing(any_store(), 4, state), signer, "run-a", status="succeeded"))

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(close)
    # three of the four found the chain already closed when their own close was sealed:
    # the store rolled their append back and they returned the one closing record
    assert state["refused"] == 3
    assert len({c.digest for c in closes if c is not None}) == 1 and len(closes) == 4
    texts = [r.text for r in await any_store().receipts()]
    assert [payload(t)["kind"] for t in texts if json.loads(t)["runId"] == "run-a"] == ["EscalationReceipt"] * 3 + [
        "RunClose"
    ]
    report = verify_records(texts, signer.public_key)
    assert report.ok and report.closed == 1 and report.ledger_entries == 4, report


# ----------------------------------------------------------------------- attacks


def test_deleting_a_runs_whole_chain_is_detected(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sql(home, "DELETE FROM receipts WHERE run_id = 'run-b'")
    n = index_of(texts_of(home), LEDGER_CHAIN, 1)
    code, _, err = verify(capsys, home)
    assert code == 1
    assert (
        f"record {n} (@ledger/receipt/1): run run-b was closed with 2 receipt(s), but the ledger holds no record "
        "of it (its chain was deleted)"
    ) in err


def test_deleting_the_last_receipt_of_a_chain_is_detected(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the last receipt alone: its closing record no longer follows it
    sql(home, "DELETE FROM receipts WHERE run_id = 'run-a' AND seq = 2")
    n = index_of(texts_of(home), "run-a", 3)
    code, _, err = verify(capsys, home)
    assert code == 1 and f"record {n} (run-a/receipt/3): expected receipt 2 of run run-a here" in err
    # ... and with its closing record: the ledger entry no longer matches
    sql(home, "DELETE FROM receipts WHERE run_id = 'run-a' AND seq = 3")
    n = index_of(texts_of(home), LEDGER_CHAIN, 0)
    code, _, err = verify(capsys, home)
    assert code == 1
    assert (
        f"record {n} (@ledger/receipt/0): run run-a was closed with 3 receipt(s), but its chain holds 2 "
        "(receipts deleted or truncated)"
    ) in err


def test_deleting_only_a_closing_record_hides_nothing(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sql(home, "DELETE FROM receipts WHERE run_id = 'run-a' AND seq = 3")
    code, out, err = verify(capsys, home)
    assert code == 0, err  # every receipt is still anchored by the ledger entry; the gap is reported
    assert "anchored in the ledger without a closing record in their chain" in out and "run-a" in out


def test_truncating_the_ledger_chain_is_detected(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_cli(capsys, "receipts", "head", "--data-dir", str(home), "-o", str(tmp_path / "head.json"))
    pristine = tmp_path / "pristine.db"
    shutil.copyfile(home / "agentlanes.db", pristine)
    # the last entry: run-c's closing record names it
    sql(home, "DELETE FROM receipts WHERE run_id = ? AND seq = 2", LEDGER_CHAIN)
    n = index_of(texts_of(home), "run-c", 1)
    code, _, err = verify(capsys, home)
    assert code == 1
    assert (
        f"record {n} (run-c/receipt/1): run run-c's closing record names ledger entry 2, but the ledger chain "
        "holds 2 entries (the ledger chain was truncated)"
    ) in err
    # an entry in the middle: the ledger chain breaks
    shutil.copyfile(pristine, home / "agentlanes.db")
    sql(home, "DELETE FROM receipts WHERE run_id = ? AND seq = 1", LEDGER_CHAIN)
    n = index_of(texts_of(home), LEDGER_CHAIN, 2)
    code, _, err = verify(capsys, home)
    assert code == 1 and f"record {n} (@ledger/receipt/2): expected ledger entry 1 of the ledger chain here" in err
    # the whole ledger chain
    shutil.copyfile(pristine, home / "agentlanes.db")
    sql(home, "DELETE FROM receipts WHERE run_id = ?", LEDGER_CHAIN)
    n = index_of(texts_of(home), "run-a", 3)
    code, _, err = verify(capsys, home)
    assert code == 1 and f"record {n} (run-a/receipt/3): run run-a's closing record names ledger entry 0, but " \
        "there is no ledger chain" in err  # fmt: skip
    # the last entry and run-c's whole chain: consistent on its own, caught by the kept head
    shutil.copyfile(pristine, home / "agentlanes.db")
    sql(home, "DELETE FROM receipts WHERE run_id = ? AND seq = 2", LEDGER_CHAIN)
    sql(home, "DELETE FROM receipts WHERE run_id = 'run-c'")
    code, _, err = verify(capsys, home)
    assert code == 0, err
    n = index_of(texts_of(home), LEDGER_CHAIN, 1)
    code, _, err = verify(capsys, home, "--head", str(tmp_path / "head.json"))
    assert code == 1
    assert (
        f"record {n} (@ledger/receipt/1): the ledger chain ends at 2 entries, but the head holds 3 (entries were "
        "removed after the head was taken)"
    ) in err


def test_reordering_is_detected(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    texts = texts_of(home)
    ledger_at = [i for i, t in enumerate(texts) if json.loads(t)["runId"] == LEDGER_CHAIN]
    swapped = list(texts)
    swapped[ledger_at[0]], swapped[ledger_at[1]] = swapped[ledger_at[1]], swapped[ledger_at[0]]
    (tmp_path / "r.jsonl").write_text("\n".join(swapped) + "\n")
    code, _, err = verify(capsys, home, str(tmp_path / "r.jsonl"))
    assert code == 1
    assert f"record {ledger_at[0] + 1} (@ledger/receipt/1): expected ledger entry 0 of the ledger chain here" in err
    # in the database itself: two receipts of a chain trade places
    sql(home, "UPDATE receipts SET seq = -1 WHERE run_id = 'run-a' AND seq = 0")
    sql(home, "UPDATE receipts SET seq = 0 WHERE run_id = 'run-a' AND seq = 1")
    sql(home, "UPDATE receipts SET seq = 1 WHERE run_id = 'run-a' AND seq = -1")
    code, _, err = verify(capsys, home)
    assert code == 1 and "record 1 (run-a/receipt/1): expected receipt 0 of run run-a here" in err


def test_a_receipt_appended_after_the_close_is_detected(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    signer = ReceiptSigner(home / "keys")  # even with the key: the close says the run was over

    async def late() -> None:
        store = SQLiteStore(home / "agentlanes.db")
        await store.append_receipt("run-b", body("run-b", 7), signer.seal)
        await store.aclose()

    anyio.run(late)
    n = index_of(texts_of(home), "run-b", 3)
    code, _, err = verify(capsys, home)
    assert code == 1
    assert f"record {n} (run-b/receipt/3): run run-b was closed at receipt 2; nothing may follow its closing record" \
        in err  # fmt: skip


def forge(home: Path, runs: dict[str, int]) -> None:
    """Rewrite the ledger without some runs, re-signed with a new key, and swap the key pair."""
    (home / "agentlanes.db").unlink()
    shutil.rmtree(home / "keys")
    signer = ReceiptSigner(home / "keys")

    async def write() -> None:
        store = SQLiteStore(home / "agentlanes.db")
        await fill(store, signer, runs)
        await store.aclose()

    anyio.run(write)


def test_a_ledger_re_signed_with_a_swapped_key_fails_a_pinned_key_or_head(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original = ReceiptSigner(home / "keys")
    (tmp_path / "pub.pem").write_text(original.public_pem())
    run_cli(capsys, "receipts", "head", "--data-dir", str(home), "-o", str(tmp_path / "head.json"))
    forge(home, {"run-a": 3, "run-c": 1})  # run-b's receipts are gone, and every signature is new
    forged = ReceiptSigner(home / "keys")
    code, out, _ = verify(capsys, home)
    assert code == 0  # what the data directory alone can say; the output says so
    assert f"verified with the key found in the data directory, {forged.key_id}; pin it with --public-key" in out
    code, _, err = verify(capsys, home, "--public-key", str(tmp_path / "pub.pem"))
    assert code == 1 and f"record 1 (run-a/receipt/0): signed by another key than {original.key_id}" in err
    code, _, err = verify(capsys, home, "--key-id", original.key_id)
    assert code == 1 and f"The verifying key is {forged.key_id}, not the pinned {original.key_id}" in err
    code, _, err = verify(capsys, home, "--head", str(tmp_path / "head.json"))
    assert code == 1 and f"record 1 (run-a/receipt/0): signed by another key than {original.key_id}" in err
    # the head without its public key still pins the key id
    head = json.loads((tmp_path / "head.json").read_text())
    (tmp_path / "head-no-key.json").write_text(json.dumps({**head, "publicKey": None}))
    code, _, err = verify(capsys, home, "--head", str(tmp_path / "head-no-key.json"))
    assert code == 1 and f"the head was signed by {original.key_id}, but the ledger is verified with " \
        f"{forged.key_id}: the signing key was replaced" in err  # fmt: skip
    # an exported file of the forged ledger fails the same pins
    code, out, _ = run_cli(capsys, "receipts", "export", "--data-dir", str(home))
    (tmp_path / "forged.jsonl").write_text(out)
    code, _, err = run_cli(capsys, "receipts", "verify", str(tmp_path / "forged.jsonl"), "--public-key",
                           str(tmp_path / "pub.pem"))  # fmt: skip
    assert code == 1 and "signed by another key" in err


def test_a_rewritten_ledger_with_the_same_key_fails_the_head(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Someone with the signing key rebuilds a shorter history: the kept head catches it."""
    run_cli(capsys, "receipts", "head", "--data-dir", str(home), "-o", str(tmp_path / "head.json"))
    signer = ReceiptSigner(home / "keys")
    (home / "agentlanes.db").unlink()

    async def rewrite() -> None:
        store = SQLiteStore(home / "agentlanes.db")
        await fill(store, signer, {"run-a": 3, "run-c": 1, "run-x": 2})
        await store.aclose()

    anyio.run(rewrite)
    assert verify(capsys, home)[0] == 0
    n = index_of(texts_of(home), LEDGER_CHAIN, 2)
    code, _, err = verify(capsys, home, "--head", str(tmp_path / "head.json"))
    assert code == 1
    assert f"record {n} (@ledger/receipt/2): this ledger entry is not the one the head holds (the ledger was " \
        "rewritten)" in err  # fmt: skip


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        (lambda h: {**h, "digest": "sha256:" + "0" * 64}, "is not ledger entry 2 with the head's digest"),
        (lambda h: {**h, "count": 2}, "is not ledger entry 1 with the head's digest"),
        (lambda h: {**h, "record": h["record"].replace('"seq":2', '"seq":3')}, "the head's own record does not"),
        (lambda h: {**h, "publicKey": ReceiptSigner().public_pem()}, "signed by another key"),
        (lambda h: {**h, "schemaVersion": "agentlanes.ledger-head/9"}, "this agentlanes reads"),
        (lambda h: {**h, "count": -1}, "count must be a non-negative integer"),
        (lambda h: {**h, "record": None}, "must carry their digest and the last record"),
        (lambda h: [h], "is not a ledger head"),
    ],
)
def test_an_altered_head_is_refused(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], change: Callable[[Any], Any], expect: str
) -> None:
    run_cli(capsys, "receipts", "head", "--data-dir", str(home), "-o", str(tmp_path / "head.json"))
    head = json.loads((tmp_path / "head.json").read_text())
    (tmp_path / "bad.json").write_text(json.dumps(change(head)))
    code, out, err = verify(capsys, home, "--head", str(tmp_path / "bad.json"))
    assert code == 1 and expect in err and out == "", err


def test_verifying_and_taking_the_head_refuse_a_tampered_ledger(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sql(home, "DELETE FROM receipts WHERE run_id = 'run-b'")
    code, out, err = run_cli(capsys, "receipts", "head", "--data-dir", str(home))
    assert code == 1 and out == "" and "its chain was deleted" in err  # never anchor a damaged ledger


def test_old_ledgers_verify_with_a_note_that_they_are_not_anchored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    signer = ReceiptSigner(home / "keys")

    async def write() -> None:
        store = SQLiteStore(home / "agentlanes.db")
        await fill(store, signer, {"run-a": 2, "run-b": 1}, close=False)  # as written before closing records
        await store.aclose()

    anyio.run(write)
    code, out, err = verify(capsys, home)
    assert code == 0, err
    assert out.startswith("ok: 3 receipt(s) in 2 run chain(s) verified")
    assert "note: 2 run chain(s) not anchored in the ledger" in out and "anchored:" not in out
    report = verify_records(texts_of(home), signer.public_key)
    assert report.unanchored == ("run-a", "run-b") and report.ledger_entries == 0
    assert ledger_head(texts_of(home), signer.public_key) == LedgerHead(
        0, None, signer.key_id, None, None, signer.public_pem()
    )


def test_a_partial_export_verifies_with_partial(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_cli(capsys, "receipts", "export", "--data-dir", str(home), "--run", "run-a", "-o", str(tmp_path / "a.jsonl"))
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 4
    code, _, err = verify(capsys, home, str(tmp_path / "a.jsonl"))
    assert code == 1 and "there is no ledger chain" in err and "--partial" in err
    code, out, err = verify(capsys, home, str(tmp_path / "a.jsonl"), "--partial")
    assert code == 0, err
    assert "ok: 3 receipt(s) in 1 run chain(s)" in out and "partial export" in out
    assert "not anchored" not in out
    # a full export verifies like the ledger itself
    run_cli(capsys, "receipts", "export", "--data-dir", str(home), "-o", str(tmp_path / "all.jsonl"))
    code, out, err = verify(capsys, home, str(tmp_path / "all.jsonl"))
    assert code == 0 and "anchored: 3 run(s) closed" in out, err


# --------------------------------------------------------------- read-only media


def fingerprint(root: Path) -> dict[str, tuple[int, int, int]]:
    return {
        str(p.relative_to(root)): (p.lstat().st_mode, p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def test_reading_the_ledger_changes_nothing_in_the_data_directory(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not (home / "agentlanes.db-wal").exists()  # closed cleanly, as a copied-off ledger is
    before = fingerprint(home)
    for argv in (["verify"], ["export"], ["head"], ["public-key"], ["export", "--run", "run-a"]):
        code, _, err = run_cli(capsys, "receipts", *argv, "--data-dir", str(home))
        assert code == 0, (argv, err)
        assert fingerprint(home) == before, argv  # no -wal, no -shm, no new key, nothing touched


def read_only_mount_works() -> bool:
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount --bind / /mnt && mount -o remount,ro,bind /mnt"],
                           capture_output=True, check=False) if shutil.which("unshare") else None  # fmt: skip
    return probe is not None and probe.returncode == 0


def run_on_read_only_media(media: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with ``media`` mounted read-only (in a private mount namespace, so
    even root cannot write there); as an unprivileged user, a chmod does the same."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    if read_only_mount_works():
        wrapped = f"mount --bind {media} {media} && mount -o remount,ro,bind {media} && {script}"
        return subprocess.run(["unshare", "-m", "sh", "-c", wrapped], capture_output=True, text=True, env=env,
                              timeout=120, check=False)  # fmt: skip
    if os.geteuid() == 0:
        pytest.skip("root without CAP_SYS_ADMIN can make no directory read-only (chmod does not stop root)")
    subprocess.run(["chmod", "-R", "a-w", str(media)], check=True)
    try:
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env, timeout=120, check=False)
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(media)], check=True)


def test_a_ledger_on_read_only_media_verifies(home: Path, tmp_path: Path) -> None:
    media = tmp_path / "media"
    shutil.copytree(home, media / "home")
    run_cli_sh = f"{sys.executable} -m agentlanes receipts"
    script = (
        f"touch {media}/home/probe 2>/dev/null && exit 9; "
        f"{run_cli_sh} verify --data-dir {media}/home && {run_cli_sh} head --data-dir {media}/home > /dev/null"
    )
    proc = run_on_read_only_media(media, script)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "ok: 7 receipt(s) in 4 run chain(s) verified" in proc.stdout


def test_a_ledger_copied_with_its_write_ahead_log_verifies_on_read_only_media(home: Path, tmp_path: Path) -> None:
    """Copied while a writer was live: the last transactions are only in the -wal file."""
    signer = ReceiptSigner(home / "keys")
    media = tmp_path / "media"
    (media / "with-shm").mkdir(parents=True)
    (media / "without-shm").mkdir()

    async def write_and_copy() -> None:
        store = SQLiteStore(home / "agentlanes.db")
        db = sqlite3.connect(home / "agentlanes.db")
        db.execute("PRAGMA wal_autocheckpoint = 0")  # keep the writes in the log
        await fill(store, signer, {"run-live": 2})
        for target in ("with-shm", "without-shm"):
            shutil.copytree(home / "keys", media / target / "keys")
            for suffix in ("", "-wal", "-shm"):
                if target == "without-shm" and suffix == "-shm":
                    continue
                shutil.copyfile(f"{home}/agentlanes.db{suffix}", f"{media}/{target}/agentlanes.db{suffix}")
        db.close()
        await store.aclose()

    anyio.run(write_and_copy)
    assert (media / "with-shm" / "agentlanes.db-wal").stat().st_size > 0
    cmd = f"{sys.executable} -m agentlanes receipts verify --data-dir"
    proc = run_on_read_only_media(media, f"{cmd} {media}/with-shm && {cmd} {media}/without-shm")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert proc.stdout.count("ok: 9 receipt(s) in 5 run chain(s) verified") == 2, proc.stdout
    assert "anchored: 4 run(s) closed" in proc.stdout
    assert "read a private copy" in proc.stderr


async def test_a_live_writers_ledger_is_read_through_its_locks(tmp_path: Path) -> None:
    signer = ReceiptSigner(tmp_path / "keys")
    store = SQLiteStore(tmp_path / "agentlanes.db")
    await fill(store, signer, {"run-a": 2}, close=False)
    assert (tmp_path / "agentlanes.db-wal").exists()
    assert len(read_ledger(tmp_path / "agentlanes.db").receipts) == 2
    await fill(store, signer, {"run-b": 1})
    snapshot = read_ledger(tmp_path / "agentlanes.db")
    assert [r.run_id for r in snapshot.receipts] == ["run-a", "run-a", "run-b", "run-b", LEDGER_CHAIN]
    assert verify_records([r.text for r in snapshot.receipts], signer.public_key).ok
    await store.aclose()


# ----------------------------------------------------------------- hostile input


@pytest.mark.parametrize(
    "line",
    [
        "",
        "null",
        "[1, 2]",
        '"text"',
        "{}",
        "[" * 100_000 + "]" * 100_000,
        '{"runId": "r", "seq": 0, "prev": null, "digest": "d", "envelope": {"signatures": "x"}}',
        '{"runId": "r", "seq": 0, "prev": null, "digest": "d", "envelope": {"signatures": ["x"]}}',
        '{"runId": "r", "seq": 1e400, "prev": null, "digest": "d", "envelope": {"payload": "", "payloadType": "t",'
        ' "signatures": [{"sig": "", "keyid": "k"}]}}',
        '{"runId": "r", "seq": NaN, "prev": null, "digest": "d", "envelope": {}}',
        '{"runId": "r", "seq": 0, "prev": null, "digest": "d", "envelope": {"payload": "%%%", "payloadType": "t",'
        ' "signatures": [{"sig": "", "keyid": "k"}]}}',
    ],
)
def test_hostile_records_are_named_not_crashed_on(home: Path, line: str) -> None:
    texts = texts_of(home)
    report = verify_records([texts[0], line, *texts[1:]], ReceiptSigner(home / "keys").public_key)
    assert report.problem is not None and report.problem[0] == 1
    assert report.problem[1].startswith("record 2")


def test_hostile_files_give_one_message(home: Path, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "binary").write_bytes(os.urandom(4096))
    (tmp_path / "long").write_text("x" * (2 << 20))
    (tmp_path / "dir").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name, expect in [
        ("fifo", "is not a regular file"),
        ("binary", "not UTF-8 text"),
        ("long", "line 1: longer than any receipt record"),
        ("dir", "is not a regular file"),
        ("missing", "Cannot read the receipts file"),
    ]:
        for argv in (["verify", str(tmp_path / name)], ["verify", "--head", str(tmp_path / name)],
                     ["verify", "--public-key", str(tmp_path / name)]):  # fmt: skip
            argv += ["--data-dir", str(home)]
            proc = subprocess.run([sys.executable, "-m", "agentlanes", "receipts", *argv], cwd=ROOT,
                                  capture_output=True, text=True, env=env, timeout=60, check=False)  # fmt: skip
            assert proc.returncode == 1, (name, argv, proc.stderr)
            assert "Traceback" not in proc.stderr and str(tmp_path / name) in proc.stderr, (name, argv, proc.stderr)
            if argv[1] == str(tmp_path / name):
                assert expect in proc.stderr, (name, proc.stderr)


def test_a_data_directory_that_is_not_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    for target, expect in [
        (tmp_path / "file", "is not a directory; pass --data-dir"),
        (tmp_path / "nowhere", "No data directory at"),
    ]:
        for action in ("verify", "export", "head"):
            ReceiptSigner(tmp_path / "k")
            code, _, err = run_cli(capsys, "receipts", action, "--data-dir", str(target),
                                     *(["--public-key", str(tmp_path / "k" / PUBLIC_KEY_FILE)]
                                       if action != "export" else []))  # fmt: skip
            assert code == 1 and expect in err, (action, err)
    home = tmp_path / "home"
    ReceiptSigner(home / "keys")
    (home / "agentlanes.db").write_bytes(os.urandom(8192))
    code, _, err = run_cli(capsys, "receipts", "verify", "--data-dir", str(home))
    assert code == 1 and f"Cannot read the receipt ledger {home / 'agentlanes.db'}" in err
    (home / "agentlanes.db").unlink()
    code, _, err = run_cli(capsys, "receipts", "verify", "--data-dir", str(home))
    assert code == 1 and f"No receipt ledger at {home / 'agentlanes.db'}" in err
    assert not (home / "agentlanes.db").exists()  # verification never creates a store
    assert PRIVATE_KEY_FILE in {p.name for p in (home / "keys").iterdir()}


async def test_closing_records_are_written_to_every_store(any_store: Callable[[], Store], tmp_path: Path) -> None:
    signer = ReceiptSigner(tmp_path / "keys")
    store = any_store()
    await fill(store, signer, RUNS)
    texts = [r.text for r in await store.receipts()]
    report = verify_records(texts, signer.public_key, head=ledger_head(texts, signer.public_key))
    assert report.ok and report.closed == 3 and report.ledger_entries == 3, report
    assert [r.seq for r in await store.receipts(LEDGER_CHAIN)] == [0, 1, 2]
