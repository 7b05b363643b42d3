"""Shared fixtures: the upstream contract files and canonical signal sets."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM = Path(os.environ.get("AGENTLANES_UPSTREAM", ROOT.parent / "shared" / "upstream")).resolve()
POLICIES = ROOT / "policies"

HEALTHY: dict[str, Any] = {
    "localModelProfileAvailable": True,
    "localServiceHealthy": True,
    "batteryState": "normal",
    "thermalState": "normal",
    "memoryAvailableBytes": 17179869184,
    "networkAvailable": True,
    "providerQuotaKnown": True,
    "providerQuotaRemainingShare": 0.8,
    "providerErrorRate": 0.001,
    "providerLatencyP95Ms": 1200,
    "estimatedInputTokens": 1200,
    "estimatedOutputTokens": 400,
}


def healthy(**changes: Any) -> dict[str, Any]:
    """The healthy-local signal set with some values changed (``None`` removes a key)."""
    out = copy.deepcopy(HEALTHY)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def bundled_json(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((POLICIES / name).read_text())
    return data


def upstream_available() -> bool:
    return (UPSTREAM / "schemas").is_dir() and (UPSTREAM / "examples").is_dir()


requires_upstream = pytest.mark.skipif(
    not upstream_available(),
    reason=f"the upstream contract folder {UPSTREAM} is absent (CI always has ../shared/upstream)",
)


def upstream_json(relative: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((UPSTREAM / relative).read_text())
    return data
