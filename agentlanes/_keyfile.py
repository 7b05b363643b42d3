"""Key files: read with bounds, created once, atomically, private whatever the umask.

Shared by the content key (:mod:`agentlanes.content`) and the receipts signing key
(:mod:`agentlanes.receipts`). Error messages name files, never what is in them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from agentlanes._private import private_dir
from agentlanes.errors import ConfigurationError

__all__ = ["create_key_file", "ensure_key_dir", "read_key_file", "tighten"]

_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO must not block the open
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

MAX_KEY_FILE = 64 * 1024
"""No key agentlanes reads is anywhere near this long; a larger file is not a key."""


def read_key_file(path: Path, what: str) -> bytes | None:
    """The bytes of the key file at ``path``, or ``None`` when there is none.

    Refuses what is not a regular file (a FIFO, a device, a directory) before reading
    it, so a wrong path can neither hang nor exhaust memory.
    """
    try:
        fd = os.open(path, os.O_RDONLY | _NONBLOCK | _CLOEXEC | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise ConfigurationError(
            f"Cannot read the {what} {path}: a part of that path is a file, not a directory; "
            "check --data-dir (or AGENTLANES_HOME)."
        ) from None
    except OSError as exc:
        raise ConfigurationError(
            f"Cannot read the {what} {path}: {exc.strerror}; fix the file's permissions or point --data-dir elsewhere."
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigurationError(
                f"The {what} {path} is not a regular file; it must be the key file agentlanes wrote there."
            )
        if info.st_size > MAX_KEY_FILE:
            raise ConfigurationError(
                f"The {what} {path} is {info.st_size} bytes, far larger than any key; it is not the key file "
                "agentlanes wrote there. Restore the original from a backup."
            )
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_KEY_FILE:
            chunk = os.read(fd, MAX_KEY_FILE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_KEY_FILE:
            raise ConfigurationError(f"The {what} {path} is larger than any key; restore the original from a backup.")
        return b"".join(chunks)
    except OSError as exc:
        raise ConfigurationError(f"Cannot read the {what} {path}: {exc.strerror}.") from None
    finally:
        os.close(fd)


def ensure_key_dir(directory: Path) -> None:
    """Create ``directory`` (mode 0700 whatever the umask), or tighten it to 0700."""
    try:
        private_dir(directory)
    except (FileExistsError, NotADirectoryError):
        raise ConfigurationError(
            f"Cannot create the key directory {directory}: a file is in the way; check --data-dir (or AGENTLANES_HOME)."
        ) from None
    except OSError as exc:
        raise ConfigurationError(
            f"Cannot create the key directory {directory}: {exc.strerror}; check --data-dir (or AGENTLANES_HOME)."
        ) from None
    if not directory.is_dir():
        raise ConfigurationError(f"The key directory {directory} is not a directory; check --data-dir.")


def tighten(path: Path) -> None:
    """Best effort: an existing key file readable by others becomes 0600."""
    try:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            path.chmod(0o600)
    except OSError:
        pass  # read-only media, or not our file: reading it is still fine


def create_key_file(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` (mode 0600) unless a file is already there.

    The key is written and synced under a temporary name, then hard-linked into place:
    the link fails when another process got there first, so concurrent first uses agree
    on one key and nobody ever reads a half-written one. Returns ``True`` when this
    call created the file, ``False`` when one already existed (read that one).
    """
    ensure_key_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(tmp, flags, 0o600)
    except OSError as exc:
        raise ConfigurationError(
            f"Cannot create the key file {path}: {exc.strerror}; the data directory must be writable on first use."
        ) from None
    try:
        try:
            _fchmod(fd)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
            created = True
        except FileExistsError:
            created = False
        except OSError:
            # A file system without hard links: exclusive creation still lets only
            # one process write the key (a reader may then briefly see it short).
            created = _create_exclusive(path, data)
    except OSError as exc:
        raise ConfigurationError(f"Cannot write the key file {path}: {exc.strerror}.") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    _sync_dir(path.parent)
    return created


def _create_exclusive(path: Path, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o600)
    except FileExistsError:
        return False
    try:
        _fchmod(fd)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _fchmod(fd: int) -> None:
    """0600 exactly, whatever the umask left (``os.fchmod`` is POSIX only before 3.13)."""
    fchmod = getattr(os, "fchmod", None)
    if fchmod is not None:
        fchmod(fd, 0o600)


def _sync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
