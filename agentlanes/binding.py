"""Local + personal route bindings as a routing input (CONTRACT D3).

A ``LocalPersonalRouteBinding`` says which local model profile serves a user's local
lane, when a personal artifact (say a LoRA adapter) may be used instead, and when the
prompt may leave the machine. :func:`bind` turns a binding, its
``PersonalTuningContract`` (the user's consent, from model-governance-ledger), the
binding's task class, the resource signals, the time and two caller-supplied flags into
a :class:`BindingDecision`: a target (``base-local``, ``personal-local``,
``quality-local``, ``hosted``, ``deny``), the profile or artifact refs, and the reasons
every other target was refused. Pure: no I/O, no clock (the time is an input).

Targets are tried in order: the route's ``preferredTarget``, its ``fallbackTarget``,
then ``quality-local``, then ``base-local``; the first admissible one wins:

* ``base-local``: ``localModelProfileAvailable`` and ``localServiceHealthy``
  (``local:profile-unavailable``, ``local:service-unhealthy``);
* ``quality-local``: the same and a ``qualityFallbackLocalProfileRef``
  (``quality-local:no-profile``);
* ``personal-local``: local health, personalization enabled and not disabled/revoked
  (``personal:disabled``), the binding's contract (``personal:contract-missing``,
  ``personal:contract-invalid``, ``personal:contract-mismatch``), consent granted
  (``personal:consent-<status>``) and unexpired (``personal:consent-expired``), ledger
  approval when the binding asks for it (``personal:ledger-approval-missing``);
* ``hosted``: the network when the route needs it (``hosted:network-unavailable``) and
  a policy approval reference for prompt egress (``hosted:egress-needs-policy``);
* a route's ``requiresConsent`` also holds its preferred target to a granted, unexpired
  consent (``consent:required``).

No route for the task class is ``deny`` (``binding:no-route``); a malformed binding is
``deny`` (``binding:invalid``). In a stage decision a local target leaves only
``no-model`` and ``local-cheap`` (``binding:local-only``), ``hosted`` leaves the hosted
lanes to the router, and ``deny`` leaves only ``no-model`` (``binding:deny``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal, cast

from agentlanes._files import NotJSON, read_json_file
from agentlanes.errors import ConfigurationError, PolicyError
from agentlanes.lanes import HOSTED_LANES, RANK
from agentlanes.policy import (
    Loaded,
    LocalPersonalRouteBinding,
    PersonalTuningContract,
    canonical_json,
    load_document,
    parse_time,
)
from agentlanes.signals import SignalSnapshot

__all__ = [
    "BINDING_SCHEMA_VERSION",
    "LOCAL_TARGETS",
    "TARGETS",
    "BindingDecision",
    "BindingRequest",
    "RouteTarget",
    "bind",
    "load_binding",
    "load_contract",
]

BINDING_SCHEMA_VERSION: Final = "agentlanes.binding-decision/1"
"""``agentlanes.binding-decision/1``: first version."""

RouteTarget = Literal["base-local", "personal-local", "quality-local", "hosted", "deny"]
TARGETS: Final[tuple[str, ...]] = ("base-local", "personal-local", "quality-local", "hosted", "deny")
LOCAL_TARGETS: Final = frozenset({"base-local", "personal-local", "quality-local"})


def _digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _doc_digest(document: object) -> str:
    if isinstance(document, NotJSON):
        return _digest(document.raw)
    try:
        return _digest(canonical_json(document))
    except (TypeError, ValueError, RecursionError):
        return _digest(repr(document).encode("utf-8", "backslashreplace"))


def _load_as(document: object, model: type[Any]) -> tuple[Any | None, str | None]:
    """``(typed document, digest)``; the document is ``None`` when it is not a valid
    ``model`` (and the digest ``None`` when there was no document)."""
    if document is None:
        return None, None
    if isinstance(document, Loaded):
        return (document.document if isinstance(document.document, model) else None), document.digest
    if isinstance(document, model):
        loaded = load_document(document.model_dump(mode="json", by_alias=True, exclude_unset=True))
        return document, loaded.digest
    if isinstance(document, Mapping):
        try:
            loaded = load_document(document)
        except (PolicyError, RecursionError):
            return None, _doc_digest(document)
        return (loaded.document if isinstance(loaded.document, model) else None), loaded.digest
    return None, _doc_digest(document)


def _time(value: datetime | str) -> datetime:
    if isinstance(value, datetime):
        return parse_time(value.isoformat())
    try:
        return parse_time(value)
    except ValueError as exc:
        raise ConfigurationError(f"The binding time {value!r} is not usable: {exc}.") from None


@dataclass(frozen=True, slots=True)
class BindingDecision:
    """Which local or hosted target serves a binding's task class, and why not the others.

    Attributes:
        target: ``base-local``, ``personal-local``, ``quality-local``, ``hosted`` or ``deny``.
        profile_ref: the local model profile for a local target.
        artifact_ref: the personal artifact for ``personal-local``.
        reasons: every reason a tried target was refused, in order, without repeats,
            then the reason for ``deny`` when no route applies (``binding:no-route``,
            ``binding:invalid``).
        refused: each refused target with its reasons, in the order tried.
        task: the binding task class asked for.
        route_id: the binding route used (``None`` when there was none).
        binding_id: the binding's ``bindingId`` (``None`` when it was malformed).
        binding_digest: the binding document's digest.
        contract_digest: the consent contract's digest, when one was given.
        ledger_approved: the caller said the ledger approved the personal artifact.
        egress_approval: the caller's policy approval reference for prompt egress.
        now: the time the consent was judged at (ISO 8601, UTC); recorded, but not part
            of :attr:`digest`, so that a decision id never depends on the clock.
        digest: ``sha256:<hex>`` over everything above but ``now``.
    """

    target: str
    profile_ref: str | None
    artifact_ref: str | None
    reasons: tuple[str, ...]
    refused: tuple[tuple[str, tuple[str, ...]], ...]
    task: str
    route_id: str | None
    binding_id: str | None
    binding_digest: str | None
    contract_digest: str | None
    ledger_approved: bool
    egress_approval: str | None
    now: str
    digest: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.digest:
            body = self.to_json()
            body.pop("now", None)
            body.pop("digest", None)
            object.__setattr__(self, "digest", _doc_digest(body))

    @property
    def local(self) -> bool:
        """True for the three local targets."""
        return self.target in LOCAL_TARGETS

    def lane_reasons(self) -> dict[str, tuple[str, ...]]:
        """The reasons this binding adds to each lane of a stage decision (D3.8)."""
        if self.target in LOCAL_TARGETS:
            return {lane: ("binding:local-only",) for lane in RANK if lane in HOSTED_LANES}
        if self.target == "deny":
            return {lane: ("binding:deny",) for lane in RANK if lane != "no-model"}
        return {}

    def to_json(self) -> dict[str, Any]:
        """The decision as JSON (what ``agentlanes bind`` prints; also its record form)."""
        return {
            "schemaVersion": BINDING_SCHEMA_VERSION,
            "target": self.target,
            "profileRef": self.profile_ref,
            "artifactRef": self.artifact_ref,
            "reasons": list(self.reasons),
            "refused": {target: list(reasons) for target, reasons in self.refused},
            "taskClass": self.task,
            "routeId": self.route_id,
            "bindingId": self.binding_id,
            "bindingDigest": self.binding_digest,
            "contractDigest": self.contract_digest,
            "ledgerApproved": self.ledger_approved,
            "egressApproval": self.egress_approval,
            "now": self.now,
            "digest": self.digest,
        }

    def to_record(self) -> dict[str, Any]:
        """Same as :meth:`to_json` (read back with :meth:`from_record`)."""
        return self.to_json()

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> BindingDecision:
        """The value :meth:`to_record` wrote (a recorded run's binding, for replay).

        Raises:
            ValueError: ``record`` is not such a record.
        """
        try:
            target = str(record["target"])
            if target not in TARGETS:
                raise ValueError(f"unknown binding target {target!r}")
            refused = record["refused"]
            if not isinstance(refused, Mapping):
                raise ValueError("refused is not an object")

            def opt(key: str) -> str | None:
                value = record.get(key)
                return None if value is None else str(value)

            return cls(
                target=target,
                profile_ref=opt("profileRef"),
                artifact_ref=opt("artifactRef"),
                reasons=tuple(str(r) for r in record["reasons"]),
                refused=tuple((str(t), tuple(str(r) for r in rs)) for t, rs in refused.items()),
                task=str(record["taskClass"]),
                route_id=opt("routeId"),
                binding_id=opt("bindingId"),
                binding_digest=opt("bindingDigest"),
                contract_digest=opt("contractDigest"),
                ledger_approved=record["ledgerApproved"] is True,
                egress_approval=opt("egressApproval"),
                now=str(record["now"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a binding-decision record ({exc!r})") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class BindingRequest:
    """Everything :func:`bind` needs except the resource signals: pass one as
    ``RouteRequest(binding=...)`` and the request's own signals complete it.

    Attributes:
        binding: the ``LocalPersonalRouteBinding`` (a parsed JSON object, the typed
            document or a :class:`~agentlanes.policy.Loaded` one).
        task: the binding's task class (its own vocabulary: ``office-assist``...).
        now: the time consent is judged at (a datetime or ISO 8601 text).
        contract: the ``PersonalTuningContract`` holding the user's consent, if any.
        ledger_approved: the governance ledger approved the personal artifact.
        egress_approval: a policy approval reference that lets the prompt leave the machine.
    """

    binding: object
    task: str
    now: datetime | str
    contract: object = None
    ledger_approved: bool = False
    egress_approval: str | None = None

    def decide(self, signals: SignalSnapshot | Mapping[str, Any]) -> BindingDecision:
        """:func:`bind` with these inputs and ``signals``."""
        return bind(
            self.binding,
            task=self.task,
            signals=signals,
            now=self.now,
            contract=self.contract,
            ledger_approved=self.ledger_approved,
            egress_approval=self.egress_approval,
        )


def bind(
    binding: object,
    *,
    task: str,
    signals: SignalSnapshot | Mapping[str, Any],
    now: datetime | str,
    contract: object = None,
    ledger_approved: bool = False,
    egress_approval: str | None = None,
) -> BindingDecision:
    """Decide which target serves ``task`` under ``binding`` (CONTRACT D3).

    Missing or malformed inputs fail closed as data: a malformed binding is ``deny``
    (``binding:invalid``), a missing or malformed contract refuses ``personal-local``,
    missing signals count as unhealthy or offline.

    Args:
        binding: the ``LocalPersonalRouteBinding`` (parsed JSON, typed, or loaded).
        task: the binding's task class.
        signals: the resource signals (only the local-health and network ones are read).
        now: the time consent is judged at.
        contract: the ``PersonalTuningContract``, if any.
        ledger_approved: the ledger approved the personal artifact.
        egress_approval: a policy approval reference for prompt egress (non-empty).

    Raises:
        ConfigurationError: ``now`` is not a date-time.
    """
    when = _time(now)
    stamp = when.isoformat().replace("+00:00", "Z")
    snap = signals if isinstance(signals, SignalSnapshot) else SignalSnapshot(signals)
    approval = egress_approval or None
    doc, binding_digest = _load_as(binding, LocalPersonalRouteBinding)
    contract_doc, contract_digest = _load_as(contract, PersonalTuningContract)

    def decision(
        target: str,
        refused: list[tuple[str, tuple[str, ...]]],
        *,
        profile: str | None = None,
        artifact: str | None = None,
        route_id: str | None = None,
        cause: str | None = None,
    ) -> BindingDecision:
        flat = tuple(dict.fromkeys([*(r for _, reasons in refused for r in reasons), *([cause] if cause else [])]))
        return BindingDecision(
            target=target,
            profile_ref=profile,
            artifact_ref=artifact,
            reasons=flat,
            refused=tuple(refused),
            task=task,
            route_id=route_id,
            binding_id=doc.binding_id if doc is not None else None,
            binding_digest=binding_digest,
            contract_digest=contract_digest,
            ledger_approved=ledger_approved,
            egress_approval=approval,
            now=stamp,
        )

    if doc is None:
        return decision("deny", [], cause="binding:invalid")
    b = cast(LocalPersonalRouteBinding, doc)
    route = next((r for r in b.routes if r.task_class == task), None)
    if route is None:
        return decision("deny", [], cause="binding:no-route")

    local_health: list[str] = []
    if not snap.local_model_profile_available:
        local_health.append("local:profile-unavailable")
    if not snap.local_service_healthy:
        local_health.append("local:service-unhealthy")

    # The consent: the binding's own contract, granted and unexpired.
    contract_reasons: list[str] = []
    p = b.personalization
    if contract is None:
        contract_reasons.append("personal:contract-missing")
    elif contract_doc is None:
        contract_reasons.append("personal:contract-invalid")
    else:
        c = cast(PersonalTuningContract, contract_doc)
        if c.contract_id != p.governance_contract_ref:
            contract_reasons.append("personal:contract-mismatch")
        else:
            if c.consent.status != "granted":
                contract_reasons.append(f"personal:consent-{c.consent.status}")
            if parse_time(c.consent.expires_at) <= when and "personal:consent-expired" not in contract_reasons:
                contract_reasons.append("personal:consent-expired")
    consent_ok = not contract_reasons

    def admit(target: str) -> tuple[str, ...]:
        out: list[str] = []
        if target == "base-local":
            out += local_health
        elif target == "quality-local":
            out += local_health
            if not b.quality_fallback_local_profile_ref:
                out.append("quality-local:no-profile")
        elif target == "personal-local":
            out += local_health
            if not p.enabled or p.default_state in ("disabled", "revoked"):
                out.append("personal:disabled")
            out += contract_reasons
            if p.activation_requires_ledger_approval and not ledger_approved:
                out.append("personal:ledger-approval-missing")
        elif target == "hosted":
            if route.requires_network and not snap.network_available:
                out.append("hosted:network-unavailable")
            if approval is None:
                # promptEgressDefault is deny or allow-with-policy: either way the prompt
                # leaves only with a policy approval (hostedFallbackRequiresPolicy).
                out.append("hosted:egress-needs-policy")
        if target == route.preferred_target and route.requires_consent and not consent_ok:
            out.append("consent:required")
        return tuple(out)

    order = list(dict.fromkeys([route.preferred_target, route.fallback_target, "quality-local", "base-local"]))
    refused: list[tuple[str, tuple[str, ...]]] = []
    for target in order:
        if target is None:
            continue
        if target == "deny":
            return decision("deny", refused, route_id=route.route_id)
        why = admit(target)
        if why:
            refused.append((target, why))
            continue
        if target == "quality-local":
            return decision(target, refused, profile=b.quality_fallback_local_profile_ref, route_id=route.route_id)
        if target == "personal-local":
            return decision(
                target, refused, profile=b.default_local_profile_ref, artifact=p.artifact_ref, route_id=route.route_id
            )
        if target == "base-local":
            return decision(target, refused, profile=b.default_local_profile_ref, route_id=route.route_id)
        return decision(target, refused, route_id=route.route_id)
    return decision("deny", refused, route_id=route.route_id)


def load_binding(path: str | Path) -> object:
    """The binding document at ``path``, parsed (checked by :func:`bind`, which fails
    closed on a malformed one).

    Raises:
        ConfigurationError: the file is missing, unreadable, not a regular file or too big.
    """
    return read_json_file(path, what="binding")


def load_contract(path: str | Path) -> object:
    """The consent contract at ``path``, parsed (checked by :func:`bind`).

    Raises:
        ConfigurationError: the file is missing, unreadable, not a regular file or too big.
    """
    return read_json_file(path, what="consent contract")
