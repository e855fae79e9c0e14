"""Request and reply bodies of the broker's request/reply operations.

The operation is the last token of the rpc subject (``<prefix>.<colony>.rpc.<caller>.<op>``),
so each body is a plain Struct and the broker picks the decoder from the subject. Every reply
is a :class:`Reply`: either ``result`` (raw JSON, decoded by the caller into the type it
expects) or ``error``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, TypeAlias

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
    Process,
    ProcessGraph,
    ProcessState,
)
from colonyos.subjects import GRAPH_TOKEN, REJECTED_TOKEN, Subjects

__all__ = [
    "AddChild",
    "Assign",
    "Close",
    "ColonyAdd",
    "Control",
    "Empty",
    "Event",
    "ExecutorFit",
    "ExecutorInfo",
    "Explanation",
    "Fail",
    "GraphEvent",
    "GraphRef",
    "Heartbeat",
    "Instance",
    "ListGraphs",
    "ListProcesses",
    "LogLines",
    "Named",
    "Outcome",
    "ParentState",
    "ProcessEvent",
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
    "UnknownEvent",
    "WhoIs",
    "decode_event",
    "process_event_body",
]


# Numbers in requests, bounded where they enter (colonyos.limits): the broker refuses a request
# outside them with an error naming the field ("bad assign request: $.count: ...").
AssignTimeout = Annotated[float, Meta(ge=0, le=limits.MAX_ASSIGN_TIMEOUT_S)]
AssignCount = Annotated[int, Meta(ge=1, le=limits.MAX_ASSIGN_COUNT)]
ListLimit = Annotated[int, Meta(ge=0, le=limits.MAX_LIST_LIMIT)]
# The process's ``retries`` when it was assigned.
Attempt = Annotated[int, Meta(ge=0, le=limits.MAX_RETRIES)]


class ReaderOpen(Model, kw_only=True):
    """A client asks the broker for a consumer that delivers one filter of the events or logs
    stream, in order, to its own inbox (see colonyos/ordered.py). Members may not create
    consumers themselves: nats-server does not check a push consumer's deliver subject
    against its creator's rights, so the broker creates them, within the caller's colony and
    inbox."""

    stream: Literal["events", "logs"]
    filter_subject: str
    deliver_subject: str
    # From this stream sequence (0: not given), else from this time, else from the first.
    start_sequence: Annotated[int, Meta(ge=0)] = 0
    start_time: datetime | None = None
    heartbeat_s: Annotated[float, Meta(ge=0.1, le=30)] = 2.0
    inactive_s: Annotated[float, Meta(ge=1, le=300)] = 10.0


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
    # A request for the process to run next, made while every slot of the executor is busy:
    # it gets one process, and only one that no idle executor's parked assign matches.
    # Omitted (as Colonies sends it): an ordinary assign.
    prefetch: bool = False


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


class ResultsNext(Results, kw_only=True):
    """``results_next``: results, and the process the same run is to run next (a prefetch:
    one, handed at once or not at all, and only if no idle executor waits for it). An executor
    that runs one process at a time pays one request per process instead of two."""

    executor_id: str = ""


class NextReply(Model, kw_only=True):
    """The answer to :class:`ResultsNext`: one outcome per result, and the next process (none:
    the queue had none for it, or it went to an idle executor; ask with an assign)."""

    outcomes: list[Outcome]
    processes: list[Process] = msgspec.field(default_factory=list)


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
    """A process assigned to it was taken from it (cancelled, re-queued): stop its function,
    or never start it if the assignment has not reached the function yet."""

    process_id: str
    state: ProcessState
    reason: str = ""
    # The ``attempt`` of the assignment taken away (as close and fail carry it): a later
    # assignment of the same process is not revoked with it. None from a broker that did not
    # say: whatever runs under the process id is stopped, and nothing not started yet is.
    attempt: Attempt | None = None


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
    # Its owner: a public key (``U...``) and the name it acts under in the colony. On a secure
    # installation an empty key makes the server owner who adds it its owner.
    owner_key: str = ""
    owner_name: str = ""


class MemberAdd(Model, kw_only=True):
    """A colony owner adds a member: a user (or a co-owner), or an executor it approves ahead
    of its first start (``executor_type`` then says which type it registers as)."""

    name: str
    public_key: str
    role: Literal["user", "colony-owner", "executor"] = "user"
    executor_type: str = ""


class RemoveAll(Model, kw_only=True):
    """Remove every process of the colony in one state (never RUNNING) that is not part of a
    process graph; optionally only those of one executor type."""

    state: ProcessState
    executor_type: str = ""


class Handover(Model, kw_only=True):
    """Broker to broker: the leader of the server scope asks a colony's leader to clear the
    colony, removed by ``caller`` (subjects.handover)."""

    caller: str


class Removed(Model, kw_only=True):
    """How many processes a removal took away."""

    count: int = 0


class ExecutorInfo(Executor, kw_only=True):
    """An executor as ``executor_list`` answers: its registration (the Colonies keys, with
    ``lastheardfromtime`` the last time the broker heard from it), and what the broker knows
    of it live."""

    online: bool = False  # heard from (heartbeat or request) within the liveness window
    running: int = 0  # processes it runs now


# -- events -------------------------------------------------------------------------------
# Every body on the event subjects (``<prefix>.<colony>.events.<type>.<state>.<id>``) is one of
# the kinds of the tagged union :data:`Event`, told apart by its ``kind`` field. KV values stay
# plain Colonies JSON: only event bodies carry the tag.


class ProcessEvent(Process, kw_only=True, tag_field="kind", tag="process"):
    """A process after a transition (``kind: process``): the process JSON plus the tag."""

    def process(self) -> Process:
        """The same process as a plain :class:`Process` (what KV holds, without the tag)."""
        return Process(**msgspec.structs.asdict(self))


class GraphEvent(ProcessGraph, kw_only=True, tag_field="kind", tag="graph"):
    """A process graph whose state changed (``kind: graph``), on ``events._graph.<state>``."""

    @classmethod
    def of(cls, graph: ProcessGraph) -> GraphEvent:
        return cls(**msgspec.structs.asdict(graph))

    def graph(self) -> ProcessGraph:
        return ProcessGraph(**msgspec.structs.asdict(self))


class Rejection(Model, kw_only=True, tag_field="kind", tag="rejection"):
    """A submission that did not become a process or graph (``kind: rejection``), on the
    ``rejected`` state token."""

    process_id: str
    colony_name: str
    executor_type: str
    error: str
    code: str = "invalid"
    path: str = ""


Event = ProcessEvent | GraphEvent | Rejection


class UnknownEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A body on an event subject that this version cannot read: a kind added by a newer
    broker, or something that is not an event at all. Consumers skip it, knowingly."""

    subject: str
    kind: str  # its ``kind`` if it has one, else ""
    reason: str
    raw: bytes


class _Kind(msgspec.Struct):
    kind: str = ""


_event_decoder = msgspec.json.Decoder(Event)
_kind_decoder = msgspec.json.Decoder(_Kind)
# Events written before the tag existed (the stream keeps them for days): the subject's tokens
# say what they are.
_legacy_decoders: dict[type[Event], msgspec.json.Decoder[Any]] = {
    kind: msgspec.json.Decoder(kind) for kind in (ProcessEvent, GraphEvent, Rejection)
}
_PROCESS_TAG = (
    b"{"
    + msgspec.json.encode(ProcessEvent.__struct_config__.tag_field)
    + b":"
    + msgspec.json.encode(ProcessEvent.__struct_config__.tag)
    + b","
)


def process_event_body(process_json: bytes) -> bytes:
    """The event body of a process already encoded for KV: the same bytes with the tag spliced
    in front, so that a transition encodes its process once (equal to encoding a
    :class:`ProcessEvent`)."""
    return _PROCESS_TAG + process_json[1:]


def decode_event(subject: str, data: bytes) -> Event | UnknownEvent:
    """The one way to read an event body; never raises.

    A tagged body decodes by its ``kind``; an untagged one (written before the tag) by its
    subject: the ``rejected`` state token is a rejection, the ``_graph`` executor type a graph,
    anything else a process. What decodes as nothing known is an :class:`UnknownEvent`.
    """
    try:
        return _event_decoder.decode(data)
    except msgspec.MsgspecError as err:
        first_error = str(err)
    try:
        kind = _kind_decoder.decode(data).kind
    except msgspec.MsgspecError:
        return UnknownEvent(subject=subject, kind="", reason=first_error, raw=data)
    if kind:  # tagged, but with a kind this version does not know, or the wrong shape
        return UnknownEvent(subject=subject, kind=kind, reason=first_error, raw=data)
    executor_type, state, _ = Subjects.event_tokens(subject)
    legacy: type[Event] = ProcessEvent
    if state == REJECTED_TOKEN:
        legacy = Rejection
    elif executor_type == GRAPH_TOKEN:
        legacy = GraphEvent
    try:
        event: Event = _legacy_decoders[legacy].decode(data)
    except msgspec.MsgspecError as err:
        reason = f"untagged {legacy.__struct_config__.tag}: {err}"
        return UnknownEvent(subject=subject, kind="", reason=reason, raw=data)
    return event


_NULL = msgspec.Raw(b"null")


class Reply(msgspec.Struct, kw_only=True, omit_defaults=True):
    result: msgspec.Raw = _NULL
    error: ErrorReply | None = None

    @property
    def is_empty(self) -> bool:
        return bytes(self.result) == b"null"
