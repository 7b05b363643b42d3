"""Routing ceilings (model-router's ``routing_consequence``) as a routing input (CONTRACT D2).

model-router's SVF receipt-state, environment-state and runtime-state routing policies
end in a ``routing_consequence`` block: what a validation or runtime state lets a run
do. :func:`parse_ceiling` checks one such document into a :class:`Ceiling` (never
raising: a malformed one makes every lane but ``no-model`` infeasible with
``invalid-ceiling``); :class:`CeilingLimits` combines several, the strictest value of
each field winning, and says what they do to a stage:

* ``model_lane_ceiling``: every lane ranked above it gets ``ceiling:model-lane:<lane>``
  (lanes are snake_case there, ``high_end``; agentlanes writes them ``high-end``);
* ``high_end_allowed: false`` / ``pro_allowed: false``: ``ceiling:high-end-not-allowed``
  / ``ceiling:pro-not-allowed``;
* ``deterministic_verification_required``: a ``verification`` stage without a
  deterministic verifier is deferred (``ceiling:deterministic-verification-required``);
* ``autonomy_ceiling``: ``report_only`` and ``advisory`` defer ``execution`` and
  ``tool-use`` (``ceiling:autonomy:<value>``); ``human_review_required`` makes them need
  an approval (:meth:`CeilingLimits.approval_required`); ``bounded_autonomy`` restricts
  nothing;
* ``must_preserve_warnings`` are carried into every decision and receipt.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from agentlanes._files import NotJSON, read_json_file
from agentlanes.lanes import RANK
from agentlanes.policy import Loaded, RoutingCeiling, canonical_json

__all__ = [
    "AUTONOMY_ORDER",
    "Ceiling",
    "CeilingLimits",
    "load_ceiling",
    "parse_ceiling",
]

AUTONOMY_ORDER: Final[tuple[str, ...]] = ("report_only", "advisory", "human_review_required", "bounded_autonomy")
"""Autonomy ceilings, strictest first."""
_DEFERS: Final = frozenset({"report_only", "advisory"})
_GATED_STAGES: Final = frozenset({"execution", "tool-use"})
INVALID: Final = "invalid-ceiling"


def lane_from_snake(lane: str) -> str:
    """``high_end`` → ``high-end`` (model-router's ceilings write lanes in snake_case)."""
    return lane.replace("_", "-")


def _digest_of(document: object) -> str:
    if isinstance(document, NotJSON):
        body = document.raw
    else:
        try:
            body = canonical_json(document)
        except (TypeError, ValueError, RecursionError):
            body = repr(document).encode("utf-8", "backslashreplace")
    return "sha256:" + hashlib.sha256(body).hexdigest()


@dataclass(frozen=True, slots=True)
class Ceiling:
    """One routing-ceiling document, checked.

    Attributes:
        digest: ``sha256:<hex>`` of the document's canonical JSON (every field, so that
            two documents that differ anywhere are told apart in a decision's inputs).
        valid: false when the document is malformed (unknown enum value, missing field).
        problem: why it is malformed (agentlanes' words, the first problem only).
        policy_id: the document's ``policy_id`` (when valid).
        lane_ceiling: ``model_lane_ceiling`` as an agentlanes lane (``high-end``).
        autonomy: ``autonomy_ceiling``.
        high_end_allowed: ``high_end_allowed``.
        pro_allowed: ``pro_allowed``.
        deterministic_required: ``deterministic_verification_required``.
        fallback_posture: ``fallback_posture`` (recorded, not interpreted).
        warnings: ``must_preserve_warnings``.
    """

    digest: str
    valid: bool
    problem: str | None = None
    policy_id: str | None = None
    lane_ceiling: str = "pro"
    autonomy: str = "bounded_autonomy"
    high_end_allowed: bool = True
    pro_allowed: bool = True
    deterministic_required: bool = False
    fallback_posture: str | None = None
    warnings: tuple[str, ...] = ()

    def to_record(self) -> dict[str, Any]:
        """JSON form, as decisions record it (read back with :meth:`from_record`)."""
        return {
            "digest": self.digest,
            "valid": self.valid,
            "problem": self.problem,
            "policyId": self.policy_id,
            "modelLaneCeiling": self.lane_ceiling,
            "autonomyCeiling": self.autonomy,
            "highEndAllowed": self.high_end_allowed,
            "proAllowed": self.pro_allowed,
            "deterministicVerificationRequired": self.deterministic_required,
            "fallbackPosture": self.fallback_posture,
            "mustPreserveWarnings": list(self.warnings),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Ceiling:
        """The value :meth:`to_record` wrote (for replay).

        Raises:
            ValueError: ``record`` is not such a record.
        """
        try:
            lane, autonomy = str(record["modelLaneCeiling"]), str(record["autonomyCeiling"])
            if lane not in RANK or autonomy not in AUTONOMY_ORDER:
                raise ValueError(f"unknown lane or autonomy ceiling ({lane!r}, {autonomy!r})")
            return cls(
                digest=str(record["digest"]),
                valid=record["valid"] is True,
                problem=None if record.get("problem") is None else str(record["problem"]),
                policy_id=None if record.get("policyId") is None else str(record["policyId"]),
                lane_ceiling=lane,
                autonomy=autonomy,
                high_end_allowed=record["highEndAllowed"] is True,
                pro_allowed=record["proAllowed"] is True,
                deterministic_required=record["deterministicVerificationRequired"] is True,
                fallback_posture=None if record.get("fallbackPosture") is None else str(record["fallbackPosture"]),
                warnings=tuple(str(w) for w in record["mustPreserveWarnings"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a routing-ceiling record ({exc!r})") from None


def _problem(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    where = ("/" + "/".join(str(p) for p in error["loc"]) if error["loc"] else "/")[:200]
    if error["type"] == "missing":
        return f"{where} is missing"
    if error["type"] == "extra_forbidden":
        return f"{where} is not a routing_consequence field"
    return f"{where} is invalid ({error['type']})"


def parse_ceiling(document: object) -> Ceiling:
    """Check one routing-ceiling document into a :class:`Ceiling`; never raises.

    Args:
        document: the parsed JSON document, a :class:`~agentlanes.policy.RoutingCeiling`
            or a :class:`~agentlanes.policy.Loaded` one. Anything else (``None`` for a
            ceiling that was expected and did not arrive) is an invalid ceiling.
    """
    if isinstance(document, Loaded):
        document = document.document
    if isinstance(document, RoutingCeiling):
        model = document
        digest = _digest_of(document.model_dump(mode="json", exclude_unset=True))
    else:
        digest = _digest_of(document)
        if isinstance(document, NotJSON):
            return Ceiling(digest=digest, valid=False, problem="the document is not JSON")
        if not isinstance(document, Mapping):
            return Ceiling(digest=digest, valid=False, problem="the document is not a JSON object")
        try:
            model = RoutingCeiling.model_validate(document, strict=True)
        except ValidationError as exc:
            return Ceiling(digest=digest, valid=False, problem=_problem(exc))
        except RecursionError:
            return Ceiling(digest=digest, valid=False, problem="the document is nested too deeply")
    rc = model.routing_consequence
    return Ceiling(
        digest=digest,
        valid=True,
        policy_id=model.policy_id,
        lane_ceiling=lane_from_snake(rc.model_lane_ceiling),
        autonomy=rc.autonomy_ceiling,
        high_end_allowed=rc.high_end_allowed,
        pro_allowed=rc.pro_allowed,
        deterministic_required=rc.deterministic_verification_required,
        fallback_posture=rc.fallback_posture,
        warnings=tuple(rc.must_preserve_warnings),
    )


def load_ceiling(path: str | Path) -> Ceiling:
    """Read and check the routing-ceiling document at ``path``.

    Malformed content fails closed (an invalid :class:`Ceiling`); only a file that
    cannot be read is an error.

    Raises:
        ConfigurationError: the file is missing, unreadable, not a regular file or too big.
    """
    return parse_ceiling(read_json_file(path, what="routing ceiling"))


@dataclass(frozen=True, slots=True)
class CeilingLimits:
    """Several ceilings combined: the strictest value of each field.

    Attributes:
        invalid: at least one document was malformed.
        lane_ceiling: the lowest ``model_lane_ceiling``.
        autonomy: the strictest ``autonomy_ceiling``.
        high_end_allowed: false if any document says false.
        pro_allowed: false if any document says false.
        deterministic_required: true if any document says true.
        warnings: every ``must_preserve_warnings`` entry, first occurrence order.
        fallback_postures: each valid document's ``fallback_posture``.
    """

    invalid: bool
    lane_ceiling: str
    autonomy: str
    high_end_allowed: bool
    pro_allowed: bool
    deterministic_required: bool
    warnings: tuple[str, ...]
    fallback_postures: tuple[str, ...]

    @classmethod
    def combine(cls, ceilings: Iterable[Ceiling]) -> CeilingLimits:
        """The strictest of ``ceilings`` (no ceilings restrict nothing)."""
        items = list(ceilings)
        valid = [c for c in items if c.valid]
        return cls(
            invalid=len(valid) != len(items),
            lane_ceiling=min((c.lane_ceiling for c in valid), key=RANK.__getitem__, default="pro"),
            autonomy=min((c.autonomy for c in valid), key=AUTONOMY_ORDER.index, default="bounded_autonomy"),
            high_end_allowed=all(c.high_end_allowed for c in valid),
            pro_allowed=all(c.pro_allowed for c in valid),
            deterministic_required=any(c.deterministic_required for c in valid),
            warnings=tuple(dict.fromkeys(w for c in valid for w in c.warnings)),
            fallback_postures=tuple(c.fallback_posture for c in valid if c.fallback_posture),
        )

    def lane_reasons(self) -> dict[str, tuple[str, ...]]:
        """The reasons the ceilings add to each lane, whatever the stage."""
        out: dict[str, tuple[str, ...]] = {}
        cap = RANK[self.lane_ceiling]
        for lane, rank in RANK.items():
            reasons: list[str] = []
            if rank > cap:
                reasons.append(f"ceiling:model-lane:{self.lane_ceiling}")
            if lane == "high-end" and not self.high_end_allowed:
                reasons.append("ceiling:high-end-not-allowed")
            if lane == "pro" and not self.pro_allowed:
                reasons.append("ceiling:pro-not-allowed")
            if self.invalid and lane != "no-model":
                reasons.append(INVALID)
            if reasons:
                out[lane] = tuple(reasons)
        return out

    def stage_reasons(self, stage: str, deterministic: bool) -> tuple[str, ...]:
        """Reasons that defer the whole stage (every lane gets them)."""
        out: list[str] = []
        if self.deterministic_required and stage == "verification" and not deterministic:
            out.append("ceiling:deterministic-verification-required")
        if self.autonomy in _DEFERS and stage in _GATED_STAGES:
            out.append(f"ceiling:autonomy:{self.autonomy}")
        return tuple(out)

    def approval_required(self, stage: str) -> bool:
        """``human_review_required``: ``execution`` and ``tool-use`` need an approval, as a
        task class with ``requiresHumanJustification`` does (the runtime asks for it)."""
        return self.autonomy == "human_review_required" and stage in _GATED_STAGES


def as_ceilings(value: object) -> tuple[Ceiling, ...]:
    """Ceilings from what a caller passed: one document or a sequence of them (documents,
    :class:`Ceiling` values or loaded documents). ``None`` is no ceilings.

    Raises:
        TypeError: ``value`` is neither a document nor a sequence of them.
    """
    if value is None:
        return ()
    if isinstance(value, (Ceiling, Mapping, RoutingCeiling, Loaded)):
        value = (value,)
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise TypeError(
            f"ceilings must be a sequence of routing-ceiling documents (or Ceiling values), not {type(value).__name__}"
        )
    return tuple(item if isinstance(item, Ceiling) else parse_ceiling(item) for item in value)
