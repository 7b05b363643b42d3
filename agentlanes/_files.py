"""Reading input files that come from outside: bounded, regular files only.

The neighbours' documents (findings, routing ceilings, bindings, consent contracts)
arrive as files a sandbox, a validator or a user wrote. Reading one must never hang
(a FIFO nobody writes to, ``/dev/zero``) or exhaust memory (a multi-gigabyte file), so
the file is opened without blocking, checked to be a regular file on the open
descriptor (no window between the check and the read), and read up to a bound.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Final

from agentlanes.errors import ConfigurationError

__all__ = ["MAX_INPUT_BYTES", "NotJSON", "read_bounded", "read_json_file"]

MAX_INPUT_BYTES: Final = 4 * 1024 * 1024
"""Largest neighbour document read (RFC 0009's findings are bounded well below this)."""


def read_bounded(path: str | Path, *, what: str, limit: int = MAX_INPUT_BYTES) -> bytes:
    """The bytes of the regular file at ``path``, at most ``limit`` of them.

    Args:
        path: the file.
        what: what the file is, for messages (``findings``, ``routing ceiling``...).
        limit: the largest size accepted.

    Raises:
        ConfigurationError: the file is missing, unreadable, not a regular file (a FIFO,
            a device, a directory) or larger than ``limit``.
    """
    name = str(path)
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigurationError(f"The {what} file {name!r} does not exist; pass the path of a JSON file.") from None
    except IsADirectoryError:
        raise ConfigurationError(f"The {what} file {name!r} is a directory; pass the path of a JSON file.") from None
    except OSError as exc:
        raise ConfigurationError(f"The {what} file {name!r} cannot be opened ({exc.strerror}).") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = (
                "a directory"
                if stat.S_ISDIR(info.st_mode)
                else "a FIFO"
                if stat.S_ISFIFO(info.st_mode)
                else "a device"
                if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
                else "not a regular file"
            )
            raise ConfigurationError(
                f"The {what} file {name!r} is {kind}; agentlanes reads {what} documents only from regular files "
                "(write the document to a file first)."
            )
        if info.st_size > limit:
            raise ConfigurationError(
                f"The {what} file {name!r} is {info.st_size} bytes, more than the {limit} bytes agentlanes reads; "
                f"pass a smaller {what} document."
            )
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:  # the file grew while being read
                raise ConfigurationError(
                    f"The {what} file {name!r} is more than the {limit} bytes agentlanes reads; "
                    f"pass a smaller {what} document."
                )
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise ConfigurationError(f"The {what} file {name!r} cannot be read ({exc.strerror}).") from None
    finally:
        os.close(fd)


class NotJSON:
    """A file's bytes that are not a JSON document (kept so a digest can name them)."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw


def read_json_file(path: str | Path, *, what: str, limit: int = MAX_INPUT_BYTES) -> Any:
    """The JSON document in the file at ``path``, or :class:`NotJSON` when its bytes are
    not JSON (UTF-8, no ``NaN``): a malformed document is the caller's data to fail
    closed on, whereas a file that cannot be read is an error.

    Raises:
        ConfigurationError: as :func:`read_bounded`.
    """
    import json

    raw = read_bounded(path, what=what, limit=limit)

    def _no_constants(token: str) -> Any:
        raise ValueError(f"{token} is not JSON")

    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except (ValueError, RecursionError):
        return NotJSON(raw)
