"""Request and reply bodies of the broker's request/reply operations.

The operation is the last token of the rpc subject (``<prefix>.<colony>.rpc.<caller>.<op>``),
so each body is a plain Struct and the broker picks the decoder from the subject. Every reply
is a :class:`Reply`: either ``result`` (raw JSON, decoded by the caller into the type it
expects) or ``error``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from colonyos.errors import ErrorReply
from colonyos.models import Colony, Executor, FunctionSpec, Model, ProcessState

__all__ = [
    "AddChild",
    "Assign",
    "Close",
    "ColonyAdd",
    "Empty",
    "Fail",
    "GraphRef",
    "Heartbeat",
    "ListGraphs",
    "ListProcesses",
    "LogLines",
    "Named",
    "Outcome",
    "ProcessRef",
    "Register",
    "Rejection",
    "RemoveAll",
    "Removed",
    "Reply",
    "Resolve",
    "Results",
    "Revoke",
    "Stats",
]


class Empty(Model, kw_only=True):
    pass


class Assign(Model, kw_only=True):
    timeout: float = 10.0
    # For ``assign_many``: how many processes at most. It waits (up to ``timeout``) for the
    # first; the others are those assignable at that moment.
    count: int = 1


class ProcessRef(Model, kw_only=True):
    process_id: str


class Close(Model, kw_only=True):
    process_id: str
    output: list[Any] = msgspec.field(default_factory=list, name="out")
    # The process's retries when it was assigned: refuses a close from an earlier attempt.
    attempt: int | None = None


class Fail(Model, kw_only=True):
    process_id: str
    errors: list[str] = msgspec.field(default_factory=list)
    attempt: int | None = None


class Results(Model, kw_only=True):
    """Several finished processes in one request: the closed (SUCCESS) and the failed."""

    closes: list[Close] = msgspec.field(default_factory=list)
    fails: list[Fail] = msgspec.field(default_factory=list)


class Outcome(Model, kw_only=True, omit_defaults=True):
    """The answer to one item of :class:`Results`: accepted, or the error that refused it."""

    process_id: str
    error: ErrorReply | None = None


class LogLines(Model, kw_only=True):
    process_id: str
    lines: list[str]
    attempt: int | None = None


class Heartbeat(Model, kw_only=True):
    """Published by a live executor on its heartbeat subject, with what it is running."""

    executor_id: str
    running: list[str] = msgspec.field(default_factory=list)


class ListProcesses(Model, kw_only=True):
    state: ProcessState | None = None
    executor_type: str = ""
    label: str = ""
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100


class AddChild(Model, kw_only=True):
    """Add a process to a running process's graph: after it (a branch), or between it and its
    children (``insert``)."""

    process_graph_id: str
    parent_process_id: str
    spec: FunctionSpec
    insert: bool = False
    attempt: int | None = None


class GraphRef(Model, kw_only=True):
    process_graph_id: str


class Resolve(Model, kw_only=True):
    """Complete an id prefix to the one process (or, with ``graph``, process graph) of the
    colony whose id begins with it."""

    prefix: str
    graph: bool = False


class ListGraphs(Model, kw_only=True):
    limit: int = 20


class Stats(Model, kw_only=True):
    """Counts for a live status view."""

    states: dict[str, int] = msgspec.field(default_factory=dict)
    executor_types: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)


class Revoke(Model, kw_only=True):
    """To an executor, on its control subject: a process it runs was taken from it."""

    process_id: str
    state: ProcessState
    reason: str = ""


class Register(Model, kw_only=True):
    executor: Executor


class Named(Model, kw_only=True):
    name: str


class ColonyAdd(Model, kw_only=True):
    colony: Colony


class RemoveAll(Model, kw_only=True):
    """Remove every process of the colony in one state (never RUNNING) that is not part of a
    process graph; optionally only those of one executor type."""

    state: ProcessState
    executor_type: str = ""


class Removed(Model, kw_only=True):
    """How many processes a removal took away."""

    count: int = 0


class Rejection(Model, kw_only=True):
    """Body of a ``rejected`` event: a submission that did not become a process."""

    process_id: str
    colony_name: str
    executor_type: str
    error: str
    code: str = "invalid"
    path: str = ""


_NULL = msgspec.Raw(b"null")


class Reply(msgspec.Struct, kw_only=True, omit_defaults=True):
    result: msgspec.Raw = _NULL
    error: ErrorReply | None = None

    @property
    def is_empty(self) -> bool:
        return bytes(self.result) == b"null"
