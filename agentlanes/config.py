"""Lanes bound to endpoints from a file: which model, server and key serve each lane.

A TOML file with one array of tables per lane; a lane's tables are its models in
preference order (the fallback order)::

    [[lanes.standard]]
    model = "gpt-4.1-mini"
    base_url = "http://127.0.0.1:8000/v1"
    api_key_env = "OPENAI_API_KEY"   # optional: the key is read from this variable
    timeout = 60                     # optional: seconds per request

    [[lanes.high-end]]
    model = "gpt-4.1"
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_API_KEY"

Keys of a table: ``model`` (required), ``base_url``, ``api_key_env``, ``timeout``,
``provider`` (a label for spans and health tracking), ``max_tokens_field``. Used by
:meth:`agentlanes.Lanes.from_config`, ``agentlanes demo --models PATH`` and checked by
``agentlanes validate PATH``. Keys are read from the environment when the file is
loaded and never appear in errors, logs or spans.
"""

from __future__ import annotations

import math
import os
import tomllib
from pathlib import Path
from typing import Any

from agentlanes.errors import ConfigurationError
from agentlanes.lanes import RANK, lane_list

__all__ = ["MAX_CONFIG_BYTES", "load_models", "read_models_file"]

MAX_CONFIG_BYTES = 1024 * 1024
_KEYS = {"model", "base_url", "api_key_env", "timeout", "provider", "max_tokens_field"}


def _read(path: Path) -> dict[str, Any]:
    from agentlanes.tracefile import TraceError, read_lines

    try:
        text = "\n".join(read_lines(path, limit=MAX_CONFIG_BYTES))
    except TraceError as exc:
        message = str(exc)
        if "more than a trace may be" in message or "grew past" in message:
            message = f"{path} is larger than a models file may be ({MAX_CONFIG_BYTES} bytes); pass the models file."
        for theirs, ours in (
            ("a trace agentlanes wrote", "a models file"),
            ("OTLP/JSON", "a models file (TOML)"),
            ("No trace at", "No models file at"),
        ):
            message = message.replace(theirs, ours)
        raise ConfigurationError(message) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path} is not valid TOML ({exc}); see the example in `agentlanes.config`.") from None


def read_models_file(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """The lanes a models file binds, checked (each lane's tables, in order), without
    reading any key."""
    path = Path(path)
    data = _read(path)
    unknown = sorted(set(data) - {"lanes"})
    if unknown:
        raise ConfigurationError(
            f"{path}: unknown top-level key(s) {', '.join(map(repr, unknown))}; a models file has only "
            "[[lanes.<lane>]] tables."
        )
    lanes = data.get("lanes")
    if not isinstance(lanes, dict) or not lanes:
        raise ConfigurationError(
            f'{path} binds no lane; add tables such as [[lanes.standard]] with model = "..." (lanes: {lane_list()}).'
        )
    out: dict[str, list[dict[str, Any]]] = {}
    for lane, tables in lanes.items():
        if lane not in RANK:
            raise ConfigurationError(f"{path}: [[lanes.{lane}]]: {lane!r} is not a lane (lanes: {lane_list()}).")
        if lane == "no-model":
            raise ConfigurationError(f"{path}: [[lanes.no-model]]: the no-model lane runs code, it takes no model.")
        if isinstance(tables, dict):
            raise ConfigurationError(
                f"{path}: [lanes.{lane}] must be an array of tables: write [[lanes.{lane}]] (double brackets)."
            )
        for i, table in enumerate(tables):
            where = f"{path}: [[lanes.{lane}]] #{i + 1}"
            if not isinstance(table, dict):
                raise ConfigurationError(f"{where} is not a table.")
            bad = sorted(set(table) - _KEYS)
            if bad:
                raise ConfigurationError(
                    f"{where}: unknown key(s) {', '.join(map(repr, bad))} (keys: {', '.join(sorted(_KEYS))})."
                )
            model = table.get("model")
            if not isinstance(model, str) or not model.strip():
                raise ConfigurationError(f'{where} needs model = "<the server\'s model name>".')
            for key in ("base_url", "api_key_env", "provider"):
                if key in table and (not isinstance(table[key], str) or not table[key]):
                    raise ConfigurationError(f"{where}: {key} must be a non-empty string.")
            if "base_url" in table and not table["base_url"].startswith(("http://", "https://")):
                raise ConfigurationError(f"{where}: base_url must be an http:// or https:// URL.")
            timeout = table.get("timeout")
            if timeout is not None and (
                isinstance(timeout, bool)
                or not isinstance(timeout, (int, float))
                or not math.isfinite(timeout)
                or timeout <= 0
            ):
                raise ConfigurationError(f"{where}: timeout must be a positive number of seconds, got {timeout!r}.")
            field = table.get("max_tokens_field")
            if field is not None and field not in ("max_tokens", "max_completion_tokens"):
                raise ConfigurationError(f"{where}: max_tokens_field must be max_tokens or max_completion_tokens.")
        out[lane] = list(tables)
    return out


def load_models(path: str | Path, *, environ: dict[str, str] | None = None) -> dict[str, list[Any]]:
    """The models a models file binds, per lane: ``OpenAIChatModel`` s with their keys
    read from the environment (``agentlanes[openai]``)."""
    lanes = read_models_file(path)
    env = os.environ if environ is None else environ
    try:
        from agentlanes.models.openai import OpenAIChatModel
    except ImportError:
        raise ConfigurationError(
            f"{path} binds lanes to OpenAI-compatible servers, which needs the 'openai' extra: "
            "pip install 'agentlanes[openai]'."
        ) from None
    out: dict[str, list[Any]] = {}
    for lane, tables in lanes.items():
        for i, table in enumerate(tables):
            key = None
            variable = table.get("api_key_env")
            if variable is not None:
                key = env.get(variable)
                if not key:
                    raise ConfigurationError(
                        f"{path}: [[lanes.{lane}]] #{i + 1} reads its key from ${variable}, which is not set; set it "
                        "(or remove api_key_env for a server that needs no key)."
                    )
            out.setdefault(lane, []).append(
                OpenAIChatModel(
                    table["model"],
                    base_url=table.get("base_url"),
                    api_key=key,
                    provider=table.get("provider"),
                    timeout=float(table.get("timeout", 60.0)),
                    max_tokens_field=table.get("max_tokens_field", "max_tokens"),
                )
            )
    return out
