"""Evidence for the neighbours (CONTRACT D4): what agentplane and guardrail-fabric read.

Three formats, each built by pure functions from a route decision and its *stage
context* (:class:`StageEvidence`: the run, when, the chain stage, the verifiers, the
escalation receipt, the keyed prompt digest):

* :func:`lane_receipt`: agentplane's ``ModelRoutingLaneDecisionReceipt`` v0.1, one per
  stage decision (denied and deferred included), valid against agentplane's schema and
  its policy gates (:func:`check_lane_receipt` is agentlanes' own validator of both);
* :func:`guardrail_decisions`: guardrail-fabric's ``sourceos.guardrail.decision.v0.1``,
  one per gate outcome (allow, downgraded, escalate, defer, deny, fail closed, waiting
  for approval), with ids that are digests of the route decision id and the outcome, so
  a replay reproduces them;
* :class:`JournalWriter` / :func:`verify_journal`: agentplane's hash-chained evidence
  journal (canonical JSON, chain digests, first ``previousDigest`` all zeros).

:func:`evidence_lines` turns a sequence of ``(decision, stage context)`` records into
JSON lines in any of the three formats. agentplane's vocabulary differs from
agentlanes' (5 lanes, 5 stages, other task classes); the mapping is agentlanes' own,
``agentlanes.mapping/1`` (:data:`MAPPING_VERSION`), and every document records it.
A task class outside the mapping needs a mapping from the caller (``task_classes=``);
without one, building a receipt is a :class:`~agentlanes.errors.ConfigurationError`.

The builders take a live :class:`~agentlanes.decision.RouteDecision`, its native JSON
form, or :class:`DecisionFacts`. A native form alone does not say whether the task class
needs a human justification or what its default lane is (the policy does): build
``DecisionFacts.from_native(doc, tasks=router.meta.tasks)`` to give the same evidence
as the live decision.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentlanes.errors import ConfigurationError
from agentlanes.lanes import PREMIUM_LANES, RANK
from agentlanes.policy import parse_time

if TYPE_CHECKING:
    from agentlanes.decision import RouteDecision

__all__ = [
    "AGENTPLANE_TASK_CLASSES",
    "COST_CLASS_MAP",
    "FORMATS",
    "GENESIS_DIGEST",
    "LANE_MAP",
    "MAPPING_VERSION",
    "OUTCOME_MAP",
    "STAGE_MAP",
    "TASK_CLASS_MAP",
    "DecisionFacts",
    "JournalReport",
    "JournalWriter",
    "StageEvidence",
    "canonical_event",
    "check_lane_receipt",
    "evidence_lines",
    "guardrail_decision_id",
    "guardrail_decisions",
    "lane_receipt",
    "verify_journal",
]

MAPPING_VERSION: Final = "agentlanes.mapping/1"
"""``agentlanes.mapping/1``: first version (the tables below)."""

LANE_MAP: Final[Mapping[str, str]] = {
    "no-model": "no_model",
    "local-cheap": "lightweight",
    "cheap": "lightweight",
    "standard": "standard",
    "high-end": "high_end",
    "pro": "pro",
}
COST_CLASS_MAP: Final[Mapping[str, str]] = {
    "no-model": "minimal",
    "local-cheap": "minimal",
    "cheap": "minimal",
    "standard": "standard",
    "high-end": "high",
    "pro": "pro",
}
"""agentplane's ``elevated`` is unused."""
STAGE_MAP: Final[Mapping[str, str]] = {
    "intake": "planning",
    "classification": "planning",
    "planning": "planning",
    "retrieval": "execution",
    "execution": "execution",
    "tool-use": "execution",
    "verification": "verification",
    "review": "reflection",
    "finalization": "synthesis",
}
TASK_CLASS_MAP: Final[Mapping[str, str]] = {
    "formatting-rewrite": "summarization",
    "log-triage": "classification",
    "routine-code": "code_generation",
    "multi-repo-migration": "code_generation",
    "architecture-decision": "reasoning",
    "hard-debugging": "reasoning",
    "high-stakes-synthesis": "reasoning",
    "security-review": "code_review",
}
AGENTPLANE_TASK_CLASSES: Final[tuple[str, ...]] = (
    "reasoning",
    "code_generation",
    "code_review",
    "data_extraction",
    "summarization",
    "verification",
    "classification",
    "retrieval_augmented",
)
OUTCOME_MAP: Final[Mapping[str, str]] = {
    "selected": "lane_selected",
    "downgraded": "downgraded",
    "deferred": "deferred",
    "denied": "denied",
}
"""Statuses; a ``selected`` premium lane with an escalation receipt is ``escalated``."""
FORMATS: Final[tuple[str, ...]] = ("agentplane-lane-receipts", "guardrail-decisions", "evidence-journal")
GENESIS_DIGEST: Final = "sha256:" + "0" * 64
GUARDRAIL_SCHEMA: Final = "sourceos.guardrail.decision.v0.1"

_SIGNAL_PROBLEM: Final = ("missing-signal:", "invalid-signal:")
_LIGHT: Final = frozenset({"no_model", "lightweight"})


def _utc(value: str | datetime, what: str) -> str:
    try:
        when = parse_time(value.isoformat() if isinstance(value, datetime) else value)
    except ValueError as exc:
        raise ConfigurationError(f"The {what} {value!r} is not usable: {exc}.") from None
    return when.isoformat().replace("+00:00", "Z")


def _hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------ stage context

_CONTEXT_JSON: Final[Mapping[str, str]] = {
    "runId": "run_id",
    "issuedAt": "issued_at",
    "stage": "stage",
    "deterministicVerifiers": "deterministic_verifiers",
    "modelJudge": "model_judge",
    "escalationReceiptId": "escalation_receipt_id",
    "escalationReceiptDigest": "escalation_receipt_digest",
    "promptDigest": "prompt_digest",
    "approval": "approval",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class StageEvidence:
    """What a decision's evidence needs besides the decision: its stage context.

    Attributes:
        run_id: the run the decision belongs to.
        issued_at: when the decision was made (ISO 8601; recorded, so that a replay
            reproduces the same documents). Normalised to UTC with a ``Z``.
        stage: the chain stage, when it differs from the decision's own stage.
        deterministic_verifiers: the stage had deterministic verifiers (tests, linters...).
        model_judge: the stage had a model judge (and no deterministic verifier).
        escalation_receipt_id: agentlanes' escalation receipt for this decision, if any
            (every premium lane in a chain has one).
        escalation_receipt_digest: that receipt's digest.
        prompt_digest: the keyed (HMAC) digest of the stage's prompt.
        approval: where a human approval stands: ``pending``, ``granted``, ``denied``, or
            ``None`` when none was asked for.
    """

    run_id: str
    issued_at: str
    stage: str | None = None
    deterministic_verifiers: bool = False
    model_judge: bool = False
    escalation_receipt_id: str | None = None
    escalation_receipt_digest: str | None = None
    prompt_digest: str | None = None
    approval: Literal["pending", "granted", "denied"] | None = None

    def __post_init__(self) -> None:
        if not self.run_id:
            raise ConfigurationError("A stage context needs a run id; pass run_id='...'.")
        object.__setattr__(self, "issued_at", _utc(self.issued_at, "stage context time issued_at"))
        if self.stage is not None and self.stage not in STAGE_MAP:
            raise ConfigurationError(
                f"Stage {self.stage!r} in a stage context is not a chain stage (stages: {', '.join(STAGE_MAP)})."
            )
        if self.approval not in (None, "pending", "granted", "denied"):
            raise ConfigurationError(
                f"Approval {self.approval!r} in a stage context is not one of pending, granted, denied (or None)."
            )

    def to_json(self) -> dict[str, Any]:
        """JSON form (camelCase), as :meth:`from_json` reads it."""
        return {key: getattr(self, name) for key, name in _CONTEXT_JSON.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], **defaults: Any) -> StageEvidence:
        """A stage context from its JSON form; ``defaults`` fill what ``data`` lacks.

        Raises:
            ConfigurationError: an unknown key or a value of the wrong type.
        """
        values: dict[str, Any] = dict(defaults)
        for key, value in data.items():
            name = _CONTEXT_JSON.get(key)
            if name is None:
                raise ConfigurationError(f"Unknown stage-context key {key!r} (keys: {', '.join(_CONTEXT_JSON)}).")
            values[name] = value
        for name in ("deterministic_verifiers", "model_judge"):
            if not isinstance(values.get(name, False), bool):
                raise ConfigurationError(f"Stage-context {name} must be true or false, got {values[name]!r}.")
        for name in (
            "run_id",
            "issued_at",
            "stage",
            "escalation_receipt_id",
            "escalation_receipt_digest",
            "prompt_digest",
            "approval",
        ):
            if values.get(name) is not None and not isinstance(values[name], str):
                raise ConfigurationError(f"Stage-context {name} must be a string, got {values[name]!r}.")
        if "run_id" not in values or "issued_at" not in values:
            raise ConfigurationError("A stage context needs runId and issuedAt.")
        return cls(**values)


# ------------------------------------------------------------ decision facts


@dataclass(frozen=True, slots=True)
class DecisionFacts:
    """What evidence reads from a route decision; built from a live
    :class:`~agentlanes.decision.RouteDecision` (:meth:`of`) or from its native JSON
    form (:meth:`from_native`), so recorded decisions give the same documents."""

    decision_id: str
    status: str
    lane: str | None
    reason: str
    reasons: tuple[str, ...]
    task_class: str
    stage: str
    requested_lane: str | None
    escalation_reason: str | None
    deterministic: bool
    policy_id: str
    policy_digest: str | None
    default_lane: str | None
    requires_justification: bool
    upgrade_causes: tuple[str, ...] | None
    requested_reasons: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    approval_required: bool = False
    inputs: Mapping[str, str] = field(default_factory=dict)
    """Digests of the neighbours' inputs that shaped the decision, by name."""

    @property
    def fail_closed(self) -> bool:
        """The decision failed closed on a missing or invalid signal."""
        return any(r.startswith(_SIGNAL_PROBLEM) for r in self.reasons)

    @classmethod
    def of(cls, decision: RouteDecision) -> DecisionFacts:
        """The facts of a live decision."""
        req = decision.request
        default_lane, justify = decision.meta.tasks.get(req.task_class, (None, False))
        return cls(
            decision_id=decision.decision_id,
            status=decision.status,
            lane=decision.lane,
            reason=decision.reason,
            reasons=tuple(decision.reasons),
            task_class=req.task_class,
            stage=req.stage,
            requested_lane=req.requested_lane,
            escalation_reason=req.escalation_reason,
            deterministic=req.deterministic,
            policy_id=decision.meta.policy_ref,
            policy_digest=decision.meta.documents.get("policyDigest"),
            default_lane=default_lane,
            requires_justification=justify,
            upgrade_causes=None if decision.upgrade is None else tuple(decision.upgrade.causes),
            requested_reasons=() if decision.requested is None else tuple(decision.requested.reasons),
            warnings=decision.warnings,
            approval_required=decision.approval_required,
            inputs=_input_digests(decision.neighbour_inputs()),
        )

    @classmethod
    def from_native(
        cls, doc: Mapping[str, Any], *, tasks: Mapping[str, tuple[str, bool]] | None = None
    ) -> DecisionFacts:
        """The facts of a decision in agentlanes' native JSON form.

        Args:
            doc: the native decision (``to_native()``).
            tasks: per task class, its default lane and whether it needs a human
                justification (from the policy the decision was made under); without
                it, neither is known.

        Raises:
            ConfigurationError: ``doc`` is not a native route decision.
        """
        try:
            if doc.get("schemaVersion") != "agentlanes.route-decision/1":
                raise ValueError("schemaVersion is not agentlanes.route-decision/1")
            inp = doc["input"]
            upgrade = doc.get("upgrade")
            requested = doc.get("requestedEvaluation")
            neighbours = doc.get("neighbourInputs")
            task = str(inp["taskClass"])
            default_lane, justify = (tasks or {}).get(task, (None, False))
            status = str(doc["status"])
            if status not in OUTCOME_MAP:
                raise ValueError(f"status {status!r} is not a decision status")
            lane = doc["lane"]
            if lane is not None and lane not in RANK:
                raise ValueError(f"lane {lane!r} is not a lane")
            return cls(
                decision_id=str(doc["decisionId"]),
                status=status,
                lane=lane,
                reason=str(doc["reason"]),
                reasons=tuple(str(r) for r in doc["reasons"]),
                task_class=task,
                stage=str(inp["stage"]),
                requested_lane=inp.get("requestedLane"),
                escalation_reason=inp.get("escalationReason"),
                deterministic=inp.get("deterministic") is True,
                policy_id=str(doc["documents"]["policyId"]),
                policy_digest=doc["documents"].get("policyDigest"),
                default_lane=default_lane,
                requires_justification=justify,
                upgrade_causes=None if upgrade is None else tuple(str(c) for c in upgrade["causes"]),
                requested_reasons=() if requested is None else tuple(str(r) for r in requested["reasons"]),
                warnings=tuple(str(w) for w in (neighbours or {}).get("mustPreserveWarnings", ())),
                approval_required=(neighbours or {}).get("approvalRequired") is True,
                inputs=_input_digests(neighbours),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigurationError(
                f"Not a native agentlanes route decision ({exc}); pass decisions as printed by "
                "`agentlanes route` (native form)."
            ) from None


def _input_digests(neighbours: Mapping[str, Any] | None) -> dict[str, str]:
    if not neighbours:
        return {}
    out: dict[str, str] = {}
    if neighbours.get("findings"):
        out["findings"] = str(neighbours["findings"]["digest"])
    for i, ceiling in enumerate(neighbours.get("ceilings") or ()):
        out[f"ceiling.{i}"] = str(ceiling["digest"])
    if neighbours.get("binding"):
        binding = neighbours["binding"]
        out["binding"] = str(binding["digest"])
        if binding.get("bindingDigest"):
            out["bindingDocument"] = str(binding["bindingDigest"])
        if binding.get("contractDigest"):
            out["consentContract"] = str(binding["contractDigest"])
    return out


def _facts(decision: RouteDecision | DecisionFacts | Mapping[str, Any]) -> DecisionFacts:
    if isinstance(decision, DecisionFacts):
        return decision
    if isinstance(decision, Mapping):
        return DecisionFacts.from_native(decision)
    return DecisionFacts.of(decision)


# -------------------------------------------------------------- guardrail-fabric


@dataclass(frozen=True, slots=True)
class _Gate:
    key: str
    decision: str
    severity: str
    reason: str
    remediation: str
    may_continue: bool
    approval: bool


def _gates(f: DecisionFacts, ctx: StageEvidence) -> list[_Gate]:
    """The gate outcomes of one decision, in order (CONTRACT D4)."""
    where = f"stage {f.stage} of task class {f.task_class}"
    reasons = ", ".join(f.reasons)
    if f.fail_closed:
        # deferred by default; denied where the policy's onViolation says deny
        verdict = "deny" if f.status == "denied" else "defer"
        return [
            _Gate(
                f"{verdict}:fail-closed",
                verdict,
                "high",
                f"Routing failed closed for {where}: resource signals were missing or invalid ({reasons}).",
                "Provide every required resource signal with a valid value and route the stage again.",
                False,
                False,
            )
        ]
    if f.status == "denied":
        return [
            _Gate(
                "deny",
                "deny",
                "high",
                f"Routing denied {where} ({reasons}).",
                "Change the request or the signals so that a lane is admissible under the policy, or revise the "
                "policy.",
                False,
                False,
            )
        ]
    if f.status == "deferred":
        return [
            _Gate(
                "defer",
                "defer",
                "medium",
                f"Routing deferred {where}: no lane may run it ({reasons}).",
                "Give an allowed escalation reason, lift the restriction named in the reasons, or wait for the "
                "signals to change, then route the stage again.",
                False,
                False,
            )
        ]
    assert f.lane is not None
    out: list[_Gate] = []
    premium = f.lane in PREMIUM_LANES
    if f.status == "downgraded":
        out.append(
            _Gate(
                "allow_with_context:downgraded",
                "allow_with_context",
                "low",
                f"Lane {f.lane} was selected for {where} below the requested lane {f.requested_lane} "
                f"({f.reason}; requested lane: {', '.join(f.requested_reasons) or 'not optimal'}).",
                "No remediation required; the stage runs on the cheaper lane.",
                True,
                False,
            )
        )
    if premium:
        approved = ctx.approval == "granted"
        out.append(
            _Gate(
                "escalate",
                "escalate",
                "medium",
                f"Premium lane {f.lane} was selected for {where} under escalation reason "
                f"{f.escalation_reason}; it must de-escalate after this stage."
                + (" The task class requires a human justification." if f.requires_justification else ""),
                "Record the escalation receipt; obtain a human approval first when the task class requires one.",
                approved or not f.requires_justification,
                f.requires_justification,
            )
        )
    if f.approval_required:
        out.append(
            _Gate(
                "escalate:human-review",
                "escalate",
                "medium",
                f"A routing ceiling requires human review before {where} runs (human_review_required).",
                "Obtain a human approval for this stage before it runs.",
                ctx.approval == "granted",
                True,
            )
        )
    if not out:
        out.append(
            _Gate(
                "allow",
                "allow",
                "info",
                f"Lane {f.lane} was selected for {where} ({f.reason}).",
                "No remediation required.",
                True,
                False,
            )
        )
    if ctx.approval == "pending":
        out.append(
            _Gate(
                "defer:awaiting-approval",
                "defer",
                "medium",
                f"Stage {f.stage} waits for a human justification before lane {f.lane} may run.",
                "Ask the approver for a decision; the stage runs once it is granted.",
                False,
                True,
            )
        )
    elif ctx.approval == "denied":
        out.append(
            _Gate(
                "deny:approval-denied",
                "deny",
                "high",
                f"The approver refused lane {f.lane} for {where}.",
                "Route the stage without the escalation, or ask again with a better justification.",
                False,
                True,
            )
        )
    return out


def guardrail_decision_id(route_decision_id: str, outcome: str) -> str:
    """The deterministic id of a guardrail decision: a digest of the route decision id
    and the outcome, so a replay of the run gives the same ids."""
    return "guardrail:decision:agentlanes:" + _hex(f"{route_decision_id}|{outcome}")[:32]


def guardrail_decisions(
    decision: RouteDecision | DecisionFacts | Mapping[str, Any], context: StageEvidence
) -> list[dict[str, Any]]:
    """guardrail-fabric ``sourceos.guardrail.decision.v0.1`` documents, one per gate
    outcome of ``decision``: ``allow`` (a lane selected), ``allow_with_context``
    (downgraded), ``escalate`` (a premium lane; human approval when the task class needs
    justification, or a ceiling needs human review), ``defer`` (deferred; failed closed on
    a missing or invalid signal, severity ``high``; waiting for approval), ``deny``
    (denied; failed closed where the policy denies, severity ``high``; approval refused).

    Args:
        decision: a live decision, its facts, or its native JSON form.
        context: the stage context.
    """
    f = _facts(decision)
    evidence: dict[str, Any] = {
        "actionClass": "model",
        "tool": None,
        "inputDigest": context.prompt_digest,
        "outputDigest": None,
        "sessionId": context.run_id,
        "agentId": "agentlanes",
        "taskId": None,
        "routeDecisionId": f.decision_id,
        "chainStage": context.stage or f.stage,
        "taskClass": f.task_class,
        "status": f.status,
        "lane": f.lane,
        "requestedLane": f.requested_lane,
        "reasons": list(f.reasons),
        "escalationReceiptRef": _receipt_ref(context),
        "inputs": dict(f.inputs),
        "preservedWarnings": list(f.warnings),
        "mapping": MAPPING_VERSION,
    }
    out = []
    for gate in _gates(f, context):
        out.append(
            {
                "schema": GUARDRAIL_SCHEMA,
                "decisionId": guardrail_decision_id(f.decision_id, gate.key),
                "timestamp": context.issued_at,
                "policyId": f.policy_id,
                "policyVersion": "v0.1",
                "policyHash": f.policy_digest,
                "scope": "runtime",
                "severity": gate.severity,
                "decision": gate.decision,
                "reason": gate.reason,
                "remediation": gate.remediation,
                "evidence": {**evidence, "outcome": gate.key},
                "effects": {
                    "agentMayContinue": gate.may_continue,
                    "requiresHumanApproval": gate.approval,
                    "redacted": False,
                    "logsRequired": True,
                    "tamperSealRequired": gate.decision in ("escalate", "deny"),
                },
            }
        )
    return out


# ------------------------------------------------------------------ agentplane


def _receipt_ref(ctx: StageEvidence) -> str | None:
    if ctx.escalation_receipt_id is None:
        return None
    ref = f"agentlanes://escalation-receipt/{ctx.escalation_receipt_id}"
    return f"{ref}#{ctx.escalation_receipt_digest}" if ctx.escalation_receipt_digest else ref


def _agentplane_task(task: str, extra: Mapping[str, str] | None) -> str:
    mapped = (extra or {}).get(task) or TASK_CLASS_MAP.get(task)
    if mapped is None:
        raise ConfigurationError(
            f"Task class {task!r} has no agentplane task class in {MAPPING_VERSION}; pass a mapping for it "
            f"(task_classes={{{task!r}: ...}}, or --task-class-map {task}=CLASS), CLASS one of: "
            f"{', '.join(AGENTPLANE_TASK_CLASSES)}."
        )
    if mapped not in AGENTPLANE_TASK_CLASSES:
        raise ConfigurationError(
            f"Task class {task!r} is mapped to {mapped!r}, which is not an agentplane task class "
            f"(one of: {', '.join(AGENTPLANE_TASK_CLASSES)})."
        )
    return mapped


def lane_receipt(
    decision: RouteDecision | DecisionFacts | Mapping[str, Any],
    context: StageEvidence,
    *,
    task_classes: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """agentplane's ``ModelRoutingLaneDecisionReceipt`` v0.1 for one stage decision.

    Args:
        decision: a live decision, its facts, or its native JSON form.
        context: the stage context.
        task_classes: agentplane task classes for task classes outside
            ``agentlanes.mapping/1`` (they also override it).

    Raises:
        ConfigurationError: the task class has no mapping; or the decision runs a
            premium lane and the context names no escalation receipt (in a chain every
            premium lane has one, CONTRACT C), which agentplane requires.
    """
    f = _facts(decision)
    ctx = context
    stage = ctx.stage or f.stage
    if stage not in STAGE_MAP:
        raise ConfigurationError(f"Stage {stage!r} is not a chain stage (stages: {', '.join(STAGE_MAP)}).")
    task = _agentplane_task(f.task_class, task_classes)
    premium = f.lane in PREMIUM_LANES
    if f.status == "denied" or ctx.approval == "denied":
        outcome = "denied"
    elif f.status == "deferred" or ctx.approval == "pending":
        outcome = "deferred"
    elif f.status == "downgraded":
        outcome = "downgraded"
    elif premium and ctx.escalation_receipt_id is not None:
        outcome = "escalated"
    else:
        outcome = "lane_selected"
    running = outcome not in ("denied", "deferred")
    if running and premium and ctx.escalation_receipt_id is None:
        raise ConfigurationError(
            f"Decision {f.decision_id} runs premium lane {f.lane!r} but its stage context names no escalation "
            "receipt; agentplane requires one for high_end/pro (pass escalation_receipt_id, as the chain records "
            "for every premium lane)."
        )
    lane = f.lane if running and f.lane is not None else "no-model"
    requested = f.requested_lane or f.lane or f.default_lane or "no-model"
    selected = LANE_MAP[lane]
    gates = _gates(f, ctx)
    non_claims = [
        "This receipt does not store raw prompts; prompt evidence is a keyed hash only (hash_only).",
        f"Lanes, stages, task classes and outcomes are mapped from agentlanes' vocabulary by {MAPPING_VERSION}; "
        f"agentlanes decided lane {f.lane or 'none'} for stage {stage} of task class {f.task_class}.",
    ]
    doc: dict[str, Any] = {
        "kind": "ModelRoutingLaneDecisionReceipt",
        "receipt_id": "route-receipt:agentlanes:" + _hex(f"{ctx.run_id}|{f.decision_id}|{stage}|{outcome}")[:32],
        "run_ref": f"agentlanes://run/{ctx.run_id}",
        "chain_stage": STAGE_MAP[stage],
        "task_class": task,
        "requested_lane": LANE_MAP[requested],
        "selected_lane": selected,
        "lane_decision_outcome": outcome,
    }
    if outcome == "downgraded":
        doc["downgrade_reason"] = f"{f.reason} (requested lane: {', '.join(f.requested_reasons) or 'not optimal'})"
    elif outcome in ("denied", "deferred"):
        doc["downgrade_reason"] = (
            f"Stage {outcome}: " + ", ".join(f.reasons)
            if f.status in ("denied", "deferred")
            else f"Stage {outcome} pending a human approval of lane {f.lane}."
        )
    if f.escalation_reason:
        doc["escalation_reason"] = f.escalation_reason
    ref = _receipt_ref(ctx)
    if ref is not None:
        doc["escalation_receipt_ref"] = ref
    if running and premium:
        doc["de_escalation_required_after_stage"] = True
        non_claims.append(
            f"{f.lane} lane selection must de-escalate in subsequent chain stages unless independently re-qualified."
        )
    doc["cost_class"] = COST_CLASS_MAP[lane]
    doc["prompt_evidence_policy"] = "hash_only"
    if ctx.prompt_digest is not None:
        doc["prompt_hash_ref"] = ctx.prompt_digest
    doc["context_tool_posture"] = "tools_read_only" if stage == "verification" else "tools_governed"
    if stage == "verification":
        if ctx.deterministic_verifiers or f.deterministic or (lane == "no-model" and not ctx.model_judge):
            doc["verification_mode"] = "mechanical_tools_only"
        elif selected in _LIGHT:
            doc["verification_mode"] = "model_assisted"
        else:
            # agentplane accepts only mechanical verification above the lightweight lane;
            # a model judge there is stated, not claimed as a verification mode.
            non_claims.append(
                f"Verification on lane {lane} was judged by a model; no verification_mode is claimed for it."
            )
    doc["policy_decision_ref"] = guardrail_decision_id(f.decision_id, gates[-1].key)
    doc["model_router_policy_ref"] = f"model-router://policy/{f.policy_id}"
    doc["upstream_anchors"] = [
        f"agentlanes://route-decision/{f.decision_id}",
        *(f"agentlanes://input/{name}/{digest}" for name, digest in f.inputs.items()),
    ]
    for warning in f.warnings:
        non_claims.append(f"Routing ceiling warning preserved: {warning}.")
    doc["non_claims"] = non_claims
    doc["issued_at"] = ctx.issued_at
    return doc


class _LaneReceipt(BaseModel):
    """agentplane's ``ModelRoutingLaneDecisionReceipt`` v0.1, as agentlanes reads it."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, defer_build=True)

    kind: Literal["ModelRoutingLaneDecisionReceipt"]
    receipt_id: str = Field(min_length=1)
    run_ref: str = Field(min_length=1)
    chain_stage: Literal["planning", "execution", "verification", "reflection", "synthesis"]
    task_class: Literal[
        "reasoning",
        "code_generation",
        "code_review",
        "data_extraction",
        "summarization",
        "verification",
        "classification",
        "retrieval_augmented",
    ]
    requested_lane: Literal["no_model", "lightweight", "standard", "high_end", "pro"]
    selected_lane: Literal["no_model", "lightweight", "standard", "high_end", "pro"]
    lane_decision_outcome: Literal["lane_selected", "downgraded", "escalated", "denied", "deferred"]
    downgrade_reason: str | None = None
    escalation_reason: str | None = None
    escalation_receipt_ref: str | None = None
    de_escalation_required_after_stage: bool | None = None
    cost_class: Literal["minimal", "standard", "elevated", "high", "pro"]
    prompt_evidence_policy: Literal["hash_only", "hash_and_schema", "redacted_summary"]
    prompt_hash_ref: str | None = None
    context_tool_posture: Literal["tools_disabled", "tools_read_only", "tools_governed", "tools_full"]
    verification_mode: Literal["mechanical_tools_only", "model_assisted", "model_primary"] | None = None
    policy_decision_ref: str = Field(min_length=1)
    model_router_policy_ref: str = Field(min_length=1)
    guardrail_fabric_ref: str | None = None
    hellgraph_evidence_refs: list[str] | None = None
    upstream_anchors: list[str] | None = None
    non_claims: list[str] = Field(min_length=1)
    issued_at: str


_OPTIONAL_STRINGS: Final = (
    "downgrade_reason",
    "escalation_reason",
    "escalation_receipt_ref",
    "prompt_hash_ref",
    "guardrail_fabric_ref",
    "de_escalation_required_after_stage",
    "verification_mode",
    "hellgraph_evidence_refs",
    "upstream_anchors",
)


def check_lane_receipt(doc: object) -> list[str]:
    """Problems with a ``ModelRoutingLaneDecisionReceipt`` v0.1 (empty when it is valid).

    agentlanes' own reading of agentplane's schema (types, enums, required fields, no
    other fields, a ``date-time`` ``issued_at``, ``high_end``/``pro`` selections carry
    ``escalation_receipt_ref`` and ``de_escalation_required_after_stage``) and of its
    policy gates: a ``high_end``/``pro`` selection that is neither denied nor deferred
    carries a non-empty receipt ref and the de-escalation flag; a denied outcome never
    leaves ``high_end``/``pro`` selected; at ``verification``, ``model_primary`` is never
    used, and a lane other than ``no_model``/``lightweight`` is ``mechanical_tools_only``
    when a mode is given; ``prompt_evidence_policy`` and ``non_claims`` are present.
    """
    if not isinstance(doc, Mapping):
        return [f"a receipt must be a JSON object, not {type(doc).__name__}"]
    problems: list[str] = []
    for name in _OPTIONAL_STRINGS:
        if name in doc and doc[name] is None:
            problems.append(f"schema: {name} must not be null")
    try:
        _LaneReceipt.model_validate(doc, strict=True)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            where = "/".join(str(p) for p in error["loc"]) or "(root)"
            problems.append(f"schema: {where}: {error['msg']}")
    issued = doc.get("issued_at")
    if isinstance(issued, str):
        try:
            parse_time(issued)
        except ValueError as exc:
            problems.append(f"schema: issued_at: {exc}")
    # The schema's conditional and the policy gates, read from the raw document so that
    # they are reported even when a field above is wrong.
    selected = doc.get("selected_lane")
    outcome = doc.get("lane_decision_outcome")
    high = selected in ("high_end", "pro")
    if high and ("escalation_receipt_ref" not in doc or "de_escalation_required_after_stage" not in doc):
        problems.append(
            f"schema: selected_lane={selected} requires escalation_receipt_ref and de_escalation_required_after_stage"
        )
    if high and outcome not in ("denied", "deferred"):
        if not doc.get("escalation_receipt_ref"):
            problems.append(f"gate: selected_lane={selected} requires escalation_receipt_ref unless denied/deferred")
        if doc.get("de_escalation_required_after_stage") is None:
            problems.append(f"gate: selected_lane={selected} requires de_escalation_required_after_stage")
    if outcome == "denied" and high:
        problems.append("gate: a denied outcome must de-escalate selected_lane to no_model or lightweight")
    if doc.get("chain_stage") == "verification":
        mode = doc.get("verification_mode")
        if mode == "model_primary":
            problems.append("gate: the verification stage must not use model_primary")
        if selected not in _LIGHT and mode and mode != "mechanical_tools_only":
            problems.append("gate: verification above the lightweight lane must be mechanical_tools_only")
    if not doc.get("prompt_evidence_policy"):
        problems.append("gate: prompt_evidence_policy is required")
    if not doc.get("non_claims"):
        problems.append("gate: non_claims must not be empty")
    return list(dict.fromkeys(problems))


# ------------------------------------------------------------- evidence journal


def canonical_event(event: Any) -> bytes:
    """An event's canonical JSON: sorted keys, compact separators, ASCII escapes."""
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def _line(record: Mapping[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


class JournalWriter:
    """Writes agentplane's hash-chained evidence journal, one JSON line per event.

    Each line is ``{appendedAt, chainDigest, evidenceDigest, event, previousDigest}``
    with sorted keys and compact separators; ``evidenceDigest`` is ``sha256:`` + the
    hex sha256 of the event's canonical JSON; ``chainDigest`` is ``sha256:`` + the hex
    sha256 of the previous chain digest's hex followed by the evidence digest's hex; the
    first ``previousDigest`` is ``sha256:`` and 64 zeros.

    Args:
        previous: the chain digest to continue from (a journal's tip), default genesis.
    """

    def __init__(self, previous: str = GENESIS_DIGEST) -> None:
        if not previous.startswith("sha256:") or len(previous) != 71:
            raise ConfigurationError(f"Journal tip {previous!r} is not a sha256:<64 hex> digest.")
        self.tip = previous
        """The chain digest of the last line written."""

    def append(self, event: Mapping[str, Any], *, appended_at: str | datetime) -> str:
        """The journal line for ``event`` (without a newline); advances :attr:`tip`."""
        evidence = hashlib.sha256(canonical_event(event)).hexdigest()
        chain = hashlib.sha256(f"{self.tip[7:]}{evidence}".encode("ascii")).hexdigest()
        line = _line(
            {
                "appendedAt": _utc(appended_at, "journal time appendedAt"),
                "chainDigest": f"sha256:{chain}",
                "evidenceDigest": f"sha256:{evidence}",
                "event": event,
                "previousDigest": self.tip,
            }
        )
        self.tip = f"sha256:{chain}"
        return line


@dataclass(frozen=True, slots=True)
class JournalReport:
    """The outcome of :func:`verify_journal`.

    Attributes:
        verified: every record checked out.
        records: how many records were verified before the first problem (all, if none).
        tip: the last good chain digest.
        problem: what is wrong with the first bad record (``None`` when verified).
        index: that record's 0-based line number.
    """

    verified: bool
    records: int
    tip: str
    problem: str | None = None
    index: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"verified": self.verified, "records": self.records, "tip": self.tip}
        if self.problem is not None:
            out.update(reason=self.problem, recordIndex=self.index)
        return out


_JOURNAL_KEYS: Final = frozenset({"appendedAt", "chainDigest", "evidenceDigest", "event", "previousDigest"})


def _hex_of(value: object) -> str | None:
    if not isinstance(value, str) or not value.startswith("sha256:") or len(value) != 71:
        return None
    tail = value[7:]
    return tail if all(c in "0123456789abcdef" for c in tail) else None


def verify_journal(lines: Iterable[str]) -> JournalReport:
    """Verify an evidence journal by agentplane's rules: each record's ``previousDigest``
    is the previous record's chain digest (all zeros first), its ``evidenceDigest`` is
    the digest of its event's canonical JSON, its ``chainDigest`` follows from both; and
    by the format's: each line is one such record written with sorted keys and compact
    separators. Blank lines are skipped, as agentplane's verifier does.
    """
    previous = "0" * 64
    count = 0
    for index, raw in enumerate(lines):
        line = raw.rstrip("\n").rstrip("\r")
        if not line.strip():
            continue
        problem, chain = _check_record(line, previous)
        if problem is not None:
            return JournalReport(False, count, f"sha256:{previous}", problem, index)
        previous = chain
        count += 1
    return JournalReport(True, count, f"sha256:{previous}")


def _check_record(line: str, previous: str) -> tuple[str | None, str]:
    """``(problem, chain digest hex)`` of one journal line after ``previous``."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return "the line is not JSON (or nests deeper than any record)", ""
    if not isinstance(record, dict) or set(record) != _JOURNAL_KEYS:
        return "the record is not exactly appendedAt, chainDigest, evidenceDigest, event, previousDigest", ""
    if _hex_of(record["previousDigest"]) != previous:
        return "previousDigest mismatch", ""
    try:
        evidence = hashlib.sha256(canonical_event(record["event"])).hexdigest()
    except (ValueError, RecursionError):
        return "the event is not canonical JSON", ""
    if _hex_of(record["evidenceDigest"]) != evidence:
        return "evidenceDigest mismatch", ""
    chain = hashlib.sha256(f"{previous}{evidence}".encode("ascii")).hexdigest()
    if _hex_of(record["chainDigest"]) != chain:
        return "chainDigest mismatch", ""
    if not isinstance(record["appendedAt"], str):
        return "appendedAt is not a string", ""
    if _line(record) != line:
        return "the line is not written with sorted keys and compact separators", ""
    return None, chain


# ------------------------------------------------------------------ export


def evidence_lines(
    records: Iterable[tuple[RouteDecision | DecisionFacts | Mapping[str, Any], StageEvidence]],
    fmt: str,
    *,
    task_classes: Mapping[str, str] | None = None,
    journal_tip: str = GENESIS_DIGEST,
) -> Iterator[str]:
    """JSON lines (no newlines) for ``records`` in one of :data:`FORMATS`.

    * ``agentplane-lane-receipts``: one :func:`lane_receipt` per record;
    * ``guardrail-decisions``: every :func:`guardrail_decisions` document per record;
    * ``evidence-journal``: per record, its lane receipt then its guardrail decisions,
      as journal lines (:class:`JournalWriter`), each appended at the record's time.

    Receipts and guardrail decisions are written with sorted keys and compact separators.

    Raises:
        ConfigurationError: an unknown format, or as :func:`lane_receipt`.
    """
    if fmt not in FORMATS:
        raise ConfigurationError(f"Evidence format {fmt!r} is not one of: {', '.join(FORMATS)}.")
    writer = JournalWriter(journal_tip) if fmt == "evidence-journal" else None
    for decision, context in records:
        facts = _facts(decision)
        if fmt == "guardrail-decisions":
            for doc in guardrail_decisions(facts, context):
                yield _dump(doc)
            continue
        receipt = lane_receipt(facts, context, task_classes=task_classes)
        if writer is None:
            yield _dump(receipt)
            continue
        for event in (receipt, *guardrail_decisions(facts, context)):
            yield writer.append(event, appended_at=context.issued_at)


def _dump(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
