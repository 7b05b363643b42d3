"""Where resource signals come from.

A source's ``snapshot()`` returns a checked :class:`~agentlanes.signals.SignalSnapshot`;
sources cache it for a short TTL so that consecutive decisions share one snapshot (and
the router's plan cache). Whatever a source cannot measure is *missing*, and a decision
on missing signals fails closed: supply such values with ``static=``.

* :class:`StaticSignals`: a fixed mapping.
* :class:`CallableSignals`: a function (sync or async) returning the mapping.
* :class:`LiveSignals`: measures this machine (available memory, battery, thermal
  state), probes the local model server's health and the network, and tracks the
  providers' error rate and p95 latency from agentlanes' own calls.
"""

from __future__ import annotations

import inspect
import json
import math
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio

from agentlanes.events import CallEnded
from agentlanes.signals import SignalSnapshot

__all__ = ["CallableSignals", "LiveSignals", "ProviderStats", "SignalSource", "StaticSignals"]


class SignalSource(ABC):
    """Supplies resource signals."""

    @abstractmethod
    async def snapshot(self) -> SignalSnapshot:
        """The current signals."""


class StaticSignals(SignalSource):
    """Always the same signals."""

    def __init__(self, signals: Mapping[str, Any]) -> None:
        self._snap = SignalSnapshot(dict(signals))

    async def snapshot(self) -> SignalSnapshot:
        return self._snap


class CallableSignals(SignalSource):
    """Signals from ``fn()`` (sync or async), cached for ``ttl`` seconds."""

    def __init__(
        self,
        fn: Callable[[], Mapping[str, Any] | Awaitable[Mapping[str, Any]]],
        *,
        ttl: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fn = fn
        self.ttl = ttl
        self.clock = clock
        self._cached: tuple[float, SignalSnapshot] | None = None

    async def snapshot(self) -> SignalSnapshot:
        now = self.clock()
        if self._cached is not None and now - self._cached[0] < self.ttl:
            return self._cached[1]
        out = self.fn()
        if inspect.isawaitable(out):
            out = await out
        snap = SignalSnapshot(dict(out))
        self._cached = (now, snap)
        return snap


class ProviderStats:
    """Error rate and p95 latency per provider, over its last ``window`` calls."""

    def __init__(self, window: int = 200) -> None:
        self.window = window
        self._calls: dict[str, deque[tuple[bool, float]]] = {}

    def record(self, provider: str, ok: bool, latency_ms: float) -> None:
        calls = self._calls.get(provider)
        if calls is None:
            calls = self._calls[provider] = deque(maxlen=self.window)
        calls.append((ok, latency_ms))

    event_types = (CallEnded,)

    def on_event(self, event: Any) -> None:
        """A run processor: every model call that ended (cancellations aside) counts."""
        if type(event) is CallEnded:
            call = event.call
            if call.error != anyio.get_cancelled_exc_class().__name__:
                self.record(call.provider, call.ok, call.duration * 1000)

    def error_rate(self, provider: str | None = None) -> float:
        """Failed share of recent calls (of one provider, or of all); 0 with no calls."""
        calls = self._select(provider)
        return 0.0 if not calls else sum(1 for ok, _ in calls if not ok) / len(calls)

    def p95_ms(self, provider: str | None = None) -> float:
        """95th-percentile latency of recent calls, in ms; 0 with no calls."""
        lat = sorted(ms for _, ms in self._select(provider))
        return 0.0 if not lat else lat[min(len(lat) - 1, math.ceil(0.95 * len(lat)) - 1)]

    def _select(self, provider: str | None) -> list[tuple[bool, float]]:
        if provider is not None:
            return list(self._calls.get(provider, ()))
        return [c for calls in self._calls.values() for c in calls]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def memory_available_bytes() -> int | None:
    """``MemAvailable`` from /proc/meminfo (Linux), else physical pages free."""
    text = _read(Path("/proc/meminfo"))
    if text:
        for line in text.splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def battery_state(root: Path = Path("/sys/class/power_supply")) -> str:
    """``critical`` (≤ 5 % and discharging), ``low`` (≤ 20 %), ``normal``, ``charging``
    or ``absent`` (no battery: a desktop or server)."""
    for supply in sorted(root.glob("BAT*")) if root.is_dir() else []:
        capacity = _read(supply / "capacity")
        status = (_read(supply / "status") or "").lower()
        if capacity is None or not capacity.isdigit():
            continue
        pct = int(capacity)
        if status == "charging":
            return "charging"
        if pct <= 5:
            return "critical"
        return "low" if pct <= 20 else "normal"
    return "absent"


def thermal_state(root: Path = Path("/sys/class/thermal")) -> str:
    """``critical`` at or above a zone's critical trip point, ``serious`` within 10 °C
    of it, else ``normal``; ``unknown`` without thermal zones."""
    worst = "unknown"
    for zone in sorted(root.glob("thermal_zone*")) if root.is_dir() else []:
        temp = _read(zone / "temp")
        if temp is None or not temp.lstrip("-").isdigit():
            continue
        crit = None
        for trip in zone.glob("trip_point_*_type"):
            if _read(trip) == "critical":
                value = _read(zone / trip.name.replace("_type", "_temp"))
                crit = int(value) if value and value.lstrip("-").isdigit() else None
        if crit is None or crit <= 0:
            worst = "normal" if worst == "unknown" else worst
            continue
        t = int(temp)
        state = "critical" if t >= crit else "serious" if t >= crit - 10_000 else "normal"
        order = ["unknown", "normal", "serious", "critical"]
        worst = max(worst, state, key=order.index)
    return worst


async def _http_get(url: str, timeout: float) -> tuple[int, bytes] | None:
    """A tiny HTTP/1.0 GET for local health checks (no extra dependency)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return None
    port = parts.port or 80
    path = parts.path or "/"
    try:
        with anyio.fail_after(timeout):
            async with await anyio.connect_tcp(parts.hostname, port) as stream:
                await stream.send(f"GET {path} HTTP/1.0\r\nHost: {parts.hostname}\r\n\r\n".encode())
                chunks = []
                while True:
                    try:
                        chunks.append(await stream.receive())
                    except anyio.EndOfStream:
                        break
    except (OSError, TimeoutError, anyio.BrokenResourceError):
        return None
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None
    return status, body


class LiveSignals(SignalSource):
    """Signals measured on this machine and from agentlanes' own calls.

    Args:
        local_health_url: the local model server's model list, e.g.
            ``http://127.0.0.1:11434/v1/models``; healthy when it answers 200.
            Without it the local lane reads as unavailable.
        local_model: a model the local server must list for ``localModelProfileAvailable``.
        network_probe: ``(host, port)`` whose TCP reachability is ``networkAvailable``.
        quota: returns ``(known, remaining_share)`` for the provider quota.
        stats: provider error rate / latency tracker (the runtime feeds it).
        static: values for signals it cannot measure, or to override measurements.
        estimated_input_tokens / estimated_output_tokens: the default per-stage estimate.
        ttl: seconds a snapshot is reused.
    """

    def __init__(
        self,
        *,
        local_health_url: str | None = None,
        local_model: str | None = None,
        network_probe: tuple[str, int] | None = None,
        quota: Callable[[], tuple[bool, float]] | None = None,
        stats: ProviderStats | None = None,
        static: Mapping[str, Any] | None = None,
        estimated_input_tokens: int = 1200,
        estimated_output_tokens: int = 400,
        ttl: float = 2.0,
        probe_timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.local_health_url = local_health_url
        self.local_model = local_model
        self.network_probe = network_probe
        self.quota = quota
        self.stats = stats or ProviderStats()
        self.static = dict(static or {})
        self.estimates = (estimated_input_tokens, estimated_output_tokens)
        self.ttl = ttl
        self.probe_timeout = probe_timeout
        self.clock = clock
        self._cached: tuple[float, SignalSnapshot] | None = None

    async def measure(self) -> dict[str, Any]:
        """One fresh measurement (no cache)."""
        out: dict[str, Any] = {
            "batteryState": battery_state(),
            "thermalState": thermal_state(),
            "estimatedInputTokens": self.estimates[0],
            "estimatedOutputTokens": self.estimates[1],
            "providerErrorRate": round(self.stats.error_rate(), 6),
            "providerLatencyP95Ms": round(self.stats.p95_ms(), 3),
        }
        memory = memory_available_bytes()
        if memory is not None:
            out["memoryAvailableBytes"] = memory
        healthy = listed = False
        if self.local_health_url:
            answer = await _http_get(self.local_health_url, self.probe_timeout)
            healthy = answer is not None and answer[0] == 200
            if healthy and answer is not None:
                listed = self.local_model is None or self._lists(answer[1], self.local_model)
        out["localServiceHealthy"] = healthy
        out["localModelProfileAvailable"] = healthy and listed
        if self.network_probe is not None:
            host, port = self.network_probe
            try:
                with anyio.fail_after(self.probe_timeout):
                    stream = await anyio.connect_tcp(host, port)
                    await stream.aclose()
                out["networkAvailable"] = True
            except (OSError, TimeoutError):
                out["networkAvailable"] = False
        if self.quota is not None:
            known, share = self.quota()
            out["providerQuotaKnown"] = bool(known)
            out["providerQuotaRemainingShare"] = float(share) if known else -1.0
        out.update(self.static)
        return out

    @staticmethod
    def _lists(body: bytes, model: str) -> bool:
        try:
            data = json.loads(body)
        except ValueError:
            return False
        items = data.get("data", []) if isinstance(data, dict) else []
        return any(isinstance(m, dict) and m.get("id") == model for m in items)

    async def snapshot(self) -> SignalSnapshot:
        now = self.clock()
        if self._cached is not None and now - self._cached[0] < self.ttl:
            return self._cached[1]
        snap = SignalSnapshot(await self.measure())
        self._cached = (now, snap)
        return snap
