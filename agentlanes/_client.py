"""``StageContext.openai_client()``: an unchanged ``openai.AsyncOpenAI`` bound to a lane.

The client's HTTP transport is agentlanes: a ``POST /chat/completions`` the user's code
sends is read back into messages and settings, runs through the stage's call path
(routing's lane and model, reservation, retries, fallback, settlement, records, spans,
replay) and is answered as the server would have answered: a completion, or
server-sent chunks for ``stream=True``. The request's ``model`` is replaced by the lane's
model. What cannot be carried (other endpoints, images) is answered with a clear HTTP
error the client raises; so are agentlanes' own refusals (a budget that cannot hold the
call: 429 ``agentlanes_budget_exhausted``; no lane: 503 ``agentlanes_route_deferred``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any

from agentlanes._calls import call, open_stream
from agentlanes.errors import AgentLanesError, BudgetExhausted, ConfigurationError, ModelError, RouteDeferred
from agentlanes.models._wire import WireError, completion_body, completion_chunks, request_from_body

if TYPE_CHECKING:
    import httpx2

    from agentlanes.runtime import StageContext

__all__ = ["lane_client"]


def _error(status: int, code: str, message: str) -> httpx2.Response:
    import httpx2

    body = {"error": {"message": message, "type": "agentlanes_error", "param": None, "code": code}}
    return httpx2.Response(status, json=body)


def _status(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, BudgetExhausted):
        return 429, "agentlanes_budget_exhausted"
    if isinstance(exc, RouteDeferred):
        return 503, "agentlanes_route_deferred"
    if isinstance(exc, ModelError):
        cause = exc.__cause__
        status = getattr(cause, "status", None)
        return (status if isinstance(status, int) and status >= 400 else 502), "agentlanes_model_error"
    if isinstance(exc, ConfigurationError):
        return 400, "agentlanes_invalid_request"
    return 500, "agentlanes_error"


def lane_client(ctx: StageContext, **client_kwargs: Any) -> Any:
    """An ``openai.AsyncOpenAI`` whose chat completions run on ``ctx``'s lane."""
    try:
        import httpx2
        import openai
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ConfigurationError(
            "ctx.openai_client() needs the 'openai' package: pip install 'agentlanes[openai]'."
        ) from None

    class LaneTransport(httpx2.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            path = request.url.path.rstrip("/")
            if request.method != "POST" or not path.endswith("/chat/completions"):
                return _error(
                    404,
                    "agentlanes_unsupported_endpoint",
                    f"{request.method} {path}: a lane-bound client carries chat completions only "
                    "(POST /chat/completions); use your own client for other endpoints.",
                )
            try:
                body = json.loads(await request.aread())
                messages, settings, stream, include_usage = request_from_body(body)
            except (WireError, ValueError, RecursionError) as exc:
                message = str(exc) if isinstance(exc, WireError) else "the request body is not JSON"
                return _error(400, "agentlanes_invalid_request", message)
            response_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
            engine = ctx._engine
            if not stream:
                try:
                    response = await call(engine, ctx, messages, settings)
                except AgentLanesError as exc:
                    return _error(*_status(exc), str(exc))
                return httpx2.Response(200, json=completion_body(response, response_id))
            try:
                lane_stream = await open_stream(engine, ctx, messages, settings)
            except AgentLanesError as exc:
                return _error(*_status(exc), str(exc))
            model_name = ctx.model.name

            async def events() -> AsyncGenerator[bytes, None]:
                async with lane_stream:
                    for chunk in completion_chunks(None, response_id, model_name, include_usage):
                        yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
                    try:
                        async for event in lane_stream:
                            for chunk in completion_chunks(event, response_id, model_name, include_usage):
                                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
                    except AgentLanesError as exc:
                        _, code = _status(exc)
                        error = {"error": {"message": str(exc), "type": "agentlanes_error", "code": code}}
                        yield b"data: " + json.dumps(error).encode() + b"\n\n"
                        return
                    if lane_stream.response is not None:
                        last = completion_chunks(lane_stream.response, response_id, model_name, include_usage)
                        for chunk in last:
                            yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
                    yield b"data: [DONE]\n\n"

            class Body(httpx2.AsyncByteStream):
                def __init__(self) -> None:
                    self._events = events()

                async def __aiter__(self) -> AsyncIterator[bytes]:
                    async for piece in self._events:
                        yield piece

                async def aclose(self) -> None:
                    await self._events.aclose()

            return httpx2.Response(200, headers={"content-type": "text/event-stream"}, stream=Body())

    kwargs: dict[str, Any] = {
        "api_key": "agentlanes",
        "base_url": "http://lane.agentlanes.invalid/v1",
        "max_retries": 0,  # agentlanes retries (and falls back) under the client
        **client_kwargs,
        "http_client": httpx2.AsyncClient(transport=LaneTransport()),
    }
    return openai.AsyncOpenAI(**kwargs)
