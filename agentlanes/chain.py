"""Declared chains: stages as documents, composed and run with ``await chain.run(task)``.

A stage document (``stages/*.json``, ``kind: AgentLanesStage``) says what one step is:
its chain stage, whether it asks a model (``type: model``, with a prompt template),
runs a deterministic tool (``type: tool``) or only verifies (``type: verify``), its
output type, the verifiers and tool applied to its output, and extra evidence. A chain
document (``kind: AgentLanesChain``) names the task class, risk class and steps.

Prompt templates use ``{task}``, earlier steps' outputs by step name, run variables,
and ``{feedback}`` (the previous attempt's failing verifier output).

Schema versions: ``agentlanes.stage/1`` and ``agentlanes.chain/1``: first versions.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from agentlanes.errors import ConfigurationError, PolicyError, RetryStage
from agentlanes.policy import StageName, parse_json
from agentlanes.runtime import Lanes, RunResult, StageContext
from agentlanes.verifiers import CallableVerifier, CommandVerifier, ModelVerifier, SchemaVerifier, Verifier

__all__ = ["Chain", "ChainSpec", "StepSpec", "VerifierSpec", "bundled_stages_dir", "resolve_ref"]


class _Spec(BaseModel):
    model_config = ConfigDict(
        strict=True,
        frozen=True,
        defer_build=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
    )


class VerifierSpec(_Spec):
    """A verifier in a stage document."""

    type: Literal["command", "schema", "callable", "model"]
    name: str | None = None
    argv: list[str] | None = None
    """``command``: the command; ``{python}``, ``{workspace}`` and run variables are filled in."""
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 120.0
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    ref: str | None = None
    """``callable``: ``module:attr`` of ``fn(subject) -> bool``."""
    instructions: str | None = None
    """``model``: what the judge checks."""

    def build(self) -> Verifier:
        return _VERIFIER_KINDS[self.type](self)


def _command(spec: VerifierSpec) -> Verifier:
    if not spec.argv:
        raise ConfigurationError('A command verifier needs argv, e.g. ["{python}", "-m", "pytest"].')
    return CommandVerifier(spec.argv, cwd=spec.cwd, timeout=spec.timeout_seconds, env=spec.env, name=spec.name)


def _schema(spec: VerifierSpec) -> Verifier:
    if spec.schema_ is None:
        raise ConfigurationError('A schema verifier needs a JSON schema under "schema".')
    return SchemaVerifier(spec.schema_, name=spec.name or "schema")


def _callable(spec: VerifierSpec) -> Verifier:
    if not spec.ref:
        raise ConfigurationError('A callable verifier needs "ref": "module:function".')
    return CallableVerifier(resolve_ref(spec.ref), name=spec.name)


def _model(spec: VerifierSpec) -> Verifier:
    if not spec.instructions:
        raise ConfigurationError('A model verifier needs "instructions".')
    return ModelVerifier(spec.instructions, name=spec.name or "model-judge")


# The verifier kinds a stage document may name: a new kind is one more entry.
_VERIFIER_KINDS: dict[str, Callable[[VerifierSpec], Verifier]] = {
    "command": _command,
    "schema": _schema,
    "callable": _callable,
    "model": _model,
}


class StepSpec(_Spec):
    """One stage document (``kind: AgentLanesStage``)."""

    schema_version: Literal["agentlanes.stage/1"] = "agentlanes.stage/1"
    kind: Literal["AgentLanesStage"] = "AgentLanesStage"
    name: str
    stage: StageName
    type: Literal["model", "tool", "verify"]
    description: str | None = None
    prompt: str | None = None
    system: str | None = None
    output: Literal["text", "json"] = "text"
    max_tokens: Annotated[int, Field(ge=1)] = 1024
    tool: str | None = None
    """``module:attr``: the step itself (``type: tool``) or what is applied to a model
    step's output before verifying (e.g. writing a patch), as a tool-use stage."""
    verifiers: list[VerifierSpec] = Field(default_factory=list)
    subject: str | None = None
    """``type: verify``: the earlier step whose output is verified."""
    escalation_reason: str | None = None
    risk_class: str | None = None
    """This step's own risk class, when it differs from the chain's."""
    evidence: dict[str, str] = Field(default_factory=dict)
    """Evidence items this step provides: name → template (filled like the prompt)."""


class ChainSpec(_Spec):
    """A chain document (``kind: AgentLanesChain``)."""

    schema_version: Literal["agentlanes.chain/1"] = "agentlanes.chain/1"
    kind: Literal["AgentLanesChain"] = "AgentLanesChain"
    name: str
    description: str | None = None
    task_class: str
    risk_class: str = "medium"
    escalation_reason: str | None = None
    steps: list[str | StepSpec]


def resolve_ref(ref: str) -> Callable[..., Any]:
    """Import ``module:attr``."""
    module, _, attr = ref.partition(":")
    if not module or not attr:
        raise ConfigurationError(f"Reference {ref!r} must look like 'package.module:function'.")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"Cannot import {ref!r}: {exc}.") from exc
    if not callable(obj):
        raise ConfigurationError(f"{ref!r} is not callable.")
    return obj  # type: ignore[no-any-return]


def bundled_stages_dir() -> Path:
    """The bundled stage documents (wheel: ``agentlanes/_stages``; checkout: ``stages/``)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_stages", here.parent / "stages"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("agentlanes' bundled stages are missing; reinstall agentlanes.")


def _load_spec(path: Path, model: type[_Spec]) -> Any:
    data = json.loads(path.read_text()) if path.exists() else None
    if data is None:
        raise PolicyError(f"{path}: no such file.", source=str(path))
    try:
        return model.model_validate(parse_json(json.dumps(data), source=str(path)))
    except ValidationError as exc:
        first = exc.errors()[0]
        pointer = "".join(f"/{p}" for p in first["loc"])
        raise PolicyError(
            f"{path}: {model.__name__} document: {pointer or '/'}: {first['msg']}.", source=str(path), pointer=pointer
        ) from None


class _Applied:
    """A step's ``tool``, applied to the step's output with the chain's values; named
    after its reference in records. A plain object (its reference and the values), so
    a durable-execution backend can send it to another process."""

    def __init__(self, ref: str, values: dict[str, Any]) -> None:
        resolve_ref(ref)  # a reference that names nothing fails here, before anything runs
        self.ref = ref
        self.values = dict(values)
        module, _, qualname = ref.partition(":")
        self.__module__, self.__qualname__, self.__name__ = module, qualname, qualname.rsplit(".", 1)[-1]

    def __call__(self, output: Any) -> Any:
        return resolve_ref(self.ref)(output, dict(self.values))


def _applied(ref: str, values: dict[str, Any]) -> Callable[[Any], Any]:
    return _Applied(ref, values)


class _Fill(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        raise ConfigurationError(
            f"Prompt placeholder {{{key}}} names nothing the chain knows (known: {', '.join(sorted(self))})."
        )


class Chain:
    """Steps run in order, each a lane-aware stage.

    Args:
        steps: the stage documents (or :class:`StepSpec` objects).
        name: the chain's name.
        task_class / risk_class / escalation_reason: the run's.
        lanes: where it runs (may also be given to :meth:`run`).
        ref: ``module:attr`` where this chain object can be imported, recorded with
            every run so that ``agentlanes replay`` can find it.
    """

    def __init__(
        self,
        steps: Sequence[StepSpec],
        *,
        name: str,
        task_class: str,
        risk_class: str = "medium",
        escalation_reason: str | None = None,
        lanes: Lanes | None = None,
        ref: str | None = None,
    ) -> None:
        if not steps:
            raise ConfigurationError(f"Chain {name!r} has no steps.")
        seen: set[str] = set()
        for step in steps:
            if step.name in seen:
                raise ConfigurationError(f"Chain {name!r} has two steps named {step.name!r}; names must be unique.")
            seen.add(step.name)
            if step.type == "model" and not step.prompt:
                raise ConfigurationError(f"Step {step.name!r} asks a model but has no prompt.")
            if step.type == "tool" and not step.tool:
                raise ConfigurationError(f"Step {step.name!r} is a tool step but names no tool ('module:function').")
            if step.type == "verify" and (not step.verifiers or step.subject not in seen - {step.name}):
                raise ConfigurationError(
                    f"Step {step.name!r} verifies, so it needs verifiers and a subject naming an earlier step "
                    f"(earlier steps: {', '.join(sorted(seen - {step.name})) or 'none'})."
                )
        self.steps = list(steps)
        self.name = name
        self.task_class = task_class
        self.risk_class = risk_class
        self.escalation_reason = escalation_reason
        self.lanes = lanes
        self.ref = ref

    @classmethod
    def load(cls, path: str | Path, *, lanes: Lanes | None = None, ref: str | None = None) -> Chain:
        """Load a chain document; step names resolve to ``<name>.json`` beside it."""
        path = Path(path)
        spec: ChainSpec = _load_spec(path, ChainSpec)
        steps = [s if isinstance(s, StepSpec) else _load_spec(path.parent / f"{s}.json", StepSpec) for s in spec.steps]
        return cls(
            steps,
            name=spec.name,
            task_class=spec.task_class,
            risk_class=spec.risk_class,
            escalation_reason=spec.escalation_reason,
            lanes=lanes,
            ref=ref,
        )

    async def run(
        self,
        task: str,
        *,
        lanes: Lanes | None = None,
        variables: Mapping[str, str] | None = None,
        run_id: str | None = None,
    ) -> RunResult:
        """Run the chain on ``task``; returns the run's result (``output`` is the last
        step's output)."""
        lanes = lanes or self.lanes
        if lanes is None:
            raise ConfigurationError(f"Chain {self.name!r} needs Lanes: Chain(..., lanes=...) or run(task, lanes=...).")
        values: dict[str, Any] = {
            "task": task,
            "taskClass": self.task_class,
            "riskClass": self.risk_class,
            **(variables or {}),
        }
        async with lanes.run(
            task_class=self.task_class,
            risk_class=self.risk_class,
            escalation_reason=self.escalation_reason,
            run_id=run_id,
            variables={k: str(v) for k, v in values.items()},
            chain=self.ref,
        ) as run:
            run.record_inputs({"task": task, "variables": dict(variables or {})})
            output: Any = None
            for step in self.steps:
                output = await self._step(run, step, values)
                values[step.name] = output
            run.output = output
        return run.result

    async def _step(self, run: Any, step: StepSpec, values: dict[str, Any]) -> Any:
        verifiers = [v.build() for v in step.verifiers]
        evidence = {k: v.format_map(_Fill(values)) for k, v in step.evidence.items()}
        if step.type == "tool":
            assert step.tool is not None
            fn = resolve_ref(step.tool)
            ref = step.tool

            async def call_tool(ctx: StageContext) -> Any:
                # a recorded tool step: exact replay serves its result from the record
                return await ctx.tool(fn, dict(values), name=ref)

            return await run.stage_with(
                step.stage, call_tool, name=step.name, deterministic=True, verify=verifiers, evidence=evidence
            )
        if step.type == "verify":
            assert step.subject is not None
            ok = await run.verify(values[step.subject], verifiers, name=step.name)
            if not ok:
                from agentlanes.errors import VerificationFailed

                results = run.records[-1].verifications[-1]
                raise VerificationFailed(
                    f"Step {step.name!r} failed verification.",
                    evidence=results,
                    attempts=1,
                    run_id=run.run_id,
                    stage=step.name,
                )
            return values[step.subject]

        async def ask(ctx: StageContext) -> Any:
            assert step.prompt is not None
            prompt = step.prompt.format_map(_Fill({**values, "feedback": ctx.feedback_text or "none"}))
            reply = await ctx.complete(prompt, system=step.system, max_tokens=step.max_tokens)
            if step.output == "json":
                try:
                    return json.loads(reply.text)
                except ValueError:
                    raise RetryStage("the reply was not valid JSON") from None
            return reply.text

        return await run.stage_with(
            step.stage,
            ask,
            name=step.name,
            escalation_reason=step.escalation_reason,
            risk_class=step.risk_class,
            verify=verifiers,
            tool=_applied(step.tool, values) if step.tool else None,
            max_tokens=step.max_tokens,
            evidence=evidence,
        )
