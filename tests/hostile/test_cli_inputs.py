"""No traceback and no hang on any input (issue 10): every command, run as a user would
run it (a subprocess), given devices, FIFOs, binary, empty, huge, wrong-shape and deeply
nested files, numbers beyond float range and data directories that are not one, ends
with an exit status that says it failed and one message naming what was wrong, within
the subprocess timeout (a FIFO that hangs fails the test by timing out)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, healthy

TIMEOUT = 60  # a hang, not a speed: every case takes a fraction of a second

BAD_FILES = [
    "zero",
    "fifo",
    "binary",
    "empty",
    "nested",
    "nested-object",
    "list",
    "string",
    "nan",
    "huge",
    "dir",
    "missing",
]
NOT_A_DATA_DIR = ["zero", "fifo", "binary", "empty", "huge"]


def make_hostile(root: Path) -> dict[str, str]:
    root.mkdir()
    paths = {"zero": "/dev/zero"}
    os.mkfifo(root / "fifo")
    rng = random.Random(10)
    (root / "binary").write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
    (root / "empty").write_bytes(b"")
    (root / "nested").write_text("[" * 100_000 + "]" * 100_000)
    (root / "nested-object").write_text('{"a":' * 50_000 + "1" + "}" * 50_000)
    (root / "list").write_text("[1, 2, 3]")
    (root / "string").write_text('"text"')
    (root / "nan").write_text('{"kind": NaN}')
    with open(root / "huge", "wb") as f:
        f.truncate(5 << 30)  # sparse: 5 GB to read, nothing on disk
    (root / "dir").mkdir()
    for name in BAD_FILES:
        paths.setdefault(name, str(root / name))
    return paths


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("hostile")
    paths = make_hostile(root / "in")
    signals = root / "signals.json"
    signals.write_text(json.dumps(healthy()))
    paths["signals"] = str(signals)
    home = root / "home"
    done = cli("demo", "--data-dir", str(home))
    assert done.returncode == 0, done.stderr
    paths["home"] = str(home)
    [trace] = (home / "traces").iterdir()
    paths["trace"] = str(trace)
    paths["run"] = trace.name.split(".")[0]
    return paths


def cli(*argv: str, env: dict[str, str] | None = None, user: str | None = None) -> subprocess.CompletedProcess[str]:
    prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] if user else []
    return subprocess.run(
        [*prefix, sys.executable, "-m", "agentlanes", *argv],
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=TIMEOUT,
        cwd="/",
    )


def failed_cleanly(done: subprocess.CompletedProcess[str], names: str) -> None:
    """A non-zero status, no traceback, and a message on stderr that names ``names``."""
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.returncode != 0, (done.stdout[-500:], done.stderr[-500:])
    message = done.stderr.strip()
    assert message, "no message"
    assert names in message, message[-1000:]
    assert "\n\n" not in message, message


FILE_FLAGS = {
    "route --policy": [
        "route",
        "--task-class",
        "routine-code",
        "--stage",
        "planning",
        "--resources",
        "{signals}",
        "--policy",
        "{bad}",
    ],
    "route --optimizer": [
        "route",
        "--task-class",
        "routine-code",
        "--stage",
        "planning",
        "--resources",
        "{signals}",
        "--optimizer",
        "{bad}",
    ],
    "route --price-catalog": [
        "route",
        "--task-class",
        "routine-code",
        "--stage",
        "planning",
        "--resources",
        "{signals}",
        "--price-catalog",
        "{bad}",
    ],
    "route --resources": ["route", "--task-class", "routine-code", "--stage", "planning", "--resources", "{bad}"],
    "route --findings": [
        "route",
        "--task-class",
        "routine-code",
        "--stage",
        "planning",
        "--resources",
        "{signals}",
        "--findings",
        "{bad}",
    ],
    "route --ceiling": [
        "route",
        "--task-class",
        "routine-code",
        "--stage",
        "planning",
        "--resources",
        "{signals}",
        "--ceiling",
        "{bad}",
    ],
    "bind --binding": ["bind", "--binding", "{bad}", "--binding-task", "office-assist", "--resources", "{signals}"],
    "validate": ["validate", "{bad}"],
    "show": ["show", "{bad}"],
    "replay": ["replay", "{bad}"],
    "replay --policy": ["replay", "--policy", "{bad}", "{trace}"],
    "receipts verify FILE": ["receipts", "verify", "{bad}", "--data-dir", "{home}"],
    "receipts verify --head": ["receipts", "verify", "--head", "{bad}", "--data-dir", "{home}"],
    "receipts verify --public-key": ["receipts", "verify", "--public-key", "{bad}", "--data-dir", "{home}"],
    "evidence check-receipts": ["evidence", "check-receipts", "{bad}"],
    "evidence verify-journal": ["evidence", "verify-journal", "{bad}"],
    "evidence convert": ["evidence", "convert", "--format", "agentplane-lane-receipts", "{bad}"],
    "demo --models": ["demo", "--models", "{bad}", "--data-dir", "{home}-models"],
}
# A reader that tolerates a torn last line or an empty input answers 0 for these.
TOLERATED = {
    *(
        (c, k)
        for c in ("route --findings", "route --ceiling", "bind --binding")
        for k in ("binary", "empty", "nested", "nested-object", "list", "string", "nan")
    ),
    ("show", "empty"),
    ("show", "list"),
    ("show", "string"),
    ("show", "nan"),
    ("receipts verify FILE", "empty"),
    ("evidence check-receipts", "empty"),
    ("evidence verify-journal", "empty"),
    ("evidence convert", "empty"),
}


def expand(argv: list[str], world: dict[str, str], bad: str) -> list[str]:
    return [a.format(bad=bad, **world) for a in argv]


@pytest.mark.parametrize("command", list(FILE_FLAGS))
@pytest.mark.parametrize("kind", BAD_FILES)
def test_a_hostile_input_file(world: dict[str, str], command: str, kind: str) -> None:
    bad = world[kind]
    done = cli(*expand(FILE_FLAGS[command], world, bad))
    if (command, kind) in TOLERATED:
        assert "Traceback" not in done.stderr, done.stderr[-2000:]
        if command.startswith(("route", "bind")):
            # a neighbour's malformed document is data to fail closed on: no lane, no binding
            assert done.returncode == 0, done.stderr
            decision = strict_json(done.stdout)
            assert isinstance(decision, dict)
            assert decision.get("status") == "deferred" or decision.get("target") == "deny", decision
        return
    failed_cleanly(done, bad)


@pytest.mark.parametrize("kind", BAD_FILES)
def test_a_hostile_batch(world: dict[str, str], kind: str) -> None:
    """A batch answers line by line: unreadable input fails the command, a bad line is
    an error line (valid JSON) and the next line is still decided."""
    done = cli("route", "--batch", world[kind])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    if done.returncode != 0:
        failed_cleanly(done, world[kind])
    else:
        for line in done.stdout.splitlines():
            assert "error" in json.loads(line)


DATA_DIR_COMMANDS = {
    "runs": ["runs"],
    "show": ["show", "run-x"],
    "replay": ["replay", "run-x"],
    "receipts export": ["receipts", "export"],
    "receipts head": ["receipts", "head"],
    "receipts public-key": ["receipts", "public-key"],
    "receipts verify": ["receipts", "verify"],
    "evidence export": ["evidence", "export", "--format", "agentplane-lane-receipts", "run-x"],
    "demo": ["demo"],
}


@pytest.mark.parametrize("command", list(DATA_DIR_COMMANDS))
@pytest.mark.parametrize("kind", NOT_A_DATA_DIR)
def test_a_data_directory_that_is_not_a_directory(world: dict[str, str], command: str, kind: str) -> None:
    done = cli(*DATA_DIR_COMMANDS[command], "--data-dir", world[kind])
    failed_cleanly(done, world[kind])
    done = cli(*DATA_DIR_COMMANDS[command], env={"AGENTLANES_HOME": world[kind]})
    failed_cleanly(done, world[kind])


def signal_files(root: Path) -> Iterator[tuple[str, Path]]:
    big = int("9" * 400)
    for field in (
        "providerErrorRate",
        "memoryAvailableBytes",
        "providerLatencyP95Ms",
        "estimatedInputTokens",
        "providerQuotaRemainingShare",
    ):
        for name, value in (("400 digits", big), ("-400 digits", -big), ("2^63", 2**63), ("2^1024", 2**1024)):
            path = root / f"{field}-{name}.json"
            path.write_text(json.dumps(healthy(**{field: value})))
            yield f"{field}={name}", path
        for literal in ("1e400", "-1e400", "1e-400"):
            path = root / f"{field}-{literal}.json"
            path.write_text(json.dumps(healthy(**{field: 0.5})).replace(f'"{field}": 0.5', f'"{field}": {literal}'))
            yield f"{field}={literal}", path
    path = root / "lane-costs.json"
    path.write_text(json.dumps(healthy(estimatedLaneCosts={"standard": big, "cheap": 1})).replace("1}", "1e999}"))
    yield "estimatedLaneCosts", path


def strict_json(text: str) -> object:
    def refuse(token: str) -> object:
        raise AssertionError(f"{token} in a decision")

    return json.loads(text, parse_constant=refuse)


def test_signals_beyond_float_range_are_invalid_signals_and_decisions_stay_json(tmp_path: Path) -> None:
    cases = list(signal_files(tmp_path))
    for label, path in cases:
        for fmt in ("native", "upstream"):
            done = cli(
                "route",
                "--task-class",
                "routine-code",
                "--stage",
                "planning",
                "--resources",
                str(path),
                "--format",
                fmt,
            )
            assert "Traceback" not in done.stderr, (label, done.stderr[-2000:])
            if done.returncode == 0:
                decision = strict_json(done.stdout)
                assert isinstance(decision, dict)
                if fmt == "native" and any(x in label for x in ("400 digits", "2^1024", "1e400", "LaneCosts")):
                    assert decision["status"] == "deferred", label
                    assert any(r.startswith("invalid-signal:") for r in decision["reasons"]), (label, decision)
            else:
                failed_cleanly(done, str(path))
    # the same signals on a batch line: every line answered, each line JSON
    lines = "\n".join(
        json.dumps(
            {
                "taskClass": "routine-code",
                "stage": "planning",
                "resources": json.loads(p.read_text(), parse_constant=float),
            },
            allow_nan=True,
        )
        for _, p in cases
    )
    batch = tmp_path / "batch.jsonl"
    batch.write_text(lines + "\n")
    done = cli("route", "--batch", str(batch))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    out = done.stdout.splitlines()
    assert len(out) == len(cases)
    for line in out:
        strict_json(line)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "1" + "0" * 400, "abc"])
def test_a_budget_beyond_float_range(world: dict[str, str], value: str) -> None:
    done = cli(
        "route",
        "--task-class",
        "routine-code",
        "--stage",
        "planning",
        "--resources",
        world["signals"],
        f"--budget-remaining={value}",
    )
    failed_cleanly(done, "--budget-remaining")


@pytest.mark.parametrize("value", [10**400, "1e400", "NaN", "Infinity", -(10**400)])
def test_a_batch_budget_beyond_float_range(tmp_path: Path, value: object) -> None:
    literal = value if isinstance(value, str) else str(value)
    line = json.dumps(
        {"taskClass": "routine-code", "stage": "planning", "resources": healthy(), "budgetRemaining": 0}
    ).replace('"budgetRemaining": 0', f'"budgetRemaining": {literal}')
    batch = tmp_path / "batch.jsonl"
    batch.write_text(line + "\n" + line.replace(literal, "1.5") + "\n")
    done = cli("route", "--batch", str(batch))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    first, second = (strict_json(x) for x in done.stdout.splitlines())
    assert isinstance(first, dict) and "error" in first
    assert "budgetRemaining" in first["error"] or f"{literal} is not JSON" in first["error"], first
    assert isinstance(second, dict) and "decisionId" in second


@pytest.mark.parametrize(
    "store",
    [
        "nonsense",
        "sqlite:///dev/zero",
        "sqlite:///{binary}/under-a-file.db",
        "postgresql://127.0.0.1:1/none",
        "mysql://localhost/db",
        "sqlite:///{fifo}",
        "sqlite:///{binary}",
    ],
)
@pytest.mark.parametrize("command", [["runs"], ["receipts", "verify"], ["receipts", "head"], ["demo"]])
def test_a_bad_store_url(world: dict[str, str], tmp_path: Path, store: str, command: list[str]) -> None:
    url = store.format(**world)
    home = str(tmp_path / "d") if command[0] == "demo" else world["home"]
    done = cli(*command, "--data-dir", home, env={"AGENTLANES_STORE": url})
    failed_cleanly(done, url[len("sqlite://") :] if url.startswith("sqlite") else url)


@pytest.mark.parametrize("key", ["content.key", "receipts-ed25519.pem", "receipts-ed25519.pub.pem"])
@pytest.mark.parametrize("content", [b"", b"a", b"\x00" * 100, b"-----BEGIN PRIVATE KEY-----\nnot base64\n"])
def test_garbage_key_files(world: dict[str, str], tmp_path: Path, key: str, content: bytes) -> None:
    home = tmp_path / "home"
    (home / "keys").mkdir(parents=True)
    (home / "keys" / key).write_bytes(content)
    for argv in (["demo"], ["receipts", "public-key"], ["receipts", "verify"]):
        done = cli(*argv, "--data-dir", str(home))
        assert "Traceback" not in done.stderr, (argv, done.stderr[-2000:])
        if argv == ["demo"] or key != "content.key":
            failed_cleanly(done, key if argv != ["receipts", "verify"] else str(home))


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["replay", "{run}", "--chain", "json:loads"], "json:loads"),
        (["replay", "{run}", "--chain", "json:JSONDecodeError"], "JSONDecodeError"),
        (["replay", "{run}", "--chain", "os:sep"], "is not a Chain"),
        (["replay", "{run}", "--entry", "no_such_module_x:main"], "no_such_module_x:main"),
        (["replay", "{run}", "--entry", ":::"], "':::'"),
        (["show", "../../etc/passwd"], "../../etc/passwd"),
        (["receipts", "verify", "--key-id", "not-a-key-id"], "not-a-key-id"),
        (["receipts", "export", "--output", "{dir}"], "{dir}"),
    ],
)
def test_odd_arguments(world: dict[str, str], argv: list[str], names: str) -> None:
    done = cli(*expand(argv, world, ""), "--data-dir", world["home"])
    failed_cleanly(done, names.format(**world).split(":")[-1] if names.startswith("json:") else names.format(**world))


@pytest.mark.parametrize("command", [["validate"], ["demo", "--models"]])
def test_a_broken_models_file_is_called_a_models_file(tmp_path: Path, command: list[str]) -> None:
    for name, data in (("binary.toml", b"\x80\xff\n"), ("huge.toml", None)):
        path = tmp_path / name
        if data is None:
            with open(path, "wb") as f:
                f.truncate(5 << 20)
        else:
            path.write_bytes(data)
        done = cli(*command, str(path), *(["--data-dir", str(tmp_path / "d")] if command[0] == "demo" else []))
        failed_cleanly(done, str(path))
        assert "models file" in done.stderr and "OTLP" not in done.stderr and "trace" not in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AGENTLANES_MAX_TRACE_BYTES", "abc"),
        ("AGENTLANES_MAX_TRACE_BYTES", "-1"),
        ("AGENTLANES_MAX_TRACE_BYTES", "9" * 400),
        ("AGENTLANES_STORE_DURABILITY", "sometimes"),
        ("AGENTLANES_STORE_STATEMENT_CACHE_SIZE", "-1"),
    ],
)
def test_a_bad_environment_setting(world: dict[str, str], variable: str, value: str) -> None:
    """A bad setting is named when it is used; importing agentlanes never fails on it."""
    reader = ["show", world["run"]] if "TRACE" in variable else ["runs"]
    done = cli(
        *reader,
        "--data-dir",
        world["home"],
        env={variable: value, "AGENTLANES_STORE": ("postgresql://127.0.0.1:1/none" if "STATEMENT" in variable else "")},
    )
    failed_cleanly(done, variable)
    assert value[:40] in done.stderr
