"""`agentlanes.__all__` is sorted, complete, and every name in it exists."""

from __future__ import annotations

import agentlanes


def test_all_is_sorted_and_exists() -> None:
    assert agentlanes.__all__ == sorted(agentlanes.__all__)
    assert len(set(agentlanes.__all__)) == len(agentlanes.__all__)
    for name in agentlanes.__all__:
        assert hasattr(agentlanes, name), name


def test_every_public_member_is_exported() -> None:
    public = {
        name
        for name, value in vars(agentlanes).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("agentlanes")
    }
    assert public - set(agentlanes.__all__) == set()
