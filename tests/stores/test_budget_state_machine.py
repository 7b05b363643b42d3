"""A stateful model of the budget ledger: any sequence of reserve / settle (below and
above the estimate) / release / cancel / window roll / premium escalation keeps every
window within its cap and shares, conserves money and never goes negative."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from anyio.from_thread import start_blocking_portal
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule

from agentlanes.budget import Reservation, WindowSpec
from agentlanes.stores import MemoryStore, SQLiteStore, Store

LANES = ["no-model", "local-cheap", "cheap", "standard", "high-end", "pro"]


class LedgerMachine(RuleBasedStateMachine):
    reservations = Bundle("reservations")
    make_store: Any = staticmethod(lambda: MemoryStore())

    @initialize()
    def setup(self) -> None:
        # one event loop for the machine's whole life (an asyncpg pool belongs to one loop)
        self._portal_cm = start_blocking_portal()
        self.portal = self._portal_cm.__enter__()
        self.store: Store = self.make_store()
        self.day = 0
        self.task = WindowSpec("task", "run", 1_000_000, 250_000, 50_000)
        self.outstanding: dict[str, Reservation] = {}
        self.settled: dict[tuple[str, str], int] = {}
        self.seen_windows: set[WindowSpec] = {self.task}

    def _specs(self) -> list[WindowSpec]:
        day = WindowSpec("day", f"2026-11-{22 + self.day:02d}", 1_500_000, 300_000, 60_000)
        self.seen_windows.add(day)
        return [self.task, day]

    def _call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        return self.portal.call(lambda: fn(*args, **kw))

    @rule(target=reservations, lane=st.sampled_from(LANES), amount=st.integers(0, 400_000))
    def reserve(self, lane: str, amount: int) -> Any:
        res = self._call(self.store.reserve, self._specs(), lane, amount, lease_seconds=3600)
        if isinstance(res, Reservation):
            self.outstanding[res.id] = res
            return res
        return None

    @rule(res=reservations, factor=st.floats(0, 2))
    def settle(self, res: Reservation | None, factor: float) -> None:
        if res is None or res.id not in self.outstanding:
            return
        actual = int(res.amount * factor)
        self._call(self.store.settle, res, actual)
        del self.outstanding[res.id]
        for spec in res.windows:
            key = (spec.window, spec.key)
            self.settled[key] = self.settled.get(key, 0) + actual

    @rule(res=reservations)
    def release(self, res: Reservation | None) -> None:  # also what cancellation does
        if res is not None:
            self._call(self.store.release, res)
            self.outstanding.pop(res.id, None)

    @rule()
    def roll_day(self) -> None:
        self.day += 1

    @invariant()
    def windows_hold(self) -> None:
        if not hasattr(self, "store"):
            return
        states = self._call(self.store.window_states, sorted(self.seen_windows))
        for state in states:
            spec = state.spec
            assert min(state.committed, state.reserved, state.overrun, state.high_end_used, state.pro_used) >= 0
            assert state.committed + state.reserved <= spec.cap
            assert state.high_end_used <= spec.high_end_cap
            assert state.pro_used <= spec.pro_cap
            # money is conserved: what was charged plus what overran is what was settled
            assert state.committed + state.overrun == self.settled.get((spec.window, spec.key), 0)
            # what is reserved is exactly what is outstanding
            expected = sum(r.amount for r in self.outstanding.values()
                           if any((w.window, w.key) == (spec.window, spec.key) for w in r.windows))
            assert state.reserved == expected

    def teardown(self) -> None:
        if hasattr(self, "store"):
            self._call(self.store.aclose)
            self.after_close()
            self._portal_cm.__exit__(None, None, None)

    def after_close(self) -> None:
        pass


TestMemoryLedger = LedgerMachine.TestCase
TestMemoryLedger.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


class SQLiteLedgerMachine(LedgerMachine):
    @staticmethod
    def make_store() -> Store:  # type: ignore[override]
        return SQLiteStore(Path(tempfile.mkdtemp()) / "ledger.db")


TestSQLiteLedger = SQLiteLedgerMachine.TestCase
TestSQLiteLedger.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)


class PostgresLedgerMachine(LedgerMachine):
    @staticmethod
    def make_store() -> Store:  # type: ignore[override]
        from agentlanes.stores.postgres import PostgresStore
        from tests.stores.conftest import PG_DSN, pg_schema

        return PostgresStore(PG_DSN, schema=pg_schema())

    def after_close(self) -> None:
        from tests.stores.conftest import drop_schema

        self._call(drop_schema, self.store.schema)  # type: ignore[attr-defined]


TestPostgresLedger = PostgresLedgerMachine.TestCase
TestPostgresLedger.settings = settings(max_examples=20, stateful_step_count=20, deadline=None)
