"""Typed routing documents: the policy, the optimizer, the price catalog.

The wire format is the public routing contract (``schemaVersion: v0.1``). Models use
snake_case attributes and camelCase aliases, validate strictly (the string ``"true"``
is not a boolean, ``NaN`` is not a number) and never let an unknown field loosen a
policy: unknown fields are ignored for routing and reported as warnings.

Loading goes through :func:`load_document` (one file or mapping, kind detected from
``kind``) or :func:`load_bundle` (policy + optimizer + catalog, cross-checked). Every
problem is a :class:`~agentlanes.errors.PolicyError` naming the file, the JSON pointer,
the bad value and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from agentlanes import _bundled
from agentlanes._files import read_bounded
from agentlanes.errors import ConfigurationError, PolicyError
from agentlanes.lanes import RANK, lane_list
from agentlanes.signals import REQUIRED_SIGNALS, ResourceSignals, SignalSnapshot

__all__ = [
    "BudgetWindow",
    "ChainStage",
    "Document",
    "LocalPersonalRouteBinding",
    "ModelLane",
    "PersonalTuningContract",
    "PolicyBundle",
    "PriceCatalog",
    "PriceCatalogLane",
    "PriceProfile",
    "Pricing",
    "RiskFloor",
    "RoutingCeiling",
    "RoutingConsequence",
    "RoutingOptimizer",
    "RoutingPolicy",
    "TaskClass",
    "canonical_json",
    "load_bundle",
    "load_document",
    "parse_time",
    "read_json",
]

LaneName = Literal["no-model", "local-cheap", "cheap", "standard", "high-end", "pro"]
EscalationLaneName = Literal["cheap", "standard", "high-end", "pro"]
StageName = Literal[
    "intake",
    "classification",
    "retrieval",
    "planning",
    "execution",
    "tool-use",
    "verification",
    "review",
    "finalization",
]
EscalationReason = Literal[
    "architecture-decision",
    "hard-debugging",
    "security-review",
    "privacy-review",
    "multi-repo-migration",
    "irreversible-production-decision",
    "high-stakes-synthesis",
    "conflicting-evidence-resolution",
    "repeated-standard-lane-failure",
    "release-gate-review",
]
RiskClassName = Literal["low", "medium", "high", "critical"]
WindowName = Literal["task", "session", "day", "week", "month"]

Share = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Money = Annotated[float, Field(ge=0, allow_inf_nan=False)]
NonEmptyStrList = Annotated[list[str], Field(min_length=1)]


class _Doc(BaseModel):
    """Base of every document model: strict, frozen, camelCase aliases.

    ``extra="allow"`` keeps unknown fields out of the way of validation so that they
    can be *reported* (see :func:`_walk`); the router never reads them.
    """

    model_config = ConfigDict(
        strict=True,
        frozen=True,
        defer_build=True,
        extra="allow",
        alias_generator=to_camel,
        populate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


# --------------------------------------------------------------------------- policy


class Scope(_Doc):
    applies_to: NonEmptyStrList
    execution_surfaces: Annotated[
        list[
            Literal[
                "agentplane",
                "claude-code",
                "codex",
                "cursor",
                "opencode",
                "github-copilot-agent",
                "sourceos-agent-machine",
                "native-assistant-bridge",
                "manual-operator",
            ]
        ],
        Field(min_length=1),
    ]
    repos: list[str] | None = None


class DefaultPosture(_Doc):
    routing_rule: str
    high_end_default: Literal["deny", "defer", "allow"]
    hosted_fallback: Literal["deny", "policy-gated", "allow"]
    local_first: bool
    fail_closed: bool
    mechanical_verification_preferred: bool | None = None


class ModelLane(_Doc):
    """One entry of ``modelLanes``: what a lane is for."""

    lane_id: LaneName
    cost_class: Literal["none", "low", "medium", "high", "maximum"]
    provider_profiles: list[str] | None = None
    allowed_use: NonEmptyStrList
    disallowed_use: list[str]
    requires_escalation_receipt: bool | None = None


class TaskClass(_Doc):
    """One entry of ``taskClasses``."""

    task_class: str
    description: str | None = None
    default_lane: LaneName
    allowed_escalation_lanes: list[EscalationLaneName]
    requires_human_justification: bool
    requires_evidence: bool | None = None
    requires_network: bool | None = None
    examples: list[str] | None = None


class ChainStage(_Doc):
    """One entry of ``chainStages``."""

    stage: StageName
    default_lane: LaneName
    max_lane_without_escalation: LaneName
    required_evidence: list[str]


class EscalationBudgetWindow(_Doc):
    unit: Literal["task", "session", "day", "week"] | None = None
    high_end_max_share: Share | None = None
    pro_max_share: Share | None = None


class EscalationPolicy(_Doc):
    allowed_reasons: Annotated[list[EscalationReason], Field(min_length=1)]
    require_reason_for_high_end: bool
    require_reason_for_pro: bool
    repeated_failure_threshold: Annotated[int, Field(ge=1, le=5)]
    deescalate_after_plan: bool
    deny_chatty_thinking_on_high_end: bool
    budget_window: EscalationBudgetWindow | None = None


class ContextPolicy(_Doc):
    clear_on_task_switch: bool
    compact_before_context_limit: bool
    prefer_path_references: bool
    trim_logs_by_default: bool
    max_log_lines_without_approval: Annotated[int, Field(ge=1)] | None = None
    redact_secrets: bool
    disable_noncritical_connectors_by_default: bool
    prompt_storage: Literal["hash-only", "redacted", "full"] | None = None


class ToolPolicy(_Doc):
    tools_off_unless_needed: bool
    network_tools_require_reason: bool
    write_tools_require_evidence: bool
    repo_mutation_requires_branch_or_explicit_direct_commit: bool
    mechanical_verification_required: bool


class PolicyEvidence(_Doc):
    emit_route_decision: bool
    emit_escalation_receipt: bool
    emit_cost_class: bool
    emit_context_policy: bool
    emit_tool_policy: bool
    prompt_hash_only: bool
    ledger_refs: list[str]


class PolicyEnforcement(_Doc):
    decision_abi: str
    on_violation: Literal["deny", "defer", "quarantine"]
    deny_high_end_without_reason: bool
    deny_pro_without_reason: bool
    downgrade_preferred: bool
    route_decision_required_before_execution: bool


class RoutingPolicy(_Doc):
    """``AgentExecutionModelRoutingPolicy``: which lanes each task class and stage may use."""

    schema_version: Literal["v0.1"]
    kind: Literal["AgentExecutionModelRoutingPolicy"]
    policy_id: Annotated[str, Field(pattern=r"^urn:socioprophet:model-routing-policy:")]
    scope: Scope
    default_posture: DefaultPosture
    model_lanes: Annotated[list[ModelLane], Field(min_length=4)]
    task_classes: Annotated[list[TaskClass], Field(min_length=1)]
    chain_stages: Annotated[list[ChainStage], Field(min_length=1)]
    escalation_policy: EscalationPolicy
    context_policy: ContextPolicy
    tool_policy: ToolPolicy
    evidence: PolicyEvidence
    enforcement: PolicyEnforcement


# ------------------------------------------------------------------------ optimizer


class Objective(_Doc):
    primary: Literal[
        "minimize-cost-subject-to-quality-and-risk",
        "minimize-latency-subject-to-quality-and-policy",
        "maximize-quality-subject-to-budget-and-policy",
        "local-first-subject-to-safety-and-quality",
    ]
    ordered_preferences: Annotated[list[str], Field(min_length=3)]


class BudgetWindow(_Doc):
    """One budget window: a spend cap and the premium lanes' share of it."""

    window: WindowName
    max_spend: Money
    high_end_max_share: Share
    pro_max_share: Share


class BudgetPolicy(_Doc):
    currency: str
    windows: Annotated[list[BudgetWindow], Field(min_length=1)]
    premium_reserve_share: Share | None = None
    on_budget_pressure: Literal["downgrade", "defer", "deny", "require-human-approval"]


class LocalAdmission(_Doc):
    prefer_when_available: bool
    deny_when_thermal_critical: bool
    deny_when_battery_critical: bool
    min_memory_available_bytes: Annotated[int, Field(ge=0)]
    allowed_profile_refs: list[str] | None = None


class HostedAdmission(_Doc):
    requires_policy: bool
    requires_network: bool
    deny_when_quota_unknown: bool
    deny_when_provider_unhealthy: bool
    max_provider_latency_p95_ms: Annotated[int, Field(ge=1)] | None = Field(
        default=None, alias="maxProviderLatencyP95Ms"
    )
    max_provider_error_rate: Share | None = None


class ResourcePolicy(_Doc):
    required_signals: NonEmptyStrList
    local_admission: LocalAdmission
    hosted_admission: HostedAdmission


class RiskFloor(_Doc):
    """The cheapest lane a risk class may use, and whether it needs verification."""

    risk_class: RiskClassName
    minimum_lane: LaneName
    requires_verification: bool


class QualityPolicy(_Doc):
    risk_floors: Annotated[list[RiskFloor], Field(min_length=1)]
    on_quality_uncertain: Literal["ask-standard-review", "escalate-with-reason", "defer", "deny"]


class SelectionPolicy(_Doc):
    candidate_order: Annotated[list[str], Field(min_length=3)]
    tie_breakers: NonEmptyStrList
    estimate_before_route: bool
    never_silently_upgrade: bool


class OptimizerEvidence(_Doc):
    emit_budget_decision: bool
    emit_resource_snapshot: bool
    emit_quota_snapshot: bool
    emit_candidate_set: bool
    emit_selected_candidate: bool
    prompt_hash_only: bool


class OptimizerEnforcement(_Doc):
    decision_abi: str
    fail_closed_on_missing_signals: bool
    deny_on_budget_exhausted: bool
    deny_on_unknown_quota_for_premium: bool
    route_before_execution: bool


class RoutingOptimizer(_Doc):
    """``AgentExecutionBudgetResourceOptimizer``: which allowed lane is best right now."""

    schema_version: Literal["v0.1"]
    kind: Literal["AgentExecutionBudgetResourceOptimizer"]
    optimizer_id: Annotated[str, Field(pattern=r"^urn:socioprophet:model-routing-optimizer:")]
    policy_ref: Annotated[str, Field(pattern=r"^urn:socioprophet:model-routing-policy:")]
    objective: Objective
    budget_policy: BudgetPolicy
    resource_policy: ResourcePolicy
    quality_policy: QualityPolicy
    selection_policy: SelectionPolicy
    evidence: OptimizerEvidence
    enforcement: OptimizerEnforcement


# -------------------------------------------------------------------- price catalog


class Pricing(_Doc):
    """Prices of one profile, in the catalog's currency."""

    request_base_cost: Money
    input_per_million: Money
    output_per_million: Money
    cache_read_per_million: Money | None = None
    tool_call_cost: Money | None = None
    local_runtime_cost_per_minute: Money | None = None
    local_energy_cost_per_minute: Money | None = None
    min_cost: Money


class PriceProfile(_Doc):
    profile_ref: str
    provider_ref: str | None = None
    model_ref: str | None = None
    pricing: Pricing


class PriceCatalogLane(_Doc):
    lane_id: LaneName
    cost_model: Literal["none", "local-runtime", "hosted-token"]
    default_profile_ref: str
    profiles: Annotated[list[PriceProfile], Field(min_length=1)]

    def default_profile(self) -> PriceProfile:
        """The ``defaultProfileRef`` profile (load-time checks guarantee it exists)."""
        for profile in self.profiles:
            if profile.profile_ref == self.default_profile_ref:
                return profile
        return self.profiles[0]


class PriceCatalog(_Doc):
    """``ModelPriceCatalog``: what a lane costs, per profile."""

    schema_version: Literal["v0.1"]
    kind: Literal["ModelPriceCatalog"]
    catalog_id: Annotated[str, Field(pattern=r"^urn:socioprophet:model-price-catalog:")]
    currency: str
    effective_at: str
    notes: str | None = None
    lanes: Annotated[list[PriceCatalogLane], Field(min_length=1)]

    def lane(self, lane: str) -> PriceCatalogLane | None:
        """The catalog entry of ``lane``, or ``None``."""
        for entry in self.lanes:
            if entry.lane_id == lane:
                return entry
        return None


# ---------------------------------------------------------- local personal binding

RouteTarget = Literal["base-local", "personal-local", "quality-local", "hosted", "deny"]


class BindingSubject(_Doc):
    user_ref: str
    workspace_ref: str
    tenant_ref: str | None = None
    device_ref: str | None = None


class Personalization(_Doc):
    enabled: bool
    governance_contract_ref: str | None
    artifact_ref: str | None
    default_state: Literal["disabled", "personal-only", "candidate", "active", "revoked"]
    activation_requires_ledger_approval: bool = True


class BindingRoute(_Doc):
    route_id: str
    task_class: Literal[
        "router",
        "triage",
        "summarization",
        "rewrite",
        "office-assist",
        "agent-machine-assist",
        "offline-fallback",
        "coding-assist",
        "privacy-first-chat",
        "complex-reasoning",
    ]
    preferred_target: RouteTarget
    fallback_target: RouteTarget | None = None
    requires_consent: bool = False
    requires_network: bool = False


class BindingPolicy(_Doc):
    local_first: bool
    prompt_egress_default: Literal["deny", "allow-with-policy"]
    hosted_fallback_requires_policy: bool
    personalization_requires_consent: bool = True
    prompt_hash_only_evidence: bool


class BindingEvidence(_Doc):
    emit_route_decision: bool
    emit_runtime_health: bool
    emit_governance_refs: bool
    ledger_ref: str | None = None


class LocalPersonalRouteBinding(_Doc):
    """``LocalPersonalRouteBinding``: which local profile serves a user's local lane."""

    schema_version: Literal["v0.1"]
    kind: Literal["LocalPersonalRouteBinding"]
    binding_id: Annotated[str, Field(pattern=r"^urn:socioprophet:model-router-binding:")]
    subject: BindingSubject
    default_local_profile_ref: Annotated[str, Field(pattern=r"^urn:srcos:model-profile:")]
    quality_fallback_local_profile_ref: str | None = None
    personalization: Personalization
    routes: Annotated[list[BindingRoute], Field(min_length=1)]
    policy: BindingPolicy
    evidence: BindingEvidence


# ------------------------------------------------------ personal tuning contract


class Consent(_Doc):
    """``consent`` of a :class:`PersonalTuningContract`."""

    status: Literal["granted", "pending", "revoked", "expired"]
    signed_intent_ref: str
    proof_of_life_ref: str | None = None
    scope: Literal["single-workroom", "workspace", "device", "tenant", "custom"]
    expires_at: str
    """An ISO 8601 date-time; a consent is in force strictly before it."""
    revocable: bool
    notes: str | None = None

    @field_validator("expires_at")
    @classmethod
    def _iso_time(cls, value: str) -> str:
        parse_time(value)
        return value


class PersonalTuningContract(_Doc):
    """model-governance-ledger's ``PersonalTuningContract``: a user's consent to a personal
    model artifact. agentlanes reads ``contractId`` and ``consent`` (CONTRACT D3); the
    other sections are checked for presence and kept as they are."""

    schema_version: Literal["v0.1"]
    kind: Literal["PersonalTuningContract"]
    contract_id: Annotated[str, Field(pattern=r"^urn:socioprophet:personal-tuning-contract:")]
    subject: dict[str, Any]
    base_model_ref: str
    tuning_target: dict[str, Any]
    consent: Consent
    data_boundary: dict[str, Any]
    training_scope: dict[str, Any]
    evaluation: dict[str, Any]
    promotion: dict[str, Any]
    revocation: dict[str, Any]
    orchestration: dict[str, Any]
    evidence: dict[str, Any] | None = None


# ------------------------------------------------------------ routing ceilings


class _SnakeDoc(BaseModel):
    """Base of model-router's snake_case documents (no aliases)."""

    model_config = ConfigDict(strict=True, frozen=True, extra="allow", defer_build=True)


AutonomyCeiling = Literal["report_only", "advisory", "human_review_required", "bounded_autonomy"]
SnakeLaneName = Literal["no_model", "local_cheap", "cheap", "standard", "high_end", "pro"]


class RoutingConsequence(_SnakeDoc):
    """``routing_consequence``: what a validation or runtime state allows (CONTRACT D2).

    Unknown fields are refused here (not merely reported): a field agentlanes cannot
    read may be a restriction, and ignoring a restriction would loosen the ceiling."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid", defer_build=True)

    autonomy_ceiling: AutonomyCeiling
    model_lane_ceiling: SnakeLaneName
    high_end_allowed: bool
    pro_allowed: bool
    deterministic_verification_required: bool
    fallback_posture: Annotated[str, Field(min_length=1)]
    must_preserve_warnings: list[str]


class RoutingCeiling(_SnakeDoc):
    """A model-router state routing policy (SVF receipt-state, environment-state or
    runtime-state): a document that ends in a ``routing_consequence`` block. It has no
    ``kind``; it is recognised by that block."""

    schema_version: Annotated[str, Field(min_length=1)]
    policy_id: Annotated[str, Field(min_length=1)]
    owner: dict[str, Any] | None = None
    source: dict[str, Any] | None = None
    inputs: dict[str, Any] | None = None
    routing_consequence: RoutingConsequence
    non_claims: list[str] | None = None


Document: TypeAlias = (
    RoutingPolicy
    | RoutingOptimizer
    | PriceCatalog
    | LocalPersonalRouteBinding
    | PersonalTuningContract
    | RoutingCeiling
    | ResourceSignals
)
_KINDS: dict[str, type[BaseModel]] = {
    "AgentExecutionModelRoutingPolicy": RoutingPolicy,
    "AgentExecutionBudgetResourceOptimizer": RoutingOptimizer,
    "ModelPriceCatalog": PriceCatalog,
    "LocalPersonalRouteBinding": LocalPersonalRouteBinding,
    "PersonalTuningContract": PersonalTuningContract,
}
_D = TypeVar("_D", bound=BaseModel)


# -------------------------------------------------------------------------- loading


def canonical_json(value: object) -> bytes:
    """Canonical JSON bytes (sorted keys, no spaces, UTF-8, no NaN) for digests."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def parse_time(value: str) -> datetime:
    """An ISO 8601 date-time (``Z`` accepted) as an aware UTC datetime; a value with no
    offset is taken as UTC.

    Raises:
        ValueError: ``value`` is not an ISO 8601 date-time.
    """
    if not isinstance(value, str) or "T" not in value.upper():
        raise ValueError(f"{value!r} is not an ISO 8601 date-time such as 2026-06-01T00:00:00Z")
    try:
        parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value)
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 date-time such as 2026-06-01T00:00:00Z") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _pointer(loc: tuple[int | str, ...]) -> str:
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in loc)


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_LANE_EXPECTED = ", ".join(f"'{lane}'" for lane in RANK)


def _describe(error: Mapping[str, Any], pointer: str) -> str:
    kind = error["type"]
    value = error.get("input")
    where = pointer or "/"
    if kind == "missing":
        return f"{where} is required but missing."
    if kind == "literal_error":
        expected = str(error.get("ctx", {}).get("expected", ""))
        if expected.replace(" or ", ", ") == _LANE_EXPECTED:
            return f"Lane {_short(value)} at {where} is not a lane (lanes: {lane_list()})."
        return f"{_short(value)} at {where} is not allowed (allowed: {expected})."
    if kind in ("finite_number",):
        return f"{_short(value)} at {where} must be a finite number."
    if kind == "string_pattern_mismatch":
        pattern = error.get("ctx", {}).get("pattern", "")
        return f"{_short(value)} at {where} must match the pattern {pattern!r}."
    msg = str(error.get("msg", "is invalid"))
    return f"{_short(value)} at {where} is invalid: {msg[0].lower() + msg[1:]}."


def _raise_validation(exc: ValidationError, source: str, kind: str) -> PolicyError:
    problems: list[tuple[str, str]] = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        # Union/function-wrapper validators add non-field names to the loc; keep only
        # the parts that name a JSON member or index.
        loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith(("function-", "literal["))))
        pointer = _pointer(loc)
        problems.append((pointer, f"{source}: {kind} document: {_describe(error, pointer)}"))
    first_pointer, first = problems[0]
    more = f" ({len(problems) - 1} more problem(s) in this document)" if len(problems) > 1 else ""
    return PolicyError(
        f"{first}{more}",
        source=source,
        pointer=first_pointer,
        problems=problems,
    )


def read_json(path: str | Path) -> Any:
    """Read a JSON file, turning every failure into a :class:`PolicyError`.

    ``NaN``/``Infinity`` literals and duplicate-free parsing problems are rejected here,
    so that no malformed file reaches the models as an unexpected Python value.
    """
    source = str(path)
    if not Path(path).exists():
        raise PolicyError(f"{source}: no such file.", source=source)
    try:
        # regular files only, and bounded: a FIFO must not hang, /dev/zero not fill memory
        raw = read_bounded(path, what="JSON")
    except ConfigurationError as exc:
        raise PolicyError(str(exc), source=source) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{source}: is not UTF-8 text ({exc.reason}).", source=source) from None
    return parse_json(text, source=source)


def parse_json(text: str | bytes, *, source: str = "<memory>") -> Any:
    """Parse JSON text, rejecting ``NaN``/``Infinity`` and mapping errors to ``PolicyError``."""

    def _no_constants(token: str) -> float:
        raise ValueError(f"{token} is not valid JSON")

    try:
        return json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise PolicyError(
            f"{source}: is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}.",
            source=source,
        ) from None
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{source}: is not valid JSON: {exc}.", source=source) from None


def _kind_of(data: object, source: str) -> type[BaseModel]:
    if not isinstance(data, dict):
        raise PolicyError(
            f"{source}: a routing document must be a JSON object, not {type(data).__name__}.",
            source=source,
        )
    if "kind" not in data and "routing_consequence" in data:
        return RoutingCeiling
    if "kind" not in data and any(name in data for name in REQUIRED_SIGNALS):
        return ResourceSignals
    kind = data.get("kind")
    model: type[BaseModel] | None = _KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        allowed = ", ".join(_KINDS)
        got = "missing" if "kind" not in data else _short(kind)
        raise PolicyError(
            f"{source}: /kind is {got}; a routing document's kind is one of: {allowed} "
            "(or, with no kind, a routing-ceiling document with a routing_consequence block, or a "
            "resource-signals object).",
            source=source,
            pointer="/kind",
        )
    return model


def _validate(model: type[_D], data: object, source: str) -> _D:
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as exc:
        raise _raise_validation(exc, source, model.__name__) from None
    except RecursionError:
        raise PolicyError(f"{source}: the document is nested too deeply.", source=source) from None


def _walk(model: BaseModel, pointer: str, unknown: list[str]) -> Any:
    """Canonical dict of declared fields only; unknown fields are collected, not kept."""
    out: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        key = info.alias or name
        if value is None and name not in model.model_fields_set:
            continue
        out[key] = _walk_value(value, f"{pointer}/{key}", unknown)
    for key in model.model_extra or {}:
        unknown.append(f"{pointer}/{key}")
    return out


def _walk_value(value: Any, pointer: str, unknown: list[str]) -> Any:
    if isinstance(value, BaseModel):
        return _walk(value, pointer, unknown)
    if isinstance(value, list):
        return [_walk_value(v, f"{pointer}/{i}", unknown) for i, v in enumerate(value)]
    return value


@dataclass(frozen=True)
class Loaded:
    """A validated document with its provenance.

    Attributes:
        document: the typed model.
        source: where it came from (a path, ``<bundled:...>`` or ``<memory>``).
        digest: ``sha256:<hex>`` of the canonical JSON of its *declared* fields, so that
            unknown fields (which never affect routing) do not change it.
        warnings: one sentence per unknown field.
    """

    document: Document
    source: str
    digest: str
    warnings: tuple[str, ...] = ()


def load_document(doc: str | Path | Mapping[str, Any], *, source: str | None = None) -> Loaded:
    """Load and validate one routing document (kind detected from its ``kind``).

    Args:
        doc: a path, or an already parsed JSON object.
        source: a name for messages when ``doc`` is a mapping.

    Raises:
        PolicyError: the file cannot be read, is not JSON, or is not a valid document.
    """
    if isinstance(doc, (str, Path)):
        src = source or str(doc)
        data = read_json(doc)
    else:
        src = source or "<memory>"
        data = doc
    model = _kind_of(data, src)
    document = _validate(model, data, src)
    if isinstance(document, ResourceSignals):
        assert isinstance(data, Mapping)
        problems = SignalSnapshot(data).problems
        if problems:
            listed = [(f"/{p.split(':', 1)[1]}", f"{src}: resource signals: {p}") for p in problems]
            raise PolicyError(
                f"{src}: resource signals are incomplete: {', '.join(problems)}; a decision on them "
                "would be deferred (fail closed).",
                source=src,
                pointer=listed[0][0],
                problems=listed,
            )
    unknown: list[str] = []
    canonical = _walk(document, "", unknown)
    digest = "sha256:" + hashlib.sha256(canonical_json(canonical)).hexdigest()
    warnings = tuple(f"{src}: unknown field {p} is ignored (it cannot change a routing decision)." for p in unknown)
    assert isinstance(
        document,
        (
            RoutingPolicy,
            RoutingOptimizer,
            PriceCatalog,
            LocalPersonalRouteBinding,
            PersonalTuningContract,
            RoutingCeiling,
            ResourceSignals,
        ),
    )
    return Loaded(document=document, source=src, digest=digest, warnings=warnings)


def _expect(loaded: Loaded, model: type[_D], role: str) -> _D:
    if not isinstance(loaded.document, model):
        raise PolicyError(
            f"{loaded.source}: expected a {model.__name__} document for {role}, got {type(loaded.document).__name__}.",
            source=loaded.source,
            pointer="/kind",
        )
    return loaded.document


def _duplicates(items: list[str], pointer: str, source: str, what: str) -> Iterator[tuple[str, str]]:
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if item in seen:
            yield (
                f"{pointer}/{i}",
                f"{source}: {what} {item!r} at {pointer}/{i} is defined twice "
                f"(first at {pointer}/{seen[item]}); lookups by {what} would be ambiguous.",
            )
        else:
            seen[item] = i


@dataclass(frozen=True)
class PolicyBundle:
    """The three documents a decision needs, loaded and cross-checked together.

    Build one with :func:`load_bundle`. Attributes are the typed documents plus their
    :class:`Loaded` records (source, digest, warnings).
    """

    policy: RoutingPolicy
    optimizer: RoutingOptimizer
    catalog: PriceCatalog
    loaded: tuple[Loaded, Loaded, Loaded]
    warnings: tuple[str, ...] = field(default=())

    @property
    def digest(self) -> str:
        """One digest over the three documents' digests."""
        joined = "|".join(item.digest for item in self.loaded)
        return "sha256:" + hashlib.sha256(joined.encode()).hexdigest()

    @classmethod
    def from_loaded(cls, policy: Loaded, optimizer: Loaded, catalog: Loaded) -> PolicyBundle:
        """Cross-check three loaded documents and bundle them.

        Raises:
            PolicyError: one document contradicts another or itself.
        """
        pol = _expect(policy, RoutingPolicy, "--policy")
        opt = _expect(optimizer, RoutingOptimizer, "--optimizer")
        cat = _expect(catalog, PriceCatalog, "--price-catalog")
        problems: list[tuple[str, str, str]] = []  # (source, pointer, message)
        warnings = [*policy.warnings, *optimizer.warnings, *catalog.warnings]

        def add(src: str, found: Iterator[tuple[str, str]] | list[tuple[str, str]]) -> None:
            problems.extend((src, p, m) for p, m in found)

        add(
            policy.source,
            _duplicates([t.task_class for t in pol.task_classes], "/taskClasses", policy.source, "taskClass"),
        )
        add(policy.source, _duplicates([s.stage for s in pol.chain_stages], "/chainStages", policy.source, "stage"))
        add(policy.source, _duplicates([m.lane_id for m in pol.model_lanes], "/modelLanes", policy.source, "laneId"))
        add(
            optimizer.source,
            _duplicates(
                [w.window for w in opt.budget_policy.windows], "/budgetPolicy/windows", optimizer.source, "window"
            ),
        )
        add(
            optimizer.source,
            _duplicates(
                [f.risk_class for f in opt.quality_policy.risk_floors],
                "/qualityPolicy/riskFloors",
                optimizer.source,
                "riskClass",
            ),
        )
        add(catalog.source, _duplicates([lane.lane_id for lane in cat.lanes], "/lanes", catalog.source, "laneId"))

        order = opt.selection_policy.candidate_order
        for i, lane in enumerate(order):
            if lane not in RANK:
                problems.append(
                    (
                        optimizer.source,
                        f"/selectionPolicy/candidateOrder/{i}",
                        f"{optimizer.source}: Lane {lane!r} at /selectionPolicy/candidateOrder/{i} "
                        f"is not a lane (lanes: {lane_list()}).",
                    )
                )
        add(optimizer.source, _duplicates(order, "/selectionPolicy/candidateOrder", optimizer.source, "lane"))

        for i, entry in enumerate(cat.lanes):
            refs = [p.profile_ref for p in entry.profiles]
            add(catalog.source, _duplicates(refs, f"/lanes/{i}/profiles", catalog.source, "profileRef"))
            if entry.default_profile_ref not in refs:
                problems.append(
                    (
                        catalog.source,
                        f"/lanes/{i}/defaultProfileRef",
                        f"{catalog.source}: defaultProfileRef {entry.default_profile_ref!r} at "
                        f"/lanes/{i}/defaultProfileRef names no profile of lane {entry.lane_id!r} "
                        f"(profiles: {', '.join(refs)}).",
                    )
                )
        priced = {lane.lane_id for lane in cat.lanes}
        for i, lane in enumerate(order):
            if lane in RANK and lane not in priced:
                problems.append(
                    (
                        catalog.source,
                        "/lanes",
                        f"{catalog.source}: the catalog prices no lane {lane!r}, which the optimizer "
                        f"lists at /selectionPolicy/candidateOrder/{i}; add a /lanes entry for it.",
                    )
                )
        if opt.budget_policy.currency != cat.currency:
            problems.append(
                (
                    catalog.source,
                    "/currency",
                    f"{catalog.source}: /currency is {cat.currency!r} but the optimizer's budgets are in "
                    f"{opt.budget_policy.currency!r} (/budgetPolicy/currency); costs and budgets must "
                    "share one currency.",
                )
            )
        if opt.policy_ref != pol.policy_id:
            # A warning, not an error: nothing in a decision depends on the pairing of
            # ids, every decision records both refs, and refusing would make it hard to
            # try a revised policy (new id) against the optimizer in force, which is
            # exactly what counterfactual replay is for. `validate --strict` refuses it.
            warnings.append(
                f"{optimizer.source}: /policyRef {opt.policy_ref!r} does not match the policy's "
                f"policyId {pol.policy_id!r} ({policy.source})."
            )
        if problems:
            src, pointer, first = problems[0]
            more = f" ({len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
            raise PolicyError(first + more, source=src, pointer=pointer, problems=[(p, m) for _, p, m in problems])
        return cls(
            policy=pol, optimizer=opt, catalog=cat, loaded=(policy, optimizer, catalog), warnings=tuple(warnings)
        )


def load_bundle(
    policy: str | Path | Mapping[str, Any] | None = None,
    optimizer: str | Path | Mapping[str, Any] | None = None,
    catalog: str | Path | Mapping[str, Any] | None = None,
) -> PolicyBundle:
    """Load a policy, optimizer and price catalog (bundled defaults where ``None``).

    Raises:
        PolicyError: a document is broken or the three contradict each other.
    """
    return PolicyBundle.from_loaded(
        _load_or_default(policy, "policy"),
        _load_or_default(optimizer, "optimizer"),
        _load_or_default(catalog, "catalog"),
    )


def _load_or_default(doc: str | Path | Mapping[str, Any] | None, role: str) -> Loaded:
    if doc is None:
        return _bundled.default_loaded(role)
    return load_document(doc)
