"""An OpenAI-compatible HTTP server on 127.0.0.1 for tests, scripted per request.

Each POST /v1/chat/completions takes the next scripted behaviour:
``{"reply": "text", "usage": [in, out]}``, ``{"tool_calls": [[id, name, arguments]]}``
(with ``reply`` for content; ``finish`` sets finish_reason), ``{"status": 429,
"headers": {...}, "message": "..."}``, ``{"status": 500}``, ``{"delay": seconds, ...}``,
``{"raw": "not json"}``, ``{"body": {...}}`` (sent verbatim). A request with
``"stream": true`` is answered with server-sent chunks (``chunk_delay`` between them;
``break_after`` drops the connection after that many chunks). When the script is empty
it replies "ok". GET /v1/models lists ``models``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ScriptedOpenAIServer:
    def __init__(self, models: list[str] | None = None) -> None:
        self.script: deque[dict[str, Any]] = deque()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.models = models or ["test-model"]
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    body = {"object": "list", "data": [{"id": m, "object": "model"} for m in server.models]}
                    self._send(200, json.dumps(body).encode())
                else:
                    self._send(404, b'{"error": {"message": "not found"}}')

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                payload = json.loads(self.rfile.read(length) or b"{}")
                with server.lock:
                    server.requests.append(payload)
                    server.headers.append(dict(self.headers))
                    step = server.script.popleft() if server.script else {"reply": "ok"}
                if step.get("delay"):
                    time.sleep(step["delay"])
                if "raw" in step:
                    self._send(step.get("status", 200), step["raw"].encode())
                    return
                status = step.get("status", 200)
                if status != 200:
                    err = {"error": {"message": step.get("message", f"scripted {status}"), "type": "server_error"}}
                    self._send(status, json.dumps(err).encode(), step.get("headers"))
                    return
                if "body" in step:
                    self._send(200, json.dumps(step["body"]).encode())
                    return
                usage = step.get("usage", [11, 7])
                calls = [{"id": c[0], "type": "function", "function": {"name": c[1], "arguments": c[2]}}
                         for c in step.get("tool_calls", [])]
                content = step.get("reply", None if calls else "ok")
                finish = step.get("finish", "tool_calls" if calls else "stop")
                if payload.get("stream"):
                    self._stream(payload, step, content, calls, finish, usage)
                    return
                message: dict[str, Any] = {"role": "assistant", "content": content}
                if calls:
                    message["tool_calls"] = calls
                body = {
                    "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
                    "model": payload.get("model", "test-model"),
                    "choices": [{"index": 0, "finish_reason": finish, "message": message}],
                }
                if usage is not None:
                    body["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                                     "total_tokens": usage[0] + usage[1]}
                    if len(usage) > 2:
                        body["usage"]["prompt_tokens_details"] = {"cached_tokens": usage[2]}
                self._send(200, json.dumps(body).encode())

            def _stream(self, payload: dict[str, Any], step: dict[str, Any], content: str | None,
                        calls: list[dict[str, Any]], finish: str, usage: list[int] | None) -> None:
                base = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": int(time.time()),
                        "model": payload.get("model", "test-model")}
                chunks: list[dict[str, Any]] = [
                    {**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}]
                for piece in step.get("pieces", [content] if content else []):
                    chunks.append({**base, "choices": [{"index": 0, "delta": {"content": piece},
                                                        "finish_reason": None}]})
                for i, c in enumerate(calls):
                    args = c["function"]["arguments"]
                    half = len(args) // 2
                    chunks.append({**base, "choices": [{"index": 0, "finish_reason": None, "delta": {"tool_calls": [
                        {"index": i, "id": c["id"], "type": "function",
                         "function": {"name": c["function"]["name"], "arguments": args[:half]}}]}}]})
                    chunks.append({**base, "choices": [{"index": 0, "finish_reason": None, "delta": {"tool_calls": [
                        {"index": i, "function": {"arguments": args[half:]}}]}}]})
                chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
                wants_usage = (payload.get("stream_options") or {}).get("include_usage")
                if usage is not None and wants_usage:
                    chunks.append({**base, "choices": [], "usage": {
                        "prompt_tokens": usage[0], "completion_tokens": usage[1],
                        "total_tokens": usage[0] + usage[1]}})
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for i, chunk in enumerate(chunks):
                    if step.get("break_after") is not None and i >= step["break_after"]:
                        self.wfile.flush()
                        self.connection.shutdown(2)
                        return
                    self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                    self.wfile.flush()
                    if step.get("chunk_delay"):
                        time.sleep(step["chunk_delay"])
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> ScriptedOpenAIServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
