"""Keys are never silently replaced, forged or leaked: damaged key files are refused by
name, a missing private key beside its public key is an error, first use is atomic
across processes, and key files are private whatever the umask."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agentlanes import cli
from agentlanes.content import ContentHasher
from agentlanes.errors import ConfigurationError
from agentlanes.receipts import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    ReceiptSigner,
    data_dir_public_key,
    key_id_of,
    read_public_key,
)
from tests.conftest import ROOT


def tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``root`` with its mode, size and mtime: a fingerprint of the directory."""
    if not root.exists():
        return {}
    out = {}
    for p in sorted(root.rglob("*")):
        info = p.lstat()
        out[str(p.relative_to(root))] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return out


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0)
    yield
    os.umask(old)


# ----------------------------------------------------------------- content key


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (b"", "is empty"),
        (b"\n", "is empty"),
        (b"a", "holds 1 characters"),
        (b"ab" * 31, "holds 62 characters"),
        (b"ab" * 33, "holds 66 characters"),
        (b"zz" * 32, "not all hexadecimal"),
        (b"00" * 32, "32 equal bytes"),
        (b"\xff\xfe\x00garbage" * 8, "malformed"),
    ],
)
def test_a_damaged_content_key_is_refused_by_name(tmp_path: Path, content: bytes, expect: str) -> None:
    path = tmp_path / "keys" / "content.key"
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.raises(ConfigurationError, match=expect) as info:
        ContentHasher(path)
    message = str(info.value)
    assert str(path) in message and "restore the original" in message
    if len(content) > 4:
        assert content.decode("latin-1").strip() not in message  # the message never quotes the key
    assert path.read_bytes() == content  # nothing was replaced


def test_a_content_key_that_is_not_a_file_is_refused_without_hanging(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    os.mkfifo(keys / "content.key")
    with pytest.raises(ConfigurationError, match="is not a regular file"):
        ContentHasher(keys / "content.key")
    (tmp_path / "k2").mkdir()
    (tmp_path / "k2" / "content.key").mkdir()
    with pytest.raises(ConfigurationError, match="not a regular file"):
        ContentHasher(tmp_path / "k2" / "content.key")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigurationError, match=r"a file is in the way|is a file, not a directory"):
        ContentHasher(tmp_path / "file" / "keys" / "content.key")


def test_content_keys_old_and_new_load_and_agree(tmp_path: Path, umask: None) -> None:
    path = tmp_path / "home" / "keys" / "content.key"
    first = ContentHasher(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(path.read_text().strip()) == 64
    assert ContentHasher(path).digest("x") == first.digest("x")
    path.write_text(path.read_text().strip())  # written before the newline was added: still the same key
    assert ContentHasher(path).digest("x") == first.digest("x")
    with pytest.raises(ConfigurationError, match="at least 32 bytes"):
        ContentHasher(key=b"short")


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077, 0o777])
def test_keys_are_private_whatever_the_umask(tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        ContentHasher(tmp_path / "a" / "keys" / "content.key")
        ReceiptSigner(tmp_path / "b" / "keys")
    finally:
        os.umask(old)
    for path in (tmp_path / "a" / "keys" / "content.key", *(tmp_path / "b" / "keys").iterdir()):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700, path.parent
    assert not [p for p in (tmp_path / "b" / "keys").iterdir() if p.name.startswith(".")]  # no temporary left


def test_an_existing_key_readable_by_others_is_tightened(tmp_path: Path) -> None:
    ContentHasher(tmp_path / "keys" / "content.key")
    ReceiptSigner(tmp_path / "keys")
    for name in ("content.key", PRIVATE_KEY_FILE, PUBLIC_KEY_FILE):
        (tmp_path / "keys" / name).chmod(0o644)
    ContentHasher(tmp_path / "keys" / "content.key")
    ReceiptSigner(tmp_path / "keys")
    for name in ("content.key", PRIVATE_KEY_FILE, PUBLIC_KEY_FILE):
        assert stat.S_IMODE((tmp_path / "keys" / name).stat().st_mode) == 0o600, name


RACE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from agentlanes.content import ContentHasher
    from agentlanes.receipts import ReceiptSigner
    home, go = Path(sys.argv[1]), Path(sys.argv[2])
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.0005)
    print(ContentHasher(home / "keys" / "content.key").digest("x"), ReceiptSigner(home / "keys").key_id, flush=True)
""")


def test_first_use_from_many_processes_at_once_agrees_on_one_key(tmp_path: Path) -> None:
    for attempt in range(2):
        home, go = tmp_path / f"home{attempt}", tmp_path / f"go{attempt}"
        procs = [
            subprocess.Popen([sys.executable, "-c", RACE, str(home), str(go)], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            for _ in range(6)
        ]  # fmt: skip
        for p in procs:  # everybody imported and waiting: then all start at once
            assert p.stdout is not None and p.stdout.readline() == "ready\n"
        go.touch()
        outs = [p.communicate(timeout=120) for p in procs]
        assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
        answers = {out.strip() for out, _ in outs}
        assert len(answers) == 1, answers
        digest, key_id = answers.pop().split()
        assert ContentHasher(home / "keys" / "content.key").digest("x") == digest
        assert key_id_of(read_public_key(home / "keys" / PUBLIC_KEY_FILE)) == key_id
        assert sorted(p.name for p in (home / "keys").iterdir()) == sorted(
            ["content.key", PRIVATE_KEY_FILE, PUBLIC_KEY_FILE]
        )


# ---------------------------------------------------------------- signing key


def pem_private(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def damaged_keys() -> list[tuple[str, bytes, str]]:
    good = pem_private(Ed25519PrivateKey.generate())
    return [
        ("empty", b"", "is empty"),
        ("one byte", b"x", "not a readable PEM private key"),
        ("truncated", good[: len(good) // 2], "not a readable PEM private key"),
        ("flipped", good.replace(good[40:44], b"AAAA"), "not a readable PEM private key|not an Ed25519"),
        ("binary", os.urandom(300), "not a readable PEM private key"),
        ("rsa", pem_private(rsa.generate_private_key(public_exponent=65537, key_size=1024)), "an RSA key"),
        ("ecdsa", pem_private(ec.generate_private_key(ec.SECP256R1())), "elliptic-curve"),
        ("ed448", pem_private(ed448.Ed448PrivateKey.generate()), "an Ed448 key"),
        (
            "encrypted",
            Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"pw"),
            ),
            "encrypted with a password",
        ),
        ("public instead", Ed25519PrivateKey.generate().public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), "not a readable PEM"),
    ]  # fmt: skip


@pytest.mark.parametrize(("name", "content", "expect"), damaged_keys(), ids=[k[0] for k in damaged_keys()])
def test_a_damaged_signing_key_is_refused_by_name_and_never_replaced(
    tmp_path: Path, name: str, content: bytes, expect: str
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / PRIVATE_KEY_FILE).write_bytes(content)
    (keys / PRIVATE_KEY_FILE).chmod(0o600)
    before = tree(keys)
    with pytest.raises(ConfigurationError, match=expect) as info:
        ReceiptSigner(keys)
    message = str(info.value)
    assert str(keys / PRIVATE_KEY_FILE) in message
    assert "PRIVATE KEY" not in message and (len(content) < 8 or content[30:60].decode("latin-1") not in message)
    assert tree(keys) == before  # nothing minted, nothing rewritten


def test_a_signing_key_that_is_a_fifo_or_a_directory_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / PRIVATE_KEY_FILE)
    with pytest.raises(ConfigurationError, match="not a regular file"):
        ReceiptSigner(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / PRIVATE_KEY_FILE).mkdir()
    with pytest.raises(ConfigurationError, match="not a regular file"):
        ReceiptSigner(tmp_path / "d")


def test_a_private_key_missing_beside_its_public_key_is_an_error_not_a_new_pair(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    ReceiptSigner(keys)
    (keys / PRIVATE_KEY_FILE).unlink()
    before = tree(keys)
    with pytest.raises(ConfigurationError, match=r"is missing, but its public key .* is there") as info:
        ReceiptSigner(keys)
    assert "Restore it from a backup" in str(info.value)
    assert tree(keys) == before


def test_a_missing_public_key_is_derived_again_from_the_private_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    signer = ReceiptSigner(keys)
    (keys / PUBLIC_KEY_FILE).unlink()
    again = ReceiptSigner(keys)
    assert again.key_id == signer.key_id
    assert key_id_of(read_public_key(keys / PUBLIC_KEY_FILE)) == signer.key_id
    assert stat.S_IMODE((keys / PUBLIC_KEY_FILE).stat().st_mode) == 0o600


def test_a_public_key_that_does_not_belong_to_the_private_key_is_refused(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    ReceiptSigner(keys)
    (keys / PUBLIC_KEY_FILE).write_text(ReceiptSigner().public_pem())  # swapped
    with pytest.raises(ConfigurationError, match="does not belong to the signing key"):
        ReceiptSigner(keys)
    with pytest.raises(ConfigurationError, match="does not belong to the signing key"):
        data_dir_public_key(keys)


def test_public_key_files_are_checked(tmp_path: Path) -> None:
    for content, expect in [
        (b"", "is empty"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a readable PEM public key"),
        (
            rsa.generate_private_key(public_exponent=65537, key_size=1024)
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
            "holds an RSA key",
        ),
        (pem_private(Ed25519PrivateKey.generate()), "not a readable PEM public key"),
    ]:
        (tmp_path / "pub.pem").write_bytes(content)
        with pytest.raises(ConfigurationError, match=expect) as info:
            read_public_key(tmp_path / "pub.pem")
        assert str(tmp_path / "pub.pem") in str(info.value)
    with pytest.raises(ConfigurationError, match="There is no public key file"):
        read_public_key(tmp_path / "nope.pem")


# ------------------------------------------------------------- the command line


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_public_key_never_creates_anything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    typo = tmp_path / "typo"
    code, out, err = run_cli(capsys, "receipts", "public-key", "--data-dir", str(typo))
    assert code == 1 and out == "" and f"No data directory at {typo}" in err
    assert not typo.exists()
    home = tmp_path / "home"
    home.mkdir()
    code, out, err = run_cli(capsys, "receipts", "public-key", "--data-dir", str(home))
    assert code == 1 and f"There is no receipts key in {home / 'keys'}" in err
    assert tree(home) == {}
    signer = ReceiptSigner(home / "keys")
    (home / "keys" / PUBLIC_KEY_FILE).unlink()
    before = tree(home)
    code, out, err = run_cli(capsys, "receipts", "public-key", "--data-dir", str(home))
    assert code == 0 and out == signer.public_pem()  # derived from the private key, not written
    assert tree(home) == before
    (home / "keys" / PUBLIC_KEY_FILE).write_text(signer.public_pem())
    (home / "keys" / PRIVATE_KEY_FILE).unlink()
    code, out, _ = run_cli(capsys, "receipts", "public-key", "--data-dir", str(home))
    assert code == 0 and out == signer.public_pem()


def test_garbage_keys_give_one_message_not_a_traceback(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "keys").mkdir(parents=True)
    (home / "keys" / PUBLIC_KEY_FILE).write_bytes(os.urandom(200))
    for argv in (["receipts", "public-key"], ["receipts", "verify"], ["receipts", "head"]):
        proc = subprocess.run([sys.executable, "-m", "agentlanes", *argv, "--data-dir", str(home)], cwd=ROOT,
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              timeout=60, check=False)  # fmt: skip
        assert proc.returncode == 1, (argv, proc.stderr)
        assert "Traceback" not in proc.stderr and str(home / "keys" / PUBLIC_KEY_FILE) in proc.stderr, proc.stderr
