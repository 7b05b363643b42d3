"""agentlanes never imports a framework on its own: only importing an integration
module does (each framework takes seconds to import)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

PROBE = """
import sys
import agentlanes, agentlanes.cli, agentlanes.integrations, agentlanes.models, agentlanes.replay, agentlanes.testing
loaded = sorted(m for m in ("pydantic_ai", "agents", "temporalio") if m in sys.modules)
assert not loaded, loaded
import agentlanes.integrations.pydantic_ai
assert "pydantic_ai" in sys.modules and "agents" not in sys.modules
import agentlanes.integrations.openai_agents
assert "agents" in sys.modules and "temporalio" not in sys.modules
import agentlanes.integrations.temporal
assert "temporalio" in sys.modules
"""


def test_importing_agentlanes_imports_no_framework() -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
