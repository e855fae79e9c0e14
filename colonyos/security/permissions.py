"""What each role may publish and subscribe to: the one table the auth callout turns into
user JWTs, and docs/security.md shows.

``C`` is the colony, ``N`` the member's name in it. Every client connects with
``inbox_prefix=_INBOX.P.C.N`` (:func:`inbox_prefix`), so replies reach only their caller, and
publishes its requests as ``<prefix>.C.rpc.N.<op>``: the server lets no one speak under another
name, and the broker reads the caller from the subject. Never granted to members: ``$KV.>``,
stream management and message get, unfiltered consumers, another colony's subjects.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from colonyos.subjects import SERVER_SCOPE, Subjects

__all__ = [
    "MAX_SUBSCRIPTIONS",
    "RESPONSE_TTL_S",
    "Grants",
    "Role",
    "grants",
    "inbox_prefix",
    "jwt_user_name",
    "server_inbox_prefix",
]


class Role(enum.StrEnum):
    SERVER_OWNER = "server-owner"
    COLONY_OWNER = "colony-owner"
    USER = "user"
    EXECUTOR = "executor"  # approved
    PENDING_EXECUTOR = "pending-executor"  # may only register and wait for approval


# How many subscriptions a connection may hold at once, by role (the server refuses one more:
# "maximum subscriptions exceeded"). A client holds one for all its replies, one per process it
# waits for or watches (a confirmed submit included) and one per event or log reader; an
# executor its replies, control and leader subjects and what its functions wait for. Each
# subscription costs the server memory and a match on every message: unbounded, one member
# could slow everyone's deliveries.
MAX_SUBSCRIPTIONS: dict[Role, int] = {
    Role.SERVER_OWNER: 256,
    Role.COLONY_OWNER: 256,
    Role.USER: 256,
    Role.EXECUTOR: 64,
    Role.PENDING_EXECUTOR: 8,
}


# How long a member may take to answer a message that asks for a reply (one reply each): a
# JetStream flow control request among them, which a reader answers once its caller has read
# what came before (colonyos/ordered.py starts a new consumer past this time instead).
RESPONSE_TTL_S = 120.0


@dataclass(frozen=True, slots=True)
class Grants:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    # At most this many subscriptions at once.
    subscriptions: int = 0


def inbox_prefix(prefix: str, colony: str, name: str) -> str:
    """Where a member's replies and deliveries come: its installation, colony and name (two
    installations on one server may each have an ``alice`` in a colony ``dev``)."""
    return f"_INBOX.{prefix}.{colony}.{name}"


def server_inbox_prefix(prefix: str, name: str) -> str:
    """Where a server owner's answers to server operations come. Not a colony inbox: a server
    owner with no member record in the colony it connects to would share ``_INBOX.P.C.N`` with
    whoever takes the name ``N`` there next. No colony is called ``_server`` (a colony name
    starts with a letter or digit), and one key holds each server owner's name."""
    return inbox_prefix(prefix, SERVER_SCOPE, name)


def jwt_user_name(prefix: str, colony: str, name: str) -> str:
    """The name a member's user JWT carries: nats-server shows it as the connection's user
    (what the kicker looks for to cut a member's connections)."""
    return f"{prefix}/{colony}/{name}"


def grants(subjects: Subjects, colony: str, name: str, roles: tuple[Role, ...]) -> Grants:
    """Exactly the subjects ``name`` of ``colony`` may use in ``roles`` (their union), and the
    largest of their subscription caps."""
    publish: dict[str, None] = {}
    subscribe: dict[str, None] = {}
    for role in roles:
        one = _grants(subjects, colony, name, role)
        publish.update(dict.fromkeys(one.publish))
        subscribe.update(dict.fromkeys(one.subscribe))
    return Grants(
        publish=tuple(publish),
        subscribe=tuple(subscribe),
        subscriptions=max((MAX_SUBSCRIPTIONS[r] for r in roles), default=0),
    )


def _grants(subjects: Subjects, colony: str, name: str, role: Role) -> Grants:
    s, p = subjects, subjects.prefix
    inbox = inbox_prefix(p, colony, name) + ".>"
    if role is Role.SERVER_OWNER:
        # Colonies, not what is in them: nothing of the colony it connected to (that needs a
        # member record there), and its answers in its own inbox on the server scope.
        server_inbox = server_inbox_prefix(p, name) + ".>"
        return Grants(publish=(s.rpc(SERVER_SCOPE, name, "*"),), subscribe=(server_inbox,))
    if role is Role.PENDING_EXECUTOR:
        return Grants(
            publish=(s.rpc(colony, name, "register"),),
            subscribe=(inbox, s.control(colony, name)),
        )
    events, logs = s.stream_events, s.stream_logs
    # No consumer creates: the broker makes a member's consumers (rpc reader_open), since the
    # server does not check where a push consumer delivers.
    # Packing an argument into one of the colony's generators (a JetStream publish: its ack
    # comes to the inbox). Executors too: a pipeline's stage feeds the next one's generator.
    publish = [
        s.rpc(colony, name, "*"),
        s.generator(colony, "*"),
        f"$JS.API.DIRECT.GET.{events}.{p}.{colony}.events.>",
        f"$JS.API.DIRECT.GET.{logs}.{p}.{colony}.logs.>",
    ]
    # Heartbeats: who in the colony is alive and what it runs (the live status views).
    subscribe = [inbox, s.events_filter(colony=colony), s.heartbeat(colony, "*"), s.leader(colony)]
    if role in (Role.USER, Role.COLONY_OWNER):
        publish += [s.specs(colony, "*"), s.workflows(colony)]
    elif role is Role.EXECUTOR:
        # Log lines go through the broker (rpc ``log``), which checks the executor holds the
        # process: no executor publishes to the logs stream.
        publish += [s.heartbeat(colony, name)]
        subscribe += [s.control(colony, name)]
    return Grants(publish=tuple(publish), subscribe=tuple(subscribe))
