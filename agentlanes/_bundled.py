"""Where the bundled default documents live.

In an installed wheel they are package data under ``agentlanes/_policies/`` (hatch
force-includes the repository's top-level ``policies/`` there). In a source checkout or
an editable install they are read from ``policies/`` beside the package.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentlanes.policy import Loaded

__all__ = ["DEFAULT_FILES", "bundled_path", "default_loaded", "policies_dir"]

DEFAULT_FILES = {
    "policy": "policy.json",
    "optimizer": "optimizer.json",
    "catalog": "price-catalog.json",
}

_HERE = Path(__file__).resolve().parent


@cache
def policies_dir() -> Path:
    """The directory holding the bundled default documents."""
    for candidate in (_HERE / "_policies", _HERE.parent / "policies"):
        if (candidate / DEFAULT_FILES["policy"]).is_file():
            return candidate
    raise FileNotFoundError(
        "agentlanes' bundled policies are missing: neither agentlanes/_policies/ (wheel) nor "
        "policies/ beside the package (checkout) exists; reinstall agentlanes."
    )


def bundled_path(role: str) -> Path:
    """Path of the bundled ``policy``, ``optimizer`` or ``catalog`` document."""
    return policies_dir() / DEFAULT_FILES[role]


@cache
def default_loaded(role: str) -> Loaded:
    """The bundled document for ``role``, loaded once per process."""
    from agentlanes.policy import load_document

    path = bundled_path(role)
    return load_document(path, source=f"<bundled:{path.name}>")
