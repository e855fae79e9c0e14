"""The attacker matrix: what each role may do on each subject, as the NATS server must enforce
it on a secure installation. One table, :data:`CELLS`; tests/security/test_matrix.py checks
every role x cell against a real server, and :func:`render` writes it into docs/security.md.

Subjects are written with placeholders: ``P`` the installation prefix, ``U`` the prefix in
upper case (stream names), ``C`` the member's own colony ``dev``, ``O`` another colony that
exists (``other``), ``N`` the member's own name, ``M`` another member's name (an approved
executor), ``T`` an executor type, ``X`` a process id (a generator's name in ``generators``),
``K`` a new consumer's name.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "CELLS",
    "DOC_END",
    "DOC_START",
    "Action",
    "Cell",
    "Who",
    "render",
    "subject_for",
]


class Who(enum.Enum):
    """The matrix's columns: who connects, and with which key."""

    SERVER_OWNER = "server owner"
    COLONY_OWNER = "colony owner"
    USER = "user"
    EXECUTOR = "approved executor"
    PENDING = "pending executor"
    REMOVED = "removed member"
    UNKNOWN = "unknown key"
    FORGED = "forged key"

    @property
    def connects(self) -> bool:
        """Whether the server lets this party in at all."""
        return self not in (Who.REMOVED, Who.UNKNOWN, Who.FORGED)


class Action(enum.Enum):
    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"
    # A publish with a reply subject (the caller's inbox), answered when it gets through.
    REQUEST = "request"


@dataclass(frozen=True)
class Cell:
    family: str
    action: Action
    subject: str  # a template: "{P}.{C}.specs.{T}"
    allowed: frozenset[Who]
    # A consumer create's body: the subject its messages are pushed to ("" for a pull
    # consumer), and a second filter beside the one in the subject.
    deliver: str = ""
    also_filter: str = ""
    # What the server does not refuse yet although it must: the roles it lets through, and
    # why. Their cells are expected to fail (strictly: a fix shows up as a failure to mark).
    hole_for: frozenset[Who] = frozenset()
    hole: str = ""

    @property
    def shown(self) -> str:
        """The subject as docs/security.md writes it (``P.C.specs.T``)."""
        shown = _shown(self.subject)
        if self.deliver:
            shown += f" deliver={_shown(self.deliver)}"
        if self.also_filter:
            shown += f" +filter={_shown(self.also_filter)}"
        return shown

    def test_id(self, who: Who) -> str:
        return f"{who.value.replace(' ', '-')}:{self.action.value}:{self.shown}"


def _shown(template: str) -> str:
    return template.replace("{", "").replace("}", "")


def subject_for(
    template: str, *, prefix: str, name: str, other_name: str, consumer: str = "K"
) -> str:
    return template.format(
        K=consumer,
        P=prefix,
        U=prefix.upper().replace("-", "_"),
        C="dev",
        O="other",
        N=name,
        M=other_name,
        T="echo",
        X="p1",
    )


_NOBODY: frozenset[Who] = frozenset()
_CONNECTED = frozenset(w for w in Who if w.connects)
_MEMBERS = frozenset({Who.COLONY_OWNER, Who.USER, Who.EXECUTOR})  # members, not pending
_SUBMITTERS = frozenset({Who.COLONY_OWNER, Who.USER})
_EXECUTORS = frozenset({Who.EXECUTOR, Who.PENDING})

_PUB, _SUB, _REQ = Action.PUBLISH, Action.SUBSCRIBE, Action.REQUEST

_EVENTS_OWN = "$JS.API.CONSUMER.CREATE.{U}_EVENTS.{K}.{P}.{C}.events.>"

# The table. A role not listed in a cell's set must be refused there by the server.
CELLS: tuple[Cell, ...] = (
    Cell("specs", _PUB, "{P}.{C}.specs.{T}", _SUBMITTERS),
    Cell("specs", _REQ, "{P}.{C}.specs.{T}", _SUBMITTERS),
    Cell("specs", _PUB, "{P}.{O}.specs.{T}", _NOBODY),
    Cell("specs", _SUB, "{P}.{C}.specs.>", _NOBODY),
    Cell("workflows", _PUB, "{P}.{C}.workflows", _SUBMITTERS),
    Cell("workflows", _REQ, "{P}.{C}.workflows", _SUBMITTERS),
    Cell("workflows", _PUB, "{P}.{O}.workflows", _NOBODY),
    Cell("workflows", _SUB, "{P}.{C}.workflows", _NOBODY),
    Cell("generators", _PUB, "{P}.{C}.generators.{X}", _MEMBERS),
    Cell("generators", _REQ, "{P}.{C}.generators.{X}", _MEMBERS),
    Cell("generators", _PUB, "{P}.{O}.generators.{X}", _NOBODY),
    Cell("generators", _SUB, "{P}.{C}.generators.>", _NOBODY),
    Cell("events", _SUB, "{P}.{C}.events.*.*.*", _MEMBERS),
    Cell("events", _SUB, "{P}.{O}.events.*.*.*", _NOBODY),
    Cell("events", _SUB, "{P}.{O}.events.>", _NOBODY),
    Cell("events", _SUB, "{P}.*.events.*.*.*", _NOBODY),
    Cell("events", _PUB, "{P}.{C}.events.{T}.success.{X}", _NOBODY),
    Cell("events", _REQ, _EVENTS_OWN, _NOBODY),
    Cell("events", _REQ, "$JS.API.CONSUMER.CREATE.{U}_EVENTS.{K}.{P}.{O}.events.>", _NOBODY),
    Cell("events", _REQ, _EVENTS_OWN, _NOBODY, deliver="_INBOX.{P}.{C}.{N}.{X}"),
    Cell("events", _REQ, _EVENTS_OWN, _NOBODY, also_filter="{P}.{O}.events.>"),
    Cell(
        "events",
        _REQ,
        _EVENTS_OWN,
        _NOBODY,
        deliver="{P}.{O}.leader",
    ),
    Cell(
        "events",
        _REQ,
        _EVENTS_OWN,
        _NOBODY,
        deliver="{P}.{O}.control.{M}",
    ),
    Cell("events", _REQ, "$JS.API.DIRECT.GET.{U}_EVENTS.{P}.{C}.events.{T}.success.{X}", _MEMBERS),
    Cell("events", _REQ, "$JS.API.DIRECT.GET.{U}_EVENTS.{P}.{O}.events.{T}.success.{X}", _NOBODY),
    Cell("logs", _REQ, "$JS.API.CONSUMER.CREATE.{U}_LOGS.{K}.{P}.{C}.logs.>", _NOBODY),
    Cell("logs", _REQ, "$JS.API.CONSUMER.CREATE.{U}_LOGS.{K}.{P}.{O}.logs.>", _NOBODY),
    Cell(
        "logs",
        _REQ,
        "$JS.API.CONSUMER.CREATE.{U}_LOGS.{K}.{P}.{C}.logs.>",
        _NOBODY,
        deliver="{P}.{C}.control.{M}",
    ),
    Cell("logs", _REQ, "$JS.API.DIRECT.GET.{U}_LOGS.{P}.{C}.logs.{X}", _MEMBERS),
    Cell("logs", _REQ, "$JS.API.DIRECT.GET.{U}_LOGS.{P}.{O}.logs.{X}", _NOBODY),
    Cell("logs", _REQ, "$JS.API.DIRECT.GET.{U}_LOGS", _NOBODY),
    Cell("logs", _PUB, "{P}.{C}.logs.{X}", _NOBODY),
    Cell("logs", _SUB, "{P}.{C}.logs.>", _NOBODY),
    Cell("control", _SUB, "{P}.{C}.control.{N}", _EXECUTORS),
    Cell("control", _SUB, "{P}.{C}.control.{M}", _NOBODY),
    Cell("control", _PUB, "{P}.{C}.control.{M}", _NOBODY),
    Cell("control", _PUB, "{P}.{C}.control.{N}", _NOBODY),
    Cell("control", _SUB, "{P}.{O}.control.{N}", _NOBODY),
    Cell("heartbeats", _PUB, "{P}.{C}.heartbeats.{N}", frozenset({Who.EXECUTOR})),
    Cell("heartbeats", _PUB, "{P}.{C}.heartbeats.{M}", _NOBODY),
    Cell("heartbeats", _SUB, "{P}.{C}.heartbeats.*", _MEMBERS),
    Cell("rpc", _REQ, "{P}.{C}.rpc.{N}.list", _MEMBERS),
    Cell("rpc", _REQ, "{P}.{C}.rpc.{N}.register", _MEMBERS | {Who.PENDING}),
    Cell("rpc", _REQ, "{P}.{C}.rpc.{M}.list", _NOBODY),
    Cell("rpc", _REQ, "{P}.{O}.rpc.{N}.list", _NOBODY),
    Cell("rpc", _SUB, "{P}.{C}.rpc.>", _NOBODY),
    Cell("server rpc", _REQ, "{P}._server.rpc.{N}.colony_list", frozenset({Who.SERVER_OWNER})),
    Cell("server rpc", _REQ, "{P}._server.rpc.{M}.colony_list", _NOBODY),
    Cell("server rpc", _SUB, "{P}._server.rpc.>", _NOBODY),
    Cell("leader", _SUB, "{P}.{C}.leader", _MEMBERS),
    Cell("leader", _SUB, "{P}.{O}.leader", _NOBODY),
    Cell("leader", _PUB, "{P}.{C}.leader", _NOBODY),
    # Brokers ask each other there (colony removal, a colony added): no member may.
    Cell("handover", _REQ, "{P}._server.handover.{C}", _NOBODY),
    Cell("handover", _SUB, "{P}._server.handover.{C}", _NOBODY),
    Cell("steer", _PUB, "{P}._server.steer", _NOBODY),
    Cell("leaving", _PUB, "{P}._server.leaving", _NOBODY),
    # Brokers announce themselves there (server status lists them): no member may pose as one.
    Cell("brokers", _PUB, "{P}._server.brokers", _NOBODY),
    Cell("brokers", _SUB, "{P}._server.brokers", _NOBODY),
    # The server owner (no member record in C) has no colony inbox: its answers come on the
    # server scope, where no colony member's name can take its inbox.
    Cell("inbox", _SUB, "_INBOX.{P}.{C}.{N}.>", _CONNECTED - {Who.SERVER_OWNER}),
    Cell("inbox", _SUB, "_INBOX.{P}._server.{N}.>", frozenset({Who.SERVER_OWNER})),
    Cell("inbox", _SUB, "_INBOX.{P}._server.{M}.>", _NOBODY),
    Cell("inbox", _SUB, "_INBOX.{P}.{C}.{M}.>", _NOBODY),
    Cell("inbox", _SUB, "_INBOX.>", _NOBODY),
    Cell("inbox", _PUB, "_INBOX.{P}.{C}.{M}.{X}", _NOBODY),
    Cell("inbox", _PUB, "_INBOX.{P}.{C}.{N}.{X}", _NOBODY),
    Cell("KV", _PUB, "$KV.{P}-processes.{C}.{X}", _NOBODY),
    Cell("KV", _PUB, "$KV.{P}-members.{C}.{N}", _NOBODY),
    Cell("KV", _SUB, "$KV.>", _NOBODY),
    Cell("stream API", _REQ, "$JS.API.STREAM.INFO.{U}_EVENTS", _NOBODY),
    Cell("stream API", _REQ, "$JS.API.STREAM.MSG.GET.{U}_LOGS", _NOBODY),
    Cell("stream API", _REQ, "$JS.API.CONSUMER.CREATE.{U}_LOGS", _NOBODY),
    Cell("stream API", _REQ, "$JS.API.DIRECT.GET.KV_{P}-members.$KV.{P}-members.{C}.{M}", _NOBODY),
    Cell("stream API", _REQ, "$JS.API.INFO", _NOBODY),
    Cell("stream API", _REQ, "$JS.API.CONSUMER.LIST.{U}_EVENTS", _NOBODY),
    Cell("stream API", _REQ, "$JS.API.CONSUMER.CREATE.{U}_SPECS.{K}.{P}.{C}.specs.>", _NOBODY),
    Cell("stream API", _REQ, "$JS.API.CONSUMER.MSG.NEXT.{U}_SPECS.broker", _NOBODY),
    Cell("stream API", _REQ, "$JS.API.CONSUMER.DELETE.{U}_SPECS.broker", _NOBODY),
    Cell("stream API", _REQ, "$JS.API.STREAM.PURGE.{U}_SPECS", _NOBODY),
    Cell("stream API", _REQ, "$JS.API.STREAM.DELETE.KV_{P}-members", _NOBODY),
    Cell("stream API", _PUB, "$JS.ACK.{U}_SPECS.broker.1.1.1.1.0", _NOBODY),
    Cell("stream API", _SUB, "$JS.API.>", _NOBODY),
    Cell("system", _REQ, "$SYS.REQ.SERVER.PING", _NOBODY),
    Cell("system", _PUB, "$SYS.REQ.USER.AUTH", _NOBODY),
    Cell("system", _SUB, "$SYS.>", _NOBODY),
    Cell("everything", _SUB, ">", _NOBODY),
)

DOC_START = "<!-- matrix:start -->"
DOC_END = "<!-- matrix:end -->"

_SHORT = {
    Who.SERVER_OWNER: "server owner",
    Who.COLONY_OWNER: "colony owner",
    Who.USER: "user",
    Who.EXECUTOR: "executor",
    Who.PENDING: "pending",
    Who.REMOVED: "removed",
    Who.UNKNOWN: "unknown key",
    Who.FORGED: "forged key",
}


def render() -> str:
    """The matrix as the markdown table docs/security.md holds between its markers."""
    roles = list(Who)
    head = ["family", "action", "subject", *(_SHORT[w] for w in roles)]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        "| connect | | | " + " | ".join(_mark(w.connects) for w in roles) + " |",
    ]
    for cell in CELLS:
        marks = (
            _mark(w in cell.allowed) + (" (hole)" if w in cell.hole_for else "") for w in roles
        )
        subject = cell.shown.replace("|", "\\|")
        lines.append(
            f"| {cell.family} | {cell.action.value} | `{subject}` | " + " | ".join(marks) + " |"
        )
    holes = sorted({cell.hole for cell in CELLS if cell.hole})
    if holes:
        lines += ["", *(f"(hole): not refused yet: {hole}." for hole in holes)]
    return "\n".join(lines) + "\n"


def _mark(allowed: bool) -> str:
    return "**yes**" if allowed else "no"
