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
from colonyos.models import (
    Colony,
    Executor,
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
    "Empty",
    "Event",
    "ExecutorInfo",
    "Fail",
    "GraphEvent",
    "GraphRef",
    "Heartbeat",
    "ListGraphs",
    "ListProcesses",
    "LogLines",
    "Named",
    "Outcome",
    "ProcessEvent",
    "ProcessRef",
    "Register",
    "Rejection",
    "Reply",
    "Results",
    "Revoke",
    "Stats",
    "UnknownEvent",
    "decode_event",
    "process_event_body",
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
