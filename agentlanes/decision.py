"""Route requests and decisions.

:class:`RouteRequest` is a typed pydantic model (it arrives from users, the CLI and batch
files). :class:`RouteDecision` and :class:`Candidate` are immutable named tuples: the router
builds one per stage on the hot path, where a validating model (or a frozen dataclass,
whose ``__init__`` goes through ``object.__setattr__`` per field) would cost more than
the decision itself. Both render to JSON in two forms:

* **native** (:meth:`RouteDecision.to_native`): everything agentlanes knows, including
  the signal problems, the escalation state, upgrades and document digests;
  ``schemaVersion`` ``agentlanes.route-decision/1``.
* **upstream** (:meth:`RouteDecision.to_upstream`): the public
  ``AgentExecutionRouteDecision`` v0.1 document, valid against its schema.

Requests may carry the neighbours' inputs (CONTRACT D): sandbox ``findings``, routing
``ceilings`` and a personal ``binding``. A decision shaped by any of them records them
(by digest, with what was read) under ``neighbourInputs`` in the native form and under
``evidence.agentlanesNeighbourInputs`` in the upstream form; a request without them
renders exactly as before, with the same ``decisionId``.

Schema versions of the native form:
``agentlanes.route-decision/1``: first version; ``neighbourInputs`` appears only in
decisions that had such inputs (an addition, old readers are unaffected).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic.alias_generators import to_camel

from agentlanes.binding import BindingDecision, BindingRequest
from agentlanes.ceiling import Ceiling, CeilingLimits, as_ceilings
from agentlanes.findings import Findings, parse_findings
from agentlanes.lanes import COST_CLASS, DETERMINISTIC_STAGES
from agentlanes.signals import REQUIRED_SIGNALS, ResourceSignals, SignalSnapshot

if TYPE_CHECKING:
    from agentlanes.policy import PolicyBundle

__all__ = [
    "NATIVE_SCHEMA_VERSION",
    "Candidate",
    "DecisionStatus",
    "RouteDecision",
    "RouteRequest",
    "RouterMeta",
    "Upgrade",
    "neighbour_inputs_from_record",
]

NATIVE_SCHEMA_VERSION: Final = "agentlanes.route-decision/1"
DecisionStatus = Literal["selected", "downgraded", "deferred", "denied"]


class RouteRequest(BaseModel):
    """What one stage asks the router.

    Names are checked against the documents by the router (an unknown task class,
    stage, risk class, window or lane is a :class:`~agentlanes.errors.RouteInputError`).
    """

    model_config = ConfigDict(
        strict=True,
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        arbitrary_types_allowed=True,
        defer_build=True,  # built on the first request: importing agentlanes does not pay for it
    )

    task_class: str
    """A ``taskClass`` of the policy, e.g. ``routine-code``."""
    stage: str
    """A ``chainStages[].stage`` of the policy, e.g. ``planning``."""
    signals: SignalSnapshot
    """The resource signals; pass a mapping and it is checked into a snapshot."""
    risk_class: str = "medium"
    requested_lane: str | None = None
    escalation_reason: str | None = None
    budget_window: str = "task"
    budget_remaining: Annotated[float, Field(allow_inf_nan=False)] = 2.0
    """What the caller says is left in the window; a ledger may lower it further."""
    deterministic: bool = False
    """The stage has a deterministic verifier or tool (CONTRACT B3)."""
    excluded_lanes: tuple[tuple[str, str], ...] = ()
    """Chain state (CONTRACT C): lanes this stage may not use, each with the reason that
    is added to its candidate, e.g. ``(("standard", "escalated-from:standard"),)`` after
    repeated standard-lane failure or ``(("cheap", "provider-unavailable"),)``."""
    findings: Findings | None = None
    """Sandbox findings (CONTRACT D1); pass the parsed document and it is checked into
    :class:`~agentlanes.findings.Findings` (a malformed one fails closed)."""
    ceilings: tuple[Ceiling, ...] = ()
    """Routing ceilings (CONTRACT D2); pass the parsed ``routing_consequence`` documents
    and they are checked into :class:`~agentlanes.ceiling.Ceiling` values."""
    binding: BindingDecision | None = None
    """A local + personal binding decision (CONTRACT D3); pass a
    :class:`~agentlanes.binding.BindingRequest` and it is decided with this request's
    signals."""

    if TYPE_CHECKING:
        # What callers may pass: the validator below turns mappings and
        # ResourceSignals into a SignalSnapshot, so the attribute is always one.
        def __init__(
            self,
            *,
            task_class: str,
            stage: str,
            signals: SignalSnapshot | Mapping[str, Any] | ResourceSignals,
            risk_class: str = "medium",
            requested_lane: str | None = None,
            escalation_reason: str | None = None,
            budget_window: str = "task",
            budget_remaining: float = 2.0,
            deterministic: bool = False,
            excluded_lanes: tuple[tuple[str, str], ...] = (),
            findings: Findings | Mapping[str, Any] | None = None,
            ceilings: Sequence[Ceiling | Mapping[str, Any]] | Mapping[str, Any] | None = (),
            binding: BindingDecision | BindingRequest | None = None,
        ) -> None: ...

    @property
    def has_neighbour_inputs(self) -> bool:
        """True when findings, ceilings or a binding shape this request."""
        return self.findings is not None or bool(self.ceilings) or self.binding is not None

    def upstream_input(self) -> dict[str, Any]:
        """The request as the upstream decision document's ``input`` (camelCase)."""
        return {
            "taskClass": self.task_class,
            "stage": self.stage,
            "riskClass": self.risk_class,
            "requestedLane": self.requested_lane,
            "escalationReason": self.escalation_reason,
            "budgetWindow": self.budget_window,
            "budgetRemaining": self.budget_remaining,
        }

    @classmethod
    def trusted(
        cls,
        *,
        task_class: str,
        stage: str,
        signals: SignalSnapshot,
        risk_class: str,
        requested_lane: str | None,
        escalation_reason: str | None,
        budget_window: str,
        budget_remaining: float,
        deterministic: bool,
        excluded_lanes: tuple[tuple[str, str], ...],
        findings: Findings | Mapping[str, Any] | None = None,
        ceilings: tuple[Ceiling, ...] | Sequence[Mapping[str, Any]] = (),
        binding: BindingDecision | BindingRequest | None = None,
    ) -> RouteRequest:
        """Build a request from values agentlanes has already checked (the runtime and
        replay), without validating them again: what ``model_construct`` does, minus its
        generic overhead (it is most of a warm decision's cost otherwise).

        The neighbours' inputs are best passed as checked values (:class:`Findings`, a
        tuple of :class:`Ceiling`, a :class:`BindingDecision`); documents are checked
        here, and a :class:`BindingRequest` is decided with ``signals``."""
        if findings is not None and not isinstance(findings, Findings):
            findings = parse_findings(findings)
        if ceilings and not (isinstance(ceilings, tuple) and all(isinstance(c, Ceiling) for c in ceilings)):
            ceilings = as_ceilings(ceilings)
        if binding is not None and not isinstance(binding, BindingDecision):
            binding = binding.decide(signals)
        request = cls.__new__(cls)
        object.__setattr__(
            request,
            "__dict__",
            {
                "task_class": task_class,
                "stage": stage,
                "signals": signals,
                "risk_class": risk_class,
                "requested_lane": requested_lane,
                "escalation_reason": escalation_reason,
                "budget_window": budget_window,
                "budget_remaining": budget_remaining,
                "deterministic": deterministic,
                "excluded_lanes": excluded_lanes,
                "findings": findings,
                "ceilings": ceilings,
                "binding": binding,
            },
        )
        object.__setattr__(request, "__pydantic_fields_set__", _ALL_FIELDS)
        object.__setattr__(request, "__pydantic_extra__", None)
        object.__setattr__(request, "__pydantic_private__", None)
        return request

    @field_validator("signals", mode="plain")
    @classmethod
    def _snapshot(cls, value: object) -> SignalSnapshot:
        if isinstance(value, SignalSnapshot):
            return value
        if isinstance(value, ResourceSignals):
            return value.snapshot()
        if isinstance(value, Mapping):
            return SignalSnapshot(value)
        raise TypeError(
            f"signals must be a mapping of resource signals or a SignalSnapshot, not {type(value).__name__}"
        )

    @field_validator("findings", mode="plain")
    @classmethod
    def _findings(cls, value: object) -> Findings | None:
        if value is None or isinstance(value, Findings):
            return value
        return parse_findings(value)

    @field_validator("ceilings", mode="plain")
    @classmethod
    def _ceilings(cls, value: object) -> tuple[Ceiling, ...]:
        return as_ceilings(value)

    @field_validator("binding", mode="plain")
    @classmethod
    def _binding(cls, value: object, info: ValidationInfo) -> BindingDecision | None:
        if value is None or isinstance(value, BindingDecision):
            return value
        if isinstance(value, BindingRequest):
            signals = info.data.get("signals")
            return value.decide(signals if isinstance(signals, SignalSnapshot) else SignalSnapshot({}))
        raise TypeError(
            f"binding must be a BindingRequest (the binding document, task class, time...) or a BindingDecision, "
            f"not {type(value).__name__}"
        )


def neighbour_inputs_from_record(record: Mapping[str, Any] | None) -> dict[str, Any]:
    """The neighbours' inputs a decision recorded (:meth:`RouteDecision.neighbour_inputs`,
    the native form's ``neighbourInputs``), as keyword arguments for
    :class:`RouteRequest` or :meth:`RouteRequest.trusted`: what replay and counterfactual
    replay pass to decide a recorded stage again with the same inputs (and so the same
    decision id). ``None`` (a decision without such inputs) gives ``{}``.

    Raises:
        ValueError: ``record`` is not such a record.
    """
    if not record:
        return {}
    if not isinstance(record, Mapping):
        raise ValueError(f"not a neighbour-inputs record: {type(record).__name__}")
    out: dict[str, Any] = {}
    if record.get("findings") is not None:
        out["findings"] = Findings.from_record(record["findings"])
    ceilings = record.get("ceilings") or ()
    if ceilings:
        out["ceilings"] = tuple(Ceiling.from_record(c) for c in ceilings)
    if record.get("binding") is not None:
        out["binding"] = BindingDecision.from_record(record["binding"])
    return out


class RouterMeta:
    """Per-router constants that decisions render (shared, never copied per decision)."""

    __slots__ = (
        "cost_class",
        "currency",
        "documents",
        "floors",
        "on_budget_pressure",
        "optimizer_ref",
        "policy_ref",
        "premium_reserve_share",
        "tasks",
        "upstream_evidence",
    )

    def __init__(self, bundle: PolicyBundle) -> None:
        pol, opt, cat = bundle.policy, bundle.optimizer, bundle.catalog
        self.policy_ref = pol.policy_id
        self.optimizer_ref = opt.optimizer_id
        self.currency = opt.budget_policy.currency
        self.on_budget_pressure = opt.budget_policy.on_budget_pressure
        self.premium_reserve_share = opt.budget_policy.premium_reserve_share or 0.0
        costs = dict(COST_CLASS)
        costs.update({m.lane_id: m.cost_class for m in pol.model_lanes})
        self.cost_class = costs
        self.floors: dict[str, tuple[str, bool]] = {
            f.risk_class: (f.minimum_lane, f.requires_verification) for f in opt.quality_policy.risk_floors
        }
        self.tasks: dict[str, tuple[str, bool]] = {
            t.task_class: (t.default_lane, t.requires_human_justification) for t in pol.task_classes
        }
        """Per task class: its default lane and whether it needs a human justification."""
        ev = opt.evidence
        self.upstream_evidence = {
            "emitRouteDecision": pol.evidence.emit_route_decision,
            "emitBudgetDecision": ev.emit_budget_decision,
            "emitResourceSnapshot": ev.emit_resource_snapshot,
            "emitQuotaSnapshot": ev.emit_quota_snapshot,
            "emitCandidateSet": ev.emit_candidate_set,
            "emitSelectedCandidate": ev.emit_selected_candidate,
            "promptEvidenceMode": pol.context_policy.prompt_storage or "hash-only",
            "decisionAbi": opt.enforcement.decision_abi,
        }
        pl, ol, cl = bundle.loaded
        self.documents = {
            "policyId": pol.policy_id,
            "policyDigest": pl.digest,
            "optimizerId": opt.optimizer_id,
            "optimizerDigest": ol.digest,
            "catalogId": cat.catalog_id,
            "catalogDigest": cl.digest,
        }

    def quality(self, risk_class: str, stage: str, deterministic: bool) -> dict[str, Any]:
        """The quality block of a decision: the risk floor and how it is met."""
        minimum, verify = self.floors.get(risk_class, ("no-model", False))
        out: dict[str, Any] = {"minimumLane": minimum, "requiresVerification": verify}
        if deterministic and stage in DETERMINISTIC_STAGES:
            out["metByDeterministicCheck"] = True
        return out


class Candidate(NamedTuple):
    """One lane as the router evaluated it.

    Attributes:
        lane: the lane.
        feasible: true when no rule fired.
        estimated_cost: in the catalog's currency, rounded to 6 decimals.
        reasons: every rule that fired, in the contract's rule order (empty if feasible).
    """

    lane: str
    feasible: bool
    estimated_cost: float
    reasons: tuple[str, ...]

    def to_native(self) -> dict[str, Any]:
        """JSON form (camelCase)."""
        return {
            "lane": self.lane,
            "feasible": self.feasible,
            "estimatedCost": self.estimated_cost,
            "reasons": list(self.reasons),
        }


class Upgrade(NamedTuple):
    """A selection ranked above the requested lane (never silent: CONTRACT B4).

    Attributes:
        requested: the lane the caller asked for.
        selected: the lane chosen instead.
        causes: why the requested lane was not used (its failing rules).
    """

    requested: str
    selected: str
    causes: tuple[str, ...]


class RouteDecision(NamedTuple):
    """The router's answer for one stage; pure data, no clock in it.

    Attributes:
        decision_id: digest of the inputs (documents, request, signals).
        status: ``selected``, ``downgraded``, ``deferred`` or ``denied``.
        lane: the chosen lane, ``None`` unless selected/downgraded.
        reason: the headline reason (``cheapest-feasible-candidate``...).
        reasons: every reason behind the status (signal problems for a fail-closed
            decision, else the headline reason).
        estimated_cost: cost of the chosen lane.
        candidates: every lane of ``candidateOrder``, in that order.
        requested: evaluation of the requested lane, if one was requested.
        upgrade: set when the selection ranks above the requested lane.
        escalation_reason: the reason given, if any.
        escalation_valid: whether it is one of the policy's allowed reasons.
        budget_remaining: what the decision was allowed to spend (least of the
            caller's figure and the ledger's, when a ledger was consulted).
        ledger_remaining: the ledger's figure, when one was consulted.
        request: the request.
        meta: the router's constants (document refs, floors) used to render it.
    """

    decision_id: str
    status: DecisionStatus
    lane: str | None
    reason: str
    reasons: tuple[str, ...]
    estimated_cost: float | None
    candidates: tuple[Candidate, ...]
    requested: Candidate | None
    upgrade: Upgrade | None
    escalation_valid: bool
    budget_remaining: float
    ledger_remaining: float | None
    request: RouteRequest
    meta: RouterMeta

    @property
    def admitted(self) -> bool:
        """True when a lane may run the stage."""
        return self.lane is not None

    @property
    def stage(self) -> str:
        """The stage this decision is for."""
        return self.request.stage

    @property
    def task_class(self) -> str:
        """The task class this decision is for."""
        return self.request.task_class

    @property
    def warnings(self) -> tuple[str, ...]:
        """The routing ceilings' ``must_preserve_warnings`` (CONTRACT D2), to be carried
        into every record of the run."""
        if not self.request.ceilings:
            return ()
        return CeilingLimits.combine(self.request.ceilings).warnings

    @property
    def approval_required(self) -> bool:
        """A routing ceiling says ``human_review_required`` and this stage is
        ``execution`` or ``tool-use``: it needs an approval before it runs (CONTRACT D2)."""
        if not self.request.ceilings:
            return False
        return CeilingLimits.combine(self.request.ceilings).approval_required(self.request.stage)

    def neighbour_inputs(self) -> dict[str, Any] | None:
        """The neighbours' inputs that shaped this decision, by digest and with what was
        read from them (``None`` when there were none)."""
        req = self.request
        if req.findings is None and not req.ceilings and req.binding is None:
            return None
        return {
            "findings": None if req.findings is None else req.findings.to_record(),
            "ceilings": [c.to_record() for c in req.ceilings],
            "binding": None if req.binding is None else req.binding.to_record(),
            "mustPreserveWarnings": list(self.warnings),
            "approvalRequired": self.approval_required,
        }

    def candidate(self, lane: str) -> Candidate | None:
        """The candidate for ``lane``, if it was evaluated."""
        for cand in self.candidates:
            if cand.lane == lane:
                return cand
        return None

    def to_native(self) -> dict[str, Any]:
        """Everything agentlanes knows about this decision, as JSON-ready data."""
        req = self.request
        meta = self.meta
        out: dict[str, Any] = {
            "schemaVersion": NATIVE_SCHEMA_VERSION,
            "decisionId": self.decision_id,
            "status": self.status,
            "lane": self.lane,
            "reason": self.reason,
            "reasons": list(self.reasons),
            "estimatedCost": self.estimated_cost,
            "costClass": meta.cost_class.get(self.lane) if self.lane else None,
            "input": {
                **req.upstream_input(),
                "deterministic": req.deterministic,
                "excludedLanes": dict(req.excluded_lanes),
            },
            "escalation": {
                "reason": req.escalation_reason,
                "valid": self.escalation_valid,
                "inForce": self.escalation_valid,
            },
            "upgrade": None
            if self.upgrade is None
            else {
                "requested": self.upgrade.requested,
                "selected": self.upgrade.selected,
                "causes": list(self.upgrade.causes),
            },
            "quality": meta.quality(req.risk_class, req.stage, req.deterministic),
            "budget": {
                "window": req.budget_window,
                "requested": req.budget_remaining,
                "ledgerRemaining": self.ledger_remaining,
                "remaining": self.budget_remaining,
                "currency": meta.currency,
                "onBudgetPressure": meta.on_budget_pressure,
                "premiumReserveShare": meta.premium_reserve_share,
            },
            "candidates": [c.to_native() for c in self.candidates],
            "requestedEvaluation": None if self.requested is None else self.requested.to_native(),
            "signals": {
                "digest": req.signals.digest,
                "problems": list(req.signals.problems),
                "values": dict(req.signals.json_values),
            },
            "documents": dict(meta.documents),
        }
        neighbours = self.neighbour_inputs()
        if neighbours is not None:
            out["neighbourInputs"] = neighbours
        return out

    def to_upstream(self, *, created_at: datetime | str | None = None) -> dict[str, Any]:
        """The public ``AgentExecutionRouteDecision`` v0.1 document.

        Args:
            created_at: timestamp to stamp on the document (now, in UTC, by default).
                It is not part of :attr:`decision_id`.
        """
        req = self.request
        meta = self.meta
        if created_at is None:
            created_at = datetime.now(UTC)
        if isinstance(created_at, datetime):
            created_at = created_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
        raw = req.signals.json_values
        resources = {k: raw[k] for k in sorted(raw) if k != "estimatedLaneCosts"}
        for name in REQUIRED_SIGNALS:
            resources.setdefault(name, None)
        requested = None
        if self.requested is not None:
            requested = {
                "lane": self.requested.lane,
                "feasible": self.requested.feasible,
                "reasons": list(self.requested.reasons) or ["feasible"],
            }
        floor = meta.quality(req.risk_class, req.stage, req.deterministic)
        evidence: dict[str, Any] = dict(meta.upstream_evidence)
        neighbours = self.neighbour_inputs()
        if neighbours is not None:
            evidence["agentlanesNeighbourInputs"] = neighbours
        return {
            "schemaVersion": "v0.1",
            "kind": "AgentExecutionRouteDecision",
            "decisionId": self.decision_id,
            "createdAt": created_at,
            "policyRef": meta.policy_ref,
            "optimizerRef": meta.optimizer_ref,
            "input": req.upstream_input(),
            "selected": {
                "lane": self.lane,
                "status": self.status,
                "reason": self.reason,
                "costClass": meta.cost_class.get(self.lane) if self.lane else None,
                "estimatedCost": self.estimated_cost,
            },
            "quality": {
                "minimumLane": floor["minimumLane"],
                "requiresVerification": floor["requiresVerification"],
            },
            "budget": {
                "window": req.budget_window,
                "remaining": self.budget_remaining,
                "onBudgetPressure": meta.on_budget_pressure,
                "premiumReserveShare": meta.premium_reserve_share,
            },
            "resources": resources,
            "requestedEvaluation": requested,
            "candidateSet": [
                {
                    "lane": c.lane,
                    "feasible": c.feasible,
                    "estimatedCost": c.estimated_cost,
                    "reasons": list(c.reasons) or ["feasible"],
                }
                for c in self.candidates
            ],
            "evidence": evidence,
        }


_ALL_FIELDS: Final = frozenset(RouteRequest.model_fields)
