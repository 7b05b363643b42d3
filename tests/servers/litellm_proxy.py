"""A LiteLLM proxy with mock models on 127.0.0.1: an OpenAI-compatible server nobody here
wrote, for the adapter tests in this folder.

The proxy lives in a virtualenv of its own (``<repo>/.venv-litellm``, gitignored): its
pins (fastapi, starlette, cryptography, openai, ...) must not meet the code under test.
:func:`ensure_venv` creates it on first use from ``litellm-constraints.txt`` and reuses it
while the pinned requirement and constraints are unchanged. :class:`LiteLLMProxy` writes
the config and a small custom handler into a directory of its own, starts the proxy with
a clean environment (no database, no cache, no ``.env``, no HTTP proxy, and an audit hook
that refuses and notes any lookup or connection beyond loopback), waits until it answers,
and stops it.

``python -m tests.servers.litellm_proxy prepare`` only prepares the virtualenv (.ci/run
runs it before the tests so the install's time shows on its own).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENT = "litellm[proxy]==1.108.7"
CONSTRAINTS = Path(__file__).with_name("litellm-constraints.txt")
VENV = Path(os.environ.get("AGENTLANES_LITELLM_VENV", ROOT / ".venv-litellm"))
INSTALL_TIMEOUT = 900.0
START_TIMEOUT = 180.0  # seen: 9-20 s on an idle 2-core machine, 20-35 s on a busy one

# Every model name is one behaviour. mock-* use only LiteLLM's built-in mock parameters;
# scripted-* go through scripted_provider.py for what those cannot do.
CONFIG_YAML = """\
model_list:
  - model_name: mock-chat
    litellm_params: {model: openai/mock-chat, api_key: sk-not-used, mock_response: "Hello from the mock model."}
  # a tool call the way mock_tool_calls builds it: content "" and finish_reason "stop"
  - model_name: mock-tool
    litellm_params:
      model: openai/mock-tool
      api_key: sk-not-used
      mock_response: ""
      mock_tool_calls:
        - {id: call_mock_1, type: function, function: {name: get_weather, arguments: '{"city": "Paris"}'}}
  # a whole response object: content null, finish_reason "tool_calls", usage 11/7
  - model_name: mock-tool-dict
    litellm_params:
      model: openai/mock-tool-dict
      api_key: sk-not-used
      mock_response:
        id: chatcmpl-mock-tool
        object: chat.completion
        created: 1700000000
        model: mock-tool-dict
        choices:
          - index: 0
            finish_reason: tool_calls
            message:
              role: assistant
              content: null
              tool_calls:
                - {id: call_mock_1, type: function, function: {name: get_weather, arguments: '{"city": "Paris"}'}}
        usage: {prompt_tokens: 11, completion_tokens: 7, total_tokens: 18}
  - model_name: mock-400
    litellm_params: {model: openai/mock-400, api_key: sk-not-used, mock_response: "litellm.ContextWindowExceededError"}
  - model_name: mock-500
    litellm_params: {model: openai/mock-500, api_key: sk-not-used, mock_response: "litellm.InternalServerError"}
  - model_name: mock-slow
    litellm_params: {model: openai/mock-slow, api_key: sk-not-used, mock_response: "Slow hello.", mock_delay: 2}
  # waits `timeout` seconds, then answers 408
  - model_name: mock-timeout
    litellm_params: {model: openai/mock-timeout, api_key: sk-not-used, mock_timeout: true, timeout: 1}
  - {model_name: scripted-429, litellm_params: {model: scripted/429}}
  - {model_name: scripted-tool, litellm_params: {model: scripted/tool}}
  - {model_name: scripted-midstream, litellm_params: {model: scripted/midstream}}
router_settings:
  num_retries: 0          # the proxy must not retry: the tests count every attempt
  disable_cooldowns: true # and must not skip a model that failed before
litellm_settings:
  num_retries: 0
  request_timeout: 600
  custom_provider_map:
    - {provider: scripted, custom_handler: scripted_provider.scripted}
"""

# Test code the proxy loads from the config's directory: only what the built-in mocks
# cannot do (a 429 carrying Retry-After, streamed tool calls, an error mid-stream).
SCRIPTED_PROVIDER_PY = """\
import asyncio

import litellm
from litellm import CustomLLM

RETRY_AFTER = "1"


def _kind(kwargs):
    return str(kwargs.get("model", "")).rsplit("/", 1)[-1]


def _rate_limited(kwargs):
    return litellm.RateLimitError(message="scripted rate limit", llm_provider="scripted",
                                  model=str(kwargs.get("model")), headers={"retry-after": RETRY_AFTER})


def _chunk(text="", finish_reason="", tool_use=None, usage=None):
    return {"text": text, "tool_use": tool_use, "is_finished": bool(finish_reason),
            "finish_reason": finish_reason, "usage": usage, "index": 0}


class Scripted(CustomLLM):
    async def acompletion(self, *args, **kwargs):
        if _kind(kwargs) == "429":
            raise _rate_limited(kwargs)
        raise litellm.BadRequestError(message="scripted models other than 429 only stream", llm_provider="scripted",
                                      model=str(kwargs.get("model")))

    async def astreaming(self, *args, **kwargs):
        kind = _kind(kwargs)
        if kind == "429":
            raise _rate_limited(kwargs)
        if kind == "tool":
            yield _chunk(tool_use={"id": "call_mock_1", "type": "function", "index": 0,
                                   "function": {"name": "get_weather", "arguments": '{"city": '}})
            yield _chunk(tool_use={"id": None, "type": "function", "index": 0,
                                   "function": {"name": None, "arguments": '"Paris"}'}})
            yield _chunk(finish_reason="tool_calls",
                         usage={"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18})
            return
        yield _chunk(text="partial ")
        await asyncio.sleep(0.05)
        raise litellm.InternalServerError(message="scripted failure mid-stream", llm_provider="scripted",
                                          model=str(kwargs.get("model")))


scripted = Scripted()
"""

# Runs the proxy's own command line (litellm.proxy.proxy_cli:run_server) under an audit
# hook that refuses to resolve or connect to anything but loopback, and notes each refusal.
LAUNCHER_PY = """\
import os
import socket
import sys

BLOCKED_LOG = os.environ["AGENTLANES_BLOCKED_LOG"]
LOOPBACK = {"127.0.0.1", "::1", "localhost", "localhost.localdomain", "ip6-localhost"}
SELF_CHECK = "agentlanes-guard-self-check.invalid"


def _host(value):
    return value.decode("ascii", "replace") if isinstance(value, (bytes, bytearray)) else value


def guard(event, args):
    if event == "socket.getaddrinfo":
        host = _host(args[0])
    elif event == "socket.connect" and isinstance(args[1], tuple):
        host = _host(args[1][0])
    else:
        return
    if host in (None, "") or host in LOOPBACK or str(host).startswith("127."):
        return
    if host == SELF_CHECK:
        raise PermissionError("refused, as it must be")
    with open(BLOCKED_LOG, "a") as log:
        log.write(f"{event} {host!r}\\n")
    raise PermissionError(f"agentlanes test proxy: no network beyond loopback ({event} {host!r})")


sys.addaudithook(guard)
try:
    socket.getaddrinfo(SELF_CHECK, 443)
except PermissionError:
    pass
else:
    sys.exit("the loopback guard did not refuse a lookup; the proxy is not started")
from litellm.proxy.proxy_cli import run_server  # noqa: E402

sys.argv[0] = "litellm"
run_server()
"""

# Values that could point the proxy at a database, a cache, a remote config, an HTTP proxy
# or a key are never passed on: the proxy gets only what it needs.
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ")


class ProxyUnavailable(Exception):
    """The proxy's virtualenv could not be made or the proxy did not start."""


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no output)"
    return "\n".join(text.splitlines()[-lines:])


def _stamp() -> str:
    digest = hashlib.sha256(CONSTRAINTS.read_bytes()).hexdigest()
    return f"{REQUIREMENT}\nconstraints sha256:{digest}\npython {sys.version_info[0]}.{sys.version_info[1]}\n"


@contextlib.contextmanager
def _locked(venv: Path) -> Iterator[None]:
    key = hashlib.sha256(str(venv).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"agentlanes-litellm-{key}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_venv(venv: Path = VENV, *, announce: Any = None) -> tuple[Path, str]:
    """The proxy's ``python``, creating ``venv`` first when it is missing or was made from
    other pins; returns it with what happened (``"reused"`` or ``"installed in N s"``)."""
    python = venv / "bin" / "python"
    stamp = venv / "agentlanes-stamp.txt"
    with _locked(venv):
        made = python.is_file() and (venv / "bin" / "litellm").is_file()  # is_file(): its interpreter still exists
        if made and stamp.is_file() and stamp.read_text() == _stamp():
            return python, "reused"
        if announce is not None:
            announce(f"installing {REQUIREMENT} into {venv} (first run only; 1-3 minutes)")
        started = time.monotonic()
        shutil.rmtree(venv, ignore_errors=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        log = venv.parent / f"{venv.name}-install.log"
        steps = [
            [sys.executable, "-m", "venv", str(venv)],
            [str(python), "-m", "pip", "install", "--progress-bar", "off", REQUIREMENT, "-c", str(CONSTRAINTS)],
        ]
        with log.open("wb") as out:
            for step in steps:
                try:
                    code = subprocess.run(
                        step, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=INSTALL_TIMEOUT
                    ).returncode
                except (OSError, subprocess.TimeoutExpired) as exc:
                    code, out_note = -1, f" ({exc})"
                else:
                    out_note = ""
                if code != 0:
                    out.flush()
                    raise ProxyUnavailable(
                        f"Could not create the LiteLLM proxy's virtualenv {venv}: `{' '.join(step[:4])} ...` "
                        f"exited with {code}{out_note}. Its last lines ({log}):\n{_tail(log)}\n"
                        f"The adapter tests in tests/servers need {REQUIREMENT} from the package index; fix "
                        "the index or network access, then run `python -m tests.servers.litellm_proxy prepare`."
                    )
        if not (venv / "bin" / "litellm").is_file():
            raise ProxyUnavailable(f"pip installed {REQUIREMENT} into {venv}, but there is no bin/litellm; see {log}.")
        stamp.write_text(_stamp())
        log.unlink(missing_ok=True)
        return python, f"installed in {time.monotonic() - started:.0f} s"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LiteLLMProxy:
    """One proxy process on a free 127.0.0.1 port (see the module docstring)."""

    def __init__(self, python: Path, workdir: Path) -> None:
        self.python = python
        self.workdir = workdir
        self.port = free_port()
        self.master_key = "sk-agentlanes-test-" + secrets.token_hex(16)
        self.root_url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.root_url + "/v1"
        self.log_path = workdir / "proxy.log"
        self.blocked_log = workdir / "blocked-connections.log"
        self.started_in: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def _env(self) -> dict[str, str]:
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        env.update(
            HOME=str(self.workdir),
            PYTHONUNBUFFERED="1",
            PYTHON_DOTENV_DISABLED="1",  # litellm loads a .env from any directory above itself
            LITELLM_MASTER_KEY=self.master_key,
            LITELLM_LOCAL_MODEL_COST_MAP="True",  # else it fetches the model cost map from GitHub
            LITELLM_TELEMETRY_DISABLED="true",
            LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS="true",
            LITELLM_LOCAL_POLICY_TEMPLATES="true",
            LITELLM_LOCAL_BLOG_POSTS="true",
            LITELLM_LOCAL_AUTOROUTER_PRESETS="true",
            AGENTLANES_BLOCKED_LOG=str(self.blocked_log),
        )
        return env

    def start(self, timeout: float = START_TIMEOUT) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "config.yaml").write_text(CONFIG_YAML)
        (self.workdir / "scripted_provider.py").write_text(SCRIPTED_PROVIDER_PY)
        (self.workdir / "launch_proxy.py").write_text(LAUNCHER_PY)
        self.blocked_log.write_text("")
        command = [
            str(self.python),
            str(self.workdir / "launch_proxy.py"),
            "--config",
            str(self.workdir / "config.yaml"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--num_workers",
            "1",
        ]
        started = time.monotonic()
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() can end all of it, and only it
            )
        while time.monotonic() - started < timeout:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise ProxyUnavailable(
                    f"The LiteLLM proxy exited with {code} while starting. Its last lines ({self.log_path}):\n"
                    f"{_tail(self.log_path)}"
                )
            if self._ready():
                self.started_in = time.monotonic() - started
                return
            time.sleep(0.2)
        self.stop()
        raise ProxyUnavailable(
            f"The LiteLLM proxy did not answer on {self.root_url} within {timeout:g} s. Its last lines "
            f"({self.log_path}):\n{_tail(self.log_path)}"
        )

    def _ready(self) -> bool:
        try:
            status, _, _ = self.get("/health/liveliness")
            if status != 200:
                return False
            status, _, _ = self.get("/v1/models")
        except OSError:
            return False
        return status == 200

    def warm_up(self) -> None:
        """The first requests pay for lazy imports: make them before any test does."""
        body: dict[str, Any] = {"model": "mock-chat", "messages": [{"role": "user", "content": "warm up"}]}
        status, _, reply = self.post(body)
        if status != 200:
            raise ProxyUnavailable(f"The LiteLLM proxy's warm-up request failed with HTTP {status}: {reply!r}.")
        self.stream(body)
        self.stream({**body, "model": "scripted-tool"})

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the group start() made for it
                proc.wait()

    def blocked(self) -> list[str]:
        """Connections beyond loopback the proxy tried (and was refused)."""
        return self.blocked_log.read_text().splitlines()

    def chat_statuses(self) -> list[int]:
        """The status of every POST /v1/chat/completions so far, from the proxy's access log."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if '"POST /v1/chat/completions HTTP/1.1"' in line:
                out.append(int(line.rsplit('HTTP/1.1"', 1)[1].split()[0]))
        return out

    def statuses_after(self, mark: int, count: int, wait: float = 5.0) -> list[int]:
        """The statuses logged after the first ``mark`` ones, once ``count`` have arrived
        (uvicorn writes a line as it answers, so allow it a moment)."""
        deadline = time.monotonic() + wait
        while True:
            seen = self.chat_statuses()[mark:]
            if len(seen) >= count or time.monotonic() > deadline:
                time.sleep(0.2)  # one more look: a stray extra request must show
                return self.chat_statuses()[mark:]
            time.sleep(0.05)

    # Raw HTTP, for what the proxy itself sends (the tests compare the adapter with it).

    def _open(self, request: urllib.request.Request, timeout: float) -> tuple[int, dict[str, str], bytes]:
        request.add_header("Authorization", f"Bearer {self.master_key}")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=timeout) as response:
                return response.status, dict(response.headers.items()), response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, dict[str, str], Any]:
        status, headers, raw = self._open(urllib.request.Request(self.root_url + path), timeout)
        return status, headers, raw

    def post(self, body: dict[str, Any], timeout: float = 30.0) -> tuple[int, dict[str, str], Any]:
        """``(status, lower-cased headers, parsed JSON body)`` of a chat completion."""
        request = urllib.request.Request(
            self.base_url + "/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        status, headers, raw = self._open(request, timeout)
        return status, {k.lower(): v for k, v in headers.items()}, json.loads(raw)

    def stream(self, body: dict[str, Any], timeout: float = 30.0) -> list[Any]:
        """The parsed ``data:`` events of a streamed chat completion (``"[DONE]"`` kept)."""
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        status, _, raw = self._open(
            urllib.request.Request(
                self.base_url + "/chat/completions",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            ),
            timeout,
        )
        if status != 200:
            raise AssertionError(f"streamed {body['model']}: HTTP {status}: {raw[:500]!r}")
        events: list[Any] = []
        for line in raw.decode().splitlines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                events.append(data if data == "[DONE]" else json.loads(data))
        return events


def main(argv: list[str]) -> int:
    if argv != ["prepare"]:
        print("usage: python -m tests.servers.litellm_proxy prepare", file=sys.stderr)
        return 2
    try:
        _, what = ensure_venv(announce=print)
    except ProxyUnavailable as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"LiteLLM proxy virtualenv {VENV}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
