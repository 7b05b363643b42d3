"""Resource signals: what the router knows about this machine and the providers.

A :class:`SignalSnapshot` is built once from a raw mapping (the JSON wire form, camelCase
keys) and then reused by every decision until the signals change. Building one never
raises: a missing, ``null`` or wrongly typed signal becomes a *problem*
(``missing-signal:<name>`` / ``invalid-signal:<name>``) and any decision made on a
snapshot with problems is ``deferred`` (fail closed), never an admitted lane.

:class:`ResourceSignals` is the same data as a typed pydantic model, for code that
builds signals itself; ``ResourceSignals(...).snapshot()`` gives the router's form.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Mapping
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from agentlanes.lanes import RANK

__all__ = ["REQUIRED_SIGNALS", "ResourceSignals", "SignalSnapshot", "SnapshotCache"]

REQUIRED_SIGNALS: Final[tuple[str, ...]] = (
    "localModelProfileAvailable",
    "localServiceHealthy",
    "batteryState",
    "thermalState",
    "memoryAvailableBytes",
    "networkAvailable",
    "providerQuotaKnown",
    "providerQuotaRemainingShare",
    "providerErrorRate",
    "providerLatencyP95Ms",
    "estimatedInputTokens",
    "estimatedOutputTokens",
)
"""The twelve signals every decision needs (the optimizer may require more)."""

_BOOL = 0
_STATE = 1
_NONNEG = 2
_SHARE = 3  # <= 1; negative means "unknown" (CONTRACT A rule 7)
_RATE = 4  # 0..1

_KINDS: Final[dict[str, int]] = {
    "localModelProfileAvailable": _BOOL,
    "localServiceHealthy": _BOOL,
    "batteryState": _STATE,
    "thermalState": _STATE,
    "memoryAvailableBytes": _NONNEG,
    "networkAvailable": _BOOL,
    "providerQuotaKnown": _BOOL,
    "providerQuotaRemainingShare": _SHARE,
    "providerErrorRate": _RATE,
    "providerLatencyP95Ms": _NONNEG,
    "estimatedInputTokens": _NONNEG,
    "estimatedOutputTokens": _NONNEG,
    # Optional: absent means the default; present but null or mistyped is a problem,
    # because quietly dropping an override could make a lane look cheaper than it is.
    "estimatedCacheReadTokens": _NONNEG,
    "estimatedToolCalls": _NONNEG,
    "estimatedLocalRuntimeMinutes": _NONNEG,
    "estimatedLocalEnergyMinutes": _NONNEG,
}
_OPTIONAL: Final[frozenset[str]] = frozenset(
    {
        "estimatedCacheReadTokens",
        "estimatedToolCalls",
        "estimatedLocalRuntimeMinutes",
        "estimatedLocalEnergyMinutes",
        "estimatedLaneCosts",
    }
)


_FLOAT_MAX: Final = int(sys.float_info.max)
"""The largest integer a signal may be (``float()`` of a larger one raises)."""


def _valid(kind: int, value: object) -> bool:
    if kind == _BOOL:
        return value is True or value is False
    if kind == _STATE:
        return isinstance(value, str) and value != ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if isinstance(value, int) and not -_FLOAT_MAX <= value <= _FLOAT_MAX:
        return False  # beyond float range: no decision can use it, and float() would raise
    if kind == _NONNEG:
        return value >= 0
    if kind == _SHARE:
        return value <= 1
    return 0 <= value <= 1


def _num(value: object, default: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    if isinstance(value, int) and not -_FLOAT_MAX <= value <= _FLOAT_MAX:
        return default
    return float(value) if math.isfinite(value) else default


class SignalSnapshot:
    """An immutable, checked view of one set of resource signals.

    Attributes are the typed values the router reads (invalid or missing ones hold a
    conservative placeholder and are listed in :attr:`problems`).

    Attributes:
        raw: the mapping it was built from (not copied; do not mutate it afterwards).
        problems: ``missing-signal:<name>`` / ``invalid-signal:<name>`` reasons, sorted.
        canonical: the canonical JSON of ``raw`` (sorted keys, no spaces), or ``None``
            when it is not JSON-representable.
        digest: ``sha256:<hex>`` of the canonical JSON of ``raw``; part of every
            decision id, so the same signals always give the same id.
    """

    __slots__ = (
        "battery_state",
        "cache_read_tokens",
        "canonical",
        "digest",
        "estimated_lane_costs",
        "extra_present",
        "input_tokens",
        "local_energy_minutes",
        "local_model_profile_available",
        "local_runtime_minutes",
        "local_service_healthy",
        "memory_available_bytes",
        "network_available",
        "output_tokens",
        "problems",
        "provider_error_rate",
        "provider_latency_p95_ms",
        "provider_quota_known",
        "provider_quota_remaining_share",
        "raw",
        "thermal_state",
        "tool_calls",
    )

    raw: Mapping[str, Any]
    problems: tuple[str, ...]
    canonical: str | None
    digest: str
    local_model_profile_available: bool
    local_service_healthy: bool
    battery_state: str
    thermal_state: str
    memory_available_bytes: float
    network_available: bool
    provider_quota_known: bool
    provider_quota_remaining_share: float
    provider_error_rate: float
    provider_latency_p95_ms: float
    input_tokens: float
    output_tokens: float
    cache_read_tokens: float
    tool_calls: float
    local_runtime_minutes: float
    local_energy_minutes: float
    estimated_lane_costs: dict[str, float] | None
    extra_present: frozenset[str]

    def __init__(self, raw: Mapping[str, Any]) -> None:
        if not isinstance(raw, Mapping):
            raw = {}
            problems = ["invalid-signal:resources"]
        else:
            problems = []
        get = raw.get
        for name, kind in _KINDS.items():
            if name not in raw:
                if name not in _OPTIONAL:
                    problems.append(f"missing-signal:{name}")
            elif not _valid(kind, get(name)):
                problems.append(
                    f"missing-signal:{name}"
                    if get(name) is None and name not in _OPTIONAL
                    else f"invalid-signal:{name}"
                )
        costs: dict[str, float] | None = None
        if "estimatedLaneCosts" in raw:
            value = get("estimatedLaneCosts")
            if isinstance(value, Mapping) and all(
                isinstance(k, str) and k in RANK and _valid(_NONNEG, v) for k, v in value.items()
            ):
                costs = {k: round(float(v), 6) for k, v in value.items()}
            else:
                problems.append("invalid-signal:estimatedLaneCosts")
        set_ = object.__setattr__
        set_(self, "raw", raw)
        set_(self, "problems", tuple(sorted(problems)))
        set_(self, "local_model_profile_available", get("localModelProfileAvailable") is True)
        set_(self, "local_service_healthy", get("localServiceHealthy") is True)
        battery, thermal = get("batteryState"), get("thermalState")
        set_(self, "battery_state", battery if isinstance(battery, str) else "")
        set_(self, "thermal_state", thermal if isinstance(thermal, str) else "")
        set_(self, "memory_available_bytes", _num(get("memoryAvailableBytes")))
        set_(self, "network_available", get("networkAvailable") is True)
        set_(self, "provider_quota_known", get("providerQuotaKnown") is True)
        set_(self, "provider_quota_remaining_share", _num(get("providerQuotaRemainingShare"), -1.0))
        set_(self, "provider_error_rate", _num(get("providerErrorRate"), 1.0))
        set_(self, "provider_latency_p95_ms", _num(get("providerLatencyP95Ms"), math.inf))
        set_(self, "input_tokens", _num(get("estimatedInputTokens")))
        set_(self, "output_tokens", _num(get("estimatedOutputTokens")))
        set_(self, "cache_read_tokens", _num(get("estimatedCacheReadTokens")))
        set_(self, "tool_calls", _num(get("estimatedToolCalls")))
        runtime = _num(get("estimatedLocalRuntimeMinutes"))
        set_(self, "local_runtime_minutes", runtime)
        energy = get("estimatedLocalEnergyMinutes", runtime)
        set_(self, "local_energy_minutes", _num(energy, runtime))
        set_(self, "estimated_lane_costs", costs)
        set_(self, "extra_present", frozenset(k for k, v in raw.items() if v is not None))
        canonical = _canonical(raw)
        set_(self, "canonical", canonical)
        set_(self, "digest", _digest(raw, canonical))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"SignalSnapshot is immutable; build a new one instead of setting {name!r}.")

    @property
    def ok(self) -> bool:
        """True when every required signal is present and well typed."""
        return not self.problems

    @property
    def json_values(self) -> Mapping[str, Any]:
        """``raw`` as a decision may show it: itself when it is JSON, else a copy in which
        every value JSON cannot hold (NaN, infinities, objects) is ``null`` (and
        :attr:`problems` says which signal was invalid)."""
        if self.canonical is not None:
            return self.raw
        return {str(k): _json_safe(v) for k, v in self.raw.items()}

    def missing(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """``missing-signal:`` reasons for those of ``names`` that are absent or null."""
        return tuple(f"missing-signal:{n}" for n in names if n not in self.extra_present)

    def __repr__(self) -> str:
        state = "ok" if self.ok else ", ".join(self.problems)
        return f"SignalSnapshot({state}, {self.digest[:19]}...)"


def _json_safe(value: Any) -> Any:
    """``value`` with everything JSON cannot hold replaced by ``None``."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    try:
        if isinstance(value, Mapping):
            return {str(k): _json_safe(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [_json_safe(v) for v in value]
    except RecursionError:
        pass
    return None


def _canonical(raw: Mapping[str, Any]) -> str | None:
    """``raw`` as canonical JSON (sorted keys, no spaces, UTF-8), or ``None`` when it is
    not JSON-representable (NaN, objects)."""
    try:
        return json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        return None


def _digest(raw: Mapping[str, Any], canonical: str | None) -> str:
    # Not JSON-representable: the digest still has to be stable.
    body = canonical if canonical is not None else repr(sorted((str(k), repr(v)) for k, v in raw.items()))
    return "sha256:" + hashlib.sha256(body.encode("utf-8")).hexdigest()


class SnapshotCache:
    """Snapshots of JSON-decoded signal objects, shared by identical objects.

    Batches and recorded runs repeat one signal set many times, and building a snapshot
    (checks plus a canonical digest) costs far more than routing. The key is the
    object's ``repr``: for JSON-decoded values (str, int, float, bool, None, lists,
    dicts) equal reprs mean equal content, so a hit can never give wrong signals.
    Bounded: cleared when it holds ``limit`` entries.
    """

    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        self._snaps: dict[str, SignalSnapshot] = {}

    def get(self, raw: Mapping[str, Any]) -> SignalSnapshot:
        key = repr(raw)
        snap = self._snaps.get(key)
        if snap is None:
            if len(self._snaps) >= self.limit:
                self._snaps.clear()
            snap = self._snaps[key] = SignalSnapshot(raw)
        return snap


NonNeg = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class ResourceSignals(BaseModel):
    """Resource signals as a typed document (camelCase on the wire).

    Every field is optional here so that code can describe what it knows; what is
    missing is reported by the snapshot and fails the decision closed.
    """

    model_config = ConfigDict(
        strict=True,
        frozen=True,
        defer_build=True,
        extra="allow",
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
    )

    local_model_profile_available: bool | None = None
    local_service_healthy: bool | None = None
    battery_state: str | None = None
    """``normal``, ``low``, ``critical``... only ``critical`` changes a decision."""
    thermal_state: str | None = None
    memory_available_bytes: Annotated[int, Field(ge=0)] | None = None
    network_available: bool | None = None
    provider_quota_known: bool | None = None
    provider_quota_remaining_share: Annotated[float, Field(le=1, allow_inf_nan=False)] | None = None
    """Share of the provider quota left; negative means unknown."""
    provider_error_rate: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    provider_latency_p95_ms: NonNeg | None = Field(default=None, alias="providerLatencyP95Ms")
    estimated_input_tokens: Annotated[int, Field(ge=0)] | None = None
    estimated_output_tokens: Annotated[int, Field(ge=0)] | None = None
    estimated_cache_read_tokens: Annotated[int, Field(ge=0)] | None = None
    estimated_tool_calls: Annotated[int, Field(ge=0)] | None = None
    estimated_local_runtime_minutes: NonNeg | None = None
    estimated_local_energy_minutes: NonNeg | None = None
    estimated_lane_costs: dict[str, NonNeg] | None = None

    def snapshot(self) -> SignalSnapshot:
        """The router's checked form of these signals (unset fields are missing)."""
        return SignalSnapshot(self.model_dump(exclude_none=True))
