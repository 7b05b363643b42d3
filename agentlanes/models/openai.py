"""Any OpenAI-compatible chat server (OpenAI, vLLM, Ollama, llama.cpp server, LM Studio,
a LiteLLM proxy), through the official ``openai`` async client.

Install with ``pip install 'agentlanes[openai]'``.
"""

from __future__ import annotations

import email.utils
import hashlib
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from agentlanes.errors import ConfigurationError
from agentlanes.models.base import (
    Message,
    Model,
    ModelResponse,
    ModelSettings,
    ProviderError,
    Usage,
    check_requests_allowed,
    estimate_tokens,
)

try:
    import openai
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("OpenAIChatModel needs the 'openai' package: pip install 'agentlanes[openai]'") from exc

__all__ = ["OpenAIChatModel"]

_CLIENTS: dict[tuple[str, str], openai.AsyncOpenAI] = {}


def _client(base_url: str | None, api_key: str | None, timeout: float) -> openai.AsyncOpenAI:
    """One client per base URL and credentials, reused (connection pooling)."""
    key = (base_url or "", hashlib.sha256((api_key or "").encode()).hexdigest())
    client = _CLIENTS.get(key)
    if client is None:
        # agentlanes retries (with reservations per attempt); the client must not.
        client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "not-needed", max_retries=0, timeout=timeout)
        _CLIENTS[key] = client
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
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return None if parsed is None else max(0.0, parsed.timestamp() - time.time())


class OpenAIChatModel(Model):
    """A chat model on an OpenAI-compatible server.

    Args:
        model: the server's model name, e.g. ``"gpt-4o-mini"`` or ``"llama3.2:1b"``.
        base_url: the server's ``/v1`` URL (OpenAI's when omitted).
        api_key: the key (``OPENAI_API_KEY`` is *not* read implicitly when a
            ``base_url`` is given; pass what the server needs).
        provider: a label for health tracking and telemetry (default: the host).
        timeout: seconds for one HTTP request.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        provider: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        if not model:
            raise ConfigurationError("OpenAIChatModel needs a model name, e.g. OpenAIChatModel('gpt-4o-mini').")
        self.name = model
        self.provider = provider or ((urlsplit(base_url).hostname or base_url) if base_url else "openai")
        self._client = _client(base_url, api_key, timeout)

    async def request(self, messages: Sequence[Message], settings: ModelSettings) -> ModelResponse:
        check_requests_allowed(self)
        kwargs: dict[str, Any] = {
            "model": self.name,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": settings.max_tokens,
        }
        if settings.temperature is not None:
            kwargs["temperature"] = settings.temperature
        if settings.timeout is not None:
            kwargs["timeout"] = settings.timeout
        try:
            completion = await self._client.chat.completions.create(**kwargs)
        except openai.RateLimitError as exc:
            raise ProviderError(
                f"{self.provider}: rate limited (429)",
                retryable=True,
                status=429,
                retry_after=_retry_after(exc.response),
            ) from exc
        except openai.APIStatusError as exc:
            status = exc.status_code
            retryable = status >= 500 or status in (408, 409)
            raise ProviderError(
                f"{self.provider}: HTTP {status}",
                retryable=retryable,
                status=status,
                retry_after=_retry_after(exc.response),
            ) from exc
        except openai.APITimeoutError as exc:
            raise ProviderError(f"{self.provider}: timed out", retryable=True) from exc
        except openai.APIConnectionError as exc:
            raise ProviderError(f"{self.provider}: connection failed", retryable=True) from exc
        except (openai.APIResponseValidationError, ValueError, TypeError, KeyError) as exc:
            raise ProviderError(f"{self.provider}: malformed response body", retryable=True) from exc
        return self._parse(completion, messages)

    def _parse(self, completion: Any, messages: Sequence[Message]) -> ModelResponse:
        choices = getattr(completion, "choices", None)
        if not choices:
            raise ProviderError(f"{self.provider}: response has no choices", retryable=True)
        content = getattr(getattr(choices[0], "message", None), "content", None)
        if not isinstance(content, str):
            raise ProviderError(f"{self.provider}: response has no message text", retryable=True)
        usage = getattr(completion, "usage", None)
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        completion_tokens = getattr(usage, "completion_tokens", None)
        if isinstance(prompt_tokens, int) and isinstance(completion_tokens, int):
            return ModelResponse(
                content, Usage(prompt_tokens, completion_tokens), str(getattr(completion, "model", None) or self.name)
            )
        estimated = Usage(sum(estimate_tokens(m.content) for m in messages), estimate_tokens(content))
        return ModelResponse(
            content, estimated, str(getattr(completion, "model", None) or self.name), usage_estimated=True
        )
