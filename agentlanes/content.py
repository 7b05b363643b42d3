"""Content privacy: keyed digests instead of text.

Prompts, outputs, tool arguments and results, and error texts are recorded as
``hmac-sha256:<hex>`` digests under a per-installation key kept in the data directory
(``<data-dir>/keys/content.key``, created on first use, mode 0600). The same text always
gives the same digest on one installation (so runs can be compared), and nobody without
the key can confirm a guess of the text.
"""

from __future__ import annotations

import hmac
import os
import secrets
import threading
from pathlib import Path

__all__ = ["ContentHasher", "ContentStore"]


class ContentHasher:
    """Keyed digests of content, with a key loaded from (or created in) ``key_path``."""

    def __init__(self, key_path: Path | None = None, *, key: bytes | None = None) -> None:
        if key is None:
            key = secrets.token_bytes(32) if key_path is None else self._load_or_create(key_path)
        self._key = key
        self._memo: dict[str, str] = {}

    @staticmethod
    def _load_or_create(path: Path) -> bytes:
        if path.exists():
            return bytes.fromhex(path.read_text().strip())
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(32)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key.hex())
        try:
            os.link(tmp, path)  # atomic: the first writer wins, others read its key
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return bytes.fromhex(path.read_text().strip())

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


class ContentStore:
    """Bodies needed for exact replay, under ``<data-dir>/content/``, named by their
    keyed digest. Local only: nothing here is ever exported."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / digest.split(":", 1)[-1]

    def put(self, digest: str, text: str) -> None:
        path = self.path(digest)
        if path.exists():
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)

    def get(self, digest: str) -> str | None:
        try:
            return self.path(digest).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
