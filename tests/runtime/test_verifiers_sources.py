"""Deterministic verifiers and signal sources."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel

from agentlanes import ConfigurationError
from agentlanes.sources import CallableSignals, LiveSignals, ProviderStats, StaticSignals, battery_state, thermal_state
from agentlanes.verifiers import CallableVerifier, CommandVerifier, SchemaVerifier, VerifyContext, trim_lines
from tests.conftest import healthy
from tests.openai_server import ScriptedOpenAIServer

CTX = VerifyContext(max_log_lines=5, variables={"python": sys.executable})


async def test_command_verifier_pass_fail_and_trimmed_output(tmp_path: Path) -> None:
    ok = await CommandVerifier(["{python}", "-c", "print('fine')"]).verify(None, CTX)
    assert (ok.passed, ok.exit_status, ok.kind) == (True, 0, "command") and "fine" in ok.output
    noisy = "import sys\nfor i in range(50): print('line', i)\nsys.exit(3)"
    bad = await CommandVerifier(["{python}", "-c", noisy], name="noisy").verify(None, CTX)
    assert (bad.passed, bad.exit_status) == (False, 3)
    assert bad.output.splitlines()[0] == "[45 earlier line(s) trimmed]"
    assert bad.output.splitlines()[-1] == "line 49"
    assert bad.summary == "noisy failed (exit status 3)"


async def test_command_verifier_timeout_and_missing_program(tmp_path: Path) -> None:
    slow = await CommandVerifier(["{python}", "-c", "import time; time.sleep(5)"], timeout=0.3).verify(None, CTX)
    assert not slow.passed and "timed out after 0.3s" in slow.summary
    missing = await CommandVerifier(["definitely-not-a-program-xyz"]).verify(None, CTX)
    assert not missing.passed and "could not start" in missing.summary
    with pytest.raises(ConfigurationError, match=r"placeholder 'workspace'.*defined: python"):
        await CommandVerifier(["ls"], cwd="{workspace}").verify(None, CTX)
    with pytest.raises(ConfigurationError, match="needs a command"):
        CommandVerifier([])


async def test_command_verifier_runs_in_cwd(tmp_path: Path) -> None:
    (tmp_path / "marker.txt").write_text("x")
    res = await CommandVerifier(["{python}", "-c", "import os; assert os.path.exists('marker.txt')"],
                                cwd=str(tmp_path)).verify(None, CTX)
    assert res.passed


class Patch(BaseModel):
    path: str
    content: str


async def test_schema_verifier_pydantic_and_json_schema() -> None:
    v = SchemaVerifier(Patch)
    assert (await v.verify('{"path": "a", "content": "b"}', CTX)).passed
    bad = await v.verify('{"path": 1}', CTX)
    assert not bad.passed and "first at /path" in bad.summary
    assert not (await v.verify("not json", CTX)).passed
    js = SchemaVerifier({"type": "object", "required": ["path"]})
    assert (await js.verify({"path": "x"}, CTX)).passed
    assert "1 schema error" in (await js.verify({}, CTX)).summary


async def test_callable_verifier_shapes() -> None:
    assert (await CallableVerifier(lambda s: s > 2, name="gt2").verify(3, CTX)).passed
    res = await CallableVerifier(lambda s: (False, "too small"), name="t").verify(1, CTX)
    assert (res.passed, res.summary) == (False, "too small")

    async def check(s: int) -> bool:
        return s == 1

    assert (await CallableVerifier(check).verify(1, CTX)).name == "check"


def test_trim_lines() -> None:
    assert trim_lines("a\nb", 5) == "a\nb"
    assert trim_lines("a\nb\nc", 2) == "[1 earlier line(s) trimmed]\nb\nc"


async def test_static_and_callable_sources_cache() -> None:
    assert (await StaticSignals(healthy()).snapshot()).ok
    calls = 0
    now = [0.0]

    def fn() -> dict[str, object]:
        nonlocal calls
        calls += 1
        return healthy(providerErrorRate=0.01 * calls)

    src = CallableSignals(fn, ttl=2.0, clock=lambda: now[0])
    a = await src.snapshot()
    b = await src.snapshot()
    now[0] = 2.5
    c = await src.snapshot()
    assert a is b and c is not a and calls == 2


def test_provider_stats() -> None:
    stats = ProviderStats(window=100)
    for i in range(100):
        stats.record("p", i % 10 != 0, float(i))
    assert stats.error_rate("p") == 0.1
    assert stats.p95_ms("p") == 94.0
    assert stats.error_rate("other") == 0.0 and stats.p95_ms() == 94.0


def test_battery_and_thermal_readings(tmp_path: Path) -> None:
    assert battery_state(tmp_path / "none") == "absent"
    bat = tmp_path / "ps" / "BAT0"
    bat.mkdir(parents=True)
    (bat / "capacity").write_text("4\n")
    (bat / "status").write_text("Discharging\n")
    assert battery_state(tmp_path / "ps") == "critical"
    (bat / "status").write_text("Charging\n")
    assert battery_state(tmp_path / "ps") == "charging"
    zone = tmp_path / "th" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("99000")
    (zone / "trip_point_0_type").write_text("critical")
    (zone / "trip_point_0_temp").write_text("100000")
    assert thermal_state(tmp_path / "th") == "serious"
    (zone / "temp").write_text("101000")
    assert thermal_state(tmp_path / "th") == "critical"
    assert thermal_state(tmp_path / "none") == "unknown"


async def test_live_signals_probe_a_local_server_and_the_network() -> None:
    with ScriptedOpenAIServer(models=["llama3.2:1b"]) as server:
        host, port = server.httpd.server_address[:2]
        stats = ProviderStats()
        stats.record("hosted", False, 100.0)
        stats.record("hosted", True, 300.0)
        live = LiveSignals(local_health_url=f"{server.base_url}/models", local_model="llama3.2:1b",
                           network_probe=(str(host), int(port)), quota=lambda: (True, 0.7), stats=stats)
        snap = await live.snapshot()
        assert snap.ok, snap.problems
        raw = snap.raw
        assert raw["localServiceHealthy"] is True and raw["localModelProfileAvailable"] is True
        assert raw["networkAvailable"] is True and raw["providerQuotaRemainingShare"] == 0.7
        assert raw["providerErrorRate"] == 0.5 and raw["providerLatencyP95Ms"] == 300.0
        assert raw["memoryAvailableBytes"] > 0
        wrong_model = LiveSignals(local_health_url=f"{server.base_url}/models", local_model="other",
                                  network_probe=(str(host), int(port)), quota=lambda: (True, 0.7))
        assert (await wrong_model.snapshot()).raw["localModelProfileAvailable"] is False
    # the server is gone: unhealthy, and the network probe fails
    down = LiveSignals(local_health_url=f"http://127.0.0.1:{port}/v1/models", network_probe=("127.0.0.1", port),
                       quota=lambda: (False, 0.0), probe_timeout=0.5)
    raw = (await down.snapshot()).raw
    assert raw["localServiceHealthy"] is False and raw["networkAvailable"] is False
    assert raw["providerQuotaKnown"] is False


async def test_live_signals_fail_closed_on_what_they_cannot_measure() -> None:
    snap = await LiveSignals().snapshot()
    assert set(snap.problems) >= {"missing-signal:networkAvailable", "missing-signal:providerQuotaKnown"}
    static = await LiveSignals(static={"networkAvailable": True, "providerQuotaKnown": True,
                                       "providerQuotaRemainingShare": 0.5}).snapshot()
    assert static.ok


async def test_live_signals_ttl() -> None:
    now = [0.0]
    live = LiveSignals(static={"networkAvailable": True}, ttl=1.0, clock=lambda: now[0])
    a = await live.snapshot()
    assert a is await live.snapshot()
    now[0] = 1.5
    await anyio.sleep(0)
    assert a is not await live.snapshot()
