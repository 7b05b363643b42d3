"""Content privacy: keyed digests instead of text.

Prompts, outputs, tool arguments and results, and error texts are recorded as
``hmac-sha256:<hex>`` digests under a per-installation key kept in the data directory
(``<data-dir>/keys/content.key``, created on first use, mode 0600 in a 0700 directory).
The same text always gives the same digest on one installation (so runs can be
compared), and nobody without the key can confirm a guess of the text.

The key file holds exactly 64 hexadecimal digits (32 random bytes), optionally followed
by a newline. Anything else (an empty or truncated file, other characters, 32 equal
bytes) is refused with a :class:`~agentlanes.errors.ConfigurationError` naming the file:
agentlanes never replaces a key file that exists, because digests made with the old key
would silently stop matching. A missing key is created (atomically: concurrent first
uses agree on one key).
"""

from __future__ import annotations

import contextlib
import hmac
import os
import re
import secrets
import stat
import threading
from pathlib import Path

from agentlanes._keyfile import create_key_file, read_key_file, tighten
from agentlanes._private import private_dir
from agentlanes.errors import ConfigurationError

__all__ = ["DIGEST_RE", "ContentError", "ContentHasher", "ContentStore"]

_KEY_BYTES = 32
_HEX = frozenset("0123456789abcdefABCDEF")


def _parse_content_key(data: bytes, path: Path) -> bytes:
    fix = (
        "restore the original file from a backup (a new key would make every earlier content digest "
        "unmatchable), or, to start over deliberately, delete it and agentlanes makes a new one."
    )
    text = data.decode("ascii", "replace").strip()
    if not text:
        raise ConfigurationError(f"The content key {path} is empty; {fix}")
    if len(text) != 2 * _KEY_BYTES or not set(text) <= _HEX:
        raise ConfigurationError(
            f"The content key {path} is malformed: it must hold exactly {2 * _KEY_BYTES} hexadecimal digits "
            f"({_KEY_BYTES} random bytes), and it holds {len(text)} characters"
            + ("" if set(text) <= _HEX else " that are not all hexadecimal")
            + f"; {fix}"
        )
    key = bytes.fromhex(text)
    if len(set(key)) == 1:
        raise ConfigurationError(f"The content key {path} is {_KEY_BYTES} equal bytes, not a random key; {fix}")
    return key


class ContentHasher:
    """Keyed digests of content, with a key loaded from (or created in) ``key_path``.

    Args:
        key_path: the key file (``<data-dir>/keys/content.key``); created when missing.
        key: an explicit key instead (at least 32 bytes); a fresh random one when
            neither is given.

    Raises:
        ConfigurationError: the key file is empty, short, malformed or unreadable.
    """

    def __init__(self, key_path: Path | None = None, *, key: bytes | None = None) -> None:
        if key is None:
            key = secrets.token_bytes(_KEY_BYTES) if key_path is None else self._load_or_create(key_path)
        elif len(key) < _KEY_BYTES:
            raise ConfigurationError(f"A content key must be at least {_KEY_BYTES} bytes; this one has {len(key)}.")
        self._key = key
        self._memo: dict[str, str] = {}

    @classmethod
    def existing(cls, path: Path) -> ContentHasher:
        """The hasher of an existing key, read without writing anything (replays read a
        data directory that may not be theirs, or be read-only)."""
        data = read_key_file(path, "content key")
        if data is None:
            raise ConfigurationError(
                f"{path} is missing: exact replay compares keyed digests, so it needs the data directory the run "
                "was recorded in (--data-dir)."
            )
        return cls(key=_parse_content_key(data, path))

    @staticmethod
    def _load_or_create(path: Path) -> bytes:
        data = read_key_file(path, "content key")
        if data is None:
            create_key_file(path, secrets.token_bytes(_KEY_BYTES).hex().encode("ascii") + b"\n")
            # whoever won the race to create it, everybody uses what is on disk
            data = read_key_file(path, "content key")
            if data is None:
                raise ConfigurationError(f"The content key {path} vanished right after it was created; try again.")
        else:
            tighten(path)
        return _parse_content_key(data, path)

    def digest(self, text: str | bytes) -> str:
        """``hmac-sha256:<hex>`` of ``text``.

        Short strings (ids, names, lanes: most evidence values) are memoised in a
        bounded in-memory table; the table holds nothing the digest does not already
        imply, and it never leaves the process.
        """
        if isinstance(text, str) and len(text) <= 256:
            hit = self._memo.get(text)
            if hit is None:
                hit = "hmac-sha256:" + hmac.digest(self._key, text.encode("utf-8"), "sha256").hex()
                if len(self._memo) >= 4096:
                    self._memo.clear()
                self._memo[text] = hit
            return hit
        data = text.encode("utf-8") if isinstance(text, str) else text
        return "hmac-sha256:" + hmac.digest(self._key, data, "sha256").hex()


DIGEST_RE = re.compile(r"hmac-sha256:[0-9a-f]{64}\Z")
"""The exact form of a content digest (anything else names no body)."""
MAX_BODY_BYTES = 64 * 1024 * 1024


class ContentError(ConfigurationError):
    """A body in the content store cannot be used: not a regular file, too large, not
    text, or not what its digest says (the store was altered)."""


class ContentStore:
    """Bodies needed for exact replay, under ``<data-dir>/content/``, named by their
    keyed digest. Local only: nothing here is ever exported; files are private (0600).

    Args:
        root: the directory.
        create: create it when missing (readers pass ``False``: they never write).
    """

    def __init__(self, root: Path, *, create: bool = True) -> None:
        self.root = root
        self._root = os.fspath(root)
        self._known: set[str] = set()  # digests this process knows are stored (bodies repeat)
        if create:
            private_dir(root)

    def path(self, digest: str) -> Path | None:
        """Where the body named ``digest`` lives; ``None`` when ``digest`` is not the
        exact digest form (so no text can name a path outside the store)."""
        if not isinstance(digest, str) or not DIGEST_RE.match(digest):
            return None
        return self.root / digest[len("hmac-sha256:") :]

    def put(self, digest: str, text: str) -> None:
        """Store ``text`` as the body named ``digest`` (once: a body already stored, or
        seen stored by this process, is not written again)."""
        known = self._known
        if digest in known:
            return
        if not isinstance(digest, str) or not DIGEST_RE.match(digest):
            return
        name = digest[len("hmac-sha256:") :]
        path = os.path.join(self._root, name)
        if not os.path.exists(path):
            tmp = os.path.join(self._root, f".{name}.{os.getpid()}.{threading.get_ident()}")
            data = text.encode("utf-8")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                try:
                    while data:
                        data = data[os.write(fd, data) :]
                finally:
                    os.close(fd)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)  # a full disk leaves no half-written body behind
                raise
        if len(known) >= 65_536:
            known.clear()
        known.add(digest)

    def get(self, digest: str, *, limit: int = MAX_BODY_BYTES) -> str | None:
        """The body named ``digest``, or ``None`` when the store has none. Only regular
        files inside the store are read (never a link, FIFO or device), at most
        ``limit`` bytes."""
        path = self.path(digest)
        if path is None:
            raise ContentError(f"{digest!r} is not a content digest (hmac-sha256: and 64 hex digits).")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ContentError(f"{path} cannot be read as a body ({exc.strerror}).") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ContentError(f"{path} is not a regular file, so it is not a body agentlanes stored.")
            if info.st_size > limit:
                raise ContentError(f"{path} is {info.st_size} bytes, more than a body may be ({limit}).")
            data = os.read(fd, limit + 1)
        finally:
            os.close(fd)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ContentError(f"{path} is not UTF-8 text, so it is not a body agentlanes stored.") from None

    def get_verified(self, digest: str, hasher: ContentHasher) -> str | None:
        """:meth:`get`, then the body is digested again and must match its name."""
        text = self.get(digest)
        if text is not None and hasher.digest(text) != digest:
            raise ContentError(
                f"The body stored as {digest} does not match its digest: the content store was altered "
                "(or holds another installation's bodies)."
            )
        return text
