"""Private by default: what agentlanes creates under its data directory is its owner's alone.

Prompts, outputs, verifier output, signals and receipts live in the data directory, so
every directory agentlanes creates there is 0700 and every file 0600, whatever the
process's umask (a umask only ever removes bits, so creating with these modes and then
setting them exactly covers a umask of 000 as well as 077). Directories that agentlanes
names itself (``traces``, ``content``, ``keys``, ``journal``, ``workspaces``) and files it
owns (the SQLite database and its ``-wal``/``-shm``) are tightened when found wider. A
directory the user named (``--data-dir``) that already exists is left as it is: it may be
shared (``/tmp``) and the files in it are private anyway.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

__all__ = ["private_dir", "private_file", "tighten_file", "write_private"]

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def private_dir(path: Path, *, tighten: bool = True) -> None:
    """Create ``path`` and any missing parent as 0700; an existing ``path`` becomes 0700
    when ``tighten`` (best effort: a directory that is not ours to change is left).

    Raises:
        OSError: as :meth:`pathlib.Path.mkdir` (a file in the way, no permission); the
            caller says what the directory was for.
    """
    missing: list[Path] = []
    probe = path
    while not probe.is_dir():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue  # another process made it first: it tightens its own, we tighten ours below
        _chmod(directory, 0o700)  # a umask such as 0o777 also removes the owner's bits
    if tighten and not missing:
        with contextlib.suppress(OSError):
            if stat.S_IMODE(path.stat().st_mode) != 0o700:
                path.chmod(0o700)


def private_file(path: Path) -> None:
    """Make sure the file at ``path`` exists and is 0600: created empty (0600) when
    missing, tightened when found wider (best effort on read-only media)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC | _NOFOLLOW, 0o600)
    except FileExistsError:
        tighten_file(path)
        return
    try:
        _fchmod(fd)
    finally:
        os.close(fd)


def tighten_file(path: Path) -> None:
    """An existing file readable or writable by others becomes 0600 (best effort;
    missing, read-only or not ours: left alone)."""
    with contextlib.suppress(OSError):
        info = os.lstat(path)
        if stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) & 0o077:
            os.chmod(path, 0o600)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (replacing its contents), the file 0600 whatever it was."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _CLOEXEC | _NOFOLLOW, 0o600)
    try:
        _fchmod(fd)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _fchmod(fd: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        if stat.S_IMODE(os.fstat(fd).st_mode) != 0o600:
            os.fchmod(fd, 0o600)


def _chmod(path: Path, mode: int) -> None:
    with contextlib.suppress(OSError):
        if stat.S_IMODE(path.stat().st_mode) != mode:
            path.chmod(mode)
