"""A chain declared as documents: load the bundled ``fix-failing-test`` chain and run it.

Stage documents live in ``stages/`` (``plan.json``, ``execute.json``, ``finalize.json``)
and the chain document lists them. Run it: ``python examples/declared_chain.py``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import anyio

from agentlanes import Chain
from agentlanes.chain import bundled_stages_dir
from agentlanes.demo import PROJECT, demo_lanes


async def main() -> None:
    chain = Chain.load(bundled_stages_dir() / "fix-failing-test.chain.json")
    print("steps:", [(s.name, s.stage, s.type) for s in chain.steps])
    with tempfile.TemporaryDirectory() as home:
        workspace = Path(home) / "project"
        workspace.mkdir()
        for name, text in PROJECT.items():
            (workspace / name).write_text(text)
        lanes = demo_lanes(Path(home))  # offline doubles standing in for the lanes
        result = await chain.run("make the calc tests pass", lanes=lanes, variables={"workspace": str(workspace)})
        await lanes.aclose()
        fixed = (workspace / "calc.py").read_text()
    print(result.status, result.cost, result.currency, len(result.receipts), "receipt(s)")
    assert result.status == "succeeded" and "for item in items:" in fixed


if __name__ == "__main__":
    anyio.run(main)
