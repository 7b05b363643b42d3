"""What importing agentlanes loads (issue 11: start-up at the cost the work needs).

Checked by structure, never by time: each case imports in a fresh interpreter and reads
``sys.modules``. ``import agentlanes`` loads no submodule and no dependency; the common
first use (``from agentlanes import Lanes, Router``, a decision) loads none of the heavy
modules a program may never need (cryptography until a receipt is signed, the OTel SDK
until spans are made, protobuf, tenacity until a retry, the optional extras), and builds
no pydantic validator a program does not use. Timing is in benchmarks/bench_import.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

import agentlanes
from tests.conftest import ROOT

HEAVY = (
    "cryptography",
    "opentelemetry.sdk",
    "google.protobuf",
    "openai",
    "httpx",
    "tenacity",
    "asyncpg",
    "jsonschema",
    "structlog",
    "pydantic_ai",
    "agents",
)

_PROBE = r"""
import json, sys
before = set(sys.modules)
exec(compile(sys.argv[1], "<case>", "exec"))
loaded = sorted(set(sys.modules) - before)
from pydantic import BaseModel

def models(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from models(sub)

print(json.dumps({
    "loaded": loaded,
    "built": sorted(f"{m.__module__}.{m.__qualname__}" for m in models(BaseModel)
                    if m.__module__.startswith("agentlanes") and m.__pydantic_complete__),
}))
"""


def probe(statement: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AGENTLANES_LOG_LEVEL": "off"}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, statement],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,  # a guard against a hang, not a speed check
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def heavy_in(loaded: list[str]) -> list[str]:
    return [m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY)]


def test_import_agentlanes_loads_nothing_but_the_package() -> None:
    loaded = probe("import agentlanes")["loaded"]
    assert [m for m in loaded if m.startswith("agentlanes")] == ["agentlanes"]
    assert not [m for m in loaded if m.split(".")[0] in ("pydantic", "anyio", "opentelemetry")], loaded


SIGNALS = "json.loads(open('examples/signals/healthy-local.json').read())"


@pytest.mark.parametrize(
    "statement",
    [
        "from agentlanes import Lanes, Router",
        "import json\nfrom agentlanes import Router, RouteRequest\n"
        f"Router().decide(RouteRequest(task_class='routine-code', stage='execution', signals={SIGNALS}))",
        "from agentlanes import *",
        "import agentlanes.cli",
    ],
    ids=["first-use import", "first decision", "star import", "cli"],
)
def test_the_first_use_loads_no_heavy_module(statement: str) -> None:
    result = probe(statement)
    assert heavy_in(result["loaded"]) == [], statement


def test_no_validator_is_built_until_a_document_or_request_is_validated() -> None:
    assert probe("from agentlanes import *")["built"] == []
    built = probe(
        "import json\nfrom agentlanes import Router, RouteRequest\n"
        f"Router().decide(RouteRequest(task_class='routine-code', stage='execution', signals={SIGNALS}))"
    )["built"]
    assert "agentlanes.decision.RouteRequest" in built and "agentlanes.policy.RoutingPolicy" in built
    # documents the default bundle does not hold are still not built
    assert not [m for m in built if m.rsplit(".", 1)[-1] in ("LocalPersonalRouteBinding", "RoutingCeiling")], built


FIRST_STAGE = f"""
import json, tempfile, anyio
from agentlanes import Lanes
from agentlanes.stores import MemoryStore
from agentlanes.testing import TestModel

async def main():
    lanes = Lanes({{"standard": TestModel(text="ok")}}, signals={SIGNALS}, store=MemoryStore(),
                  data_dir=tempfile.mkdtemp())
    async with lanes.run(task_class="routine-code") as run:
        assert await run.stage("planning", lambda ctx: ctx.complete("plan")) is not None
    assert run.result.records[0].lane == "standard"

anyio.run(main)
"""


def test_a_first_stage_with_default_tracing_loads_no_heavy_module_it_does_not_use() -> None:
    # tracing is on by default (the OTel SDK: the local record's resource and provider);
    # structlog writes the run's log lines; nothing signs, retries or validates a schema
    loaded = probe(FIRST_STAGE)["loaded"]
    assert "agentlanes.telemetry" in loaded and "opentelemetry.sdk.resources" in loaded
    unneeded = [h for h in HEAVY if h not in ("structlog", "opentelemetry.sdk")]
    assert [m for m in loaded if any(m == u or m.startswith(u + ".") for u in unneeded)] == []


def test_heavy_modules_load_where_they_are_needed() -> None:
    signed = probe("from agentlanes.receipts import ReceiptSigner\nReceiptSigner()")["loaded"]
    assert "cryptography" in signed
    assert "opentelemetry.sdk.trace" in probe("from agentlanes.telemetry import Telemetry\nTelemetry()")["loaded"]
    assert probe("from agentlanes.telemetry import CountingExporter")["loaded"].count("agentlanes._exporter") == 1


def test_every_exported_name_resolves_and_is_the_defining_modules_object() -> None:
    for name in agentlanes.__all__:
        value = getattr(agentlanes, name)
        module = sys.modules[agentlanes._EXPORTS[name]]
        assert getattr(module, name) is value, name
    assert set(agentlanes.__all__) == set(agentlanes._EXPORTS)
    assert set(agentlanes.__all__) <= set(dir(agentlanes))


def test_an_unknown_name_is_an_attribute_error_naming_it() -> None:
    with pytest.raises(AttributeError, match="'NoSuchThing'"):
        _ = agentlanes.NoSuchThing  # type: ignore[attr-defined]
    with pytest.raises(ImportError, match="NoSuchThing"):
        exec("from agentlanes import NoSuchThing")
