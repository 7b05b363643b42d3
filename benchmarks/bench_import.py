"""Start-up benchmark: what ``import agentlanes`` and its first use cost, against its
dependencies imported alone in the same run.

Every case runs in a fresh interpreter (``python -c``), which times its own statement
(wall and CPU); the cases run round-robin, so each round sees the same machine, and the
median of the rounds is reported. Bytecode is cached for every case alike (a private
``PYTHONPYCACHEPREFIX`` warmed by one untimed pass): an installed wheel runs from
bytecode, and a checkout with ``PYTHONDONTWRITEBYTECODE`` would otherwise time the
compiler rather than the import.

Baselines, measured in the same run:

* ``core dependencies``: what any program on agentlanes needs loaded — pydantic's
  ``BaseModel``, anyio, structlog and the OpenTelemetry API (``opentelemetry.trace``).
  Target: ``import agentlanes`` <= 1.5x this (issue 11).
* ``core deps + a first pydantic model``: the same, then one two-line model defined and
  validated: pydantic's one-time cost (its schema machinery, plugin discovery), which
  any program that validates anything pays once; the cases that validate (a decision, a
  stage) are shown against it too ("with a model").
* ``... + a first anyio.run``: that, then an empty coroutine run with ``anyio.run`` (anyio
  loads its asyncio backend then); a run's first stage is shown against it too ("with a
  model and a loop").
* ``declared dependencies``: every runtime dependency in pyproject.toml imported alone
  (adds tenacity, the OTel SDK, the OTLP protobuf encoder, cryptography, jsonschema):
  what the issue measured as "its dependencies alone".
* ``what it loads, alone``: exactly the third-party modules ``import agentlanes`` left in
  ``sys.modules``, imported without agentlanes: the rest of its cost is its own code.

Cases: ``import agentlanes``; ``from agentlanes import Lanes, Router`` (the common first
use); that plus ``Router()`` and one decision; ``Lanes()`` and a run's first stage (a test
double, the memory store, default tracing: where the deferred imports land);
``agentlanes route --batch`` on one line (a whole process, wall and CPU, next to a bare
``python -c pass``).

``--compare REV``: the same cases for git revision ``REV`` (a temporary worktree), in the
same rounds: a change's before and after on a noisy machine.
``--importtime [STATEMENT]``: where a statement (default: the common first use) spends its
import time (``-X importtime``, own time summed per top-level package, and the slowest
agentlanes modules).
``--smoke``: two rounds (for the test that keeps this script working; figures meaningless).

Usage: python benchmarks/bench_import.py [--quick] [--smoke] [--json PATH] [--compare REV] [--importtime [STATEMENT]]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.5

CORE = "from pydantic import BaseModel; import anyio; import structlog; import opentelemetry.trace"
# ... and pydantic's one-time cost of a first model: its schema machinery and plugin
# discovery load when the first validator is built, whichever model that is.
FIRST_MODEL = CORE + "\nclass M(BaseModel):\n    x: int\nM(x=1)"
# ... and an event loop: anyio loads its asyncio backend on the first anyio.run.
FIRST_LOOP = FIRST_MODEL + "\nasync def nothing():\n    pass\nanyio.run(nothing)"
DECLARED = (
    CORE + "; import tenacity; import opentelemetry.sdk.trace; import opentelemetry.sdk.resources"
    "; import opentelemetry.exporter.otlp.proto.common.trace_encoder"
    "; import cryptography.hazmat.primitives.asymmetric.ed25519; import jsonschema"
)
SIGNALS = json.loads((ROOT / "examples/signals/healthy-local.json").read_text())
DECIDE = (
    "from agentlanes import Lanes, Router, RouteRequest; "
    f"Router().decide(RouteRequest(task_class='routine-code', stage='execution', signals={SIGNALS!r}))"
)
_CWD = "_BENCH_IMPORT_CWD"
# The first stage of a run: Lanes() with a test double, the memory store and the default
# tracing (the local record), one stage; where the deferred imports land.
STAGE = f"""
import tempfile, anyio
from agentlanes import Lanes
from agentlanes.stores import MemoryStore
from agentlanes.testing import TestModel

async def main():
    lanes = Lanes({{"standard": TestModel(text="ok")}}, signals={SIGNALS!r}, store=MemoryStore(),
                  data_dir=tempfile.mkdtemp())
    async with lanes.run(task_class="routine-code") as run:
        await run.stage("planning", lambda ctx: ctx.complete("plan"))

anyio.run(main)
"""
STAGE_CASE = "Lanes() + a run's first stage"
VALIDATES = ("... + Router() + one decision", STAGE_CASE)  # build validators
HEAVY = ("cryptography", "opentelemetry.sdk", "google.protobuf", "tenacity", "jsonschema", "openai", "asyncpg")

# Times one statement in this fresh interpreter: prints {"wall_ms", "cpu_ms"}.
_TIMED = r"""
import json, sys, time
w, c = time.perf_counter(), time.process_time()
exec(compile(sys.argv[1], "<case>", "exec"))
c, w = time.process_time() - c, time.perf_counter() - w
print(json.dumps({"wall_ms": w * 1e3, "cpu_ms": c * 1e3}))
"""

# Which third-party modules `import agentlanes` loads, and which heavy ones among them.
_LOADED = r"""
import json, sys
before = set(sys.modules)
import agentlanes
stdlib = sys.stdlib_module_names
new = [m for m in sys.modules if m not in before]
third = sorted(m for m in new if m.split(".")[0] not in stdlib and not m.startswith(("agentlanes", "_")))
heavy = [h for h in json.loads(sys.argv[1]) if h in sys.modules]
print(json.dumps({"third_party": third, "heavy": heavy,
                  "agentlanes_modules": sorted(m for m in new if m.startswith("agentlanes"))}))
"""


def environment(tree: Path, pycache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
    env["PYTHONPATH"] = str(tree)
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    env["AGENTLANES_LOG_LEVEL"] = "off"
    env[_CWD] = str(pycache.parent)  # not the checkout: `python -c` puts the working directory first on sys.path
    return env


def timed(statement: str, env: dict[str, str]) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", _TIMED, statement], env=env, capture_output=True, text=True, cwd=env[_CWD], check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"case failed: {statement}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def process(argv: list[str], env: dict[str, str], stdin: str | None = None) -> dict[str, float]:
    """A whole process: wall from the parent, CPU from the children's rusage."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=env[_CWD], input=stdin, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"process failed: {argv}\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_ms": wall * 1e3, "cpu_ms": cpu * 1e3}


def loaded(env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _LOADED, json.dumps(HEAVY)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=env[_CWD],
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def alone_statement(third_party: list[str]) -> str:
    # leaves only (a parent is imported by its child); failures of optional probes ignored
    names = [m for m in third_party if not any(o.startswith(m + ".") for o in third_party)]
    return "\n".join(f"try:\n    import {m}\nexcept Exception:\n    pass" for m in names) or "pass"


def cases(tree: Path, batch: Path) -> dict[str, tuple[str, Any]]:
    route = [sys.executable, "-m", "agentlanes", "route", "--batch", str(batch)]
    return {
        "import agentlanes": ("timed", "import agentlanes"),
        "from agentlanes import Lanes, Router": ("timed", "from agentlanes import Lanes, Router"),
        "... + Router() + one decision": ("timed", DECIDE),
        STAGE_CASE: ("timed", STAGE),
        "agentlanes route --batch (process)": ("process", route),
    }


def run(trees: dict[str, Path], rounds: int, home: Path) -> dict[str, Any]:
    batch = home / "batch.jsonl"
    line = {
        "taskClass": "routine-code",
        "stage": "execution",
        "resources": str(ROOT / "examples/signals/healthy-local.json"),
    }
    batch.write_text(json.dumps(line) + "\n")
    envs = {name: environment(tree, home / f"pyc-{i}") for i, (name, tree) in enumerate(trees.items())}
    base_env = next(iter(envs.values()))
    loads = {name: loaded(env) for name, env in envs.items()}
    baselines: dict[str, tuple[str, Any]] = {
        "core dependencies": ("timed", CORE),
        "core deps + a first pydantic model": ("timed", FIRST_MODEL),
        "... + a first anyio.run": ("timed", FIRST_LOOP),
        "declared dependencies": ("timed", DECLARED),
        "interpreter alone (process)": ("process", [sys.executable, "-c", "pass"]),
    }
    plan: list[tuple[str, str, str, Any, dict[str, str]]] = [
        ("baseline", name, kind, what, base_env) for name, (kind, what) in baselines.items()
    ]
    for tree_name, tree in trees.items():
        plan.append(
            (tree_name, "what it loads, alone", "timed", alone_statement(loads[tree_name]["third_party"]), base_env)
        )
        for name, (kind, what) in cases(tree, batch).items():
            plan.append((tree_name, name, kind, what, envs[tree_name]))
    for _, _, kind, what, env in plan:  # warm the bytecode caches, untimed
        timed(what, env) if kind == "timed" else process(what, env)
    samples: dict[tuple[str, str], list[dict[str, float]]] = {(g, n): [] for g, n, *_ in plan}
    for _ in range(rounds):
        for group, name, kind, what, env in plan:
            samples[group, name].append(timed(what, env) if kind == "timed" else process(what, env))
    figures: dict[str, Any] = {"rounds": rounds, "loaded": loads, "groups": {}}
    for (group, name), rows in samples.items():
        figures["groups"].setdefault(group, {})[name] = {
            "wall_ms": statistics.median(r["wall_ms"] for r in rows),
            "cpu_ms": statistics.median(r["cpu_ms"] for r in rows),
        }
    base = figures["groups"]["baseline"]
    for group, rows in figures["groups"].items():
        if group == "baseline":
            continue
        for name, row in rows.items():
            ref = base["interpreter alone (process)"] if "(process)" in name else base["core dependencies"]
            row["over_core_wall"] = row["wall_ms"] / ref["wall_ms"]
            row["over_core_cpu"] = row["cpu_ms"] / ref["cpu_ms"]
            if "(process)" not in name:
                model = base["core deps + a first pydantic model"]
                row["over_first_model_wall"] = row["wall_ms"] / model["wall_ms"]
                row["over_first_model_cpu"] = row["cpu_ms"] / model["cpu_ms"]
                loop = base["... + a first anyio.run"]
                row["over_first_loop_wall"] = row["wall_ms"] / loop["wall_ms"]
                row["over_first_loop_cpu"] = row["cpu_ms"] / loop["cpu_ms"]
            if name == "import agentlanes":
                for label in ("declared dependencies",):
                    row["over_declared_wall"] = row["wall_ms"] / base[label]["wall_ms"]
                alone = rows["what it loads, alone"]
                row["over_loaded_alone_wall"] = row["wall_ms"] / alone["wall_ms"]
    return figures


def report(figures: dict[str, Any]) -> None:
    base = figures["groups"]["baseline"]
    print(f"start-up, fresh interpreters, bytecode cached, median of {figures['rounds']} rounds (wall / CPU ms)")
    print("  baselines (same run):")
    for name, row in base.items():
        print(f"    {name:<40} {row['wall_ms']:>8.1f} / {row['cpu_ms']:>7.1f}")
    for group, rows in figures["groups"].items():
        if group == "baseline":
            continue
        load = figures["loaded"][group]
        print(
            f"  {group}: ({len(load['agentlanes_modules'])} agentlanes modules, "
            f"{len(load['third_party'])} third-party modules loaded by `import agentlanes`; "
            f"heavy: {', '.join(load['heavy']) or 'none'})"
        )
        for name, row in rows.items():
            line = f"    {name:<40} {row['wall_ms']:>8.1f} / {row['cpu_ms']:>7.1f}"
            if "over_core_wall" in row:
                ref = "interpreter alone" if "(process)" in name else "core deps"
                line += f"   {row['over_core_wall']:.2f}x / {row['over_core_cpu']:.2f}x {ref}"
                if "over_first_model_wall" in row and name in VALIDATES:
                    line += f"; {row['over_first_model_wall']:.2f}x / {row['over_first_model_cpu']:.2f}x with a model"
                if name == STAGE_CASE:
                    loop = f"{row['over_first_loop_wall']:.2f}x / {row['over_first_loop_cpu']:.2f}x"
                    line += f"; {loop} with a model and a loop"
            if name == "import agentlanes":
                line += (
                    f"; {row['over_declared_wall']:.2f}x declared deps; "
                    f"{row['over_loaded_alone_wall']:.2f}x what it loads, alone (wall)"
                )
                verdict = "met" if row["over_core_wall"] <= TARGET else "NOT met"
                line += f"\n    {'':<40} target <= {TARGET}x core deps (wall): {verdict}"
            print(line)


def importtime(tree: Path, home: Path, statement: str) -> None:
    env = environment(tree, home / "pyc-0")
    subprocess.run([sys.executable, "-c", statement], env=env, check=True, cwd=env[_CWD])  # warm
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement],
        env=env,
        cwd=env[_CWD],
        check=True,
        capture_output=True,
        text=True,
    ).stderr
    rows = []
    for line in err.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            rows.append((int(m[1]), int(m[2]), m[4]))
    by_package: Counter[str] = Counter()
    for own, _, name in rows:
        by_package[name.split(".")[0]] += own
    total = sum(by_package.values())
    print(f"\n-X importtime of `{statement}` (one pass, own time; total {total / 1e3:.1f} ms):")
    for name, own in by_package.most_common(15):
        print(f"    {name:<30} {own / 1e3:>7.1f} ms  {own / total:>5.1%}")
    print("  slowest agentlanes modules (own / cumulative ms):")
    for own, cumulative, name in sorted((r for r in rows if r[2].startswith("agentlanes")), reverse=True)[:12]:
        print(f"    {name:<30} {own / 1e3:>7.1f} / {cumulative / 1e3:>7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--smoke", action="store_true", help="two rounds: every code path, figures meaningless")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH ('-': stdout only)")
    parser.add_argument("--compare", metavar="REV", help="also measure git revision REV in the same rounds")
    parser.add_argument(
        "--importtime",
        nargs="?",
        const="from agentlanes import Lanes, Router",
        metavar="STATEMENT",
        help="where STATEMENT (default: the common first use) spends its import time",
    )
    args = parser.parse_args()
    rounds = 2 if args.smoke else 7 if args.quick else 15
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        trees = {"this tree": ROOT}
        other = home / "tree"
        if args.compare:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(other), args.compare],
                check=True,
                capture_output=True,
            )
            trees[args.compare] = other
        try:
            figures = run(trees, rounds, home)
            if args.json == "-":
                print(json.dumps(figures, indent=2))
            else:
                report(figures)
                if args.json:
                    Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
            if args.importtime and args.json != "-":
                importtime(ROOT, home, args.importtime)
        finally:
            if args.compare:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)],
                    check=False,
                    capture_output=True,
                )


if __name__ == "__main__":
    main()
