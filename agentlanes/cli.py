"""The ``agentlanes`` command line.

``agentlanes route``     decide one stage (or a batch of JSON lines) and print the decision.
``agentlanes bind``      decide a local + personal route binding alone and print it.
``agentlanes evidence``  agentplane receipts, guardrail decisions and an evidence journal
                         from decisions; check receipts; verify a journal.
``agentlanes validate``  check policy / optimizer / catalog documents.

Exit status: 0 when the command did its job (a ``deferred`` decision is still a
decision), 1 when a document or request is unusable (one clear message each on stderr),
2 for a usage error.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from agentlanes import __version__
from agentlanes._private import write_private
from agentlanes.binding import BindingDecision, BindingRequest, load_binding, load_contract
from agentlanes.ceiling import Ceiling, load_ceiling, parse_ceiling
from agentlanes.decision import RouteDecision, RouteRequest
from agentlanes.errors import AgentLanesError, ConfigurationError, PolicyError
from agentlanes.findings import Findings, load_findings, parse_findings
from agentlanes.lanes import LANES
from agentlanes.policy import (
    Loaded,
    PolicyBundle,
    PriceCatalog,
    RoutingOptimizer,
    RoutingPolicy,
    load_document,
    parse_time,
    read_json,
)
from agentlanes.router import Router
from agentlanes.signals import SignalSnapshot, SnapshotCache

__all__ = ["main"]


def _dump(obj: Any, *, compact: bool) -> str:
    if compact:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False)


def _render(decision: RouteDecision, fmt: str) -> dict[str, Any]:
    return decision.to_upstream() if fmt == "upstream" else decision.to_native()


class _Cache:
    """Documents, bundles, routers and resource files, each loaded once per process."""

    def __init__(self) -> None:
        self.docs: dict[tuple[str, str], Loaded] = {}
        self.routers: dict[tuple[str, str, str], Router] = {}
        self.resources: dict[str, SignalSnapshot] = {}
        self.inline = SnapshotCache()  # batches usually repeat one inline signal set
        self.findings: dict[str, Findings] = {}
        self.ceilings: dict[str, Ceiling] = {}
        self.files: dict[tuple[str, str], object] = {}  # binding and consent documents

    def doc(self, role: str, path: str | None) -> Loaded:
        from agentlanes import _bundled

        key = (role, path or "")
        if key not in self.docs:
            self.docs[key] = _bundled.default_loaded(role) if path is None else load_document(path)
        return self.docs[key]

    def router(self, policy: str | None, optimizer: str | None, catalog: str | None) -> Router:
        key = (policy or "", optimizer or "", catalog or "")
        router = self.routers.get(key)
        if router is None:
            bundle = PolicyBundle.from_loaded(
                self.doc("policy", policy), self.doc("optimizer", optimizer), self.doc("catalog", catalog)
            )
            router = self.routers[key] = Router(bundle)
        return router

    def signals(self, path: str) -> SignalSnapshot:
        snap = self.resources.get(path)
        if snap is None:
            data = read_json(path)
            if not isinstance(data, dict):
                raise ConfigurationError(f"{path}: resource signals must be a JSON object, not {type(data).__name__}.")
            snap = self.resources[path] = SignalSnapshot(data)
        return snap

    def findings_of(self, value: object) -> Findings:
        """A findings document given as a path (read once) or inline."""
        if isinstance(value, str):
            found = self.findings.get(value)
            if found is None:
                found = self.findings[value] = load_findings(value)
            return found
        return parse_findings(value)

    def ceiling_of(self, value: object) -> Ceiling:
        """A routing-ceiling document given as a path (read once) or inline."""
        if isinstance(value, str):
            found = self.ceilings.get(value)
            if found is None:
                found = self.ceilings[value] = load_ceiling(value)
            return found
        return parse_ceiling(value)

    def document(self, role: str, value: object) -> object:
        """A binding or consent document given as a path (read once) or inline."""
        if not isinstance(value, str):
            return value
        key = (role, value)
        if key not in self.files:
            self.files[key] = load_binding(value) if role == "binding" else load_contract(value)
        return self.files[key]


# ------------------------------------------------------------------------- route

_Types = type | tuple[type, ...]
_BATCH_KEYS: dict[str, _Types] = {
    "policy": str,
    "optimizer": str,
    "priceCatalog": str,
    "resources": (dict, str),
    "taskClass": str,
    "stage": str,
    "riskClass": str,
    "requestedLane": (str, type(None)),
    "escalationReason": (str, type(None)),
    "budgetWindow": str,
    "budgetRemaining": (int, float),
    "deterministic": bool,
    "findings": (dict, str),
    "ceilings": list,
    "binding": (dict, str),
    "consent": (dict, str, type(None)),
    "bindingTask": str,
    "ledgerApproved": bool,
    "egressApproval": (str, type(None)),
    "now": str,
}
_TYPE_NAMES: dict[_Types, str] = {
    str: "a string",
    (dict, str): "an object or a path",
    (dict, str, type(None)): "an object, a path or null",
    (str, type(None)): "a string or null",
    (int, float): "a number",
    bool: "true or false",
    list: "an array of objects or paths",
}
_BINDING_KEYS = ("consent", "bindingTask", "ledgerApproved", "egressApproval", "now")
_NEIGHBOUR_KEYS = frozenset({"findings", "ceilings", "binding", *_BINDING_KEYS})


def _now_text(value: str | None) -> str:
    """``--now``/``now``: an ISO 8601 time, normalised to UTC (now when not given)."""
    if value is None:
        return datetime.now(UTC).isoformat().replace("+00:00", "Z")
    try:
        return parse_time(value).isoformat().replace("+00:00", "Z")
    except ValueError as exc:
        raise ConfigurationError(f"The binding time {value!r} is not usable: {exc}.") from None


def _batch_neighbours(obj: Mapping[str, Any], lineno: int, cache: _Cache, now: str) -> dict[str, Any]:
    """The neighbours' inputs of one batch line, as RouteRequest keywords."""
    out: dict[str, Any] = {}
    if "findings" in obj:
        out["findings"] = cache.findings_of(obj["findings"])
    if "ceilings" in obj:
        items = obj["ceilings"]
        if not all(isinstance(item, (dict, str)) for item in items):
            raise ConfigurationError(f"line {lineno}: ceilings must be an array of objects or paths.")
        out["ceilings"] = tuple(cache.ceiling_of(item) for item in items)
    if "binding" in obj:
        if "bindingTask" not in obj:
            raise ConfigurationError(f"line {lineno}: binding needs bindingTask (the binding's task class).")
        consent = obj.get("consent")
        out["binding"] = BindingRequest(
            binding=cache.document("binding", obj["binding"]),
            task=obj["bindingTask"],
            contract=None if consent is None else cache.document("consent", consent),
            ledger_approved=obj.get("ledgerApproved", False),
            egress_approval=obj.get("egressApproval"),
            now=_now_text(obj["now"]) if "now" in obj else now,
        )
    else:
        extra = [key for key in _BINDING_KEYS if key in obj]
        if extra:
            raise ConfigurationError(f"line {lineno}: {', '.join(extra)} take effect only with binding.")
    return out


def _batch_request(line: str, lineno: int, cache: _Cache, now: str = "") -> tuple[Router, RouteRequest]:
    try:
        obj = json.loads(line, parse_constant=lambda t: (_ for _ in ()).throw(ValueError(f"{t} is not JSON")))
    except (ValueError, RecursionError) as exc:
        raise ConfigurationError(f"line {lineno}: not a JSON object ({exc}).") from None
    if not isinstance(obj, dict):
        raise ConfigurationError(f"line {lineno}: a request must be a JSON object, not {type(obj).__name__}.")
    for key, value in obj.items():
        expected = _BATCH_KEYS.get(key)
        if expected is None:
            raise ConfigurationError(f"line {lineno}: unknown key {key!r} (keys: {', '.join(_BATCH_KEYS)}).")
        bad_bool = isinstance(value, bool) and expected in ((int, float),)
        if bad_bool or not isinstance(value, expected):
            raise ConfigurationError(
                f"line {lineno}: {key} must be {_TYPE_NAMES[expected]}, got {json.dumps(value)[:60]}."
            )
    for key in ("taskClass", "stage", "resources"):
        if key not in obj:
            raise ConfigurationError(f"line {lineno}: {key} is required.")
    resources = obj["resources"]
    signals = cache.signals(resources) if isinstance(resources, str) else cache.inline.get(resources)
    router = cache.router(obj.get("policy"), obj.get("optimizer"), obj.get("priceCatalog"))
    neighbours: dict[str, Any] = {}
    if not _NEIGHBOUR_KEYS.isdisjoint(obj):
        neighbours = _batch_neighbours(obj, lineno, cache, now or _now_text(None))
    request = RouteRequest(
        task_class=obj["taskClass"],
        stage=obj["stage"],
        signals=signals,
        risk_class=obj.get("riskClass", "medium"),
        requested_lane=obj.get("requestedLane"),
        escalation_reason=obj.get("escalationReason"),
        budget_window=obj.get("budgetWindow", "task"),
        budget_remaining=_budget_of(obj.get("budgetRemaining", 2.0), lineno),
        deterministic=obj.get("deterministic", False),
        **neighbours,
    )
    return router, request


def _budget_of(value: Any, lineno: int) -> float:
    """A batch line's ``budgetRemaining``: a finite number (a larger integer than a
    float holds, ``1e400`` or a string is refused by name)."""
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError
        budget = float(value)
    except (ValueError, OverflowError):
        budget = math.nan
    if not math.isfinite(budget):
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:40]}..."
        raise ConfigurationError(
            f"line {lineno}: budgetRemaining {shown} is not a finite number; pass one such as 2.0."
        )
    return budget


def _run_batch(lines: Iterable[str], out: IO[str], fmt: str) -> int:
    cache = _Cache()
    errors = 0
    write = out.write
    now = _now_text(None)  # one time for the whole batch's bindings (a line's `now` wins)
    for lineno, line in enumerate(lines, start=1):
        try:
            if not line.strip():
                raise ConfigurationError(f"line {lineno}: empty line; expected one JSON request object.")
            router, request = _batch_request(line, lineno, cache, now)
            text = _dump(_render(router.decide(request), fmt), compact=True)
        except ConfigurationError as exc:
            errors += 1
            message = str(exc)
            if not message.startswith("line "):
                message = f"line {lineno}: {message}"
            text = json.dumps({"error": message}, ensure_ascii=False)
        except ValueError as exc:  # pydantic ValidationError (e.g. a NaN budget)
            errors += 1
            first = str(exc).splitlines()
            text = json.dumps({"error": f"line {lineno}: invalid request: {' '.join(first[:3])}"})
        write(text)
        write("\n")
    out.flush()
    return 0


def _cmd_route(args: argparse.Namespace) -> int:
    if args.batch is not None:
        flags = [
            flag
            for flag, value in (("--findings", args.findings), ("--ceiling", args.ceiling), ("--binding", args.binding))
            if value
        ]
        if flags:
            _err(
                f"{', '.join(flags)} apply to one decision; with --batch, give each line its own findings, "
                "ceilings or binding keys."
            )
            return 2
        try:
            return _run_batch(_text_lines(args.batch, "batch file"), sys.stdout, args.format)
        except ConfigurationError as exc:
            sys.stdout.flush()
            _err(str(exc))
            return 1
    missing = [
        flag
        for flag, value in (("--resources", args.resources), ("--task-class", args.task_class), ("--stage", args.stage))
        if value is None
    ]
    if missing:
        _err(f"route needs {', '.join(missing)} (or --batch FILE).")
        return 2
    usage = _binding_usage(args)
    if usage is not None:
        _err(usage)
        return 2
    cache = _Cache()
    try:
        router = cache.router(args.policy, args.optimizer, args.price_catalog)
        signals = cache.signals(args.resources)
        request = RouteRequest(
            task_class=args.task_class,
            stage=args.stage,
            signals=signals,
            risk_class=args.risk_class,
            requested_lane=args.requested_lane,
            escalation_reason=args.escalation_reason,
            budget_window=args.budget_window,
            budget_remaining=args.budget_remaining,
            deterministic=args.deterministic,
            findings=None if args.findings is None else load_findings(args.findings),
            ceilings=tuple(load_ceiling(path) for path in args.ceiling or ()),
            binding=None if args.binding is None else _binding_request(args).decide(signals),
        )
        decision = router.decide(request)
    except ConfigurationError as exc:
        _err(str(exc))
        return 1
    for warning in router.bundle.warnings:
        _err(f"warning: {warning}")
    print(_dump(_render(decision, args.format), compact=args.compact))
    return 0


# -------------------------------------------------------------------------- bind


def _binding_usage(args: argparse.Namespace) -> str | None:
    """A usage problem with the binding flags, or ``None``."""
    if args.binding is None:
        given = [
            flag
            for flag, value in (
                ("--consent", args.consent),
                ("--binding-task", args.binding_task),
                ("--ledger-approved", args.ledger_approved or None),
                ("--egress-approval", args.egress_approval),
                ("--now", args.now),
            )
            if value is not None
        ]
        if given:
            return f"{', '.join(given)} configure a binding and take effect only with --binding FILE."
        return None
    if args.binding_task is None:
        return "--binding needs --binding-task TASK (the binding's task class, e.g. office-assist)."
    return None


def _binding_request(args: argparse.Namespace) -> BindingRequest:
    return BindingRequest(
        binding=load_binding(args.binding),
        task=args.binding_task,
        contract=None if args.consent is None else load_contract(args.consent),
        ledger_approved=args.ledger_approved,
        egress_approval=args.egress_approval,
        now=_now_text(args.now),
    )


def _cmd_bind(args: argparse.Namespace) -> int:
    usage = "bind needs --binding FILE (a LocalPersonalRouteBinding)." if args.binding is None else _binding_usage(args)
    if usage is not None:
        _err(usage)
        return 2
    try:
        if args.resources is None:
            signals = SignalSnapshot({})
            _err(
                "warning: no --resources given; local health and the network are unknown, so local and networked "
                "targets are refused (fail closed)."
            )
        else:
            signals = _Cache().signals(args.resources)
        decision: BindingDecision = _binding_request(args).decide(signals)
    except ConfigurationError as exc:
        _err(str(exc))
        return 1
    print(_dump(decision.to_json(), compact=args.compact))
    return 0


def _add_binding_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--binding", metavar="FILE", help="LocalPersonalRouteBinding document (CONTRACT D3)")
    parser.add_argument("--consent", metavar="FILE", help="PersonalTuningContract holding the user's consent")
    parser.add_argument("--binding-task", metavar="TASK", help="the binding's task class, e.g. office-assist")
    parser.add_argument(
        "--ledger-approved", action="store_true", help="the governance ledger approved the personal artifact"
    )
    parser.add_argument("--egress-approval", metavar="REF", help="policy approval reference for prompt egress")
    parser.add_argument("--now", metavar="ISO-TIME", help="time to judge consent expiry at (default: now)")


# ---------------------------------------------------------------------- evidence


def _evidence_input(path: str) -> Iterable[str]:
    return list(_text_lines(path, "evidence file"))


def _task_map(items: Sequence[str] | None) -> dict[str, str] | None:
    task_map: dict[str, str] = {}
    for item in items or ():
        name, sep, target = item.partition("=")
        if not sep or not name or not target:
            _err(f"--task-class-map {item!r} must be TASK=CLASS, e.g. data-cleanup=data_extraction.")
            return None
        task_map[name] = target
    return task_map


def _cmd_evidence(args: argparse.Namespace) -> int:
    from agentlanes import evidence as ev

    try:
        if args.action == "export":
            from agentlanes.history import find_trace, run_evidence

            task_map = _task_map(args.task_class_map)
            if task_map is None:
                return 2
            router = _Cache().router(args.policy, args.optimizer, args.price_catalog)
            path = find_trace(_data_dir(args), args.run)
            for line in run_evidence(path, router, args.format, task_classes=task_map):
                sys.stdout.write(line + "\n")
            return 0
        if args.action == "verify-journal":
            report = ev.verify_journal(_evidence_input(args.file))
            print(json.dumps(report.to_json(), indent=2, sort_keys=True))
            if not report.verified:
                where = f"line {report.index + 1}" if report.index is not None else "a record"
                _err(f"the evidence journal {args.file} does not verify: {where}: {report.problem}.")
            return 0 if report.verified else 1
        if args.action == "check-receipts":
            bad = 0
            count = 0
            for lineno, line in enumerate(_evidence_input(args.file), start=1):
                if not line.strip():
                    continue
                count += 1
                try:
                    doc = json.loads(line)
                    problems = ev.check_lane_receipt(doc)
                except (ValueError, RecursionError):
                    problems = ["the line is not JSON (or nests deeper than any receipt)"]
                for problem in problems:
                    _err(f"{args.file}, line {lineno}: {problem}")
                bad += bool(problems)
            print(f"{count - bad} of {count} receipt(s) valid")
            return 1 if bad else 0
        # convert
        task_map = _task_map(args.task_class_map)
        if task_map is None:
            return 2
        pol = _Cache().doc("policy", args.policy).document
        assert isinstance(pol, RoutingPolicy)
        tasks = {t.task_class: (t.default_lane, t.requires_human_justification) for t in pol.task_classes}
        issued = args.issued_at or _now_text(None)
        records = []
        for lineno, line in enumerate(_evidence_input(args.file), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ConfigurationError("a line must be a JSON object")
                if "decision" in obj:
                    unknown = set(obj) - {"decision", "context"}
                    if unknown:
                        names = ", ".join(sorted(unknown))
                        raise ConfigurationError(f"unknown key(s) {names} (keys: decision, context)")
                    doc, context = obj["decision"], obj.get("context") or {}
                else:
                    doc, context = obj, {}
                if not isinstance(doc, dict) or not isinstance(context, dict):
                    raise ConfigurationError("decision and context must be JSON objects")
                facts = ev.DecisionFacts.from_native(doc, tasks=tasks)
                ctx = ev.StageEvidence.from_json(context, run_id=args.run_id, issued_at=issued)
            except RecursionError:
                raise ConfigurationError(f"{args.file}, line {lineno}: nests deeper than any decision.") from None
            except (ConfigurationError, ValueError) as exc:
                raise ConfigurationError(f"{args.file}, line {lineno}: {exc}") from None
            records.append((facts, ctx))
        out = list(ev.evidence_lines(records, args.format, task_classes=task_map))
    except ConfigurationError as exc:
        _err(str(exc))
        return 1
    for text in out:
        sys.stdout.write(text + "\n")
    return 0


# ---------------------------------------------------------------------- validate

_ROLE_OF = {RoutingPolicy: "policy", RoutingOptimizer: "optimizer", PriceCatalog: "catalog"}


def _cmd_validate(args: argparse.Namespace) -> int:
    from agentlanes import _bundled

    problems: list[str] = []
    warnings: list[str] = []
    by_role: dict[str, list[Loaded]] = {"policy": [], "optimizer": [], "catalog": []}
    files: Sequence[str] = args.files
    if not files:
        loaded_all = []
        for role in ("policy", "optimizer", "catalog"):
            try:
                loaded_all.append(_bundled.default_loaded(role))
            except PolicyError as exc:
                problems.extend(m for _, m in exc.problems)
        for item in loaded_all:
            by_role[_ROLE_OF[type(item.document)]].append(item)
    for path in files:
        if str(path).endswith(".toml"):  # a models file: lanes bound to servers
            try:
                from agentlanes.config import load_models

                bound = load_models(path)
            except ConfigurationError as exc:
                problems.append(str(exc))
                continue
            lanes_text = ", ".join(f"{lane} ({len(models)} model(s))" for lane, models in bound.items())
            print(f"ok: {path} (models file: {lanes_text})")
            continue
        try:
            item = load_document(path)
        except PolicyError as exc:
            problems.extend(m for _, m in exc.problems)
            continue
        warnings.extend(item.warnings)
        kind = _ROLE_OF.get(type(item.document))
        if kind is not None:
            by_role[kind].append(item)
        print(f"ok: {item.source} ({type(item.document).__name__}, {item.digest})")
    # Cross-document checks when there is one document per role to check against;
    # roles not given are taken from the bundled defaults.
    if any(by_role.values()) and all(len(v) <= 1 for v in by_role.values()):
        trio = [by_role[r][0] if by_role[r] else _bundled.default_loaded(r) for r in ("policy", "optimizer", "catalog")]
        try:
            bundle = PolicyBundle.from_loaded(*trio)
            warnings.extend(w for w in bundle.warnings if w not in warnings)
            if not files:
                for item in trio:
                    print(f"ok: {item.source} ({type(item.document).__name__}, {item.digest})")
        except PolicyError as exc:
            problems.extend(m for _, m in exc.problems)
    for w in warnings:
        _err(f"warning: {w}")
    for p in problems:
        _err(f"error: {p}")
    if problems or (args.strict and warnings):
        return 1
    return 0


# ---------------------------------------------------------------------- receipts


def _data_dir(args: argparse.Namespace) -> Path:
    from agentlanes.runtime import resolve_data_dir

    path = resolve_data_dir(getattr(args, "data_dir", None))
    if path.exists() and not path.is_dir():
        raise ConfigurationError(
            f"The data directory {path} is not a directory; pass --data-dir (or set AGENTLANES_HOME) to the "
            "directory agentlanes records runs in."
        )
    return path


def _ledger_texts(data_dir: Path, run: str | None) -> tuple[list[str], str, tuple[str, ...]]:
    """The stored records (all chains, or one run's), where they came from, and notes.

    A SQLite ledger is read without writing anything (it may be on read-only media);
    ``AGENTLANES_STORE`` names a shared store instead."""
    import anyio

    from agentlanes.stores import open_store
    from agentlanes.stores.readonly import read_ledger

    url = os.environ.get("AGENTLANES_STORE") or None
    if url is None or url.startswith("sqlite:///"):
        db = data_dir / "agentlanes.db" if url is None else Path(url[len("sqlite:///") - 1 :])
        if url is None and not data_dir.is_dir():
            raise ConfigurationError(
                f"No data directory at {data_dir}; pass --data-dir (or set AGENTLANES_HOME, or AGENTLANES_STORE "
                "for a shared store)."
            )
        snapshot = read_ledger(db, run)
        return [r.text for r in snapshot.receipts], str(db), snapshot.notes

    async def read() -> list[str]:
        store = open_store(url, data_dir)
        try:
            return [r.text for r in await store.receipts(run)]
        finally:
            await store.aclose()

    return anyio.run(read), url.split("@")[-1], ()


_MAX_LINE = 1 << 20


def _open_regular(name: str, what: str) -> IO[bytes]:
    """``name`` opened for reading, refused unless it is a regular file (a FIFO would
    block the open itself, a device would never end)."""
    import stat

    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ConfigurationError(f"Cannot read the {what} {name}: {exc.strerror}; check the path.") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigurationError(
            f"The {what} {name} is not a regular file (a FIFO, a device or a directory); "
            "agentlanes reads it only from a regular file: write the data to a file first."
        )
    return os.fdopen(fd, "rb", buffering=1 << 16)


def _text_lines(name: str, what: str) -> Iterator[str]:
    """The lines of a text input (``-``: standard input), each at most 1 MiB of UTF-8,
    from a regular file only: a FIFO or a device is refused before anything is read."""
    if name == "-" and getattr(sys.stdin, "buffer", None) is None:  # a text stream put in its place
        yield from sys.stdin
        return
    fh = sys.stdin.buffer if name == "-" else _open_regular(name, what)
    shown = "standard input" if name == "-" else name
    try:
        for lineno, raw in enumerate(iter(lambda: fh.readline(_MAX_LINE + 1), b""), start=1):
            if len(raw) > _MAX_LINE:
                raise ConfigurationError(f"The {what} {shown}, line {lineno}: longer than 1 MiB; one request per line.")
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ConfigurationError(
                    f"The {what} {shown}, line {lineno}: not UTF-8 text; pass JSON lines in UTF-8."
                ) from None
    except OSError as exc:
        raise ConfigurationError(f"Cannot read the {what} {shown}: {exc.strerror}.") from None
    finally:
        if name != "-":
            fh.close()


def _read_records_file(name: str) -> list[str]:
    """Lines of an exported records file, refusing what is not a regular text file."""
    lines: list[str] = []
    with _open_regular(name, "receipts file") as fh:
        try:
            for lineno, raw in enumerate(iter(lambda: fh.readline(_MAX_LINE + 1), b""), start=1):
                if len(raw) > _MAX_LINE:
                    raise ConfigurationError(f"{name}, line {lineno}: longer than any receipt record (over 1 MiB).")
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise ConfigurationError(
                        f"{name}, line {lineno}: not UTF-8 text (not exported receipts)."
                    ) from None
                if line.strip():
                    lines.append(line.rstrip("\n"))
        except OSError as exc:
            raise ConfigurationError(f"Cannot read the receipts file {name}: {exc.strerror}.") from None
    return lines


def _read_head(name: str) -> Any:
    from agentlanes.receipts import LedgerHead

    with _open_regular(name, "head file") as fh:
        try:
            raw = fh.read(_MAX_LINE + 1)
        except OSError as exc:
            raise ConfigurationError(f"Cannot read the head file {name}: {exc.strerror}.") from None
    if len(raw) > _MAX_LINE:
        raise ConfigurationError(f"The head file {name} is larger than any ledger head (over 1 MiB).")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise ConfigurationError(
            f"The head file {name} is not JSON; keep the output of `agentlanes receipts head` unchanged."
        ) from None
    return LedgerHead.from_json(data, source=f"The head file {name}")


def _verifying_key(args: argparse.Namespace, data_dir: Path, head: Any) -> tuple[Any, str]:
    """The key to verify with, and how it was found (said in the output)."""
    from agentlanes.receipts import data_dir_public_key, key_id_of, load_public_key, read_public_key

    if args.public_key:
        key = read_public_key(Path(args.public_key))
        how = f"verified with the pinned key {args.public_key}, {key_id_of(key)}"
    elif head is not None and head.public_key_pem is not None:
        key = load_public_key(head.public_key_pem, source=f"The public key in the head file {args.head}")
        how = f"verified with the key pinned by the head {args.head}, {key_id_of(key)}"
    else:
        key = data_dir_public_key(data_dir / "keys")
        how = (
            f"verified with the key found in the data directory, {key_id_of(key)}; "
            "pin it with --public-key to detect a swapped key"
        )
    if args.key_id and args.key_id == key_id_of(key) and not (args.public_key or head is not None):
        how = f"verified with the key found in the data directory, {key_id_of(key)}, which matches --key-id"
    if args.key_id and args.key_id != key_id_of(key):
        raise ConfigurationError(
            f"The verifying key is {key_id_of(key)}, not the pinned {args.key_id}: the public key was replaced, or "
            "the wrong one was given."
        )
    return key, how


def _cmd_receipts(args: argparse.Namespace) -> int:
    from agentlanes.receipts import data_dir_public_key, ledger_head, verify_records

    data_dir = _data_dir(args)
    try:
        if args.action == "public-key":
            if not data_dir.is_dir():
                raise ConfigurationError(
                    f"No data directory at {data_dir}, so no receipts key there; check --data-dir (or AGENTLANES_HOME)."
                )
            from cryptography.hazmat.primitives import serialization

            key = data_dir_public_key(data_dir / "keys")
            pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            print(pem.decode(), end="")
            return 0
        if args.action == "export":
            texts, _, export_notes = _ledger_texts(data_dir, args.run)
            for note in export_notes:
                _err(f"note: {note}")
            if args.output:
                # the records name runs, lanes, reasons and costs: 0600 like the ledger
                write_private(Path(args.output), "".join(text + "\n" for text in texts).encode("utf-8"))
                print(f"exported {len(texts)} record(s) to {args.output}", file=sys.stderr)
            else:
                for text in texts:
                    sys.stdout.write(text + "\n")
            return 0
        head = _read_head(args.head) if getattr(args, "head", None) else None
        key, how = _verifying_key(args, data_dir, head)
        notes: tuple[str, ...] = ()
        if getattr(args, "file", None):
            texts = _read_records_file(args.file)
            source = args.file
        else:
            texts, source, notes = _ledger_texts(data_dir, None)
    except BrokenPipeError:
        raise  # the reader went away: main() ends quietly
    except (ConfigurationError, OSError) as exc:
        if isinstance(exc, ConfigurationError):
            _err(str(exc))
        else:
            where = f"{exc.filename}: " if exc.filename else ""
            _err(f"{where}{exc.strerror or exc}; check the path and its permissions.")
        return 1
    for note in notes:
        _err(f"note: {note}")
    report = verify_records(texts, key, head=head, partial=getattr(args, "partial", False))
    if report.problem is not None:
        _err(f"receipt verification failed in {source}: {report.problem[1]}")
        return 1
    if args.action == "head":
        text = json.dumps(ledger_head(texts, key).to_json(), indent=2) + "\n"
        if report.ledger_entries == 0:
            _err("note: no run has been closed in this ledger yet; the head is empty (count 0)")
        if args.output:
            try:
                write_private(Path(args.output), text.encode("utf-8"))
            except OSError as exc:
                _err(f"Cannot write the head to {args.output}: {exc.strerror}.")
                return 1
        else:
            sys.stdout.write(text)
        return 0
    print(f"ok: {report.receipts} receipt(s) in {report.runs} run chain(s) verified ({source})")
    if report.ledger_entries:
        print(
            f"anchored: {report.closed} run(s) closed in a ledger chain of {report.ledger_entries} entr"
            f"{'y' if report.ledger_entries == 1 else 'ies'}, head {report.head_digest}"
        )
    if head is not None:
        print(f"extends the head {args.head} ({head.count} entr{'y' if head.count == 1 else 'ies'}, {head.digest})")
    for note in report.notes:
        print(f"note: {note}")
    print(how)
    return 0


# ---------------------------------------------------------------- runs / replay


def _cmd_runs(args: argparse.Namespace) -> int:
    import anyio

    from agentlanes.history import list_runs

    data_dir = _data_dir(args)
    found = anyio.run(functools.partial(list_runs, data_dir, repair=args.repair))
    runs = [r for r in found if isinstance(r, dict) and isinstance(r.get("runId"), str)]
    if len(runs) < len(found):
        _err(f"note: {len(found) - len(runs)} damaged run index entr(y/ies) in {data_dir} skipped (no runId).")
    if args.json:
        print(json.dumps(runs, indent=2))
        return 0
    if args.repair:
        marked = [r for r in runs if r.get("repaired")]
        print(
            f"marked {len(marked)} run(s) abandoned (their lease passed and their process is gone)"
            + "".join(f"\n  {r['runId']}" for r in marked)
        )
    if not runs:
        print(f"no runs recorded in {data_dir}")
        return 0

    def text(r: dict[str, Any], key: str, default: str = "") -> str:
        value = r.get(key)
        return default if value is None else str(value)

    print(f"{'run':<26} {'started':<24} {'task class':<22} {'status':<10} {'cost':>10} {'receipts':>8}  trace")
    for r in runs:
        print(
            f"{r['runId']:<26} {text(r, 'startedAt'):<24} {text(r, 'taskClass'):<22} "
            f"{text(r, 'status'):<10} {text(r, 'cost'):>10} {text(r, 'receipts', '0'):>8}  "
            f"{text(r, 'tracePath') or '-'}"
        )
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from agentlanes.history import find_trace, render_timeline

    try:
        path = find_trace(_data_dir(args), args.run)
        print(render_timeline(path))
    except (ConfigurationError, ValueError) as exc:
        _err(str(exc))
        return 1
    return 0


def _exact_replay(args: argparse.Namespace) -> int:
    """Exit status: 0 every run replayed identically, 1 one diverged, 2 unusable input."""
    import anyio

    from agentlanes.errors import ReplayDivergence
    from agentlanes.replay import replay

    data_dir = _data_dir(args)
    bundle = None
    if args.policy or args.optimizer or args.price_catalog:
        try:
            bundle = _Cache().router(args.policy, args.optimizer, args.price_catalog).bundle
        except ConfigurationError as exc:
            _err(str(exc))
            return 2
    status = 0
    for run in args.runs:
        try:
            report = anyio.run(
                functools.partial(
                    replay,
                    run,
                    entry=args.entry,
                    chain=args.chain,
                    data_dir=data_dir,
                    bundle=bundle,
                    live_tools=args.live_tools,
                )
            )
        except ReplayDivergence as exc:
            _err(f"{run}: DIVERGED. {exc}")
            status = max(status, 1)
            continue
        except (AgentLanesError, OSError) as exc:
            _err(f"{run}: cannot be replayed: {exc}")
            status = 2
            continue
        suffix = "" if report.complete else " (the run never finished; replayed up to where its record ends)"
        print(f"{report.run_id}: replayed exactly, {report.steps} step(s) identical to the record{suffix}")
    return status


def _cmd_replay(args: argparse.Namespace) -> int:
    from agentlanes.history import counterfactual, find_trace

    documents = bool(args.policy or args.optimizer or args.price_catalog)
    if not documents or args.entry or args.chain:
        if args.check:
            _err("--check applies to a counterfactual replay (--policy / --optimizer / --price-catalog).")
            return 2
        return _exact_replay(args)
    try:
        paths = [find_trace(_data_dir(args), r) for r in args.runs]
        router = _Cache().router(args.policy, args.optimizer, args.price_catalog)
        report = counterfactual(paths, router)
    except (AgentLanesError, OSError) as exc:
        _err(str(exc))
        return 2
    print(json.dumps(report.to_json(), indent=2) if args.json else report.table())
    changed = [c for c in report.changes if c.new_lane != c.recorded_lane]
    if args.check and changed:
        _err(f"{len(changed)} recorded decision(s) would take another lane (or none) under these documents.")
        return 1
    return 0


# ------------------------------------------------------------------------- demo


def _cmd_demo(args: argparse.Namespace) -> int:
    from agentlanes.demo import main as demo_main

    argv = [
        *(["--task", args.task] if args.task else []),
        *(["--data-dir", args.data_dir] if args.data_dir else []),
        *(["--models", args.models] if args.models else []),
    ]
    return demo_main(argv)


# ------------------------------------------------------------------------- main


def _err(message: str) -> None:
    print(f"agentlanes: {message}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="agentlanes",
        description="Route agent stages to the cheapest lane that can safely do them.",
    )
    parser.add_argument("--version", action="version", version=f"agentlanes {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    route = sub.add_parser("route", help="decide which lane may run a stage")
    route.add_argument("--policy", help="routing policy document (default: bundled)")
    route.add_argument("--optimizer", help="budget/resource optimizer document (default: bundled)")
    route.add_argument("--price-catalog", help="model price catalog document (default: bundled)")
    route.add_argument("--resources", metavar="FILE", help="resource signals (JSON object); required")
    route.add_argument("--task-class", help="task class of the policy, e.g. routine-code")
    route.add_argument("--stage", help="chain stage, e.g. planning")
    route.add_argument("--risk-class", default="medium", help="risk class (default: medium)")
    route.add_argument("--requested-lane", choices=list(LANES), help="lane the caller asks for")
    route.add_argument("--escalation-reason", help="one of the policy's allowed escalation reasons")
    route.add_argument("--budget-window", default="task", help="budget window (default: task)")
    route.add_argument("--budget-remaining", type=float, default=2.0, help="money left (default: 2.0)")
    route.add_argument(
        "--deterministic",
        action="store_true",
        help="the stage has a deterministic verifier or tool (routes to no-model)",
    )
    route.add_argument(
        "--format",
        choices=["native", "upstream"],
        default="native",
        help="native agentlanes form or the upstream AgentExecutionRouteDecision",
    )
    route.add_argument("--compact", action="store_true", help="one-line JSON")
    route.add_argument(
        "--batch", metavar="FILE", help="decide one JSON request per line of FILE ('-' for stdin); one output line each"
    )
    route.add_argument("--findings", metavar="FILE", help="sandbox findings document (CONTRACT D1)")
    route.add_argument(
        "--ceiling", metavar="FILE", action="append", help="routing-ceiling document (CONTRACT D2); repeatable"
    )
    _add_binding_flags(route)
    route.set_defaults(func=_cmd_route)

    bind = sub.add_parser("bind", help="decide a local + personal route binding alone (CONTRACT D3)")
    _add_binding_flags(bind)
    bind.add_argument("--resources", metavar="FILE", help="resource signals (local health, network)")
    bind.add_argument("--compact", action="store_true", help="one-line JSON")
    bind.set_defaults(func=_cmd_bind)

    evidence = sub.add_parser(
        "evidence", help="agentplane lane receipts, guardrail decisions and evidence journals (CONTRACT D4)"
    )
    esub = evidence.add_subparsers(dest="action", required=True, metavar="ACTION")
    conv = esub.add_parser(
        "convert", help="evidence from native decisions (JSON lines; each a decision or {decision, context})"
    )
    conv.add_argument("file", help="JSON lines of native decisions ('-' for stdin)")
    conv.add_argument(
        "--format", required=True, choices=["agentplane-lane-receipts", "guardrail-decisions", "evidence-journal"]
    )
    conv.add_argument("--run-id", default="cli", help="run id for lines without a context (default: cli)")
    conv.add_argument("--issued-at", metavar="ISO-TIME", help="time for lines without a context (default: now)")
    conv.add_argument(
        "--task-class-map",
        metavar="TASK=CLASS",
        action="append",
        help="agentplane task class for a task class outside agentlanes.mapping/1; repeatable",
    )
    conv.add_argument("--policy", help="routing policy the decisions were made under (default: bundled)")
    export = esub.add_parser("export", help="a recorded run's evidence as JSON lines on standard output")
    export.add_argument("run", metavar="RUN_OR_TRACE", help="a run id or its trace file")
    export.add_argument(
        "--format", required=True, choices=["agentplane-lane-receipts", "guardrail-decisions", "evidence-journal"]
    )
    export.add_argument("--data-dir", help="data directory (default: AGENTLANES_HOME or ./.agentlanes)")
    export.add_argument(
        "--task-class-map",
        metavar="TASK=CLASS",
        action="append",
        help="agentplane task class for a task class outside agentlanes.mapping/1; repeatable",
    )
    export.add_argument("--policy", help="the routing policy the run used (default: bundled)")
    export.add_argument("--optimizer", help="the optimizer the run used (default: bundled)")
    export.add_argument("--price-catalog", help="the price catalog the run used (default: bundled)")
    chk = esub.add_parser("check-receipts", help="check ModelRoutingLaneDecisionReceipt documents (JSON lines)")
    chk.add_argument("file", help="JSON lines ('-' for stdin)")
    vj = esub.add_parser("verify-journal", help="verify an evidence journal's hash chain")
    vj.add_argument("file", help="the journal ('-' for stdin)")
    evidence.set_defaults(func=_cmd_evidence)

    demo = sub.add_parser("demo", help="run the demo chain offline (plan, patch, verify, escalate, receipt)")
    demo.add_argument("--task", help="task description passed to the planning stage")
    demo.add_argument("--data-dir", help="where the run is recorded (default: AGENTLANES_HOME or ./.agentlanes)")
    demo.add_argument(
        "--models", metavar="PATH", help="a models file (TOML) binding lanes to OpenAI-compatible servers"
    )
    demo.set_defaults(func=_cmd_demo)

    receipts = sub.add_parser("receipts", help="export, verify or anchor the signed escalation receipts")
    rsub = receipts.add_subparsers(dest="action", required=True, metavar="ACTION")
    exp = rsub.add_parser("export", help="write the stored records as JSON lines, in chain order")
    exp.add_argument("--run", help="only this run's chain (verify such a file with --partial)")
    exp.add_argument("-o", "--output", help="file to write (default: stdout)")
    ver = rsub.add_parser("verify", help="verify an exported file, or the ledger when no file is given")
    ver.add_argument("file", nargs="?", help="exported records (JSON lines)")
    ver.add_argument("--head", metavar="FILE", help="a head kept from `receipts head`: the ledger must extend it")
    ver.add_argument("--partial", action="store_true", help="the file holds some runs only (`export --run`)")
    head = rsub.add_parser("head", help="print the ledger's signed head (JSON), to keep outside the data directory")
    head.add_argument("-o", "--output", help="file to write (default: stdout)")
    for p in (ver, head):
        p.add_argument("--public-key", metavar="FILE", help="PEM public key to verify with (pins the key)")
        p.add_argument("--key-id", metavar="ID", help="refuse any key but this one (ed25519:...)")
    pk = rsub.add_parser("public-key", help="print the receipts public key (PEM); never creates one")
    for p in (exp, ver, head, pk):
        p.add_argument("--data-dir", help="data directory (default: AGENTLANES_HOME or ./.agentlanes)")
    receipts.set_defaults(func=_cmd_receipts)

    runs = sub.add_parser("runs", help="list recorded runs")
    runs.add_argument("--json", action="store_true", help="JSON instead of a table")
    runs.add_argument(
        "--repair",
        action="store_true",
        help="first mark runs whose lease passed and whose process is gone as abandoned",
    )
    runs.set_defaults(func=_cmd_runs)
    show = sub.add_parser("show", help="draw a recorded run as a timeline")
    show.add_argument("run", help="run id or trace file")
    show.set_defaults(func=_cmd_show)
    replay = sub.add_parser(
        "replay",
        help="replay recorded runs exactly (no network; exit 0 identical, 1 diverged, 2 unusable input), or "
        "re-decide them under other documents (counterfactual)",
    )
    replay.add_argument("runs", nargs="+", metavar="RUN_OR_TRACE", help="run ids or trace files")
    replay.add_argument(
        "--policy", help="routing policy to re-decide under (with --entry/--chain: the one the run used)"
    )
    replay.add_argument("--optimizer", help="optimizer to re-decide under (with --entry/--chain: the run's)")
    replay.add_argument("--price-catalog", help="price catalog to re-decide under (with --entry/--chain: the run's)")
    replay.add_argument("--json", action="store_true", help="JSON report instead of a table")
    replay.add_argument(
        "--entry",
        metavar="MODULE:FUNCTION",
        help="the code that made the run: async def main(lanes), called again with lanes served from the record "
        "(also path/to/file.py:FUNCTION)",
    )
    replay.add_argument(
        "--chain",
        metavar="MODULE:ATTR",
        help="a declared chain (or a function returning one) to replay; the bundled chains need no flag",
    )
    replay.add_argument(
        "--live-tools",
        action="store_true",
        help="run recorded tools for real, in a scratch copy of the run's workspace (default: served from the record)",
    )
    replay.add_argument(
        "--check", action="store_true", help="counterfactual: exit 1 when any recorded decision would change lane"
    )
    replay.set_defaults(func=_cmd_replay)
    for p in (runs, show, replay):
        p.add_argument("--data-dir", help="data directory (default: AGENTLANES_HOME or ./.agentlanes)")

    validate = sub.add_parser("validate", help="validate routing documents")
    validate.add_argument(
        "files", nargs="*", help="documents to check (default: the bundled ones); a .toml file is a models file"
    )
    validate.add_argument("--strict", action="store_true", help="treat warnings as errors")
    validate.set_defaults(func=_cmd_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    budget = getattr(args, "budget_remaining", None)
    if budget is not None and not math.isfinite(budget):
        _err(f"--budget-remaining {budget!r} is not a finite amount of money; pass one such as 2.0.")
        return 2
    try:
        result: int = args.func(args)
    except BrokenPipeError:
        return 0
    except AgentLanesError as exc:  # every command handles its own; this is the net under them
        _err(str(exc))
        return 1
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        _err(f"cannot use{where}: {exc.strerror or exc}; check the path and its permissions.")
        return 1
    return result
