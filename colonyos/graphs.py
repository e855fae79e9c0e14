"""Process graphs (workflows): checking a workflow spec, and a graph's state. Pure.

A workflow is a list of function specs; ``conditions.dependencies`` names the ``nodename``s of
a spec's parents. A child runs only after all its parents succeeded, and its input is their
outputs concatenated in the order of its ``dependencies``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from colonyos.errors import InvalidSpecError
from colonyos.models import ProcessState, WorkflowSpec

__all__ = ["check_workflow", "graph_state", "node_process_id", "topological_order"]


def node_process_id(graph_id: str, index: int) -> str:
    """The process id of a workflow's i-th spec: the same on every delivery of the workflow."""
    return hashlib.sha256(f"{graph_id}:{index}".encode()).hexdigest()


def _invalid(path: str, reason: str, **detail: object) -> InvalidSpecError:
    return InvalidSpecError(f"{path}: {reason}", path=path, reason=reason, **detail)


def check_workflow(workflow: WorkflowSpec) -> list[str]:
    """Names, dependencies and acyclicity; returns the node names in topological order."""
    specs = workflow.function_specs
    if not specs:
        raise _invalid("$.functionspecs", "a workflow needs at least one function spec")
    names: dict[str, int] = {}
    for i, spec in enumerate(specs):
        name = spec.node_name
        if not name:
            raise _invalid(f"$[{i}].nodename", "required in a workflow (dependencies name nodes)")
        if name in names:
            raise _invalid(
                f"$[{i}].nodename",
                f"node {name!r} appears twice (specs {names[name]} and {i})",
                nodes=[name],
            )
        names[name] = i
    for i, spec in enumerate(specs):
        unknown = [d for d in spec.conditions.dependencies if d not in names]
        if unknown:
            raise _invalid(
                f"$[{i}].conditions.dependencies",
                f"node {spec.node_name!r} depends on unknown node(s) "
                + ", ".join(map(repr, unknown)),
                nodes=unknown,
            )
        repeated = {
            d for d in spec.conditions.dependencies if spec.conditions.dependencies.count(d) > 1
        }
        if repeated:
            raise _invalid(
                f"$[{i}].conditions.dependencies",
                f"node {spec.node_name!r} names {', '.join(map(repr, sorted(repeated)))} twice",
                nodes=sorted(repeated),
            )
    edges = {s.node_name: list(s.conditions.dependencies) for s in specs}
    return topological_order(edges)


def topological_order(parents: dict[str, list[str]]) -> list[str]:
    """Kahn's algorithm; a cycle is an error naming the nodes on it."""
    children: dict[str, list[str]] = {n: [] for n in parents}
    missing = {n: len(ps) for n, ps in parents.items()}
    for node, ps in parents.items():
        for p in ps:
            children[p].append(node)
    ready = [n for n, count in missing.items() if count == 0]
    order: list[str] = []
    while ready:
        node = ready.pop(0)
        order.append(node)
        for child in children[node]:
            missing[child] -= 1
            if missing[child] == 0:
                ready.append(child)
    if len(order) < len(parents):
        cycle = _a_cycle({n: ps for n, ps in parents.items() if n not in set(order)})
        raise _invalid(
            "$",
            f"the workflow has a cycle: {' -> '.join(cycle)}",
            nodes=cycle,
        )
    return order


def _a_cycle(parents: dict[str, list[str]]) -> list[str]:
    """One cycle among nodes that all lie on or behind a cycle (following parent links)."""
    node = next(iter(parents))
    seen: list[str] = []
    while node not in seen:
        seen.append(node)
        node = next(p for p in parents[node] if p in parents)
    cycle = seen[seen.index(node) :]
    cycle.reverse()  # parent -> child reads as the data flows
    return [*cycle, cycle[0]]


def graph_state(states: Iterable[ProcessState]) -> ProcessState:
    """FAILED if any failed, CANCELLED if any was cancelled, SUCCESS when all succeeded,
    RUNNING once any started, else WAITING."""
    seen = list(states)
    if ProcessState.FAILED in seen:
        return ProcessState.FAILED
    if ProcessState.CANCELLED in seen:
        return ProcessState.CANCELLED
    if seen and all(s is ProcessState.SUCCESS for s in seen):
        return ProcessState.SUCCESS
    if any(s is not ProcessState.WAITING for s in seen):
        return ProcessState.RUNNING
    return ProcessState.WAITING
