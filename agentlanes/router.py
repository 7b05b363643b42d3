"""The router: one pure, synchronous decision per stage (CONTRACT Parts A and B).

A :class:`Router` compiles a :class:`~agentlanes.policy.PolicyBundle` into lookup tables
once. :meth:`Router.decide` then does no I/O, reads no clock and allocates little: the
rules that depend only on names (floor, stage cap, task class, premium reason, window
shares) are cached per (task class, stage, risk, escalation state, window, deterministic)
and the signal rules (local admission, hosted admission, premium quota) are a handful of
comparisons on a checked :class:`~agentlanes.signals.SignalSnapshot`. Everything that
does not depend on the budget figure is compiled into a *plan* per (names, escalation
state, snapshot digest) and reused, so a warm decision is one dict lookup, one budget
comparison per lane, a scan of the preference order and one digest.

Budget seam (CONTRACT B6): ``decide(request, ledger_remaining=x)`` decides with the least
of the caller's ``budgetRemaining`` and what a budget ledger says the window has left.

Neighbours' inputs (CONTRACT D): a request's findings, routing ceilings and binding add
reasons to the candidates they remove (after the nine rules' reasons, in that order:
findings, ceilings, binding, then the ceilings' stage-wide reasons) and are part of the
plan key, so they are part of the decision id. A request without them takes exactly the
old path: same key, same id, three dict reads and a truth test more.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from agentlanes.ceiling import CeilingLimits
from agentlanes.decision import Candidate, DecisionStatus, RouteDecision, RouteRequest, RouterMeta, Upgrade
from agentlanes.errors import RouteInputError
from agentlanes.lanes import DETERMINISTIC_STAGES, HOSTED_LANES, PREMIUM_LANES, RANK, lane_list
from agentlanes.policy import BudgetWindow, ChainStage, PolicyBundle, TaskClass, load_bundle
from agentlanes.signals import REQUIRED_SIGNALS, SignalSnapshot

__all__ = ["DETERMINISTIC_STAGES", "Router", "RouterMeta"]  # RouterMeta now lives in decision.py

_ID_PREFIX: Final = "urn:agentlanes:route-decision:"
_PACK_DOUBLE: Final = struct.Struct("<d").pack
_new_tuple: Final = tuple.__new__
_SHARE_EXHAUSTED: Final = {"high-end": "high-end-share-exhausted", "pro": "pro-share-exhausted"}


class _Plan:
    """Everything about a decision that does not depend on the budget figure."""

    __slots__ = (
        "affordable",
        "best_affordable",
        "extra",
        "fail_status",
        "hasher",
        "lanes",
        "max_cost",
        "preference",
        "problems",
    )

    def __init__(
        self,
        lanes: tuple[tuple[Candidate, Candidate, float], ...],
        preference: tuple[int, ...],
        problems: tuple[str, ...],
        hasher: hashlib._Hash,
        fail_status: DecisionStatus,
        extra: dict[str, tuple[str, ...]],
    ) -> None:
        self.lanes = lanes
        """Per candidate lane: its candidate when affordable, when over budget, its cost."""
        self.preference = preference
        """Indices of lanes feasible-if-affordable, best first (tie-breakers, then rank)."""
        self.problems = problems
        """Signal problems, then the neighbours' stage-wide reasons (a ceiling that defers
        the stage); non-empty means the decision fails closed."""
        self.fail_status = fail_status
        """The status when :attr:`problems` is non-empty: the policy's for bad signals,
        ``deferred`` for a stage a ceiling defers."""
        self.extra = extra
        """The neighbours' reasons per lane (empty without neighbours' inputs)."""
        self.hasher = hasher
        """sha256 state fed with the documents' digest and the plan key."""
        self.max_cost = max((cost for _, _, cost in lanes), default=0.0)
        self.affordable = tuple(ok for ok, _, _ in lanes)
        """The candidates when the budget covers every lane (the common case)."""
        self.best_affordable = next((self.affordable[i] for i in preference), None)


_FEASIBLE_KEY_COST: Final = -1  # marker in a sort-key template: "put the cost here"


@dataclass(frozen=True, slots=True)
class _Costing:
    """A lane's price, flattened for the hot path."""

    lane: str
    free: bool
    base: float
    per_in: float
    """Price per million input tokens (divided by 1e6 at use, as the contract writes it)."""
    per_out: float
    per_cache: float
    per_tool: float
    per_runtime: float
    per_energy: float
    minimum: float


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
        "_costing",
        "_extra_required",
        "_fail_status",
        "_floors",
        "_hosted",
        "_local",
        "_order",
        "_plans",
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
        self._tasks: dict[str, TaskClass] = {t.task_class: t for t in pol.task_classes}
        self._stages: dict[str, ChainStage] = {s.stage: s for s in pol.chain_stages}
        self._floors: dict[str, str] = {f.risk_class: f.minimum_lane for f in opt.quality_policy.risk_floors}
        self._windows: dict[str, BudgetWindow] = {w.window: w for w in opt.budget_policy.windows}
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
                per_in=p.input_per_million,
                per_out=p.output_per_million,
                per_cache=p.cache_read_per_million or 0.0,
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
        self._plans: dict[tuple[Any, ...], _Plan] = {}
        self._bundle_digest = self.bundle.digest

    # ------------------------------------------------------------------ lookups

    def check(
        self,
        *,
        task_class: str | None = None,
        stage: str | None = None,
        risk_class: str | None = None,
        budget_window: str | None = None,
    ) -> None:
        """Raise :class:`RouteInputError` naming the first of these names the documents
        do not define (``None`` skips a check)."""
        if task_class is not None and task_class not in self._tasks:
            raise RouteInputError(
                f"Task class {task_class!r} is not defined by policy {self.meta.policy_ref} "
                f"(task classes: {', '.join(self._tasks)})."
            )
        if stage is not None and stage not in self._stages:
            raise RouteInputError(
                f"Stage {stage!r} is not a chain stage of policy {self.meta.policy_ref} "
                f"(stages: {', '.join(self._stages)})."
            )
        if risk_class is not None and risk_class not in self._floors:
            raise RouteInputError(
                f"Risk class {risk_class!r} has no risk floor in optimizer {self.meta.optimizer_ref} "
                f"(risk classes: {', '.join(self._floors)})."
            )
        if budget_window is not None and budget_window not in self._windows:
            raise RouteInputError(
                f"Budget window {budget_window!r} is not defined in optimizer {self.meta.optimizer_ref} "
                f"(windows: {', '.join(self._windows)})."
            )

    def stage_default_lane(self, stage: str) -> str | None:
        """The policy's default lane for ``stage`` (``None`` for an unknown stage)."""
        spec = self._stages.get(stage)
        return spec.default_lane if spec is not None else None

    def _lookup(self, req: RouteRequest) -> None:
        self.check(
            task_class=req.task_class, stage=req.stage, risk_class=req.risk_class, budget_window=req.budget_window
        )
        for lane, why in req.excluded_lanes:
            if lane not in RANK or not why:
                raise RouteInputError(
                    f"Excluded lane {lane!r} (reason {why!r}) is not a lane with a reason (lanes: {lane_list()})."
                )
        if req.requested_lane is not None and req.requested_lane not in RANK:
            raise RouteInputError(f"Requested lane {req.requested_lane!r} is not a lane (lanes: {lane_list()}).")
        if not self._order:
            raise RouteInputError(f"Optimizer {self.meta.optimizer_ref} has an empty candidateOrder.")

    def _static_reasons(self, req: RouteRequest, escalation: int) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
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

    # ------------------------------------------------------------------ decide

    def decide(
        self,
        request: RouteRequest,
        *,
        ledger_remaining: float | None = None,
        premium_remaining: tuple[float, float] | None = None,
    ) -> RouteDecision:
        """Decide which lane may run ``request``'s stage.

        Args:
            request: the stage's request.
            ledger_remaining: what a budget ledger says the window has left; the
                decision uses the least of this and ``request.budget_remaining``.
            premium_remaining: what the ledger's ``highEndMaxShare`` / ``proMaxShare``
                leave for ``high-end`` and ``pro``; a premium lane whose cost exceeds
                it gets ``high-end-share-exhausted`` / ``pro-share-exhausted``.

        Raises:
            RouteInputError: the request names a task class, stage, risk class, window
                or lane the documents do not define.
        """
        req = request
        # The request's fields, read from its __dict__ (where pydantic keeps them, and
        # where RouteRequest.trusted puts them): a dict subscription costs a third of an
        # attribute read on a pydantic model, and this is most of a warm decision.
        f = req.__dict__
        sig = f["signals"]
        reason_given = f["escalation_reason"]
        escalation = 0 if not reason_given else (1 if reason_given in self._allowed_reasons else 2)
        key: tuple[Any, ...] = (
            f["task_class"],
            f["stage"],
            f["risk_class"],
            f["budget_window"],
            f["deterministic"],
            escalation,
            sig.digest,
            f["excluded_lanes"],
        )
        # Findings, ceilings and binding values are always truthy; no inputs, no change
        # to the key (so decisions without them keep their ids). With inputs, their
        # digests join the key (and so the decision id).
        found, ceilings, binding = f["findings"], f["ceilings"], f["binding"]
        if found or ceilings or binding:
            key = (
                *key,
                found.digest if found else None,
                tuple([c.digest for c in ceilings]) if ceilings else (),
                binding.digest if binding else None,
            )
        plan = self._plans.get(key)
        if plan is None:
            self._lookup(req)
            plan = self._plan(req, escalation, key)
            if len(self._plans) >= 2048:  # bounded; entries are cheap to rebuild
                self._plans.clear()
            self._plans[key] = plan
        asked = f["requested_lane"]
        if asked is not None and asked not in RANK:
            raise RouteInputError(f"Requested lane {asked!r} is not a lane (lanes: {lane_list()}).")

        budget = float(f["budget_remaining"])
        if ledger_remaining is not None and ledger_remaining < budget:
            budget = float(ledger_remaining)
        problems = plan.problems
        best: Candidate | None
        if premium_remaining is not None and not problems:
            candidates, best = self._with_premium_caps(plan, budget, premium_remaining)
        elif budget >= plan.max_cost:
            candidates = plan.affordable
            best = plan.best_affordable
        else:
            candidates = tuple([ok if cost <= budget else over for ok, over, cost in plan.lanes])
            best = None
            for i in plan.preference:
                if candidates[i].feasible:
                    best = candidates[i]
                    break

        requested: Candidate | None = None
        if asked is not None:
            for cand in candidates:
                if cand.lane == asked:
                    requested = cand
                    break
            else:
                ok, over, cost = self._lane_plan(asked, req, escalation, plan.extra.get(asked, ()))
                requested = ok if cost <= budget else over

        upgrade = None
        status: DecisionStatus
        lane: str | None = None
        cost_out: float | None = None
        if problems:
            status, reason, reasons = plan.fail_status, problems[0], problems
        else:
            if best is not None:
                lane, cost_out = best.lane, best.estimated_cost
            if lane is None:
                status, reason = "deferred", "no-feasible-candidate"
            elif asked is not None and asked != lane:
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

        # The plan's hasher already holds the documents' digest and the plan key (names,
        # escalation state, signal digest); the rest of the input goes in here.
        # The budget goes in as its 8 IEEE-754 bytes: fixed length (so the text after it
        # is unambiguous) and far cheaper than formatting a float.
        h = plan.hasher.copy()
        h.update(_PACK_DOUBLE(budget))
        if asked is not None or reason_given is not None:
            h.update(f"|{asked}|{reason_given}".encode())
        if premium_remaining is not None:
            h.update(b"|p" + _PACK_DOUBLE(premium_remaining[0]) + _PACK_DOUBLE(premium_remaining[1]))
        decision_id = _ID_PREFIX + h.hexdigest()[:32]
        # tuple.__new__ directly: the NamedTuple's generated __new__ is a Python frame.
        return _new_tuple(
            RouteDecision,
            (
                decision_id,
                status,
                lane,
                reason,
                reasons,
                cost_out,
                candidates,
                requested,
                upgrade,
                escalation == 1,
                budget,
                ledger_remaining,
                req,
                self.meta,
            ),
        )

    @staticmethod
    def _with_premium_caps(
        plan: _Plan, budget: float, premium_remaining: tuple[float, float]
    ) -> tuple[tuple[Candidate, ...], Candidate | None]:
        """Candidates when a ledger caps the premium lanes' share (CONTRACT B6)."""
        high_end, pro = premium_remaining[0], premium_remaining[1]
        out: list[Candidate] = []
        for ok, over, cost in plan.lanes:
            cand = ok if cost <= budget else over
            lane = cand[0]
            cap = high_end if lane == "high-end" else pro if lane == "pro" else None
            if cap is not None and cost > cap:
                # tuple.__new__ directly: the NamedTuple's generated __new__ is a Python frame
                # (this path is every decision a ledger caps, and every counterfactual one).
                cand = _new_tuple(Candidate, (lane, False, cost, (*cand[3], _SHARE_EXHAUSTED[lane])))
            out.append(cand)
        candidates = tuple(out)
        for i in plan.preference:
            if candidates[i][1]:
                return candidates, candidates[i]
        return candidates, None

    # ------------------------------------------------------------------ planning

    def _plan(self, req: RouteRequest, escalation: int, key: tuple[Any, ...]) -> _Plan:
        """Everything about a decision that does not depend on the budget figure.

        For each lane of ``candidateOrder``: its candidate when affordable, its
        candidate when over budget, and its cost; the order in which feasible lanes
        are preferred (tie-breakers, then rank); and the signal problems.
        """
        extra, halt = self._neighbour_reasons(req) if req.has_neighbour_inputs else ({}, ())
        lanes = tuple(self._lane_plan(lane, req, escalation, extra.get(lane, ())) for lane in self._order)
        problems = self._signal_problems(req.signals)
        fail_status: DecisionStatus = self._fail_status if problems else "deferred"
        problems += halt
        template = self._template
        keyed = []
        for i, (ok, _over, cost) in enumerate(lanes):
            if ok.feasible:
                tpl = template[ok.lane]
                keyed.append((tuple(cost if v == _FEASIBLE_KEY_COST else v for v in tpl), i))
        keyed.sort()
        hasher = hashlib.sha256(f"{self._bundle_digest}|{key!r}".encode())
        return _Plan(lanes, tuple(i for _, i in keyed), problems, hasher, fail_status, extra)

    @staticmethod
    def _neighbour_reasons(req: RouteRequest) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...]]:
        """CONTRACT D1-D3: per lane, the reasons the neighbours' inputs add (findings,
        then ceilings, then the binding, then the ceilings' stage-wide reasons); and those
        stage-wide reasons alone (a ceiling that defers the whole stage)."""
        parts: list[dict[str, tuple[str, ...]]] = []
        halt: tuple[str, ...] = ()
        if req.findings is not None:
            parts.append(req.findings.lane_reasons())
        if req.ceilings:
            limits = CeilingLimits.combine(req.ceilings)
            parts.append(limits.lane_reasons())
            halt = limits.stage_reasons(req.stage, req.deterministic)
        if req.binding is not None:
            parts.append(req.binding.lane_reasons())
        extra: dict[str, tuple[str, ...]] = {}
        for lane in RANK:
            reasons = (*(r for part in parts for r in part.get(lane, ())), *halt)
            if reasons:
                extra[lane] = reasons
        return extra, halt

    def _signal_problems(self, sig: SignalSnapshot) -> tuple[str, ...]:
        problems = sig.problems
        if self._extra_required:
            missing = sig.missing(self._extra_required)
            if missing:
                problems = tuple(sorted((*problems, *missing)))
        return problems

    def _lane_plan(
        self, lane: str, req: RouteRequest, escalation: int, extra: tuple[str, ...] = ()
    ) -> tuple[Candidate, Candidate, float]:
        """One lane under all nine rules, with and without ``budget-insufficient``, plus
        ``extra``: the neighbours' reasons for it."""
        pre, post = self._static_reasons(req, escalation)[lane]
        sig = req.signals
        cost = self.lane_cost(lane, sig)
        problems = self._signal_problems(sig)
        if problems:
            excluded_ = tuple(why for name, why in req.excluded_lanes if name == lane)
            reasons = (*problems, *pre, *post, *excluded_, *extra)
            cand = Candidate(lane, False, cost, reasons)
            return cand, cand, cost
        dyn: tuple[str, ...] = ()
        if lane == "local-cheap":
            dyn = self._local_reasons(sig)
        elif lane in HOSTED_LANES:
            dyn = self._hosted_reasons(sig)
            if lane in PREMIUM_LANES:
                dyn += self._premium_reasons(sig)
        excluded = tuple(why for name, why in req.excluded_lanes if name == lane)
        ok_reasons = (*pre, *dyn, *post, *excluded, *extra)
        over_reasons = (*pre, *dyn, "budget-insufficient", *post, *excluded, *extra)
        return Candidate(lane, not ok_reasons, cost, ok_reasons), Candidate(lane, False, cost, over_reasons), cost

    def _local_reasons(self, sig: SignalSnapshot) -> tuple[str, ...]:
        """Rule 5: local admission of ``local-cheap``."""
        deny_thermal, deny_battery, min_memory = self._local
        out = []
        if not sig.local_model_profile_available:
            out.append("local-model-profile-unavailable")
        if not sig.local_service_healthy:
            out.append("local-service-unhealthy")
        if deny_thermal and sig.thermal_state == "critical":
            out.append("thermal-critical")
        if deny_battery and sig.battery_state == "critical":
            out.append("battery-critical")
        if sig.memory_available_bytes < min_memory:
            out.append("insufficient-local-memory")
        return tuple(out)

    def _hosted_reasons(self, sig: SignalSnapshot) -> tuple[str, ...]:
        """Rule 6: hosted admission of ``cheap`` and above."""
        needs_net, deny_unknown, check_errors, max_err, max_lat = self._hosted
        out = []
        if needs_net and not sig.network_available:
            out.append("network-unavailable")
        if deny_unknown and not sig.provider_quota_known:
            out.append("provider-quota-unknown")
        if check_errors and sig.provider_error_rate > max_err:
            out.append("provider-error-rate-too-high")
        if max_lat is not None and sig.provider_latency_p95_ms > max_lat:
            out.append("provider-latency-too-high")
        return tuple(out)

    def _premium_reasons(self, sig: SignalSnapshot) -> tuple[str, ...]:
        """Rule 7: the premium quota reserve."""
        share = sig.provider_quota_remaining_share
        out = []
        if share < 0:
            out.append("provider-quota-share-missing")
        if share < self._premium_reserve:
            out.append("premium-reserve-below-threshold")
        return tuple(out)

    def lane_cost(self, lane: str, signals: SignalSnapshot) -> float:
        """Estimated cost of one call on ``lane`` under ``signals`` (CONTRACT A)."""
        overrides = signals.estimated_lane_costs
        if overrides is not None and lane in overrides:
            return float(overrides[lane])
        return self.call_cost(
            lane,
            input_tokens=signals.input_tokens,
            output_tokens=signals.output_tokens,
            cache_read_tokens=signals.cache_read_tokens,
            tool_calls=signals.tool_calls,
            runtime_minutes=signals.local_runtime_minutes,
            energy_minutes=signals.local_energy_minutes,
        )

    def call_cost(
        self,
        lane: str,
        *,
        input_tokens: float,
        output_tokens: float,
        cache_read_tokens: float = 0.0,
        tool_calls: float = 0.0,
        runtime_minutes: float = 0.0,
        energy_minutes: float | None = None,
    ) -> float:
        """The catalog's price of one call on ``lane`` with these counts (CONTRACT A),
        rounded to 6 decimals; what the chain reserves before and charges after a call."""
        c = self._costing.get(lane)
        if c is None:
            raise RouteInputError(f"The price catalog has no lane {lane!r}; add it to the catalog's /lanes.")
        if c.free:
            return 0.0
        energy = runtime_minutes if energy_minutes is None else energy_minutes
        # Term by term and in the contract's order (`in·inputPerMillion/1e6`, not
        # `in·(inputPerMillion/1e6)`): the two round differently at half-way points,
        # and a decision must not depend on how an implementation factored the formula.
        amount = (
            c.base
            + input_tokens * c.per_in / 1e6
            + output_tokens * c.per_out / 1e6
            + cache_read_tokens * c.per_cache / 1e6
            + tool_calls * c.per_tool
            + runtime_minutes * c.per_runtime
            + energy * c.per_energy
        )
        return round(amount if amount > c.minimum else c.minimum, 6)

    def route(self, *, signals: Mapping[str, Any] | SignalSnapshot, **fields: Any) -> RouteDecision:
        """Convenience: build a :class:`RouteRequest` from keywords and decide it."""
        return self.decide(RouteRequest(signals=signals, **fields))
