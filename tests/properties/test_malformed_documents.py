"""10,000 generated malformed documents: every one ends in a PolicyError, nothing else."""

from __future__ import annotations

import contextlib
import copy
import json
import random
from typing import Any

from agentlanes import PolicyBundle, PolicyError, RouteInputError, Router, RouteRequest
from agentlanes.policy import load_document, parse_json
from tests.conftest import bundled_json, healthy

DOCS = {"policy": bundled_json("policy.json"), "optimizer": bundled_json("optimizer.json"),
        "catalog": bundled_json("price-catalog.json")}
ODD_VALUES: list[Any] = [None, True, False, 0, -1, 1, 2**70, -1e308, 0.5, 1e308, "", "x", "pro", "turbo", "v0.1",
                         [], [None], ["no-model"], {}, {"kind": "x"}, "urn:socioprophet:model-routing-policy:x"]


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(rng: random.Random, doc: Any) -> Any:
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(_paths(doc)[1:])
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        op = rng.random()
        if op < 0.3 and isinstance(parent, dict):
            del parent[last]
        elif op < 0.4 and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[last]))
        else:
            parent[last] = rng.choice(ODD_VALUES)
    return doc


def _text_mutate(rng: random.Random, doc: Any) -> str:
    text = json.dumps(doc)
    op = rng.random()
    i = rng.randrange(len(text))
    if op < 0.4:
        return text[:i]
    if op < 0.7:
        return text[:i] + rng.choice(['"', "{", "]", ",", "NaN", "\\u", "\x00", "Infinity", "-"]) + text[i + 1:]
    return text.replace('"', "'", rng.randint(1, 3))


def test_ten_thousand_malformed_documents_all_end_in_policy_error() -> None:
    rng = random.Random(20261122)
    intact = {r: load_document(d) for r, d in DOCS.items()}
    failures: list[PolicyError] = []
    survivors = 0
    for n in range(12000):
        role = rng.choice(list(DOCS))
        try:
            if n % 4 == 0:
                data = parse_json(_text_mutate(rng, DOCS[role]), source=f"fuzz-{n}.json")
            else:
                data = _mutate(rng, DOCS[role])
            docs = dict(intact)
            docs[role] = load_document(data, source=f"fuzz-{n}.json")
            bundle = PolicyBundle.from_loaded(docs["policy"], docs["optimizer"], docs["catalog"])
        except PolicyError as exc:
            failures.append(exc)
            continue
        # The mutation happened to leave a valid document: it must still route.
        survivors += 1
        with contextlib.suppress(RouteInputError):
            Router(bundle).decide(RouteRequest(task_class="routine-code", stage="planning", signals=healthy()))
    assert len(failures) >= 10000, (len(failures), survivors)
    # every one says what is wrong and where
    assert all(str(exc) and exc.problems for exc in failures)
