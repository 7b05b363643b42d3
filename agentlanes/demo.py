"""``agentlanes demo``: a real chain, offline, on the embedded defaults.

A tiny Python project with a failing test is copied into the data directory. The
``fix-failing-test`` chain plans a fix (``standard``), proposes whole-file patches
(``standard``) that ``python -m unittest`` checks on ``no-model``; the first two are
wrong, so after ``repeatedFailureThreshold`` failures the execution stage escalates to
``high-end`` with a receipt; that patch passes; a ``cheap`` summary ends the run.

The models are offline doubles that stand in for the lanes (nothing leaves the machine);
routing, budgets, verification, escalation and receipts are the real thing.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from agentlanes._private import private_dir, write_private
from agentlanes.chain import Chain, bundled_stages_dir
from agentlanes.errors import AgentLanesError, ConfigurationError
from agentlanes.models.base import Message, ModelSettings
from agentlanes.runtime import Lanes, RunResult, resolve_data_dir
from agentlanes.testing import FunctionModel

__all__ = ["DEMO_SIGNALS", "apply_patch", "demo_lanes", "main", "run_demo"]

DEFAULT_TASK = "Make the failing test in the calc project pass: total() must add every item, not all but the last."

PROJECT = {
    "calc.py": '''"""A tiny module with a bug for the agentlanes demo."""


def total(items):
    """Sum of the items."""
    result = 0
    for item in items[:-1]:
        result += item
    return result


def mean(items):
    """Average of the items (0 for none)."""
    return total(items) / len(items) if items else 0
''',
    "test_calc.py": """import unittest

from calc import mean, total


class TotalTest(unittest.TestCase):
    def test_total(self):
        self.assertEqual(total([1, 2, 3]), 6)

    def test_empty(self):
        self.assertEqual(total([]), 0)

    def test_mean(self):
        self.assertEqual(mean([2, 4]), 3)


if __name__ == "__main__":
    unittest.main()
""",
}

# Patches the offline doubles propose, in order: two plausible but wrong ones from the
# standard lane, then the right one from the high-end lane.
_WRONG_1 = PROJECT["calc.py"].replace("items[:-1]", "items[1:]")
_WRONG_2 = PROJECT["calc.py"].replace("result = 0", "result = 1").replace("items[:-1]", "items")
_RIGHT = PROJECT["calc.py"].replace("items[:-1]", "items")

DEMO_SIGNALS: dict[str, Any] = {
    "localModelProfileAvailable": True,
    "localServiceHealthy": True,
    "batteryState": "normal",
    "thermalState": "normal",
    "memoryAvailableBytes": 17_179_869_184,
    "networkAvailable": True,
    "providerQuotaKnown": True,
    "providerQuotaRemainingShare": 0.8,
    "providerErrorRate": 0.001,
    "providerLatencyP95Ms": 1200,
    "estimatedInputTokens": 1200,
    "estimatedOutputTokens": 400,
}


def apply_patch(patch: Any, values: dict[str, Any]) -> str:
    """The tool-use step: write a ``{"path", "content"}`` patch into the workspace."""
    workspace = Path(values["workspace"]).resolve()
    if (
        not isinstance(patch, dict)
        or not isinstance(patch.get("path"), str)
        or not isinstance(patch.get("content"), str)
    ):
        return "not a patch"  # the schema verifier reports it
    target = (workspace / patch["path"]).resolve()
    if workspace not in target.parents:
        raise ConfigurationError(f"Patch path {patch['path']!r} leaves the workspace {workspace}.")
    write_private(target, patch["content"].encode())
    # Byte-code caches are validated by mtime (whole seconds) and size: a same-size patch
    # written within the same second would otherwise be tested as the old code.
    shutil.rmtree(target.parent / "__pycache__", ignore_errors=True)
    return str(target.relative_to(workspace))


def _standard(messages: list[Message], settings: ModelSettings) -> str:
    prompt = messages[-1].content
    if prompt.startswith("PLAN"):
        return (
            "1. In calc.py, total() skips the last item (items[:-1]); iterate over every item.\n"
            "2. Keep mean() as is.\n3. Prove it with `python -m unittest`."
        )
    if prompt.startswith("PATCH"):
        wrong = _WRONG_1 if "Failures of the previous attempt (if any):\nnone" in prompt else _WRONG_2
        return json.dumps({"path": "calc.py", "content": wrong})
    return "standard lane reply"


def _high_end(messages: list[Message], settings: ModelSettings) -> str:
    return json.dumps({"path": "calc.py", "content": _RIGHT})


def _cheap(messages: list[Message], settings: ModelSettings) -> str:
    return (
        "Fixed total() in calc.py so that it adds every item; mean() is correct again. "
        "All tests pass. Residual risk: low."
    )


def demo_lanes(
    data_dir: Path, observer: Callable[[Any], None] | None = None, *, models_file: str | Path | None = None
) -> Lanes:
    """Lanes for the demo: offline doubles standing in for the model lanes, or the
    servers a models file names (see :mod:`agentlanes.config`)."""
    if models_file is not None:
        return Lanes.from_config(models_file, signals=DEMO_SIGNALS, data_dir=data_dir, observer=observer)
    models = {
        "cheap": FunctionModel(_cheap, name="offline-double:cheap", provider="offline"),
        "standard": FunctionModel(_standard, name="offline-double:standard", provider="offline"),
        "high-end": FunctionModel(_high_end, name="offline-double:high-end", provider="offline"),
    }
    return Lanes(models, signals=DEMO_SIGNALS, data_dir=data_dir, observer=observer)


def demo_chain() -> Chain:
    """The bundled ``fix-failing-test`` chain."""
    return Chain.load(bundled_stages_dir() / "fix-failing-test.chain.json", ref="agentlanes.demo:demo_chain")


async def run_demo(task: str, data_dir: Path, out: IO[str], models_file: str | Path | None = None) -> RunResult:
    """Run the demo chain; progress and the summary go to ``out``. With ``models_file``
    the lanes are the servers that file names (the models' answers then decide how the
    run goes)."""

    def progress(record: Any) -> None:
        indent = "    " if record.parent else "  "
        cost = f"{record.cost / 1_000_000:.6f}" if record.calls else "-"
        note = f", receipt {record.receipts[-1].receipt_id}" if record.receipts else ""
        out.write(
            f"{indent}{record.name:<18} {record.stage:<13} lane {record.lane or '-':<10} "
            f"{record.status:<9} attempts {record.attempts}  cost {cost}{note}\n"
        )
        out.flush()

    lanes = demo_lanes(data_dir, observer=progress, models_file=models_file)  # a bad models file fails first
    workspaces = data_dir / "workspaces"
    private_dir(workspaces)  # the model's patches land here: private like the rest
    workspace = workspaces / time.strftime("calc-%Y%m%d-%H%M%S")
    n = 1
    while workspace.exists():
        n += 1
        workspace = workspaces / f"{workspace.name.split('~')[0]}~{n}"
    workspace.mkdir(mode=0o700)
    for name, text in PROJECT.items():
        write_private(workspace / name, text.encode())
    if models_file is None:
        out.write(
            "agentlanes demo: offline; the models are bundled doubles standing in for the lanes "
            "(cheap, standard, high-end). Routing, budgets, verification and receipts are real.\n"
        )
    else:
        bound = ", ".join(f"{lane}: {' > '.join(m.name for m in ms)}" for lane, ms in lanes.models.items())
        out.write(f"agentlanes demo: the lanes are the servers {models_file} names ({bound}).\n")
    out.write(f"  task: {task}\n  workspace: {workspace}\n  data dir: {data_dir}\n\n")
    try:
        result = await demo_chain().run(task, lanes=lanes, variables={"workspace": str(workspace)})
    finally:
        await lanes.aclose()
    _summary(result, out)
    return result


def _summary(result: RunResult, out: IO[str]) -> None:
    out.write(f"\nrun {result.run_id}: {result.status}\n\n")
    out.write(f"  {'stage':<18} {'chain stage':<13} {'lane':<10} {'attempts':>8} {'cost':>10}\n")
    for r in result.records:
        if r.parent:
            continue
        lanes_used = " -> ".join(dict.fromkeys(d.lane or "-" for d in r.decisions))
        out.write(f"  {r.name:<18} {r.stage:<13} {lanes_used:<10} {r.attempts:>8} {r.cost / 1_000_000:>10.6f}\n")
    checks = [r for r in result.records if r.stage == "verification"]
    passed = sum(1 for r in checks if r.status == "succeeded")
    out.write(f"  verification on no-model: {len(checks)} run(s), {passed} passed\n")
    out.write(f"\n  total cost: {result.cost} {result.currency}\n")
    out.write(f"  escalation receipts: {len(result.receipts)}\n")
    for rc in result.receipts:
        b = rc.body
        out.write(
            f"    {rc.receipt_id}: {b['stage']} {b['fromLane']} -> {b['toLane']} ({b['reason']}), "
            f"decision {b['decisionId'][-12:]}, {len(b['evidenceRefs'])} evidence ref(s), digest "
            f"{rc.digest[:23]}...\n"
        )
    out.flush()


def main(argv: Sequence[str] | None = None, *, out: IO[str] | None = None) -> int:
    """``agentlanes demo [--task TEXT] [--data-dir DIR] [--models PATH]``."""
    import argparse
    import os

    import anyio

    parser = argparse.ArgumentParser(prog="agentlanes demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default=DEFAULT_TASK, help="task description passed to the planning stage")
    parser.add_argument("--data-dir", help="where the run is recorded (default: AGENTLANES_HOME or ./.agentlanes)")
    parser.add_argument("--models", metavar="PATH", help="a models file (TOML) binding lanes to servers")
    args = parser.parse_args(argv)
    out = out or sys.stdout
    data_dir = resolve_data_dir(args.data_dir).resolve()
    os.environ.setdefault("AGENTLANES_LOG_LEVEL", "warning")  # the demo prints its own progress
    if data_dir.exists() and not data_dir.is_dir():
        print(
            f"agentlanes demo: the data directory {data_dir} is not a directory; pass --data-dir DIR.", file=sys.stderr
        )
        return 1
    try:
        result = anyio.run(run_demo, args.task, data_dir, out, args.models)
    except AgentLanesError as exc:
        print(f"agentlanes demo: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = exc.filename or data_dir
        print(
            f"agentlanes demo: cannot write {where}: {exc.strerror or exc}; pass --data-dir a directory you can write.",
            file=sys.stderr,
        )
        return 1
    return 0 if result.status == "succeeded" else 1
