"""Sandbox findings (OpenShell RFC 0009) as a routing input (CONTRACT D1).

A sandbox's egress middleware reports, before routing, what it found in a prompt:
``{"findings": [{"type", "label", "count", "confidence", "severity"}], "metadata":
{string: string}}``. :func:`parse_findings` checks such a document once into a
:class:`Findings` value that the router reads; it never raises: a document that is not
of this shape, or is over the RFC's bounds, is a :class:`Findings` with ``valid`` false,
and every lane but ``no-model`` is then infeasible with ``invalid-findings``.

What the router reads, matching a metadata key on its last dot-separated part
(``anonymize.sensitivity`` is ``sensitivity``):

* ``requires_local_model`` = ``true`` (any case): every hosted lane gets
  ``finding:requires-local-model``;
* ``sensitivity``: ``public`` / ``internal`` restrict nothing; ``confidential`` removes
  ``pro`` (``finding:sensitivity-confidential``); ``restricted`` removes every hosted
  lane (``finding:sensitivity-restricted``); any other value is treated as restricted
  (``finding:sensitivity-unknown``);
* a finding with severity ``critical`` (any case): every hosted lane gets
  ``finding:critical-severity``.

Text from middleware is untrusted: values are compared, never copied into reasons.
The matched *keys* are recorded (they are bounded and name what shaped a decision);
metadata values and finding labels are not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from agentlanes._files import NotJSON, read_json_file
from agentlanes.lanes import HOSTED_LANES, RANK

__all__ = [
    "MAX_FINDINGS",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_ENTRIES",
    "Findings",
    "load_findings",
    "parse_findings",
]

MAX_FINDINGS: Final = 320
"""RFC 0009: at most 32 findings per stage, 10 stages per chain."""
MAX_METADATA_ENTRIES: Final = 64
MAX_METADATA_BYTES: Final = 32 * 1024
"""Keys and values together, UTF-8 encoded."""

_FINDING_KEYS: Final = frozenset({"type", "label", "count", "confidence", "severity"})
_SENSITIVITY: Final = {
    "public": None,
    "internal": None,
    "confidential": "confidential",
    "restricted": "restricted",
}
_NON_HOSTED: Final = tuple(lane for lane in RANK if lane not in HOSTED_LANES)
INVALID: Final = "invalid-findings"


def _digest_of(document: object) -> str:
    if isinstance(document, NotJSON):
        body = document.raw
    else:
        try:
            body = json.dumps(
                document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            ).encode("utf-8")
        except (TypeError, ValueError, RecursionError):
            # Not JSON-representable (it came from Python, not a file): still a stable digest.
            body = repr(document).encode("utf-8", "backslashreplace")
    return "sha256:" + hashlib.sha256(body).hexdigest()


@dataclass(frozen=True, slots=True)
class Findings:
    """A findings document, checked once.

    Attributes:
        digest: ``sha256:<hex>`` of the document's canonical JSON (of its bytes when it
            was not JSON); part of the decision id of every decision it shapes.
        valid: false when the document is not of the RFC's shape or over its bounds.
        problem: why it is invalid, in agentlanes' own words (never the document's text).
        requires_local_model: a ``requires_local_model`` key said ``true``.
        sensitivity: the sensitivity levels found, normalised to ``confidential``,
            ``restricted`` or ``unknown`` (``public`` / ``internal`` are not listed).
        critical: a finding has severity ``critical``.
        matched_keys: the metadata keys that were read, in document order.
    """

    digest: str
    valid: bool
    problem: str | None = None
    requires_local_model: bool = False
    sensitivity: tuple[str, ...] = ()
    critical: bool = False
    matched_keys: tuple[str, ...] = ()

    def lane_reasons(self) -> dict[str, tuple[str, ...]]:
        """The reasons these findings add to each lane (lanes they leave alone are absent)."""
        if not self.valid:
            return {lane: (INVALID,) for lane in RANK if lane != "no-model"}
        hosted: list[str] = []
        pro: list[str] = []
        if self.requires_local_model:
            hosted.append("finding:requires-local-model")
        for level in self.sensitivity:
            if level == "confidential":
                pro.append("finding:sensitivity-confidential")
            else:
                hosted.append(f"finding:sensitivity-{level}")
        if self.critical:
            hosted.append("finding:critical-severity")
        out: dict[str, tuple[str, ...]] = {}
        for lane in RANK:
            reasons = (*hosted, *pro) if lane == "pro" else tuple(hosted) if lane in HOSTED_LANES else ()
            if reasons:
                out[lane] = tuple(dict.fromkeys(reasons))
        return out

    @property
    def local_only(self) -> bool:
        """True when these findings leave only ``no-model`` and ``local-cheap``."""
        return (
            not self.valid
            or self.requires_local_model
            or self.critical
            or any(level != "confidential" for level in self.sensitivity)
        )

    def to_record(self) -> dict[str, Any]:
        """JSON form, as decisions record it (and replay reads it back with
        :meth:`from_record`)."""
        return {
            "digest": self.digest,
            "valid": self.valid,
            "problem": self.problem,
            "requiresLocalModel": self.requires_local_model,
            "sensitivity": list(self.sensitivity),
            "criticalSeverity": self.critical,
            "matchedKeys": list(self.matched_keys),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Findings:
        """The value :meth:`to_record` wrote (a recorded run's findings, for replay).

        Raises:
            ValueError: ``record`` is not such a record.
        """
        try:
            sensitivity = tuple(str(s) for s in record["sensitivity"])
            if any(s not in ("confidential", "restricted", "unknown") for s in sensitivity):
                raise ValueError(f"unknown sensitivity level in {sensitivity!r}")
            return cls(
                digest=str(record["digest"]),
                valid=record["valid"] is True,
                problem=None if record.get("problem") is None else str(record["problem"]),
                requires_local_model=record["requiresLocalModel"] is True,
                sensitivity=sensitivity,
                critical=record["criticalSeverity"] is True,
                matched_keys=tuple(str(k) for k in record["matchedKeys"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a findings record ({exc!r})") from None


def _shape_problem(document: object) -> str | None:
    """Why ``document`` is not a findings document within the RFC's bounds (None if it is)."""
    if isinstance(document, NotJSON):
        return "the document is not JSON"
    if not isinstance(document, Mapping):
        return "the document is not a JSON object"
    if set(document) != {"findings", "metadata"}:
        return "the document must have exactly the members findings and metadata"
    findings, metadata = document["findings"], document["metadata"]
    if not isinstance(findings, list):
        return "findings is not an array"
    if len(findings) > MAX_FINDINGS:
        return f"more than {MAX_FINDINGS} findings"
    for finding in findings:
        if not isinstance(finding, Mapping) or set(finding) != _FINDING_KEYS:
            return "a finding is not an object with exactly type, label, count, confidence and severity"
        if not all(isinstance(finding[k], str) for k in ("type", "label", "confidence", "severity")):
            return "a finding's type, label, confidence or severity is not a string"
        count = finding["count"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            return "a finding's count is not an unsigned integer"
    if not isinstance(metadata, Mapping):
        return "metadata is not an object"
    if len(metadata) > MAX_METADATA_ENTRIES:
        return f"more than {MAX_METADATA_ENTRIES} metadata entries"
    size = 0
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            return "a metadata entry is not a string to a string"
        try:
            size += len(key.encode("utf-8")) + len(value.encode("utf-8"))
        except UnicodeEncodeError:
            return "a metadata entry is not valid Unicode"
    if size > MAX_METADATA_BYTES:
        return f"metadata is larger than {MAX_METADATA_BYTES} bytes"
    return None


def parse_findings(document: object) -> Findings:
    """Check a findings document into :class:`Findings`; never raises.

    Args:
        document: the parsed JSON document. Anything that is not a findings document
            (``None`` included: findings that were expected and did not arrive) gives an
            invalid :class:`Findings`, which fails the decision closed.
    """
    digest = _digest_of(document)
    problem = _shape_problem(document)
    if problem is not None:
        return Findings(digest=digest, valid=False, problem=problem)
    assert isinstance(document, Mapping)
    requires_local = False
    levels: list[str] = []
    matched: list[str] = []
    for key, value in document["metadata"].items():
        name = key.rsplit(".", 1)[-1]
        if name == "requires_local_model":
            matched.append(key)
            if value.lower() == "true":
                requires_local = True
        elif name == "sensitivity":
            matched.append(key)
            level = _SENSITIVITY.get(value, "unknown")
            if level is not None and level not in levels:
                levels.append(level)
    critical = any(f["severity"].lower() == "critical" for f in document["findings"])
    order = {"confidential": 0, "restricted": 1, "unknown": 2}
    return Findings(
        digest=digest,
        valid=True,
        requires_local_model=requires_local,
        sensitivity=tuple(sorted(levels, key=order.__getitem__)),
        critical=critical,
        matched_keys=tuple(matched),
    )


def load_findings(path: str | Path) -> Findings:
    """Read and check the findings document at ``path``.

    Content that is not a findings document fails closed (an invalid :class:`Findings`);
    only a file that cannot be read is an error.

    Raises:
        ConfigurationError: the file is missing, unreadable, not a regular file or too big.
    """
    return parse_findings(read_json_file(path, what="findings"))
