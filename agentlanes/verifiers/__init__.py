"""Verifiers, deterministic first.

A verifier is a small object with ``async verify(subject, context) -> VerifierResult``.
Deterministic ones (``CommandVerifier``, ``SchemaVerifier``, ``CallableVerifier``) run on
the ``no-model`` lane; ``ModelVerifier`` asks a model and runs only when no
deterministic verifier was given for the stage (it is routed like any other stage).
"""

from __future__ import annotations

import inspect
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel, TypeAdapter, ValidationError

from agentlanes.errors import ConfigurationError

__all__ = [
    "CallableVerifier",
    "CommandVerifier",
    "ModelVerifier",
    "SchemaVerifier",
    "Verifier",
    "VerifierResult",
    "VerifyContext",
    "result_body",
    "trim_lines",
]


@dataclass(frozen=True)
class VerifierResult:
    """One verifier's verdict.

    Attributes:
        name: the verifier's name.
        passed: the verdict.
        kind: ``command``, ``schema``, ``callable`` or ``model``.
        summary: one line for people (no subject text).
        output: captured output, trimmed to the policy's log-line limit (may contain
            subject text; telemetry stores it as a digest).
        exit_status: a command's exit status.
        duration: seconds it took.
    """

    name: str
    passed: bool
    kind: str
    summary: str
    output: str = ""
    exit_status: int | None = None
    duration: float = 0.0
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VerifyContext:
    """What a verifier may need besides the subject.

    Attributes:
        max_log_lines: the policy's ``contextPolicy.maxLogLinesWithoutApproval``.
        variables: values for ``{name}`` placeholders in command arguments.
    """

    max_log_lines: int = 80
    variables: Mapping[str, str] = field(default_factory=dict)


def result_body(result: VerifierResult) -> str:
    """What a record keeps of a result (and digests): its summary and output, which
    exact replay serves back."""
    return f"{result.summary}\n{result.output}"


def trim_lines(text: str, limit: int) -> str:
    """The last ``limit`` lines of ``text``, saying how many were cut."""
    lines = text.splitlines()
    if len(lines) <= limit:
        return text
    return f"[{len(lines) - limit} earlier line(s) trimmed]\n" + "\n".join(lines[-limit:])


class Verifier(ABC):
    """Decides whether a stage's output is acceptable."""

    name: str
    deterministic: bool = True

    @abstractmethod
    async def verify(self, subject: Any, context: VerifyContext) -> VerifierResult:
        """Check ``subject`` (the stage's output)."""

    def identity(self) -> dict[str, str]:
        """What this verifier checks, as named parts (``kind`` plus its definition).

        Records keep each part as a keyed digest, and exact replay compares them: a
        change to what a verifier checks is a divergence, named by the part that
        changed. Subclasses add the parts that define them."""
        return {"kind": type(self).__name__, "name": self.name}


class CommandVerifier(Verifier):
    """Runs a command (``pytest``, ``ruff``, ``python -m unittest``...) in a subprocess;
    exit status 0 passes.

    Args:
        argv: the command; ``{name}`` placeholders are filled from the context's variables.
        cwd: working directory (placeholders allowed).
        timeout: seconds before the process is killed and the check fails.
        env: extra environment variables.
        name: defaults to the command's first word.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        cwd: str | Path | None = None,
        timeout: float = 120.0,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> None:
        if not argv:
            raise ConfigurationError("CommandVerifier needs a command, e.g. CommandVerifier(['pytest', '-q']).")
        if timeout <= 0:
            raise ConfigurationError(f"CommandVerifier timeout must be positive, got {timeout!r}.")
        self.argv = list(argv)
        self.cwd = cwd
        self.timeout = timeout
        self.env = dict(env or {})
        self.name = name or Path(self.argv[0]).name

    def identity(self) -> dict[str, str]:
        return {
            "kind": "command",
            "argv": json.dumps(self.argv),
            "cwd": "" if self.cwd is None else str(self.cwd),
            "env": json.dumps(self.env, sort_keys=True),
            "timeout": repr(self.timeout),
        }

    async def verify(self, subject: Any, context: VerifyContext) -> VerifierResult:
        import os

        fill = dict(context.variables)
        try:
            argv = [a.format_map(fill) for a in self.argv]
            cwd = None if self.cwd is None else str(self.cwd).format_map(fill)
        except KeyError as exc:
            raise ConfigurationError(
                f"CommandVerifier {self.name!r} uses placeholder {exc} that the run does not define "
                f"(defined: {', '.join(sorted(fill)) or 'none'})."
            ) from None
        env = {**os.environ, **self.env}
        start = time.perf_counter()
        try:
            with anyio.fail_after(self.timeout):
                proc = await anyio.run_process(argv, cwd=cwd, env=env, check=False, stderr=-2)  # stderr -> stdout
        except TimeoutError:
            return VerifierResult(
                self.name,
                False,
                "command",
                f"{self.name} timed out after {self.timeout:g}s",
                duration=time.perf_counter() - start,
            )
        except OSError as exc:
            return VerifierResult(
                self.name,
                False,
                "command",
                f"{self.name} could not start: {exc.strerror}",
                duration=time.perf_counter() - start,
            )
        output = trim_lines(proc.stdout.decode("utf-8", "replace"), context.max_log_lines)
        passed = proc.returncode == 0
        return VerifierResult(
            self.name,
            passed,
            "command",
            f"{self.name} {'passed' if passed else 'failed'} (exit status {proc.returncode})",
            output=output,
            exit_status=proc.returncode,
            duration=time.perf_counter() - start,
        )


def _schema_verifier(schema: Any, name: str) -> SchemaVerifier:
    return SchemaVerifier(schema, name=name)


class SchemaVerifier(Verifier):
    """Checks that the subject (an object, or JSON text) fits a pydantic model or a JSON
    schema (the latter needs the ``jsonschema`` package)."""

    def __init__(self, schema: type[BaseModel] | Mapping[str, Any], *, name: str = "schema") -> None:
        self.name = name
        self._source = schema
        self._adapter: TypeAdapter[Any] | None = None
        self._validator: Any = None
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            self._adapter = TypeAdapter(schema)
            self._schema_text = json.dumps(schema.model_json_schema(), sort_keys=True)
        else:
            try:
                import jsonschema  # type: ignore[import-untyped]
            except ImportError:
                raise ConfigurationError(
                    "SchemaVerifier with a JSON schema needs the 'jsonschema' package (pip install jsonschema), "
                    "or pass a pydantic model instead."
                ) from None
            cls = jsonschema.validators.validator_for(schema)
            cls.check_schema(schema)
            self._validator = cls(schema)
            self._schema_text = json.dumps(schema, sort_keys=True)

    def identity(self) -> dict[str, str]:
        return {"kind": "schema", "schema": self._schema_text}

    def __reduce__(self) -> tuple[Any, ...]:
        # A compiled validator does not pickle: rebuilt from the schema (a durable-
        # execution backend sends verifiers to the worker that runs them).
        return (_schema_verifier, (self._source, self.name))

    async def verify(self, subject: Any, context: VerifyContext) -> VerifierResult:
        value = subject
        if isinstance(subject, (str, bytes)):
            try:
                value = json.loads(subject)
            except ValueError as exc:
                where = f" (line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
                return VerifierResult(self.name, False, "schema", f"not JSON{where}")
        if self._adapter is not None:
            try:
                self._adapter.validate_python(value)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = "/".join(str(p) for p in first["loc"])
                return VerifierResult(
                    self.name,
                    False,
                    "schema",
                    f"{exc.error_count()} schema error(s); first at /{where}: {first['msg']}",
                )
            return VerifierResult(self.name, True, "schema", "matches the schema")
        errors = sorted(self._validator.iter_errors(value), key=lambda e: [str(p) for p in e.path])
        if errors:
            # The pointer and the rule, never the value: the subject is content.
            where = "/".join(str(p) for p in errors[0].path)
            return VerifierResult(
                self.name,
                False,
                "schema",
                f"{len(errors)} schema error(s); first at /{where}: fails the {errors[0].validator!r} rule",
            )
        return VerifierResult(self.name, True, "schema", "matches the schema")


class CallableVerifier(Verifier):
    """Wraps ``fn(subject)`` (sync or async) returning ``bool``, ``(bool, summary)`` or
    a :class:`VerifierResult`."""

    def __init__(self, fn: Callable[[Any], Any | Awaitable[Any]], *, name: str | None = None) -> None:
        if not callable(fn):
            raise ConfigurationError(f"CallableVerifier needs a function, got {fn!r}.")
        self.fn = fn
        self.name = name or str(getattr(fn, "__name__", "check"))

    def identity(self) -> dict[str, str]:
        # The qualified name, not the module: the same program run as a script
        # (__main__) and imported by name must keep one identity.
        fn = self.fn
        return {"kind": "callable", "function": getattr(fn, "__qualname__", None) or type(fn).__qualname__}

    async def verify(self, subject: Any, context: VerifyContext) -> VerifierResult:
        start = time.perf_counter()
        out = self.fn(subject)
        if inspect.isawaitable(out):
            out = await out
        took = time.perf_counter() - start
        if isinstance(out, VerifierResult):
            return out
        if isinstance(out, tuple):
            ok, summary = bool(out[0]), str(out[1])
        else:
            ok, summary = bool(out), ("passed" if out else "failed")
        return VerifierResult(self.name, ok, "callable", summary, duration=took)


class ModelVerifier(Verifier):
    """Model-judged verification: asks a model, routed as a ``review`` stage, whether the
    subject meets ``instructions``; the reply must start with PASS or FAIL.

    Used only when a stage has no deterministic verifier (a model's judgment never
    overrides a test's).
    """

    deterministic = False

    def __init__(
        self, instructions: str, *, name: str = "model-judge", stage: str = "review", max_tokens: int = 200
    ) -> None:
        self.instructions = instructions
        self.name = name
        self.stage = stage
        self.max_tokens = max_tokens

    def identity(self) -> dict[str, str]:
        return {"kind": "model", "instructions": self.instructions, "stage": self.stage}

    def prompt(self, subject: Any) -> str:
        """What the judge is asked about ``subject``."""
        return (
            f"{self.instructions}\n\nAnswer PASS or FAIL on the first line, then one line of reasons.\n\n---\n{subject}"
        )

    def verdict(self, reply: str) -> VerifierResult:
        """The judge's reply as a result: PASS on the first line passes."""
        text = reply.strip()
        passed = text.upper().startswith("PASS")
        first_line = text.splitlines()[0][:200] if text else ""
        return VerifierResult(
            self.name, passed, "model", f"model judged {'PASS' if passed else 'FAIL'}", output=first_line
        )

    async def verify(self, subject: Any, context: VerifyContext) -> VerifierResult:  # pragma: no cover
        raise ConfigurationError(
            "ModelVerifier runs inside a run (run.stage(..., verify=[ModelVerifier(...)])), which routes it; "
            "it cannot verify on its own."
        )
