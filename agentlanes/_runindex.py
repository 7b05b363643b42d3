"""The run index's view of runs that never ended: leases, owners, and repair.

A run's index entry is written when it starts (status ``running``) and again when it
ends. A process killed in between leaves ``running`` behind forever, unless something
notices. So a started run's entry names its owner (host, process id and that process's
start time, which tells a reused pid apart) and a lease (``leaseUntil``); the run renews
the lease as it goes (at most once per half lease, when a stage is routed). A run is
**abandoned** when its lease has passed and its owner is gone: on this host, its
process is not running any more (or the pid now belongs to another process); on another
host, the lease alone decides. :func:`repair` marks such runs ``abandoned`` in the
index; a run that comes back after all (a stage longer than its lease, on another host)
overwrites that with how it really ended.

:func:`with_ledger_counts` gives each entry the receipt count of its chain in the
store's ledger, which a run killed after writing a receipt still has (its index entry,
written at its start, says 0).
"""

from __future__ import annotations

import inspect
import json
import os
import socket
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["DEFAULT_LEASE", "abandoned", "lease_fields", "lease_until", "owner", "repair", "with_ledger_counts"]

DEFAULT_LEASE = 600.0
"""Seconds a run's lease lasts between renewals (``Lanes(run_lease=...)``)."""


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), or ``None``
    where that cannot be read (not Linux, or no such process)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read(4096)
    except OSError:
        return None
    # the command name is in parentheses and may hold spaces: fields count after the last ')'
    fields = data[data.rfind(b")") + 2 :].split()
    return fields[19].decode() if len(fields) > 19 else None


_OWNER: dict[str, Any] = {}  # this process as an owner, read on first use (not at import: /proc, the host name)


def _host() -> str:
    if "host" not in _OWNER:
        _OWNER["host"] = socket.gethostname()
    host: str = _OWNER["host"]
    return host


def owner() -> dict[str, Any]:
    """This process, as a run's owner."""
    pid = os.getpid()
    if _OWNER.get("pid") != pid:  # first use, or forked
        _OWNER.update(host=_host(), pid=pid, since=_process_start(pid))
    return dict(_OWNER)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def lease_until(now: float, lease: float) -> str:
    """A run's ``leaseUntil``: ``lease`` seconds after ``now`` (epoch seconds)."""
    return _iso(now + lease)


def lease_fields(now: float, lease: float) -> dict[str, Any]:
    """The owner and lease a started run's entry carries."""
    return {"owner": owner(), "leaseUntil": lease_until(now, lease)}


def _seconds(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _owner_alive(who: Any) -> bool | None:
    """Whether a run's owner still runs: ``True``/``False`` on this host, ``None``
    (unknown) for another host or an entry without an owner."""
    if not isinstance(who, Mapping) or who.get("host") != _host():
        return None
    pid = who.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 1 << 31:
        return None  # not a process id (os.kill of a larger one would overflow)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        pass  # it exists (another user's process): compare its start time
    since = who.get("since")
    # a different start time: the pid was reused by another process
    return since is None or _process_start(pid) in (None, since)


def abandoned(entry: Mapping[str, Any], now: float) -> bool:
    """Whether a ``running`` entry's run is gone: its lease passed and its owner is
    not running on this host (or is on another host, where the lease decides)."""
    if entry.get("status") != "running":
        return False
    until = _seconds(entry.get("leaseUntil"))
    if until is None:
        # written before leases existed: a run started over a day ago is taken as gone
        started = _seconds(entry.get("startedAt"))
        if started is None or now - started < 86_400:
            return False
    elif now < until:
        return False
    return _owner_alive(entry.get("owner")) is not True


async def repair(store: Any, *, now: float | None = None) -> list[dict[str, Any]]:
    """Mark every abandoned run ``abandoned`` in ``store``'s index; the entries marked."""
    now = time.time() if now is None else now
    conditional = "only_if" in inspect.signature(store.record_run).parameters
    marked = []
    for entry in await store.runs():
        if isinstance(entry, Mapping) and isinstance(entry.get("runId"), str) and abandoned(entry, now):
            update = {"runId": entry["runId"], "status": "abandoned", "abandonedAt": _iso(now)}
            if conditional:
                # only while it is the entry that was read: a run that ended (or renewed
                # its lease) meanwhile keeps what it wrote
                seen = {"status": "running", "leaseUntil": entry.get("leaseUntil")}
                if not await store.record_run(update, only_if=seen):
                    continue
            else:  # a store of someone else's, without conditional writes
                await store.record_run(update)
            marked.append({**entry, **update})
    return marked


def with_ledger_counts(entries: Iterable[Mapping[str, Any]], receipts: Iterable[Any]) -> list[dict[str, Any]]:
    """The entries with ``receipts`` counted from the ledger: escalation receipts in
    each run's chain (its closing record and the ledger's own chain aside)."""
    from agentlanes.receipts import PAYLOAD_TYPE

    counts: dict[str, int] = {}
    for stored in receipts:
        try:
            kind = json.loads(stored.text)["envelope"]["payloadType"]
        except (ValueError, TypeError, KeyError, RecursionError):
            continue  # not a record agentlanes wrote: `receipts verify` says so
        if kind == PAYLOAD_TYPE:
            counts[stored.run_id] = counts.get(stored.run_id, 0) + 1
    out = []
    for entry in entries:
        row = dict(entry)
        row["receipts"] = counts.get(str(entry.get("runId")), 0)
        out.append(row)
    return out
