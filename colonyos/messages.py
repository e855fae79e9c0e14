"""Request and reply bodies of the broker's request/reply operations.

The operation is the last token of the rpc subject (``<prefix>.<colony>.rpc.<caller>.<op>``),
so each body is a plain Struct and the broker picks the decoder from the subject. Every reply
is a :class:`Reply`: either ``result`` (raw JSON, decoded by the caller into the type it
expects) or ``error``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, TypeAlias

import msgspec
from msgspec import Meta

from colonyos import limits
from colonyos.errors import ErrorReply
from colonyos.models import (
    ZERO_TIME,
    Colony,
    Executor,
    ExecutorState,
    FunctionSpec,
    Model,
    ProcessState,
)

__all__ = [
    "AddChild",
    "Assign",
    "Close",
    "ColonyAdd",
    "Control",
    "Empty",
    "ExecutorFit",
    "Explanation",
    "Fail",
    "GraphRef",
    "Heartbeat",
    "Instance",
    "ListGraphs",
    "ListProcesses",
    "LogLines",
    "Named",
    "Outcome",
    "ParentState",
    "ProcessRef",
    "Register",
    "Rejection",
    "Release",
    "RemoveAll",
    "Removed",
    "Replaced",
    "Reply",
    "Resolve",
    "Results",
    "Revoke",
    "StateChanged",
    "Stats",
    "WhoIs",
]


# Numbers in requests, bounded where they enter (colonyos.limits): the broker refuses a request
# outside them with an error naming the field ("bad assign request: $.count: ...").
AssignTimeout = Annotated[float, Meta(ge=0, le=limits.MAX_ASSIGN_TIMEOUT_S)]
AssignCount = Annotated[int, Meta(ge=1, le=limits.MAX_ASSIGN_COUNT)]
ListLimit = Annotated[int, Meta(ge=0, le=limits.MAX_LIST_LIMIT)]
# The process's ``retries`` when it was assigned.
Attempt = Annotated[int, Meta(ge=0, le=limits.MAX_RETRIES)]


class Empty(Model, kw_only=True):
    pass


class Assign(Model, kw_only=True):
    timeout: AssignTimeout = 10.0
    # For ``assign_many``: how many processes at most. It waits (up to ``timeout``) for the
    # first; the others are those assignable at that moment.
    count: AssignCount = 1
    # Colonies' bounds on this assign ("4", "500m"; "16Gi"): empty means no bound. They narrow
    # what the executor registered, less what its running processes hold; never widen it.
    available_cpu: str = ""
    available_mem: str = ""
    # The executor's registration (its id) when it knows it: a request from a run that was
    # replaced or removed since is refused.
    executor_id: str = ""


class ProcessRef(Model, kw_only=True):
    process_id: str


class Close(Model, kw_only=True):
    process_id: str
    output: list[Any] = msgspec.field(default_factory=list, name="out")
    # The process's ``attempt`` when it was assigned (0 for its first assignment, one more for
    # each later one): refuses a close from an earlier assignment.
    attempt: Attempt | None = None


class Fail(Model, kw_only=True):
    process_id: str
    errors: list[str] = msgspec.field(default_factory=list)
    attempt: Attempt | None = None


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
    attempt: Attempt | None = None


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
    limit: ListLimit = 100


class AddChild(Model, kw_only=True):
    """Add a process to a running process's graph: after it (a branch), or between it and its
    children (``insert``)."""

    process_graph_id: str
    parent_process_id: str
    spec: FunctionSpec
    insert: bool = False
    attempt: Attempt | None = None


class GraphRef(Model, kw_only=True):
    process_graph_id: str


class Resolve(Model, kw_only=True):
    """Complete an id prefix to the one process (or, with ``graph``, process graph) of the
    colony whose id begins with it."""

    prefix: str
    graph: bool = False


class ListGraphs(Model, kw_only=True):
    limit: ListLimit = 20


class Stats(Model, kw_only=True):
    """Counts for a live status view."""

    states: dict[str, int] = msgspec.field(default_factory=dict)
    executor_types: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)


class ExecutorFit(Model, kw_only=True):
    """In an :class:`Explanation`: one executor of the process's type, and what keeps it from
    taking the process now (``reasons`` empty: nothing, it can take it when it next asks)."""

    executor_name: str
    state: ExecutorState
    online: bool
    last_heard_from_time: datetime = ZERO_TIME
    running: int = 0  # processes it runs now
    reasons: list[str] = msgspec.field(default_factory=list)


class ParentState(Model, kw_only=True):
    process_id: str
    node_name: str = ""
    state: ProcessState


class Explanation(Model, kw_only=True):
    """The reply of ``explain``: why a process has not run (HTCondor's ``-better-analyze``).

    ``reason`` is the answer in one line, ``details`` what stands behind it (one line per
    executor or parent: "edge-1: mem 8Gi < 10Gi requested"); ``parents`` and ``executors`` the
    same facts as data; ``ahead`` how many processes of its type are before it in the queue.
    """

    process_id: str
    state: ProcessState
    reason: str
    details: list[str] = msgspec.field(default_factory=list)
    parents: list[ParentState] = msgspec.field(default_factory=list)
    executors: list[ExecutorFit] = msgspec.field(default_factory=list)
    ahead: int = 0


class Release(Model, kw_only=True):
    """From an executor run that stops: give back whatever is still assigned to it (processes
    it will not finish, or whose assignment never reached it), so that they are queued again
    at once (an executor loss, not a retry), and end its parked assign requests."""

    executor_id: str
    reason: str = ""


class Instance(Model, kw_only=True):
    """Who runs an executor registration: its id, host, process id and since when."""

    executor_id: str
    host: str = ""
    pid: int = 0
    since: datetime = ZERO_TIME


# Messages to an executor on its control subject (core NATS), one tagged union: the kind is in
# ``kind``. Several runs may listen on one name's subject (a run being replaced), so every
# message but ``revoke`` (whose process id is enough) names the registration it is for.


class Revoke(Model, kw_only=True, tag_field="kind", tag="revoke"):
    """A process it runs was taken from it (cancelled, re-queued): stop its function."""

    process_id: str
    state: ProcessState
    reason: str = ""


class WhoIs(Model, kw_only=True, tag_field="kind", tag="whois"):
    """A request: is the run holding registration ``executor_id`` alive? It answers with its
    :class:`Instance`; no answer means it is gone."""

    executor_id: str


class StateChanged(Model, kw_only=True, tag_field="kind", tag="state"):
    """The colony owner approved, rejected or removed (UNREGISTERED) this registration."""

    executor_id: str
    state: ExecutorState
    reason: str = ""


class Replaced(Model, kw_only=True, tag_field="kind", tag="replaced"):
    """Another start took this executor's name over (``replace``): stop now."""

    executor_id: str
    by: Instance


Control: TypeAlias = Revoke | WhoIs | StateChanged | Replaced


class Register(Model, kw_only=True):
    executor: Executor
    # Take the name over from a live executor that holds it (else that is refused).
    replace: bool = False
    # Who is registering: told to a run it replaces.
    instance: Instance | None = None


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
