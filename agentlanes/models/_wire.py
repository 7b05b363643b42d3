"""The OpenAI chat-completions wire format, both ways, as pure functions.

``OpenAIChatModel`` turns agentlanes' messages and settings into a request body and a
completion (or its chunks) back into a :class:`ModelResponse`; the lane-bound client of
``StageContext.openai_client()`` does the reverse: it reads a request body a user's own
``openai`` client sent and answers with a completion (or chunks). No I/O here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from agentlanes.errors import ConfigurationError
from agentlanes.models.base import (
    Message,
    ModelResponse,
    ModelSettings,
    ResponseFormat,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    Usage,
)

__all__ = [
    "WireError",
    "completion_body",
    "completion_chunks",
    "messages_to_wire",
    "request_body",
    "request_from_body",
    "response_from_completion",
]

_ROLES = ("system", "user", "assistant", "tool")
_KNOWN = {
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "stream",
    "stream_options",
    "timeout",
}


class WireError(ConfigurationError):
    """A request body that agentlanes cannot carry (the field, and why)."""


# --------------------------------------------------------------------- agentlanes -> wire


def messages_to_wire(messages: Sequence[Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        item: dict[str, Any] = {"role": m.role}
        if m.role == "assistant" and m.tool_calls:
            item["content"] = m.content or None
            item["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in m.tool_calls
            ]
        else:
            item["content"] = m.content
        if m.tool_call_id is not None:
            item["tool_call_id"] = m.tool_call_id
        if m.name is not None:
            item["name"] = m.name
        out.append(item)
    return out


def _tool_to_wire(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": dict(tool.parameters)}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


def _tool_choice_to_wire(choice: str) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}


def request_body(
    model: str, messages: Sequence[Message], settings: ModelSettings, *, max_tokens_field: str = "max_tokens"
) -> dict[str, Any]:
    """The chat-completions request for ``messages`` and ``settings``."""
    body: dict[str, Any] = {
        "model": model,
        "messages": messages_to_wire(messages),
        max_tokens_field: settings.max_tokens,
    }
    if settings.temperature is not None:
        body["temperature"] = settings.temperature
    if settings.top_p is not None:
        body["top_p"] = settings.top_p
    if settings.stop:
        body["stop"] = list(settings.stop)
    if settings.seed is not None:
        body["seed"] = settings.seed
    if settings.tools:
        body["tools"] = [_tool_to_wire(t) for t in settings.tools]
    if settings.tool_choice is not None:
        body["tool_choice"] = _tool_choice_to_wire(settings.tool_choice)
    if settings.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = settings.parallel_tool_calls
    if settings.response_format is not None:
        rf = settings.response_format
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": rf.name, "schema": dict(rf.schema), "strict": rf.strict},
        }
    return body


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _usage(raw: Any) -> Usage | None:
    prompt = _field(raw, "prompt_tokens")
    completion = _field(raw, "completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    details = _field(raw, "prompt_tokens_details")
    cached = _field(details, "cached_tokens") if details is not None else None
    return Usage(prompt, completion, cached if isinstance(cached, int) else 0)


def _calls(raw: Any) -> tuple[ToolCall, ...]:
    out = []
    for item in raw or ():
        function = _field(item, "function")
        name = _field(function, "name")
        if not isinstance(name, str):
            raise ValueError("a tool call has no function name")
        arguments = _field(function, "arguments") or ""
        out.append(
            ToolCall(
                str(_field(item, "id") or ""), name, arguments if isinstance(arguments, str) else json.dumps(arguments)
            )
        )
    return tuple(out)


def response_from_completion(completion: Any, fallback_model: str) -> tuple[ModelResponse, bool]:
    """The response a completion (object or dict) carries, and whether it reported
    usage. ``ValueError`` when it is not a completion."""
    choices = _field(completion, "choices")
    if not choices:
        raise ValueError("the response has no choices")
    choice = choices[0]
    message = _field(choice, "message")
    if message is None:
        raise ValueError("the response's choice has no message")
    content = _field(message, "content")
    if content is not None and not isinstance(content, str):
        raise ValueError("the message's content is not text")
    calls = _calls(_field(message, "tool_calls"))
    if content is None and not calls:
        refusal = _field(message, "refusal")
        if isinstance(refusal, str):
            content = refusal
        elif _field(choice, "finish_reason") not in ("length", "content_filter"):
            raise ValueError("the message has neither text nor tool calls")
    usage = _usage(_field(completion, "usage"))
    model = _field(completion, "model")
    response = ModelResponse(
        content or "",
        usage or Usage(),
        str(model or fallback_model),
        tool_calls=calls,
        finish_reason=_field(choice, "finish_reason"),
        response_id=_field(completion, "id"),
    )
    return response, usage is not None


# --------------------------------------------------------------------- wire -> agentlanes


def _text_content(value: Any, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for part in value:
            if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise WireError(
                    f"{where}: a content part of type {kind!r}; agentlanes carries text content only (send the "
                    "text, or call the server directly for images and audio)."
                )
        return "".join(texts)
    raise WireError(f"{where}: content must be text or a list of text parts.")


def _messages_from_wire(raw: Any) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise WireError("messages must be a non-empty list of message objects.")
    out = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, Mapping):
            raise WireError(f"{where} is not an object.")
        role = m.get("role")
        if role == "developer":
            role = "system"
        if role not in _ROLES:
            raise WireError(f"{where}.role is {role!r}; agentlanes carries {', '.join(_ROLES)} (and developer).")
        try:
            calls = _calls(m.get("tool_calls"))
        except (ValueError, TypeError, AttributeError):
            raise WireError(f"{where}.tool_calls is not a list of function calls.") from None
        tool_call_id = m.get("tool_call_id")
        name = m.get("name")
        out.append(
            Message(
                role,
                _text_content(m.get("content"), where),
                calls,
                tool_call_id if isinstance(tool_call_id, str) else None,
                name if isinstance(name, str) else None,
            )
        )
    return out


def _tools_from_wire(raw: Any) -> tuple[Tool, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise WireError("tools must be a list.")
    out = []
    for i, t in enumerate(raw):
        function = t.get("function") if isinstance(t, Mapping) else None
        if not isinstance(t, Mapping) or t.get("type") != "function" or not isinstance(function, Mapping):
            raise WireError(f"tools[{i}] is not a function tool; agentlanes carries function tools only.")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise WireError(f"tools[{i}].function has no name.")
        params = function.get("parameters")
        out.append(
            Tool(
                name,
                dict(params) if isinstance(params, Mapping) else {"type": "object", "properties": {}},
                function.get("description") if isinstance(function.get("description"), str) else None,
                function.get("strict") if isinstance(function.get("strict"), bool) else None,
            )
        )
    return tuple(out)


def _tool_choice_from_wire(raw: Any) -> str | None:
    if raw is None or raw in ("auto", "none", "required"):
        return raw  # type: ignore[no-any-return]
    if isinstance(raw, Mapping):
        name = (raw.get("function") or {}).get("name") if isinstance(raw.get("function"), Mapping) else None
        if isinstance(name, str):
            return name
    raise WireError(f"tool_choice {raw!r} is not auto, none, required or a function.")


def _format_from_wire(raw: Any) -> tuple[ResponseFormat | None, dict[str, Any]]:
    if raw is None:
        return None, {}
    if isinstance(raw, Mapping) and raw.get("type") == "json_schema" and isinstance(raw.get("json_schema"), Mapping):
        spec = raw["json_schema"]
        schema = spec.get("schema")
        if not isinstance(schema, Mapping):
            raise WireError("response_format.json_schema has no schema.")
        return ResponseFormat(dict(schema), str(spec.get("name") or "output"), bool(spec.get("strict", True))), {}
    if isinstance(raw, Mapping) and raw.get("type") in ("json_object", "text"):
        return None, {"response_format": dict(raw)}  # passed through unchanged
    raise WireError(f"response_format {raw!r} is not json_schema, json_object or text.")


def request_from_body(body: Any) -> tuple[list[Message], ModelSettings, bool, bool]:
    """``(messages, settings, stream, include_usage)`` from a chat-completions request
    body a user's client sent. Unknown fields go to ``settings.extra`` unchanged."""
    if not isinstance(body, Mapping):
        raise WireError("the request body is not a JSON object.")
    messages = _messages_from_wire(body.get("messages"))
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise WireError(f"max_tokens {max_tokens!r} is not a positive integer.")
    response_format, extra_format = _format_from_wire(body.get("response_format"))
    stop = body.get("stop")
    extra = {k: v for k, v in body.items() if k not in _KNOWN}
    extra.update(extra_format)
    settings = ModelSettings(
        max_tokens=max_tokens or 1024,
        temperature=body.get("temperature"),
        tools=_tools_from_wire(body.get("tools")),
        tool_choice=_tool_choice_from_wire(body.get("tool_choice")),
        response_format=response_format,
        top_p=body.get("top_p"),
        stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
        seed=body.get("seed"),
        parallel_tool_calls=body.get("parallel_tool_calls"),
        extra=extra,
    )
    options = body.get("stream_options")
    include_usage = isinstance(options, Mapping) and options.get("include_usage") is True
    return messages, settings, bool(body.get("stream")), include_usage


def _usage_to_wire(usage: Usage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }
    if usage.cached_input_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cached_input_tokens}
    return out


def _calls_to_wire(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls]


def completion_body(response: ModelResponse, response_id: str) -> dict[str, Any]:
    """A chat completion carrying ``response``."""
    message: dict[str, Any] = {"role": "assistant", "content": response.text or (None if response.tool_calls else "")}
    if response.tool_calls:
        message["tool_calls"] = _calls_to_wire(response.tool_calls)
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": response.model_name,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": response.finish_reason or ("tool_calls" if response.tool_calls else "stop"),
                "logprobs": None,
            }
        ],
        "usage": _usage_to_wire(response.usage),
    }


def completion_chunks(
    event: TextDelta | ToolCallDelta | ModelResponse | None, response_id: str, model: str, include_usage: bool
) -> list[dict[str, Any]]:
    """The chunks that carry one stream event (``None``: the opening chunk)."""
    base = {"id": response_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    if event is None:
        return [
            {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        ]
    if isinstance(event, TextDelta):
        return [{**base, "choices": [{"index": 0, "delta": {"content": event.text}, "finish_reason": None}]}]
    if isinstance(event, ToolCallDelta):
        call: dict[str, Any] = {"index": event.index, "function": {"arguments": event.arguments}}
        if event.id is not None:
            call["id"] = event.id
            call["type"] = "function"
        if event.name is not None:
            call["function"]["name"] = event.name
        return [{**base, "choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]}]
    finish = event.finish_reason or ("tool_calls" if event.tool_calls else "stop")
    chunks = [{**base, "model": event.model_name, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}]
    if include_usage:
        chunks.append({**base, "model": event.model_name, "choices": [], "usage": _usage_to_wire(event.usage)})
    return chunks
