"""Escalation receipts: tamper-evident, signed, chained per run, anchored per ledger.

A receipt body (``agentlanes.escalation-receipt/1``) names the run, stage, task class,
risk class, from-lane → to-lane, reason, evidence references, the decision id, and the
approver with a keyed digest of the justification. The store appends it to the run's
chain, filling in ``seq`` and ``prev`` (the previous record's digest). Sealing then:

* serialises the body as canonical JSON (sorted keys, no spaces, UTF-8);
* ``digest`` = ``sha256:`` of those bytes;
* signs them with Ed25519 inside a DSSE envelope (the signature covers DSSE's
  pre-authentication encoding of payload type and payload). The key pair lives in
  ``<data-dir>/keys/``; the public key is exportable.

A stored record is canonical JSON ``{"runId", "seq", "prev", "digest", "envelope"}``.
Because run id, seq, prev and decision id are inside the signed payload, a receipt
cannot be moved to another run, reordered, dropped or duplicated without
:func:`verify_records` naming the first bad record.

**Anchoring.** A chain cut at its end is consistent on its own, so when a run that wrote
receipts ends, :func:`close_run` writes two more signed records:

1. a *ledger entry* (``LedgerEntry``) appended to the ledger's own chain, whose id
   ``@ledger`` cannot be a run id (run ids never start with ``@``). It names the run,
   its receipt count and the digest of its last receipt. The ledger entries of all runs
   form one append-only chain: its last entry is the *head* that ``agentlanes receipts
   head`` prints, to be kept somewhere the data directory's owner cannot rewrite.
2. a *closing record* (``RunClose``) appended to the run's chain, after its last
   receipt: the same count and digest, plus the seq and digest of its ledger entry.
   Nothing may follow it.

Verification then checks every ledger entry against its run's chain (a chain deleted
whole, or cut by even its last receipt, no longer matches), every closing record
against the ledger chain (a cut ledger chain no longer holds the entries that closing
records name), and, given a head kept elsewhere, that the ledger chain still holds that
head unchanged. The ledger entry is written first: a process killed between the two
writes leaves a run anchored without its closing record, which verifies (with a note).

Only runs that wrote receipts are closed. A run without receipts has no chain that
could be deleted or cut, so a closing record would only say "nothing here"; leaving it
out keeps the common run free of closing's cost (one read of the chain and two appends,
about twice a receipt's own append: ``benchmarks/bench_receipts.py``). Deleting a
closed run's chain still cannot go unnoticed: its ledger entry stays, and removing that
entry breaks the ledger chain (or, at its very end, no longer extends a kept head).

Schema versions of the signed bodies (``schemaVersion``; each kind has its own DSSE
payload type, so one kind cannot be passed off as another):

``agentlanes.escalation-receipt/1``: first version.
``agentlanes.ledger-entry/1``: first version (``closedRun``, ``receiptCount``,
``headDigest``, ``status``, ``closedAt``, in the ``@ledger`` chain).
``agentlanes.run-close/1``: first version (``receiptCount``, ``headDigest``,
``ledgerSeq``, ``ledgerDigest``, ``status``, ``closedAt``, last in a run's chain).
``agentlanes.ledger-head/1`` (the unsigned file ``receipts head`` prints around the
signed last ledger entry): first version.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentlanes._keyfile import create_key_file, read_key_file, tighten
from agentlanes.errors import ConfigurationError, RunError
from agentlanes.policy import canonical_json

# cryptography (about a tenth of what agentlanes used to cost to import) is imported where a
# key is made, read or used: a program that never signs or verifies a receipt never loads it.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    from agentlanes.stores.base import Store

__all__ = [
    "CLOSE_PAYLOAD_TYPE",
    "CLOSE_SCHEMA",
    "HEAD_SCHEMA",
    "LEDGER_CHAIN",
    "LEDGER_PAYLOAD_TYPE",
    "LEDGER_SCHEMA",
    "PAYLOAD_TYPE",
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "RECEIPT_SCHEMA",
    "LedgerHead",
    "Receipt",
    "ReceiptSigner",
    "VerifyReport",
    "check_run_id",
    "close_run",
    "data_dir_public_key",
    "key_id_of",
    "ledger_head",
    "load_public_key",
    "read_public_key",
    "receipt_body",
    "verify_records",
]

RECEIPT_SCHEMA = "agentlanes.escalation-receipt/1"
PAYLOAD_TYPE = "application/vnd.agentlanes.escalation-receipt+json"
LEDGER_SCHEMA = "agentlanes.ledger-entry/1"
LEDGER_PAYLOAD_TYPE = "application/vnd.agentlanes.ledger-entry+json"
CLOSE_SCHEMA = "agentlanes.run-close/1"
CLOSE_PAYLOAD_TYPE = "application/vnd.agentlanes.run-close+json"
HEAD_SCHEMA = "agentlanes.ledger-head/1"

LEDGER_CHAIN = "@ledger"
"""The chain id of the ledger entries; run ids never start with ``@``."""

PRIVATE_KEY_FILE = "receipts-ed25519.pem"
PUBLIC_KEY_FILE = "receipts-ed25519.pub.pem"

_RECEIPT, _CLOSE, _ENTRY = "EscalationReceipt", "RunClose", "LedgerEntry"
_KINDS: dict[str, tuple[str, str]] = {
    _RECEIPT: (RECEIPT_SCHEMA, PAYLOAD_TYPE),
    _CLOSE: (CLOSE_SCHEMA, CLOSE_PAYLOAD_TYPE),
    _ENTRY: (LEDGER_SCHEMA, LEDGER_PAYLOAD_TYPE),
}


def check_run_id(run_id: str) -> None:
    """Refuse a run id that could collide with the ledger's reserved chain ids.

    Raises:
        ConfigurationError: the id is empty or starts with ``@``.
    """
    if not isinstance(run_id, str) or not run_id or run_id.startswith("@"):
        raise ConfigurationError(
            f"Run id {run_id!r} is not allowed: run ids must be non-empty and must not start with '@' "
            f"(ids such as {LEDGER_CHAIN!r} are reserved for the receipt ledger)."
        )


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
    check_run_id(run_id)
    return {
        "schemaVersion": RECEIPT_SCHEMA,
        "kind": _RECEIPT,
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


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """``ed25519:`` and the first 16 hex digits of the SHA-256 of the raw public key."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def _public_pem(public_key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


# ------------------------------------------------------------------------- keys


def _kind_of_key(key: object) -> str:
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, rsa, x448, x25519

    for cls, name in (
        ((rsa.RSAPrivateKey, rsa.RSAPublicKey), "an RSA key"),
        ((ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey), "an elliptic-curve (ECDSA) key"),
        ((ed448.Ed448PrivateKey, ed448.Ed448PublicKey), "an Ed448 key"),
        ((dsa.DSAPrivateKey, dsa.DSAPublicKey), "a DSA key"),
        ((x25519.X25519PrivateKey, x25519.X25519PublicKey, x448.X448PrivateKey, x448.X448PublicKey), "an X-key"),
    ):
        if isinstance(key, cls):
            return name
    return "another kind of key"


def _parse_private(data: bytes, path: Path) -> Ed25519PrivateKey:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    restore = (
        "Restore the original from a backup; agentlanes does not replace an existing signing key, because the "
        "receipts signed with it would no longer verify against the data directory's public key."
    )
    if not data.strip():
        raise ConfigurationError(f"The receipts signing key {path} is empty. {restore}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigurationError(
            f"The receipts signing key {path} is encrypted with a password; agentlanes needs an unencrypted "
            "PKCS#8 PEM Ed25519 key, kept private by its file mode (0600)."
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigurationError(
            f"The receipts signing key {path} is not a readable PEM private key (truncated or damaged). {restore}"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(
            f"The receipts signing key {path} holds {_kind_of_key(key)}, not an Ed25519 key; agentlanes signs "
            "receipts with Ed25519 only. Restore the Ed25519 key it created there."
        )
    return key


def load_public_key(pem: str | bytes, *, source: str = "The receipts public key") -> Ed25519PublicKey:
    """An Ed25519 public key from PEM.

    Raises:
        ConfigurationError: the text is not a PEM public key, or not an Ed25519 one.
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = pem.encode() if isinstance(pem, str) else pem
    if not data.strip():
        raise ConfigurationError(f"{source} is empty; it must be an Ed25519 public key in PEM.")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigurationError(
            f"{source} is not a readable PEM public key (truncated, damaged, or a private key); "
            "export it with `agentlanes receipts public-key`."
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigurationError(
            f"{source} holds {_kind_of_key(key)}; receipts are verified with an Ed25519 public key (PEM)."
        )
    return key


def read_public_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in the PEM file ``path`` (never creates anything).

    Raises:
        ConfigurationError: there is no such file, or it is not an Ed25519 public key.
    """
    data = read_key_file(path, "receipts public key")
    if data is None:
        raise ConfigurationError(f"There is no public key file {path}; check the path.")
    return load_public_key(data, source=f"The receipts public key {path}")


class ReceiptSigner:
    """Signs receipt bodies with the installation's Ed25519 key.

    Args:
        key_dir: where ``receipts-ed25519.pem`` (private) and ``receipts-ed25519.pub.pem``
            live, both mode 0600 in a 0700 directory. The pair is created on first use
            (atomically: concurrent first uses agree on one key). An existing key is
            never replaced: an empty, truncated or non-Ed25519 private key, a private
            key missing beside its public key, or a public key that does not belong to
            the private key, is a :class:`~agentlanes.errors.ConfigurationError`. A
            missing public key is derived again from the private key.
        private_key: an explicit key instead (tests).
    """

    def __init__(self, key_dir: Path | None = None, *, private_key: Ed25519PrivateKey | None = None) -> None:
        if private_key is None:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            private_key = Ed25519PrivateKey.generate() if key_dir is None else self._load_or_create(key_dir)
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id_of(self.public_key)

    @staticmethod
    def _load_or_create(key_dir: Path) -> Ed25519PrivateKey:
        path, pub_path = key_dir / PRIVATE_KEY_FILE, key_dir / PUBLIC_KEY_FILE
        data = read_key_file(path, "receipts signing key")
        if data is None:
            if read_key_file(pub_path, "receipts public key") is not None:
                raise ConfigurationError(
                    f"The receipts signing key {path} is missing, but its public key {pub_path} is there: the "
                    "private key was deleted or moved. Restore it from a backup. agentlanes does not make a new "
                    "pair where one existed, because the receipts already signed would no longer verify against "
                    f"the data directory. To start a new key deliberately, move {pub_path} (and the ledger) away."
                )
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            fresh = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            create_key_file(path, fresh)
            # whoever won the race to create it, everybody signs with what is on disk
            data = read_key_file(path, "receipts signing key")
            if data is None:
                raise ConfigurationError(f"The receipts signing key {path} vanished right after it was created.")
        else:
            tighten(path)
        key = _parse_private(data, path)
        pub_pem = _public_pem(key.public_key())
        existing = read_key_file(pub_path, "receipts public key")
        if existing is None:
            with contextlib.suppress(ConfigurationError):  # a read-only key directory: signing needs no public key
                create_key_file(pub_path, pub_pem)
        elif _public_raw(load_public_key(existing, source=f"The receipts public key {pub_path}")) != _public_raw(
            key.public_key()
        ):
            raise ConfigurationError(
                f"The receipts public key {pub_path} does not belong to the signing key {path}: one of them was "
                "replaced. Restore the pair from a backup; verifying with a swapped public key proves nothing."
            )
        else:
            tighten(pub_path)
        return key

    def public_pem(self) -> str:
        """The public key, PEM (what auditors verify with)."""
        return _public_pem(self.public_key).decode()

    def seal(self, body: dict[str, Any]) -> tuple[str, str]:
        """``(digest, stored record text)`` for a chained body (``seq``/``prev`` set)."""
        payload = canonical_json(body)
        digest = "sha256:" + hashlib.sha256(payload).hexdigest()
        payload_type = _KINDS.get(body.get("kind", _RECEIPT), _KINDS[_RECEIPT])[1]
        envelope = {
            "payloadType": payload_type,
            "payload": _b64(payload),
            "signatures": [{"keyid": self.key_id, "sig": _b64(self._key.sign(_pae(payload_type, payload)))}],
        }
        record = {
            "runId": body["runId"],
            "seq": body["seq"],
            "prev": body["prev"],
            "digest": digest,
            "envelope": envelope,
        }
        return digest, canonical_json(record).decode("utf-8")


def _public_raw(key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def data_dir_public_key(key_dir: Path) -> Ed25519PublicKey:
    """The public key in ``key_dir`` (derived from the private key when only that is
    there); never creates or changes anything.

    Raises:
        ConfigurationError: there is no key in ``key_dir``, or its files are damaged
            or do not belong together.
    """
    pub_path, path = key_dir / PUBLIC_KEY_FILE, key_dir / PRIVATE_KEY_FILE
    pub_data = read_key_file(pub_path, "receipts public key")
    priv_data = read_key_file(path, "receipts signing key")
    if pub_data is None and priv_data is None:
        raise ConfigurationError(
            f"There is no receipts key in {key_dir}: nothing was ever signed with this data directory. Check "
            "--data-dir (or AGENTLANES_HOME), or pass the key with --public-key FILE."
        )
    public = None if pub_data is None else load_public_key(pub_data, source=f"The receipts public key {pub_path}")
    if priv_data is not None:
        try:
            derived = _parse_private(priv_data, path).public_key()
        except ConfigurationError:
            if public is None:
                raise
            derived = public  # the public key is what verification needs; signing will report the damage
        if public is not None and _public_raw(public) != _public_raw(derived):
            raise ConfigurationError(
                f"The receipts public key {pub_path} does not belong to the signing key {path}: one of them was "
                "replaced. Restore the pair from a backup; verifying with a swapped public key proves nothing."
            )
        public = derived
    assert public is not None
    return public


# --------------------------------------------------------------------- records


@dataclass(frozen=True)
class Receipt:
    """A stored record, as a run reports it (``body`` is the signed payload).

    Escalation receipts, closing records and ledger entries share this shape;
    ``body["kind"]`` tells them apart.
    """

    run_id: str
    seq: int
    digest: str
    prev: str | None
    body: dict[str, Any]
    text: str

    @property
    def receipt_id(self) -> str:
        return f"{self.run_id}/receipt/{self.seq}"

    @property
    def kind(self) -> str:
        """``EscalationReceipt``, ``RunClose`` or ``LedgerEntry``."""
        return str(self.body.get("kind", _RECEIPT))

    @classmethod
    def from_text(cls, text: str) -> Receipt:
        record = json.loads(text)
        body = json.loads(base64.b64decode(record["envelope"]["payload"]))
        return cls(record["runId"], record["seq"], record["digest"], record["prev"], body, text)


class _ChainMoved(Exception):
    """Raised inside the store's append: the run's chain is not where the close expected."""


async def close_run(store: Store, signer: ReceiptSigner, run_id: str, *, status: str | None = None) -> Receipt | None:
    """Anchor a finished run's receipts in the ledger; call once when the run ends.

    Appends a ledger entry (to the ``@ledger`` chain) naming the run's receipt count and
    last digest, then the run's closing record. Idempotent: a run that is already
    closed gets its existing closing record back, and a run whose process stopped
    between the two writes is simply closed again (the extra ledger entry names the
    same receipts and verifies). A run with no receipts is not closed (see the module
    docstring) and gets ``None``.

    Args:
        store: the store holding the run's receipts.
        signer: the signer of the run's receipts.
        run_id: the run.
        status: the run's final status (``succeeded``, ``failed``, ``cancelled``,
            ``abandoned``...), recorded in both records.

    Returns:
        The closing record, or ``None`` for a run without receipts.

    Raises:
        ConfigurationError: ``run_id`` is reserved.
        RunError: receipts kept being appended to the run while it was being closed.
    """
    check_run_id(run_id)
    for _ in range(3):
        chain = await store.receipts(run_id)
        if not chain:
            return None
        last = chain[-1]
        try:
            last_record = Receipt.from_text(last.text)
        except (ValueError, KeyError, TypeError):
            last_record = None
        if last_record is not None and last_record.kind == _CLOSE:
            return last_record
        count, head, closed_at = last.seq + 1, last.digest, _now_iso()
        entry = await store.append_receipt(
            LEDGER_CHAIN,
            {
                "schemaVersion": LEDGER_SCHEMA,
                "kind": _ENTRY,
                "runId": LEDGER_CHAIN,
                "closedRun": run_id,
                "receiptCount": count,
                "headDigest": head,
                "status": status,
                "closedAt": closed_at,
            },
            signer.seal,
        )

        def seal_if_unchanged(body: dict[str, Any], count: int = count, head: str = head) -> tuple[str, str]:
            if body["seq"] != count or body["prev"] != head:
                raise _ChainMoved  # rolls the store's append back; read the chain again
            return signer.seal(body)

        try:
            stored = await store.append_receipt(
                run_id,
                {
                    "schemaVersion": CLOSE_SCHEMA,
                    "kind": _CLOSE,
                    "runId": run_id,
                    "receiptCount": count,
                    "headDigest": head,
                    "ledgerSeq": entry.seq,
                    "ledgerDigest": entry.digest,
                    "status": status,
                    "closedAt": closed_at,
                },
                seal_if_unchanged,
            )
        except _ChainMoved:
            continue
        return Receipt.from_text(stored.text)
    raise RunError(
        f"Run {run_id} could not be closed: receipts kept being appended to its chain while it was being closed. "
        "Close a run only after its last stage has finished.",
        run_id=run_id,
    )


# -------------------------------------------------------------------- the head


@dataclass(frozen=True)
class LedgerHead:
    """The ledger's signed head, to be kept outside the data directory.

    Attributes:
        count: how many ledger entries (closed runs) the ledger chain holds.
        digest: the digest of the last ledger entry (``None`` while it is empty).
        key_id: the id of the key that signed it.
        time: when the last entry was written (from its signed body).
        record: the last ledger entry, exactly as stored (signed).
        public_key_pem: the signing key, so the head pins the key as well.
    """

    count: int
    digest: str | None
    key_id: str | None
    time: str | None
    record: str | None
    public_key_pem: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "schemaVersion": HEAD_SCHEMA,
            "kind": "LedgerHead",
            "count": self.count,
            "digest": self.digest,
            "keyId": self.key_id,
            "time": self.time,
            "record": self.record,
            "publicKey": self.public_key_pem,
        }

    @classmethod
    def from_json(cls, data: object, *, source: str = "the head") -> LedgerHead:
        """A head read back from what :meth:`to_json` wrote.

        Raises:
            ConfigurationError: it is not such a head.
        """
        if not isinstance(data, dict) or data.get("kind") != "LedgerHead":
            raise ConfigurationError(
                f"{source} is not a ledger head (expected the JSON object `agentlanes receipts head` prints)."
            )
        if data.get("schemaVersion") != HEAD_SCHEMA:
            raise ConfigurationError(
                f"{source} is a ledger head of schema {str(data.get('schemaVersion'))[:60]!r}; this agentlanes "
                f"reads {HEAD_SCHEMA}."
            )
        count = data.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ConfigurationError(f"{source}: count must be a non-negative integer.")
        for name in ("digest", "keyId", "time", "record", "publicKey"):
            if data.get(name) is not None and not isinstance(data.get(name), str):
                raise ConfigurationError(f"{source}: {name} must be a string or null.")
        if count > 0 and (data.get("digest") is None or data.get("record") is None):
            raise ConfigurationError(f"{source}: a head with entries must carry their digest and the last record.")
        return cls(
            count, data.get("digest"), data.get("keyId"), data.get("time"), data.get("record"), data.get("publicKey")
        )


def ledger_head(records: Iterable[str], public_key: Ed25519PublicKey | None = None) -> LedgerHead:
    """The head of the ledger chain among ``records`` (verify them first)."""
    last: tuple[int, str, str] | None = None
    for text in records:
        try:
            record = json.loads(text)
            if record.get("runId") != LEDGER_CHAIN:
                continue
            seq = record["seq"]
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            continue
        if isinstance(seq, int) and (last is None or seq > last[0]):
            last = (seq, record.get("digest"), text)
    pem = None if public_key is None else _public_pem(public_key).decode()
    key_id = None if public_key is None else key_id_of(public_key)
    if last is None:
        return LedgerHead(0, None, key_id, None, None, pem)
    receipt = Receipt.from_text(last[2])
    signed_by = _receipt_key_id(last[2])
    return LedgerHead(last[0] + 1, last[1], signed_by or key_id, receipt.body.get("closedAt"), last[2], pem)


def _receipt_key_id(text: str) -> str | None:
    """The key id a stored record says signed it (unverified)."""
    try:
        keyid = json.loads(text)["envelope"]["signatures"][0]["keyid"]
    except (ValueError, KeyError, IndexError, TypeError, RecursionError):
        return None
    return keyid if isinstance(keyid, str) else None


# ------------------------------------------------------------------ verification


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of verifying receipt records.

    Attributes:
        checked: how many records were read.
        runs: how many run chains they formed (the ledger chain not counted).
        problem: ``None`` when all is well, else the first bad record (``index`` is its
            0-based position in the input; ``-1`` when the problem is the head) and
            what is wrong with it.
        receipts: how many escalation receipts there are.
        closed: runs whose chain is anchored by a ledger entry.
        ledger_entries: the length of the ledger chain.
        head_digest: the digest of its last entry (``None`` when it is empty).
        unanchored: runs whose chain no ledger entry covers (whole or in part).
        notes: what a reader should know although nothing failed.
        key_id: the id of the key the records were verified with.
    """

    checked: int
    runs: int
    problem: tuple[int, str] | None
    receipts: int = 0
    closed: int = 0
    ledger_entries: int = 0
    head_digest: str | None = None
    unanchored: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)
    key_id: str = ""

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass
class _Rec:
    index: int
    chain: str
    seq: int
    digest: str
    body: dict[str, Any]
    kind: str


class _Bad(Exception):
    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index
        self.message = message


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse(index: int, text: str, public_key: Ed25519PublicKey, key_id: str) -> _Rec:
    """One record, checked on its own (everything but its place among the others)."""
    where = f"record {index + 1}"
    try:
        record = json.loads(text)
        if not isinstance(record, dict) or set(record) != {"runId", "seq", "prev", "digest", "envelope"}:
            raise TypeError
        envelope = record["envelope"]
        if not isinstance(envelope, dict) or not isinstance(envelope.get("signatures"), list):
            raise TypeError
        if len(envelope["signatures"]) != 1 or not isinstance(envelope["signatures"][0], dict):
            raise TypeError
        signature_entry = envelope["signatures"][0]
        payload_type, payload_b64, sig_b64 = (
            envelope.get("payloadType"),
            envelope.get("payload"),
            signature_entry.get("sig"),
        )
        if not (isinstance(payload_type, str) and isinstance(payload_b64, str) and isinstance(sig_b64, str)):
            raise TypeError
        payload = base64.b64decode(payload_b64, validate=True)
        signature = base64.b64decode(sig_b64, validate=True)
        run_id, seq, prev, digest = record["runId"], record["seq"], record["prev"], record["digest"]
        if not isinstance(run_id, str) or not _is_count(seq) or not isinstance(digest, str):
            raise TypeError
        if prev is not None and not isinstance(prev, str):
            raise TypeError
    except (ValueError, KeyError, IndexError, TypeError, RecursionError, binascii.Error):
        raise _Bad(index, f"{where}: not a receipt record (unreadable JSON)") from None
    where = f"record {index + 1} ({run_id}/receipt/{seq})"
    # Every byte counts: the record must be exactly the canonical form of what it
    # says, so a change to an unsigned part (spacing, the key id) is caught too.
    try:
        canonical = canonical_json(record).decode("utf-8")
    except ValueError:
        canonical = None
    if canonical != text.rstrip("\n"):
        raise _Bad(index, f"{where}: record is not in canonical form (altered)")
    if signature_entry.get("keyid") != key_id:
        raise _Bad(index, f"{where}: signed by another key than {key_id}")
    if payload_type not in {t for _, t in _KINDS.values()}:
        raise _Bad(index, f"{where}: wrong payload type")
    from cryptography.exceptions import InvalidSignature  # loaded already: public_key is a cryptography key

    try:
        public_key.verify(signature, _pae(payload_type, payload))
    except InvalidSignature:
        raise _Bad(index, f"{where}: signature does not verify") from None
    if "sha256:" + hashlib.sha256(payload).hexdigest() != digest:
        raise _Bad(index, f"{where}: digest does not match the payload")
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):
        raise _Bad(index, f"{where}: signed payload is not JSON") from None
    if not isinstance(body, dict):
        raise _Bad(index, f"{where}: signed payload is not a JSON object")
    if (body.get("runId"), body.get("seq"), body.get("prev")) != (run_id, seq, prev):
        raise _Bad(
            index,
            f"{where}: the signed receipt belongs to {body.get('runId')}/receipt/{body.get('seq')}, "
            "not where it stands (moved or spliced from another run)",
        )
    kind = body.get("kind", _RECEIPT)
    if kind not in _KINDS:
        raise _Bad(index, f"{where}: unknown record kind {str(kind)[:40]!r}")
    schema, expected_type = _KINDS[kind]
    if body.get("schemaVersion") != schema:
        raise _Bad(
            index,
            f"{where}: schema {str(body.get('schemaVersion'))[:60]!r} is not {schema} (written by a newer agentlanes?)",
        )
    if payload_type != expected_type:
        raise _Bad(index, f"{where}: payload type {payload_type} does not match a {kind} record")
    if run_id.startswith("@"):
        if run_id != LEDGER_CHAIN or kind != _ENTRY:
            raise _Bad(index, f"{where}: only ledger entries may stand in the reserved chain {LEDGER_CHAIN}")
        closed, count, head = body.get("closedRun"), body.get("receiptCount"), body.get("headDigest")
        if not isinstance(closed, str) or not closed or closed.startswith("@") or not _is_count(count):
            raise _Bad(index, f"{where}: ledger entry does not name a run and its receipt count")
        if (count == 0) != (head is None) or (head is not None and not isinstance(head, str)):
            raise _Bad(index, f"{where}: ledger entry's head digest does not fit its receipt count")
    elif kind == _ENTRY:
        raise _Bad(index, f"{where}: a ledger entry outside the ledger chain {LEDGER_CHAIN}")
    elif kind == _CLOSE and (
        body.get("receiptCount") != seq
        or body.get("headDigest") != prev
        or not _is_count(body.get("ledgerSeq"))
        or not isinstance(body.get("ledgerDigest"), str)
    ):
        raise _Bad(index, f"{where}: closing record does not match its place in the chain")
    return _Rec(index, run_id, seq, digest, body, kind)


def verify_records(
    records: Iterable[str],
    public_key: Ed25519PublicKey,
    *,
    head: LedgerHead | None = None,
    partial: bool = False,
) -> VerifyReport:
    """Verify stored records (one JSON record each), in chain order per chain.

    Checks, per record: it parses; the envelope's payload type fits its kind; the
    Ed25519 signature over DSSE's encoding; the digest of the payload; that the signed
    body's run id, seq and prev equal the record's; no digest seen twice; and, per chain,
    that seq counts 0, 1, 2... with each ``prev`` the previous record's digest, and
    that nothing follows a run's closing record.

    Then, across chains: every ledger entry's run still holds the receipts it was
    closed with (same count, same last digest); every closing record's ledger entry is
    in the ledger chain; and, with ``head``, that the ledger chain still holds the
    head's entry unchanged (so it extends the head) and was signed by the same key.

    Args:
        records: stored record texts.
        public_key: the key to verify with.
        head: a head kept from ``agentlanes receipts head``.
        partial: the records are an export of some runs only (``export --run``):
            closing records are not checked against the ledger chain.
    """
    key_id = key_id_of(public_key)
    parsed: list[_Rec] = []
    last: dict[str, _Rec] = {}
    closes: dict[str, _Rec] = {}
    seen: set[str] = set()
    index = -1

    def report(problem: tuple[int, str] | None, **extra: Any) -> VerifyReport:
        runs = sum(1 for chain in last if chain != LEDGER_CHAIN)
        receipts = sum(1 for r in parsed if r.kind == _RECEIPT)
        return VerifyReport(index + 1, runs, problem, receipts, key_id=key_id, **extra)

    for index, text in enumerate(records):
        try:
            rec = _parse(index, text, public_key, key_id)
        except _Bad as bad:
            return report((bad.index, bad.message))
        where = f"record {index + 1} ({rec.chain}/receipt/{rec.seq})"
        if rec.digest in seen:
            return report((index, f"{where}: duplicate of an earlier record"))
        seen.add(rec.digest)
        previous = last.get(rec.chain)
        expected_seq, expected_prev = (0, None) if previous is None else (previous.seq + 1, previous.digest)
        what = "ledger entry" if rec.chain == LEDGER_CHAIN else "receipt"
        if rec.seq != expected_seq:
            owner = "the ledger chain" if rec.chain == LEDGER_CHAIN else f"run {rec.chain}"
            return report((index, f"{where}: expected {what} {expected_seq} of {owner} here (dropped or reordered)"))
        if rec.body.get("prev") != expected_prev:
            return report((index, f"{where}: prev does not name the previous {what}"))
        if rec.chain in closes:
            return report(
                (
                    index,
                    f"{where}: run {rec.chain} was closed at receipt {closes[rec.chain].seq}; "
                    "nothing may follow its closing record (appended after the close)",
                )
            )
        if rec.kind == _CLOSE:
            closes[rec.chain] = rec
        last[rec.chain] = rec
        parsed.append(rec)

    # Across chains. Problems are collected and the one at the earliest record wins.
    problems: list[tuple[int, str]] = []
    chains: dict[str, list[_Rec]] = {}
    for rec in parsed:
        chains.setdefault(rec.chain, []).append(rec)
    ledger = chains.pop(LEDGER_CHAIN, [])
    anchored: dict[str, int] = {}  # run → receipts covered by a ledger entry
    for entry in ledger:
        where = f"record {entry.index + 1} ({LEDGER_CHAIN}/receipt/{entry.seq})"
        run, count, head_digest = entry.body["closedRun"], entry.body["receiptCount"], entry.body["headDigest"]
        chain = chains.get(run, [])
        receipts = [r for r in chain if r.kind == _RECEIPT]
        if count and not chain:
            if partial:
                continue
            problems.append(
                (
                    entry.index,
                    f"{where}: run {run} was closed with {count} receipt(s), but the ledger holds no record of "
                    "it (its chain was deleted)",
                )
            )
        elif len(receipts) < count:
            problems.append(
                (
                    entry.index,
                    f"{where}: run {run} was closed with {count} receipt(s), but its chain holds "
                    f"{len(receipts)} (receipts deleted or truncated)",
                )
            )
        elif count and receipts[count - 1].digest != head_digest:
            problems.append(
                (entry.index, f"{where}: receipt {count - 1} of run {run} is not the one it was closed with (replaced)")
            )
        else:
            anchored[run] = max(anchored.get(run, 0), count)
    for run, close in closes.items():
        where = f"record {close.index + 1} ({run}/receipt/{close.seq})"
        k, digest = close.body["ledgerSeq"], close.body["ledgerDigest"]
        if partial and not ledger:
            continue
        if not ledger:
            problems.append(
                (
                    close.index,
                    f"{where}: run {run}'s closing record names ledger entry {k}, but there is no ledger chain "
                    "(it was deleted; or this is a partial export, which `verify --partial` checks)",
                )
            )
        elif k >= len(ledger):
            problems.append(
                (
                    close.index,
                    f"{where}: run {run}'s closing record names ledger entry {k}, but the ledger chain holds "
                    f"{len(ledger)} entr{'y' if len(ledger) == 1 else 'ies'} (the ledger chain was truncated)",
                )
            )
        elif ledger[k].digest != digest or ledger[k].body.get("closedRun") != run:
            problems.append(
                (close.index, f"{where}: run {run}'s closing record names a ledger entry that is not in this ledger")
            )
        elif (ledger[k].body["receiptCount"], ledger[k].body["headDigest"]) != (close.seq, close.body["headDigest"]):
            problems.append(
                (close.index, f"{where}: run {run}'s closing record and its ledger entry name different receipts")
            )
    notes: list[str] = []
    if partial and not ledger:
        anchored.update({run: close.seq for run, close in closes.items()})  # closed; the ledger is not at hand
    unanchored = tuple(
        run for run, chain in chains.items() if anchored.get(run, 0) < sum(1 for r in chain if r.kind == _RECEIPT)
    )
    head_problem: tuple[int, str] | None = None
    if head is not None:
        head_problem = _check_head(head, ledger, public_key, key_id)
    if problems or head_problem is not None:
        first = min(problems) if problems else None
        if head_problem is not None and (first is None or head_problem[0] < first[0]):
            first = head_problem
        return report(first)
    crashed = sorted(run for run in anchored if run not in closes and anchored[run] > 0)
    if crashed:
        notes.append(
            f"{len(crashed)} run(s) anchored in the ledger without a closing record in their chain (the process "
            f"stopped between the two writes): {', '.join(crashed[:5])}{' ...' if len(crashed) > 5 else ''}"
        )
    if unanchored:
        notes.append(
            f"{len(unanchored)} run chain(s) not anchored in the ledger: their runs have not ended, were killed, or "
            "wrote them before agentlanes closed runs; a cut at the end of such a chain cannot be detected: "
            f"{', '.join(unanchored[:5])}{' ...' if len(unanchored) > 5 else ''}"
        )
    if partial:
        notes.append("partial export: closing records were not checked against the ledger chain")
    return report(
        None,
        closed=sum(1 for run in chains if run not in unanchored),
        ledger_entries=len(ledger),
        head_digest=ledger[-1].digest if ledger else None,
        unanchored=unanchored,
        notes=tuple(notes),
    )


def _check_head(
    head: LedgerHead, ledger: list[_Rec], public_key: Ed25519PublicKey, key_id: str
) -> tuple[int, str] | None:
    if head.key_id is not None and head.key_id != key_id:
        return (
            -1,
            f"the head was signed by {head.key_id}, but the ledger is verified with {key_id}: the signing key was "
            "replaced (or the wrong key was given)",
        )
    if head.public_key_pem is not None:
        try:
            pinned = load_public_key(head.public_key_pem, source="The head's public key")
        except ConfigurationError as exc:
            return (-1, str(exc).rstrip("."))
        if _public_raw(pinned) != _public_raw(public_key):
            return (-1, f"the head pins another public key than {key_id}: the signing key was replaced")
    if head.count == 0:
        return None
    assert head.record is not None
    try:
        rec = _parse(-1, head.record, public_key, key_id)
    except _Bad as bad:
        return (-1, "the head's own record does not verify: " + bad.message.split(": ", 1)[-1])
    if rec.chain != LEDGER_CHAIN or rec.seq != head.count - 1 or rec.digest != head.digest:
        return (-1, f"the head's record is not ledger entry {head.count - 1} with the head's digest (altered head)")
    if len(ledger) < head.count:
        where = f"record {ledger[-1].index + 1} ({LEDGER_CHAIN}/receipt/{ledger[-1].seq})" if ledger else "the ledger"
        return (
            ledger[-1].index if ledger else -1,
            f"{where}: the ledger chain ends at {len(ledger)} entr{'y' if len(ledger) == 1 else 'ies'}, but the head "
            f"holds {head.count} (entries were removed after the head was taken)",
        )
    mine = ledger[head.count - 1]
    if mine.digest != head.digest:
        return (
            mine.index,
            f"record {mine.index + 1} ({LEDGER_CHAIN}/receipt/{mine.seq}): this ledger entry is not the one the head "
            "holds (the ledger was rewritten)",
        )
    return None
