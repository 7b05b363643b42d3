"""Any OpenAI-compatible chat server (OpenAI, vLLM, Ollama, llama.cpp server, LM Studio,
a LiteLLM proxy), through the official ``openai`` async client.

Install with ``pip install 'agentlanes[openai]'``. Carries messages with tool calls and
tool results, tool definitions and ``tool_choice``, structured output (a JSON schema
response format), per-call settings, and streaming (text and tool-call deltas, usage at
the end).
"""

from __future__ import annotations

import email.utils
import hashlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from anyio.lowlevel import RunVar

from agentlanes.errors import ConfigurationError
from agentlanes.models._wire import request_body, response_from_completion
from agentlanes.models.base import (
    Message,
    Model,
    ModelResponse,
    ModelSettings,
    ProviderError,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    check_requests_allowed,
    estimate_input_tokens,
    estimate_tokens,
)

try:
    import openai
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("OpenAIChatModel needs the 'openai' package: pip install 'agentlanes[openai]'") from exc

__all__ = ["OpenAIChatModel"]

# One client per event loop, base URL and credentials: a client's connection pool
# belongs to the loop that opened it, so a second ``asyncio.run()`` gets clients of its own.
_CLIENTS: RunVar[dict[tuple[str, str], openai.AsyncOpenAI]] = RunVar("agentlanes_openai_clients")


def _client(base_url: str | None, api_key: str | None) -> openai.AsyncOpenAI:
    try:
        clients = _CLIENTS.get()
    except LookupError:
        clients = {}
        _CLIENTS.set(clients)
    key = (base_url or "", hashlib.sha256((api_key or "").encode()).hexdigest())
    client = clients.get(key)
    if client is None:
        # agentlanes retries (with reservations per attempt); the client must not.
        client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "not-needed", max_retries=0)
        clients[key] = client
    return client


def _retry_after(response: Any) -> float | None:
    # Duck-typed: the openai client's HTTP stack differs between its releases.
    headers: Mapping[str, str] | None = getattr(response, "headers", None)
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value) if value else None
        except (TypeError, ValueError):
            return None
        return None if parsed is None else max(0.0, parsed.timestamp() - time.time())


def _server_message(exc: Any) -> str | None:
    """What the server said about an error (its ``error.message``), if it said."""
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        error = body.get("error", body)
        message = error.get("message") if isinstance(error, Mapping) else error
        if isinstance(message, str) and message.strip():
            return message.strip()[:2000]
    message = getattr(exc, "message", None)
    return message.strip()[:2000] if isinstance(message, str) and message.strip() else None


class OpenAIChatModel(Model):
    """A chat model on an OpenAI-compatible server.

    Args:
        model: the server's model name, e.g. ``"gpt-4o-mini"`` or ``"llama3.2:1b"``.
        base_url: the server's ``/v1`` URL (OpenAI's when omitted).
        api_key: the key (``OPENAI_API_KEY`` is *not* read implicitly when a
            ``base_url`` is given; pass what the server needs).
        provider: a label for health tracking and telemetry (default: the host).
        timeout: seconds for one request (a call's own ``ModelSettings.timeout`` wins).
        max_tokens_field: the request field that limits output: ``max_tokens`` (most
            servers) or ``max_completion_tokens`` (OpenAI's newer models).
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        provider: str | None = None,
        timeout: float = 60.0,
        max_tokens_field: str = "max_tokens",
    ) -> None:
        if not model:
            raise ConfigurationError("OpenAIChatModel needs a model name, e.g. OpenAIChatModel('gpt-4o-mini').")
        if not timeout > 0:
            raise ConfigurationError(f"OpenAIChatModel timeout must be positive seconds, got {timeout!r}.")
        if max_tokens_field not in ("max_tokens", "max_completion_tokens"):
            raise ConfigurationError(
                f"max_tokens_field must be 'max_tokens' or 'max_completion_tokens', got {max_tokens_field!r}."
            )
        self.name = model
        self.provider = provider or ((urlsplit(base_url).hostname or base_url) if base_url else "openai")
        self.base_url = base_url
        self.timeout = timeout
        self.max_tokens_field = max_tokens_field
        self._api_key = api_key

    @property
    def client(self) -> openai.AsyncOpenAI:
        """The ``openai`` client this model sends with (one per event loop)."""
        return _client(self.base_url, self._api_key)

    def _kwargs(self, messages: Sequence[Message], settings: ModelSettings) -> dict[str, Any]:
        kwargs = request_body(self.name, messages, settings, max_tokens_field=self.max_tokens_field)
        kwargs["timeout"] = settings.timeout or self.timeout
        if settings.extra:
            kwargs["extra_body"] = dict(settings.extra)
        return kwargs

    def _error(self, exc: Exception) -> ProviderError:
        if isinstance(exc, openai.RateLimitError):
            return ProviderError(
                f"{self.provider}: rate limited (429)",
                retryable=True,
                status=429,
                retry_after=_retry_after(exc.response),
                detail=_server_message(exc),
            )
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            return ProviderError(
                f"{self.provider}: HTTP {status}",
                retryable=status >= 500 or status in (408, 409),
                status=status,
                retry_after=_retry_after(exc.response),
                detail=_server_message(exc),
            )
        if isinstance(exc, openai.APITimeoutError):
            return ProviderError(f"{self.provider}: timed out", retryable=True)
        if isinstance(exc, openai.APIConnectionError):
            return ProviderError(f"{self.provider}: connection failed", retryable=True)
        if isinstance(exc, openai.APIError):  # e.g. an error event in a stream
            return ProviderError(
                f"{self.provider}: the server reported an error", retryable=True, detail=_server_message(exc)
            )
        return ProviderError(f"{self.provider}: malformed response body", retryable=True)

    async def request(self, messages: Sequence[Message], settings: ModelSettings) -> ModelResponse:
        check_requests_allowed(self)
        try:
            completion = await self.client.chat.completions.create(**self._kwargs(messages, settings))
        except (openai.APIError, ValueError, TypeError, KeyError) as exc:
            raise self._error(exc) from exc
        try:
            response, reported = response_from_completion(completion, self.name)
        except (ValueError, TypeError, AttributeError) as exc:
            raise ProviderError(f"{self.provider}: malformed response ({exc})", retryable=True) from exc
        if reported:
            return response
        estimated = Usage(estimate_input_tokens(messages, settings), estimate_tokens(response.text or " "))
        return ModelResponse(
            response.text,
            estimated,
            response.model_name,
            True,
            response.tool_calls,
            response.finish_reason,
            response.response_id,
        )

    async def stream(self, messages: Sequence[Message], settings: ModelSettings) -> AsyncIterator[Any]:
        check_requests_allowed(self)
        kwargs = self._kwargs(messages, settings)
        kwargs["stream"] = True
        kwargs["stream_options"] = {"include_usage": True}
        try:
            chunks = await self.client.chat.completions.create(**kwargs)
        except (openai.APIError, ValueError, TypeError, KeyError) as exc:
            raise self._error(exc) from exc
        text: list[str] = []
        calls: dict[int, list[str | None]] = {}
        usage: Usage | None = None
        finish: str | None = None
        model_name, response_id = self.name, None
        try:
            async for chunk in chunks:
                model_name = getattr(chunk, "model", None) or model_name
                response_id = getattr(chunk, "id", None) or response_id
                raw_usage = getattr(chunk, "usage", None)
                if raw_usage is not None and isinstance(getattr(raw_usage, "prompt_tokens", None), int):
                    details = getattr(raw_usage, "prompt_tokens_details", None)
                    cached = getattr(details, "cached_tokens", None) if details is not None else None
                    usage = Usage(raw_usage.prompt_tokens, raw_usage.completion_tokens or 0, cached or 0)
                for choice in getattr(chunk, "choices", None) or ():
                    finish = getattr(choice, "finish_reason", None) or finish
                    delta = getattr(choice, "delta", None)
                    if delta is None:
                        continue
                    content = getattr(delta, "content", None)
                    if isinstance(content, str) and content:
                        text.append(content)
                        yield TextDelta(content)
                    for call in getattr(delta, "tool_calls", None) or ():
                        index = call.index if isinstance(getattr(call, "index", None), int) else len(calls)
                        function = getattr(call, "function", None)
                        name = getattr(function, "name", None)
                        arguments = getattr(function, "arguments", None) or ""
                        slot = calls.setdefault(index, [None, None, ""])
                        if call.id:
                            slot[0] = call.id
                        if name:
                            slot[1] = name
                        slot[2] = (slot[2] or "") + arguments
                        yield ToolCallDelta(index, call.id, name, arguments)
        except (openai.APIError, ValueError, TypeError, KeyError) as exc:
            raise self._error(exc) from exc
        finally:
            await chunks.close()
        tool_calls = tuple(ToolCall(c[0] or f"call_{i}", c[1] or "", c[2] or "") for i, c in sorted(calls.items()))
        full = "".join(text)
        estimated = usage is None
        if usage is None:
            usage = Usage(estimate_input_tokens(messages, settings), estimate_tokens(full or " "))
        yield ModelResponse(full, usage, str(model_name), estimated, tool_calls, finish, response_id)
