"""Every code block in README.md and docs/*.md runs.

Python blocks run with exec (one namespace per file, in order); bash blocks run under
``bash -euo pipefail`` from the repository root with the installed ``agentlanes`` on
PATH. A block preceded by ``<!-- not-run: reason -->`` is skipped (only the README's
install commands, which .ci/run executes literally).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

BLOCK = re.compile(r"(<!-- not-run:[^>]*-->\s*)?```(python|bash)\n(.*?)```", re.S)
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(path: Path) -> list[tuple[str, str, bool]]:
    return [(m.group(2), m.group(3), bool(m.group(1))) for m in BLOCK.finditer(path.read_text())]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_code_blocks_run(path: Path) -> None:
    namespace: dict[str, object] = {"__name__": f"docs_{path.stem}"}
    ran = 0
    for lang, code, skipped in blocks(path):
        if skipped:
            continue
        if lang == "python":
            exec(compile(code, f"{path.name}:python-block", "exec"), namespace)
        else:
            bindir = str(Path(sys.executable).parent)
            env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
            assert shutil.which("agentlanes", path=env["PATH"]), "the agentlanes command must be installed"
            proc = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=120, check=False)
            assert proc.returncode == 0, f"{path.name} bash block failed:\n{code}\n{proc.stderr[-2000:]}"
        ran += 1
    assert ran > 0 or path.name != "README.md"
