"""Hypothesis strategies for what users and strangers send: bytes, any JSON, and JSON shaped like
a function spec, a workflow or a request, with values of every type and size in its fields."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

# Names that are valid subject tokens (colonies, executor types, callers).
tokens = st.from_regex(r"[a-z][a-z0-9_-]{0,11}", fullmatch=True)

# Numbers at and beyond every bound: Go's int range, JSON's doubles, the edges of each limit.
edge_ints = st.sampled_from(
    [
        0,
        1,
        -1,
        2,
        50_000,
        50_001,
        -50_001,
        200_000,
        2**31,
        2**53 + 1,
        2**63,
        -(2**63) - 1,
        10**15,
        10**30,
    ]
)
any_int = st.one_of(st.integers(), edge_ints)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    any_int,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=20,
)

_SPEC_KEYS = [
    *("nodename", "funcname", "args", "kwargs", "priority", "maxwaittime", "maxexectime"),
    *("maxretries", "conditions", "label", "fs", "env", "channels"),
]
_CONDITION_KEYS = [
    *("colonyname", "executornames", "executortype", "locationname", "dependencies", "nodes"),
    *("cpu", "processes", "processespernode", "mem", "storage", "gpu", "walltime"),
]


def _fields(keys: list[str], base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """``base`` with some of ``keys`` replaced by arbitrary values, and some removed."""
    values = st.one_of(edge_ints, edge_ints, json_values, st.sampled_from(["500m", "10Gi", ""]))
    overrides = st.dictionaries(st.sampled_from(keys), values, max_size=3)
    removed = st.sets(st.sampled_from(keys), max_size=2)

    def build(extra: dict[str, Any], gone: set[str]) -> dict[str, Any]:
        merged = {**base, **extra}
        return {k: v for k, v in merged.items() if k not in gone}

    return st.builds(build, overrides, removed)


def spec_like(executor_type: str = "echo") -> st.SearchStrategy[dict[str, Any]]:
    conditions = _fields(_CONDITION_KEYS, {"executortype": executor_type})
    base = st.builds(lambda c: {"funcname": "echo", "args": ["fuzz"], "conditions": c}, conditions)
    return base.flatmap(lambda b: _fields(_SPEC_KEYS, b))


def workflow_like() -> st.SearchStrategy[Any]:
    node = st.builds(
        lambda spec, name, deps: {
            **spec,
            "nodename": name,
            "conditions": {
                **(spec.get("conditions") if isinstance(spec.get("conditions"), dict) else {}),
                "dependencies": deps,
            },
        },
        spec_like(),
        st.sampled_from(["a", "b", "c", "d"]),
        st.lists(st.sampled_from(["a", "b", "c", "d", "zz"]), max_size=3),
    )
    nodes = st.lists(node, max_size=5)
    return st.one_of(nodes, st.builds(lambda n: {"functionspecs": n}, nodes))


def encoded(values: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return values.map(lambda v: json.dumps(v).encode())


def bodies(shaped: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """What arrives on a subject: bytes, any JSON, or JSON of the expected shape (most often)."""
    return st.one_of(
        st.binary(max_size=300),
        encoded(json_values),
        encoded(shaped),
        encoded(shaped),
    )


def request_like(fields: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """A request body with the operation's own field names and arbitrary values."""
    keys = st.sampled_from(fields) if fields else st.text(max_size=8)
    return st.dictionaries(keys, st.one_of(json_values, any_int, tokens), max_size=len(fields) + 1)
