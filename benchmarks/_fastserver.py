"""A tiny, fast OpenAI-compatible chat server for the benchmarks, run as its own process.

``POST .../chat/completions`` answers a canned completion (with ``usage``) at once; with
``"stream": true`` it answers server-sent events: a role chunk, a few content chunks, a
finish chunk, a usage chunk (``choices: []``) and ``[DONE]``, each its own HTTP chunk.
Anything else gets a 404. HTTP/1.1 with keep-alive, parsed by hand on an asyncio
protocol (uvloop when installed): it spends a few tens of microseconds of its own CPU per
request, so the client process under test is what limits throughput.

Run alone: ``python benchmarks/_fastserver.py [--port N]`` prints ``READY <port>`` once it
listens. From a benchmark: ``with FastServer() as base_url: ...`` starts it as a
subprocess on 127.0.0.1 with a free port, waits until it answers, and stops it after.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

TEXT = ["The ", "answer ", "is ", "ok."]
USAGE = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}


def _completion() -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(TEXT)},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": USAGE,
    }
    data = json.dumps(body, separators=(",", ":")).encode()
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: " + str(len(data)).encode() + b"\r\n\r\n"
    )
    return head + data


def _chunk(payload: bytes) -> bytes:
    return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"


def _stream_parts() -> list[bytes]:
    base: dict[str, Any] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "bench-model",
    }
    events: list[dict[str, Any]] = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    ]
    events += [
        {**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]} for piece in TEXT
    ]
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events.append({**base, "choices": [], "usage": USAGE})
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    parts = [head + _chunk(b"data: " + json.dumps(events[0], separators=(",", ":")).encode() + b"\n\n")]
    parts += [_chunk(b"data: " + json.dumps(e, separators=(",", ":")).encode() + b"\n\n") for e in events[1:]]
    parts.append(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    return parts


COMPLETION = _completion()
STREAM = _stream_parts()
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


class _Http(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else len(head)])
            elif b"\r\ntransfer-encoding:" in head:  # no client here sends it
                self.transport.write(b"HTTP/1.1 411 Length Required\r\ncontent-length: 0\r\n\r\n")
                self.transport.close()
                return
            if len(buffer) < end + 4 + length:
                return
            body = bytes(buffer[end + 4 : end + 4 + length])
            del buffer[: end + 4 + length]
            self.respond(head, body)

    def respond(self, head: bytes, body: bytes) -> None:
        line = head[: head.find(b"\r\n")] if b"\r\n" in head else head
        if not line.startswith(b"post ") or b"/chat/completions" not in line:
            self.transport.write(NOT_FOUND)
            return
        try:
            stream = json.loads(body).get("stream") is True
        except ValueError:
            self.transport.write(NOT_FOUND)
            return
        if stream:
            self.transport.writelines(STREAM)
        else:
            self.transport.write(COMPLETION)


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Http, "127.0.0.1", port, backlog=1024)
    print("READY", server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    port = int(sys.argv[sys.argv.index("--port") + 1]) if "--port" in sys.argv else 0
    try:
        import uvloop  # type: ignore[import-not-found]

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(_serve(port))


@contextmanager
def FastServer(timeout: float = 20.0) -> Iterator[str]:
    """Start the server as a subprocess on 127.0.0.1 (a free port, chosen by the kernel),
    wait until it answers a TCP connection, yield its ``/v1`` base URL, stop it after."""
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "READY":
            raise RuntimeError(f"the benchmark server did not start (exit code {proc.poll()}, said {line!r})")
        port = int(line[1])
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
