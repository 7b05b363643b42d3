"""Every store test runs against each store implementation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agentlanes.stores import MemoryStore, SQLiteStore, Store


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> AsyncIterator[Store]:
    make: Callable[[], Store] = (
        (lambda: MemoryStore(clock=clock)) if request.param == "memory"
        else (lambda: SQLiteStore(tmp_path / "agentlanes.db", clock=clock))
    )
    s = make()
    yield s
    await s.aclose()
