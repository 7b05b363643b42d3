"""Escalation receipts: tamper-evident, signed, chained per run.

A receipt body (``agentlanes.escalation-receipt/1``) names the run, stage, task class,
risk class, from-lane → to-lane, reason, evidence references, the decision id, and the
approver with a keyed digest of the justification. The store appends it to the run's
chain, filling in ``seq`` and ``prev`` (the previous receipt's digest). Sealing then:

* serialises the body as canonical JSON (sorted keys, no spaces, UTF-8);
* ``digest`` = ``sha256:`` of those bytes;
* signs them with Ed25519 inside a DSSE envelope (``payloadType``
  ``application/vnd.agentlanes.escalation-receipt+json``; the signature covers DSSE's
  pre-authentication encoding of type and payload). The key pair lives in
  ``<data-dir>/keys/``; the public key is exportable.

A stored record is canonical JSON ``{"runId", "seq", "prev", "digest", "envelope"}``.
Because run id, seq, prev and decision id are inside the signed payload, a receipt
cannot be moved to another run, reordered, dropped or duplicated without
:func:`verify_records` naming the first bad record.

Schema versions of the receipt body:
``agentlanes.escalation-receipt/1``: first version.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agentlanes.errors import ConfigurationError
from agentlanes.policy import canonical_json

__all__ = [
    "PAYLOAD_TYPE",
    "RECEIPT_SCHEMA",
    "Receipt",
    "ReceiptSigner",
    "VerifyReport",
    "load_public_key",
    "receipt_body",
    "verify_records",
]

RECEIPT_SCHEMA = "agentlanes.escalation-receipt/1"
PAYLOAD_TYPE = "application/vnd.agentlanes.escalation-receipt+json"


def receipt_body(
    *,
    run_id: str,
    stage: str,
    task_class: str,
    risk_class: str,
    from_lane: str | None,
    to_lane: str,
    reason: str,
    decision_id: str,
    evidence_refs: Sequence[str],
    approver: str | None,
    justification_digest: str | None,
    created_at: str,
) -> dict[str, Any]:
    """The body of a receipt, before the store chains it."""
    return {
        "schemaVersion": RECEIPT_SCHEMA,
        "kind": "EscalationReceipt",
        "runId": run_id,
        "stage": stage,
        "taskClass": task_class,
        "riskClass": risk_class,
        "fromLane": from_lane,
        "toLane": to_lane,
        "reason": reason,
        "decisionId": decision_id,
        "evidenceRefs": list(evidence_refs),
        "approval": None if approver is None else {"approver": approver, "justification": justification_digest},
        "createdAt": created_at,
    }


def _pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class ReceiptSigner:
    """Signs receipt bodies with the installation's Ed25519 key.

    Args:
        key_dir: where ``receipts-ed25519.pem`` (private, mode 0600) and
            ``receipts-ed25519.pub.pem`` live; created on first use.
        private_key: an explicit key instead (tests).
    """

    def __init__(self, key_dir: Path | None = None, *, private_key: Ed25519PrivateKey | None = None) -> None:
        if private_key is None:
            private_key = Ed25519PrivateKey.generate() if key_dir is None else self._load_or_create(key_dir)
        self._key = private_key
        self.public_key = private_key.public_key()
        raw = self.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_id = "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]

    @staticmethod
    def _load_or_create(key_dir: Path) -> Ed25519PrivateKey:
        path = key_dir / "receipts-ed25519.pem"
        if not path.exists():
            key_dir.mkdir(parents=True, exist_ok=True)
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
            try:
                os.link(tmp, path)  # atomic: the first writer wins, the others read its key
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
            pub = key_dir / "receipts-ed25519.pub.pem"
            if not pub.exists():
                pub.write_bytes(
                    Ed25519PrivateKey.from_private_bytes(
                        key.private_bytes(
                            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
                        )
                    )
                    .public_key()
                    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
                )
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ConfigurationError(f"{path} does not hold an Ed25519 private key.")
        pub = key_dir / "receipts-ed25519.pub.pem"
        if not pub.exists():
            pub.write_bytes(
                loaded.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
        return loaded

    def public_pem(self) -> str:
        """The public key, PEM (what auditors verify with)."""
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def seal(self, body: dict[str, Any]) -> tuple[str, str]:
        """``(digest, stored record text)`` for a chained body (``seq``/``prev`` set)."""
        payload = canonical_json(body)
        digest = "sha256:" + hashlib.sha256(payload).hexdigest()
        envelope = {
            "payloadType": PAYLOAD_TYPE,
            "payload": _b64(payload),
            "signatures": [{"keyid": self.key_id, "sig": _b64(self._key.sign(_pae(PAYLOAD_TYPE, payload)))}],
        }
        record = {
            "runId": body["runId"],
            "seq": body["seq"],
            "prev": body["prev"],
            "digest": digest,
            "envelope": envelope,
        }
        return digest, canonical_json(record).decode("utf-8")


def load_public_key(pem: str | bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM."""
    key = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigurationError("The receipts public key must be an Ed25519 key (PEM).")
    return key


@dataclass(frozen=True)
class Receipt:
    """A stored receipt, as a run reports it (``body`` is the signed payload)."""

    run_id: str
    seq: int
    digest: str
    prev: str | None
    body: dict[str, Any]
    text: str

    @property
    def receipt_id(self) -> str:
        return f"{self.run_id}/receipt/{self.seq}"

    @classmethod
    def from_text(cls, text: str) -> Receipt:
        record = json.loads(text)
        body = json.loads(base64.b64decode(record["envelope"]["payload"]))
        return cls(record["runId"], record["seq"], record["digest"], record["prev"], body, text)


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of verifying receipt records.

    Attributes:
        checked: how many records were read.
        runs: how many run chains they formed.
        problem: ``None`` when all is well, else the first bad record (``index`` is its
            0-based position in the input) and what is wrong with it.
    """

    checked: int
    runs: int
    problem: tuple[int, str] | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify_records(records: Iterable[str], public_key: Ed25519PublicKey) -> VerifyReport:
    """Verify stored receipt records (one JSON record each), in chain order.

    Checks, per record: it parses; the envelope's payload type; the Ed25519 signature
    over DSSE's encoding; the digest of the payload; that the signed body's run id, seq
    and prev equal the record's; no digest seen twice; and, per run, that seq counts
    0, 1, 2... with each ``prev`` the previous record's digest.
    """
    raw_key = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key_id = "ed25519:" + hashlib.sha256(raw_key).hexdigest()[:16]
    last: dict[str, tuple[int, str]] = {}
    seen: set[str] = set()
    index = -1
    for index, text in enumerate(records):
        where = f"record {index + 1}"
        try:
            record = json.loads(text)
            envelope = record["envelope"]
            payload = base64.b64decode(envelope["payload"], validate=True)
            signature = base64.b64decode(envelope["signatures"][0]["sig"], validate=True)
            run_id, seq, prev, digest = record["runId"], record["seq"], record["prev"], record["digest"]
        except (ValueError, KeyError, IndexError, TypeError):
            return VerifyReport(index + 1, len(last), (index, f"{where}: not a receipt record (unreadable JSON)"))
        where = f"record {index + 1} ({run_id}/receipt/{seq})"
        # Every byte counts: the record must be exactly the canonical form of what it
        # says, so a change to an unsigned part (spacing, the key id) is caught too.
        if canonical_json(record).decode("utf-8") != text.rstrip("\n"):
            return VerifyReport(index + 1, len(last), (index, f"{where}: record is not in canonical form (altered)"))
        if envelope["signatures"][0].get("keyid") != key_id:
            return VerifyReport(index + 1, len(last), (index, f"{where}: signed by another key than {key_id}"))
        if envelope.get("payloadType") != PAYLOAD_TYPE:
            return VerifyReport(index + 1, len(last), (index, f"{where}: wrong payload type"))
        try:
            public_key.verify(signature, _pae(PAYLOAD_TYPE, payload))
        except InvalidSignature:
            return VerifyReport(index + 1, len(last), (index, f"{where}: signature does not verify"))
        if "sha256:" + hashlib.sha256(payload).hexdigest() != digest:
            return VerifyReport(index + 1, len(last), (index, f"{where}: digest does not match the payload"))
        try:
            body = json.loads(payload)
        except ValueError:
            return VerifyReport(index + 1, len(last), (index, f"{where}: signed payload is not JSON"))
        if (body.get("runId"), body.get("seq"), body.get("prev")) != (run_id, seq, prev):
            return VerifyReport(
                index + 1,
                len(last),
                (
                    index,
                    f"{where}: the signed receipt belongs to {body.get('runId')}/receipt/{body.get('seq')}, "
                    "not where it stands (moved or spliced from another run)",
                ),
            )
        if digest in seen:
            return VerifyReport(index + 1, len(last), (index, f"{where}: duplicate of an earlier record"))
        seen.add(digest)
        expected_seq, expected_prev = (0, None) if run_id not in last else (last[run_id][0] + 1, last[run_id][1])
        if seq != expected_seq:
            return VerifyReport(
                index + 1,
                len(last),
                (index, f"{where}: expected receipt {expected_seq} of run {run_id} here (dropped or reordered)"),
            )
        if prev != expected_prev:
            return VerifyReport(index + 1, len(last), (index, f"{where}: prev does not name the previous receipt"))
        last[run_id] = (seq, digest)
    return VerifyReport(index + 1, len(last), None)
