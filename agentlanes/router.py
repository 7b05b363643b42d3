"""The router: one pure, synchronous decision per stage (CONTRACT Parts A and B).

A :class:`Router` compiles a :class:`~agentlanes.policy.PolicyBundle` into lookup tables
once. :meth:`Router.decide` then does no I/O, reads no clock and allocates little: the
rules that depend only on names (floor, stage cap, task class, premium reason, window
shares) are cached per (task class, stage, risk, escalation state, window, deterministic)
and the signal rules (local admission, hosted admission, premium quota) are a handful of
comparisons on a checked :class:`~agentlanes.signals.SignalSnapshot`.

Budget seam (CONTRACT B6): ``decide(request, ledger_remaining=x)`` decides with the least
of the caller's ``budgetRemaining`` and what a budget ledger says the window has left.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from agentlanes.decision import Candidate, DecisionStatus, RouteDecision, RouteRequest, Upgrade
from agentlanes.errors import RouteInputError
from agentlanes.lanes import COST_CLASS, HOSTED_LANES, PREMIUM_LANES, RANK, lane_list
from agentlanes.policy import PolicyBundle, load_bundle
from agentlanes.signals import REQUIRED_SIGNALS

__all__ = ["DETERMINISTIC_STAGES", "Router", "RouterMeta"]

DETERMINISTIC_STAGES: Final[frozenset[str]] = frozenset({"verification", "tool-use", "retrieval"})
"""Stages that route to ``no-model`` regardless of the risk floor when they declare a
deterministic verifier or tool (CONTRACT B3)."""

_NO_REASONS: Final[tuple[str, ...]] = ()
_FEASIBLE_KEY_COST: Final = -1  # marker in a sort-key template: "put the cost here"


@dataclass(frozen=True, slots=True)
class _Costing:
    """A lane's price, flattened for the hot path."""

    lane: str
    free: bool
    base: float
    per_in: float
    per_out: float
    per_cache: float
    per_tool: float
    per_runtime: float
    per_energy: float
    minimum: float


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
        self.floors = {f.risk_class: (f.minimum_lane, f.requires_verification) for f in opt.quality_policy.risk_floors}
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


class Router:
    """Decides which lane may run a stage.

    Args:
        bundle: the documents to route under; the bundled defaults when omitted.

    Example:
        >>> router = Router()
        >>> d = router.decide(RouteRequest(task_class="routine-code", stage="planning",
        ...                                signals=HEALTHY))  # doctest: +SKIP
        >>> d.lane
        'standard'
    """

    __slots__ = (
        "_allowed_reasons",
        "_bundle_digest",
        "_cost_memo",
        "_costing",
        "_extra_required",
        "_fail_status",
        "_floors",
        "_hosted",
        "_local",
        "_order",
        "_premium_reserve",
        "_stages",
        "_static",
        "_tasks",
        "_template",
        "_windows",
        "bundle",
        "meta",
    )

    def __init__(self, bundle: PolicyBundle | None = None) -> None:
        self.bundle = bundle if bundle is not None else load_bundle()
        pol, opt, cat = self.bundle.policy, self.bundle.optimizer, self.bundle.catalog
        self.meta = RouterMeta(self.bundle)
        self._order: tuple[str, ...] = tuple(opt.selection_policy.candidate_order)
        self._tasks = {t.task_class: t for t in pol.task_classes}
        self._stages = {s.stage: s for s in pol.chain_stages}
        self._floors = {f.risk_class: f.minimum_lane for f in opt.quality_policy.risk_floors}
        self._windows = {w.window: w for w in opt.budget_policy.windows}
        self._allowed_reasons = frozenset(pol.escalation_policy.allowed_reasons)
        self._extra_required = tuple(
            s for s in dict.fromkeys(opt.resource_policy.required_signals) if s not in REQUIRED_SIGNALS
        )
        self._fail_status: DecisionStatus = "denied" if pol.enforcement.on_violation == "deny" else "deferred"
        self._premium_reserve = opt.budget_policy.premium_reserve_share or 0.0
        la = opt.resource_policy.local_admission
        self._local = (la.deny_when_thermal_critical, la.deny_when_battery_critical, la.min_memory_available_bytes)
        ha = opt.resource_policy.hosted_admission
        self._hosted = (
            ha.requires_network,
            ha.deny_when_quota_unknown,
            ha.deny_when_provider_unhealthy and ha.max_provider_error_rate is not None,
            ha.max_provider_error_rate if ha.max_provider_error_rate is not None else 1.0,
            ha.max_provider_latency_p95_ms,
        )
        costing: dict[str, _Costing] = {}
        for lane in RANK:
            entry = cat.lane(lane)
            if entry is None:
                continue
            p = entry.default_profile().pricing
            costing[lane] = _Costing(
                lane=lane,
                free=entry.cost_model == "none",
                base=p.request_base_cost,
                per_in=p.input_per_million / 1e6,
                per_out=p.output_per_million / 1e6,
                per_cache=(p.cache_read_per_million or 0.0) / 1e6,
                per_tool=p.tool_call_cost or 0.0,
                per_runtime=p.local_runtime_cost_per_minute or 0.0,
                per_energy=p.local_energy_cost_per_minute or 0.0,
                minimum=p.min_cost,
            )
        self._costing = costing
        # Sort-key template per lane: tie-breakers in order, then the lane rank.
        template: dict[str, tuple[float, ...]] = {}
        for lane in set(self._order) | set(RANK):
            key: list[float] = []
            for tb in opt.selection_policy.tie_breakers:
                if tb == "lower-cost":
                    key.append(_FEASIBLE_KEY_COST)
                elif tb == "local-first":
                    key.append(0 if lane in ("no-model", "local-cheap") else 1)
                elif tb == "lower-latency":
                    key.append(RANK[lane])
                else:
                    # higher-quota-remaining, higher-provider-health and unknown
                    # tie-breakers: one provider signal set means a constant.
                    key.append(0)
            key.append(RANK[lane])
            template[lane] = tuple(key)
        self._template = template
        self._static: dict[tuple[Any, ...], dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {}
        self._cost_memo: dict[str, dict[str, float]] = {}
        self._bundle_digest = self.bundle.digest

    # ------------------------------------------------------------------ lookups

    def _lookup(self, req: RouteRequest) -> None:
        if req.task_class not in self._tasks:
            raise RouteInputError(
                f"Task class {req.task_class!r} is not defined by policy {self.meta.policy_ref} "
                f"(task classes: {', '.join(self._tasks)})."
            )
        if req.stage not in self._stages:
            raise RouteInputError(
                f"Stage {req.stage!r} is not a chain stage of policy {self.meta.policy_ref} "
                f"(stages: {', '.join(self._stages)})."
            )
        if req.risk_class not in self._floors:
            raise RouteInputError(
                f"Risk class {req.risk_class!r} has no risk floor in optimizer {self.meta.optimizer_ref} "
                f"(risk classes: {', '.join(self._floors)})."
            )
        if req.budget_window not in self._windows:
            raise RouteInputError(
                f"Budget window {req.budget_window!r} is not defined in optimizer {self.meta.optimizer_ref} "
                f"(windows: {', '.join(self._windows)})."
            )
        if req.requested_lane is not None and req.requested_lane not in RANK:
            raise RouteInputError(f"Requested lane {req.requested_lane!r} is not a lane (lanes: {lane_list()}).")
        if not self._order:
            raise RouteInputError(f"Optimizer {self.meta.optimizer_ref} has an empty candidateOrder.")

    def _static_reasons(
        self, req: RouteRequest, escalation: int
    ) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
        """Rules 1-4 (before the signal rules) and 9 (after the budget rule), per lane."""
        key = (req.task_class, req.stage, req.risk_class, req.budget_window, req.deterministic, escalation)
        cached = self._static.get(key)
        if cached is not None:
            return cached
        task = self._tasks[req.task_class]
        stage = self._stages[req.stage]
        floor = self._floors[req.risk_class]
        window = self._windows[req.budget_window]
        allowed = {task.default_lane, *task.allowed_escalation_lanes, stage.default_lane}
        floor_waived = req.deterministic and req.stage in DETERMINISTIC_STAGES
        table: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        for lane, rank in RANK.items():
            pre: list[str] = []
            if rank < RANK[floor] and not (floor_waived and lane == "no-model"):
                pre.append(f"below-quality-floor:{floor}")
            if escalation != 1 and rank > RANK[stage.max_lane_without_escalation]:
                pre.append(f"stage-max-without-escalation:{stage.max_lane_without_escalation}")
            if lane not in allowed:
                pre.append("not-allowed-for-task-class")
            if lane in PREMIUM_LANES:
                if escalation == 0:
                    pre.append("premium-lane-requires-escalation-reason")
                elif escalation == 2:
                    pre.append("invalid-escalation-reason")
            post: list[str] = []
            if lane == "high-end" and window.high_end_max_share <= 0:
                post.append("high-end-share-zero")
            if lane == "pro" and window.pro_max_share <= 0:
                post.append("pro-share-zero")
            table[lane] = (tuple(pre), tuple(post))
        if len(self._static) < 4096:  # bounded: keys come from small closed sets
            self._static[key] = table
        return table

    # ------------------------------------------------------------------ costs

    def lane_cost(self, lane: str, signals: Any) -> float:
        """Estimated cost of one call on ``lane`` under ``signals`` (CONTRACT A)."""
        overrides = signals.estimated_lane_costs
        if overrides is not None and lane in overrides:
            return float(overrides[lane])
        c = self._costing[lane]
        if c.free:
            return 0.0
        amount = (
            c.base
            + signals.input_tokens * c.per_in
            + signals.output_tokens * c.per_out
            + signals.cache_read_tokens * c.per_cache
            + signals.tool_calls * c.per_tool
            + signals.local_runtime_minutes * c.per_runtime
            + signals.local_energy_minutes * c.per_energy
        )
        return round(amount if amount > c.minimum else c.minimum, 6)

    # ------------------------------------------------------------------ decide

    def decide(self, request: RouteRequest, *, ledger_remaining: float | None = None) -> RouteDecision:
        """Decide which lane may run ``request``'s stage.

        Args:
            request: the stage's request.
            ledger_remaining: what a budget ledger says the window has left; the
                decision uses the least of this and ``request.budget_remaining``.

        Raises:
            RouteInputError: the request names a task class, stage, risk class, window
                or lane the documents do not define.
        """
        req = request
        self._lookup(req)
        reason_given = req.escalation_reason
        escalation = 0 if not reason_given else (1 if reason_given in self._allowed_reasons else 2)
        static = self._static_reasons(req, escalation)
        sig = req.signals
        budget = req.budget_remaining
        if ledger_remaining is not None and ledger_remaining < budget:
            budget = ledger_remaining

        problems = sig.problems
        if self._extra_required:
            missing = sig.missing(self._extra_required)
            if missing:
                problems = tuple(sorted((*problems, *missing)))

        # Signal rules: computed once per decision, shared by the lanes they concern.
        local_r: tuple[str, ...] = _NO_REASONS
        hosted_r: tuple[str, ...] = _NO_REASONS
        premium_r: tuple[str, ...] = _NO_REASONS
        if problems:
            local_r = hosted_r = problems
        else:
            deny_thermal, deny_battery, min_memory = self._local
            lr = []
            if not sig.local_model_profile_available:
                lr.append("local-model-profile-unavailable")
            if not sig.local_service_healthy:
                lr.append("local-service-unhealthy")
            if deny_thermal and sig.thermal_state == "critical":
                lr.append("thermal-critical")
            if deny_battery and sig.battery_state == "critical":
                lr.append("battery-critical")
            if sig.memory_available_bytes < min_memory:
                lr.append("insufficient-local-memory")
            if lr:
                local_r = tuple(lr)
            needs_net, deny_unknown, check_errors, max_err, max_lat = self._hosted
            hr = []
            if needs_net and not sig.network_available:
                hr.append("network-unavailable")
            if deny_unknown and not sig.provider_quota_known:
                hr.append("provider-quota-unknown")
            if check_errors and sig.provider_error_rate > max_err:
                hr.append("provider-error-rate-too-high")
            if max_lat is not None and sig.provider_latency_p95_ms > max_lat:
                hr.append("provider-latency-too-high")
            if hr:
                hosted_r = tuple(hr)
            share = sig.provider_quota_remaining_share
            if share < 0:
                premium_r = (
                    ("provider-quota-share-missing", "premium-reserve-below-threshold")
                    if share < self._premium_reserve
                    else ("provider-quota-share-missing",)
                )
            elif share < self._premium_reserve:
                premium_r = ("premium-reserve-below-threshold",)

        costs = self._cost_memo.get(sig.digest)
        if costs is None:
            costs = self._costs(sig)

        candidates = []
        best: Candidate | None = None
        best_key: tuple[float, ...] | None = None
        template = self._template
        for lane in self._order:
            cand = self._evaluate(lane, static, costs, problems, local_r, hosted_r, premium_r, budget)
            candidates.append(cand)
            if cand.feasible:
                tpl = template[lane]
                key = tuple(cand.estimated_cost if v == _FEASIBLE_KEY_COST else v for v in tpl)
                if best_key is None or key < best_key:
                    best, best_key = cand, key
        requested = None
        asked = req.requested_lane
        if asked is not None:
            for cand in candidates:
                if cand.lane == asked:
                    requested = cand
                    break
            else:
                requested = self._evaluate(asked, static, costs, problems, local_r, hosted_r, premium_r, budget)

        upgrade = None
        status: DecisionStatus
        if problems:
            status, lane, reason, reasons, cost = self._fail_status, None, problems[0], problems, None
        elif best is None:
            status, lane, reason, cost = "deferred", None, "no-feasible-candidate", None
            reasons = (reason,)
        else:
            lane, cost = best.lane, best.estimated_cost
            if asked is not None and asked != lane:
                reason = f"requested-lane-not-optimal-or-feasible:{asked}"
                if RANK[lane] < RANK[asked]:
                    status = "downgraded"
                else:
                    status = "selected"
                    assert requested is not None
                    upgrade = Upgrade(asked, lane, requested.reasons)
            else:
                status, reason = "selected", "cheapest-feasible-candidate"
            reasons = (reason,)

        ident = "|".join(
            (
                self._bundle_digest,
                req.task_class,
                req.stage,
                req.risk_class,
                req.requested_lane or "",
                reason_given or "",
                req.budget_window,
                repr(float(budget)),
                "d" if req.deterministic else "",
                sig.digest,
            )
        )
        decision_id = "urn:agentlanes:route-decision:" + hashlib.sha256(ident.encode()).hexdigest()[:32]
        return RouteDecision(
            decision_id,
            status,
            lane,
            reason,
            reasons,
            cost,
            tuple(candidates),
            requested,
            upgrade,
            escalation == 1,
            float(budget),
            ledger_remaining,
            req,
            self.meta,
        )

    @staticmethod
    def _evaluate(
        lane: str,
        static: dict[str, tuple[tuple[str, ...], tuple[str, ...]]],
        costs: dict[str, float],
        problems: tuple[str, ...],
        local_r: tuple[str, ...],
        hosted_r: tuple[str, ...],
        premium_r: tuple[str, ...],
        budget: float,
    ) -> Candidate:
        """All nine rules for one lane, reasons in the contract's rule order."""
        pre, post = static[lane]
        cost = costs[lane]
        if problems:
            reasons = (*problems, *pre, *post)
        else:
            if lane == "local-cheap":
                dyn = local_r
            elif lane in PREMIUM_LANES:
                dyn = hosted_r + premium_r
            elif lane in HOSTED_LANES:
                dyn = hosted_r
            else:
                dyn = _NO_REASONS
            if cost > budget:
                reasons = (*pre, *dyn, "budget-insufficient", *post)
            elif dyn or post:
                reasons = (*pre, *dyn, *post)
            else:
                reasons = pre
        return Candidate(lane, not reasons, cost, reasons)

    def _costs(self, sig: Any) -> dict[str, float]:
        """Every lane's cost under ``sig``, memoised by the snapshot's digest (bounded)."""
        costs = {lane: self.lane_cost(lane, sig) for lane in self._costing}
        memo = self._cost_memo
        if len(memo) >= 256:
            memo.clear()
        memo[sig.digest] = costs
        return costs

    def route(self, *, signals: Mapping[str, Any] | Any, **fields: Any) -> RouteDecision:
        """Convenience: build a :class:`RouteRequest` from keywords and decide it."""
        return self.decide(RouteRequest(signals=signals, **fields))
