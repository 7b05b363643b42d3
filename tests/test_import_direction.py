"""Which way dependencies point (docs/architecture.md): the stage engine never imports
telemetry, logging, storage or replay; the router's modules import nothing above the
ground floor; the runtime never imports replay; replay never imports the test kit; and
agentlanes has no import cycle at import time."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "agentlanes"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, runtime_only: bool) -> set[str]:
    """Modules ``path`` imports; with ``runtime_only``, only those imported when the
    module itself is imported (module level, outside ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)

    def visit(nodes: list[ast.stmt], top: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                if not runtime_only:
                    visit(node.body, top)
                continue
            if isinstance(node, ast.Import) and (top or not runtime_only):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and (top or not runtime_only):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package.split(".")[:len(package.split(".")) - node.level + 1], base])
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    deeper = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or not top
                    visit([n for n in inner if isinstance(n, ast.stmt)], top and not deeper)
                    if isinstance(node, ast.Try) and field == "handlers":
                        for handler in inner:
                            visit(handler.body, top)

    visit(tree.body, True)
    return found


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _ours(names: set[str]) -> set[str]:
    # Every submodule's import runs its package's __init__ first; that is Python's
    # mechanism, not a dependency of the code, so the bare package is left out.
    return {n for n in names if n in MODULES and n != "agentlanes"}


def _touches(names: set[str], banned: str) -> bool:
    return any(n == banned or n.startswith(banned + ".") for n in names)


ENGINE = ["agentlanes._engine", "agentlanes._calls", "agentlanes._escalation", "agentlanes._evidence"]
NEVER_FROM_ENGINE = ["opentelemetry", "structlog", "agentlanes.telemetry", "agentlanes.tracefile",
                     "agentlanes.replay", "agentlanes.stores", "agentlanes.logs"]


@pytest.mark.parametrize("module", ENGINE)
def test_the_engine_imports_no_telemetry_logging_storage_or_replay(module: str) -> None:
    names = _imports(MODULES[module], runtime_only=False)
    for banned in NEVER_FROM_ENGINE:
        assert not _touches(names, banned), f"{module} imports {banned}"


# The routing contract's inputs (signals, and the neighbours' findings, ceilings and
# bindings) stand on the ground floor with the documents.
GROUND = {"agentlanes.signals", "agentlanes.lanes", "agentlanes.errors", "agentlanes.decision", "agentlanes.policy",
          "agentlanes._bundled", "agentlanes._files", "agentlanes.findings", "agentlanes.ceiling",
          "agentlanes.binding"}


@pytest.mark.parametrize("module", ["agentlanes.router", "agentlanes.decision", "agentlanes.policy",
                                    "agentlanes.findings", "agentlanes.ceiling", "agentlanes.binding"])
def test_the_router_modules_stand_on_the_ground_floor(module: str) -> None:
    names = _ours(_imports(MODULES[module], runtime_only=False))
    assert names <= GROUND | {module}, f"{module} imports {sorted(names - GROUND)}"


def test_the_runtime_never_imports_replay_and_replay_never_imports_the_test_kit() -> None:
    for module in ("agentlanes.runtime", "agentlanes._engine", "agentlanes.effects", "agentlanes.chain"):
        assert not _touches(_imports(MODULES[module], runtime_only=False), "agentlanes.replay"), module
    assert not _touches(_imports(MODULES["agentlanes.replay"], runtime_only=False), "agentlanes.testing")


def test_errors_import_only_for_type_checking() -> None:
    assert _ours(_imports(MODULES["agentlanes.errors"], runtime_only=True)) == set()


def test_no_import_cycle_at_import_time() -> None:
    graph = {name: _ours(_imports(path, runtime_only=True)) - {name} for name, path in MODULES.items()}
    # a package's import of its own submodule is how re-exports work, not a cycle
    for name in graph:
        graph[name] = {m for m in graph[name] if not (m.startswith(name + ".") and MODULES[name].name == "__init__.py")}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt):], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
