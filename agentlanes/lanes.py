"""The six lanes, cheapest first, and the facts the router needs about them.

A lane is a cost/capability tier, not a model: ``no-model`` is deterministic code
(tests, linters, schema checks, shell); ``local-cheap`` is a model on this machine;
``cheap`` and above are hosted; ``high-end`` and ``pro`` are the *premium* lanes that
need an escalation reason in a decision and an escalation receipt in a chain.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

__all__ = [
    "COST_CLASS",
    "DETERMINISTIC_STAGES",
    "HOSTED_LANES",
    "LANES",
    "LOCAL_LANES",
    "PREMIUM_LANES",
    "RANK",
    "Lane",
    "lane_list",
]


class Lane(StrEnum):
    """A routing lane. Members compare and hash like their string values."""

    NO_MODEL = "no-model"
    LOCAL_CHEAP = "local-cheap"
    CHEAP = "cheap"
    STANDARD = "standard"
    HIGH_END = "high-end"
    PRO = "pro"

    @property
    def rank(self) -> int:
        """0 for ``no-model`` up to 5 for ``pro``."""
        return RANK[self]

    @property
    def is_premium(self) -> bool:
        """``high-end`` and ``pro``: need an escalation reason and a receipt."""
        return self in PREMIUM_LANES

    @property
    def is_hosted(self) -> bool:
        """``cheap`` and above: subject to hosted admission (network, quota, health)."""
        return self in HOSTED_LANES


LANES: Final[tuple[Lane, ...]] = tuple(Lane)
RANK: Final[dict[str, int]] = {lane.value: i for i, lane in enumerate(LANES)}
COST_CLASS: Final[dict[str, str]] = {
    "no-model": "none",
    "local-cheap": "low",
    "cheap": "low",
    "standard": "medium",
    "high-end": "high",
    "pro": "maximum",
}
PREMIUM_LANES: Final[frozenset[str]] = frozenset({"high-end", "pro"})
HOSTED_LANES: Final[frozenset[str]] = frozenset({"cheap", "standard", "high-end", "pro"})
LOCAL_LANES: Final[frozenset[str]] = frozenset({"no-model", "local-cheap"})
DETERMINISTIC_STAGES: Final[frozenset[str]] = frozenset({"verification", "tool-use", "retrieval"})
"""Stages that route to ``no-model`` regardless of the risk floor when they declare a
deterministic verifier or tool (CONTRACT B3)."""


def lane_list() -> str:
    """The lanes as a comma-separated list, for error messages."""
    return ", ".join(LANES)
