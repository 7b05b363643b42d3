"""An OpenAI-compatible HTTP server on 127.0.0.1 for tests, scripted per request.

Each POST /v1/chat/completions takes the next scripted behaviour:
``{"reply": "text", "usage": [in, out]}``, ``{"status": 429, "headers": {...}}``,
``{"status": 500}``, ``{"delay": seconds, ...}``, ``{"raw": "not json"}``,
``{"body": {...}}`` (sent verbatim). When the script is empty it replies "ok".
GET /v1/models lists ``models``.
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
                    step = server.script.popleft() if server.script else {"reply": "ok"}
                if step.get("delay"):
                    time.sleep(step["delay"])
                if "raw" in step:
                    self._send(step.get("status", 200), step["raw"].encode())
                    return
                status = step.get("status", 200)
                if status != 200:
                    err = {"error": {"message": f"scripted {status}", "type": "server_error"}}
                    self._send(status, json.dumps(err).encode(), step.get("headers"))
                    return
                if "body" in step:
                    self._send(200, json.dumps(step["body"]).encode())
                    return
                usage = step.get("usage", [11, 7])
                body = {
                    "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
                    "model": payload.get("model", "test-model"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": step.get("reply", "ok")}}],
                }
                if usage is not None:
                    body["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                                     "total_tokens": usage[0] + usage[1]}
                self._send(200, json.dumps(body).encode())

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
