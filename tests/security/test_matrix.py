"""The attacker matrix against a real secure nats-server: each role x each subject x publish,
subscribe or request, with the outcome the one table in tests/security/matrix.py gives.

The server says no to a publish or a subscription by a permission violation, which nats-py
passes to the connection's error callback before it reads the answer to the next PING: a cell
is refused when that callback names its subject after a round trip, allowed when it does not
(and a request allowed must be answered). Parties the server does not let in (a removed
member, an unknown key, a known key signed by another key) are refused at connect, and so
every cell. One connection per role serves the whole module.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nats.errors
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS

from colonyos.broker import Broker
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.security.claim import ConnectClaim
from colonyos.security.keys import Identity, generate, write_seed
from colonyos.security.members import Member, MemberBook
from colonyos.security.permissions import Role, inbox_prefix
from colonyos.subjects import SERVER_SCOPE
from tests.conftest import running_broker
from tests.security.conftest import SecureServer, drop_streams
from tests.security.matrix import (
    CELLS,
    DOC_END,
    DOC_START,
    Action,
    Cell,
    Who,
    render,
    subject_for,
)

pytestmark = pytest.mark.timeout(60)
# Every async test shares the module's event loop, and so the world's connections.
in_module_loop = pytest.mark.asyncio(loop_scope="module")

COLONY, OTHER = "dev", "other"
OTHER_MEMBER = "carol"  # M: an approved executor of dev, whose subjects no one else may use
DOCS = Path(__file__).resolve().parents[2] / "docs" / "security.md"

NAMES = {
    Who.SERVER_OWNER: "sam",
    Who.COLONY_OWNER: "olive",
    Who.USER: "alice",
    Who.EXECUTOR: "exa",
    Who.PENDING: "pete",
    Who.REMOVED: "ray",
    Who.UNKNOWN: "nobody",
    Who.FORGED: "alice",  # alice's public key, signed by another key
}


@dataclass
class Watched:
    """A role's raw connection, and what the server refused it."""

    nc: NATS
    name: str
    errors: list[str] = field(default_factory=list)


@dataclass
class World:
    server: SecureServer
    prefix: str
    keys: dict[Who, Identity]
    connections: dict[Who, Watched]
    refusals: dict[Who, str]  # why the server did not let a party in

    def subject(self, who: Who, template: str, consumer: str = "K") -> str:
        return subject_for(
            template,
            prefix=self.prefix,
            name=NAMES[who],
            other_name=OTHER_MEMBER,
            consumer=consumer,
        )


def _party_settings(
    server: SecureServer, prefix: str, seed_path: Path, colony: str = COLONY
) -> Settings:
    return Settings(
        nats_url=server.url, colony=colony, prefix=prefix, identity=seed_path, request_timeout_s=5
    )


async def _connect(server: SecureServer, prefix: str, who: Who, key: Identity) -> Watched:
    name = NAMES[who]
    errors: list[str] = []

    async def error_cb(err: Exception) -> None:
        errors.append(str(err).lower())

    claim = ConnectClaim(
        prefix=prefix, colony=COLONY, name=name, executor=who in (Who.EXECUTOR, Who.PENDING)
    )
    nc = NATS()
    try:
        await nc.connect(
            server.url,
            name=f"matrix-{name}",
            nkeys_seed_str=key.seed.decode(),
            token=claim.token(),
            inbox_prefix=inbox_prefix(prefix, COLONY, name),
            error_cb=error_cb,
            allow_reconnect=False,
            connect_timeout=2,
        )
    except BaseException:
        await nc.close()  # nats-py leaves a refused connection's socket open
        raise
    return Watched(nc, name, errors)


async def _forged_connect(server: SecureServer, prefix: str, public_key: str) -> str:
    """A raw CONNECT with ``public_key`` and a signature of the nonce by another key: the
    server's first answer (an error line, or PONG if it let the forger in)."""
    forger = generate()
    port = int(server.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        info = json.loads((await reader.readline()).split(b" ", 1)[1])
        sig = base64.b64encode(forger.sign(info["nonce"].encode())).decode()
        connect = {
            "verbose": False,
            "pedantic": False,
            "protocol": 1,
            "headers": True,
            "nkey": public_key,
            "sig": sig,
            "auth_token": ConnectClaim(prefix=prefix, colony=COLONY, name="alice").token(),
        }
        writer.write(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        await writer.drain()
        async with asyncio.timeout(10):
            return (await reader.readline()).decode().strip()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _enroll(book: MemberBook, who: Who, key: Identity, colony: str, role: Role) -> None:
    await book.put(
        Member(colony_name=colony, name=NAMES[who], public_key=key.public_key, role=role)
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(
    secure_server: SecureServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    prefix = f"m{uuid.uuid4().hex[:10]}"
    settings = BrokerSettings(
        nats_url=secure_server.url,
        prefix=prefix,
        storage="memory",
        keys_dir=secure_server.keys_dir,
    )
    home = tmp_path_factory.mktemp("matrix")
    keys: dict[Who, Identity] = {who: generate() for who in Who if who is not Who.FORGED}
    async with running_broker(settings) as broker:
        book = _book(broker)
        # The server owner makes both colonies, owned by olive.
        await _enroll(
            book, Who.SERVER_OWNER, keys[Who.SERVER_OWNER], SERVER_SCOPE, Role.SERVER_OWNER
        )
        sam_seed = home / "sam.nk"
        write_seed(sam_seed, keys[Who.SERVER_OWNER])
        async with await Client.connect(
            _party_settings(secure_server, prefix, sam_seed), caller="sam"
        ) as sam:
            for colony in (COLONY, OTHER):
                await sam.colony_add(
                    colony, owner_key=keys[Who.COLONY_OWNER].public_key, owner_name="olive"
                )
        olive_seed = home / "olive.nk"
        write_seed(olive_seed, keys[Who.COLONY_OWNER])
        carol = generate()
        async with await Client.connect(
            _party_settings(secure_server, prefix, olive_seed), caller="olive"
        ) as olive:
            await olive.member_add("alice", keys[Who.USER].public_key)
            for name, key in (("exa", keys[Who.EXECUTOR]), (OTHER_MEMBER, carol)):
                await olive.member_add(name, key.public_key, role="executor", executor_type="echo")
            await olive.member_add("ray", keys[Who.REMOVED].public_key)
            await olive.member_remove("ray")
        # pete's key holds an executor name that no one has approved: pending.
        await _enroll(book, Who.PENDING, keys[Who.PENDING], COLONY, Role.EXECUTOR)

        connections: dict[Who, Watched] = {}
        refusals: dict[Who, str] = {}
        for who, key in keys.items():
            try:
                connections[who] = await _connect(secure_server, prefix, who, key)
            except (nats.errors.Error, OSError) as err:
                refusals[who] = str(err)
        answer = await _forged_connect(secure_server, prefix, keys[Who.USER].public_key)
        if answer.startswith("-ERR"):
            refusals[Who.FORGED] = answer
        try:
            yield World(secure_server, prefix, keys, connections, refusals)
        finally:
            for watched in connections.values():
                await watched.nc.close()
    await drop_streams(secure_server, prefix)


def _book(broker: Broker) -> MemberBook:
    assert broker.members is not None
    return broker.members


# -- trying a cell ------------------------------------------------------------------------


async def _round_trip(nc: NATS) -> None:
    """Until the server has read everything sent so far, and nats-py has handed its errors
    to the error callback. Twice: nats-py writes a flush's PING straight to the socket, ahead
    of commands its flusher task has not written yet; by the first PONG it has written them,
    so the second PING follows them."""
    await nc.flush()
    await nc.flush()


def _refused(watched: Watched, action: Action, subject: str) -> bool:
    kind = "subscription" if action is Action.SUBSCRIBE else "publish"
    needle = f'permissions violation for {kind} to "{subject.lower()}"'
    return any(needle in err for err in watched.errors)


async def _try(world: World, who: Who, cell: Cell) -> bool:
    """Whether the server let ``who`` do ``cell``; a request let through must be answered,
    and a consumer create accepted."""
    watched = world.connections.get(who)
    if watched is None:
        return False
    nc, subject = watched.nc, world.subject(who, cell.subject, consumer=uuid.uuid4().hex)
    watched.errors.clear()
    if cell.action is Action.SUBSCRIBE:
        sub = await nc.subscribe(subject)
        await _round_trip(nc)
        await sub.unsubscribe()
        return not _refused(watched, cell.action, subject)
    if cell.action is Action.PUBLISH:
        await nc.publish(subject, _payload(world, who, cell, subject))
        await _round_trip(nc)
        return not _refused(watched, cell.action, subject)
    inbox = nc.new_inbox()
    if cell.subject.startswith("{P}._server.rpc."):  # answered on the server scope
        inbox = world.subject(who, "_INBOX.{P}._server.{N}.") + uuid.uuid4().hex
    sub = await nc.subscribe(inbox, max_msgs=1)
    try:
        await nc.publish(subject, _payload(world, who, cell, subject), reply=inbox)
        await _round_trip(nc)
        if _refused(watched, cell.action, subject):
            return False
        answer = await sub.next_msg(timeout=10)
    finally:
        await sub.unsubscribe()
    return _accepted(cell, answer.data)


def _payload(world: World, who: Who, cell: Cell, subject: str) -> bytes:
    """A body the receiver accepts, where it matters (a consumer create the server would
    refuse for a bad body is no proof the subject was allowed)."""
    if cell.subject.startswith("$JS.API.CONSUMER.CREATE.") and cell.subject.count(".") > 5:
        _, _, _, _, stream, name, *filt = subject.split(".")
        config: dict[str, object] = {
            "name": name,
            "filter_subject": ".".join(filt),
            "deliver_policy": "new",
            "ack_policy": "none",
            "inactive_threshold": 1_000_000_000,
        }
        if cell.deliver:
            config["deliver_subject"] = world.subject(who, cell.deliver)
        if cell.also_filter:
            config["filter_subjects"] = [world.subject(who, cell.also_filter)]
        return json.dumps({"stream_name": stream, "config": config}).encode()
    if cell.subject.startswith("$JS.API.CONSUMER.MSG.NEXT."):
        return b'{"batch": 1, "no_wait": true}'  # answered at once, even when empty
    return b"{}"


def _accepted(cell: Cell, data: bytes) -> bool:
    """Whether the answer says yes: the JetStream API answers a consumer it refuses with an
    error; any other answer (a broker's, a stream's ack, no responders) is the receiver's
    business, past the server's permissions."""
    if cell.subject.startswith("$JS.API.CONSUMER.CREATE."):
        return "error" not in json.loads(data)
    return True


# -- the matrix ---------------------------------------------------------------------------

CASES = [
    pytest.param(
        who,
        cell,
        id=cell.test_id(who),
        marks=[pytest.mark.xfail(strict=True, reason=cell.hole)] if who in cell.hole_for else [],
    )
    for cell in CELLS
    for who in Who
]


@in_module_loop
@pytest.mark.parametrize(("who", "cell"), CASES)
async def test_cell(world: World, who: Who, cell: Cell) -> None:
    expected = who in cell.allowed
    allowed = await _try(world, who, cell)
    subject = world.subject(who, cell.subject)
    verdict = "allowed" if allowed else "refused"
    assert allowed is expected, f"{who.value} was {verdict} to {cell.action.value} {subject}"


@in_module_loop
@pytest.mark.parametrize("who", list(Who), ids=lambda w: f"{w.value.replace(' ', '-')}:connect")
async def test_connect(world: World, who: Who) -> None:
    if who.connects:
        assert who in world.connections, world.refusals.get(who)
        assert world.connections[who].nc.is_connected
    else:
        assert who not in world.connections, f"{who.value} got in"
        assert "authorization violation" in world.refusals.get(who, "").lower()


def test_the_docs_show_the_matrix() -> None:
    text = DOCS.read_text()
    assert DOC_START in text and DOC_END in text, f"docs/security.md lacks {DOC_START}"
    shown = text.split(DOC_START, 1)[1].split(DOC_END, 1)[0].strip("\n") + "\n"
    assert shown == render(), (
        "docs/security.md's matrix differs from tests/security/matrix.py; paste this between "
        f"the markers:\n\n{render()}"
    )


@in_module_loop
async def test_a_member_cannot_push_its_colonys_events_to_another_colonys_executor(
    world: World, tmp_path: Path
) -> None:
    """Were members allowed to create consumers, even filtered to their colony, alice could
    have colony dev's events pushed onto the control subject of otto, an executor of colony
    other (nats-server does not check a push consumer's deliver subject): none is allowed."""
    p, u = world.prefix, world.prefix.upper()
    olive_seed, otto_key = tmp_path / "olive.nk", generate()
    write_seed(olive_seed, world.keys[Who.COLONY_OWNER])
    settings = _party_settings(world.server, p, olive_seed, colony=OTHER)
    async with await Client.connect(settings, caller="olive") as olive:
        await olive.member_add("otto", otto_key.public_key, role="executor", executor_type="echo")
    claim = ConnectClaim(prefix=p, colony=OTHER, name="otto", executor=True)
    otto = await nats.connect(
        world.server.url,
        nkeys_seed_str=otto_key.seed.decode(),
        token=claim.token(),
        inbox_prefix=inbox_prefix(p, OTHER, "otto"),
        allow_reconnect=False,
    )
    try:
        control = await otto.subscribe(f"{p}.{OTHER}.control.otto")
        await otto.flush()
        watched = world.connections[Who.USER]
        alice = watched.nc
        events = await alice.subscribe(f"{p}.{COLONY}.events.*.*.*")
        spec = b'{"funcname": "f", "conditions": {"executortype": "echo"}}'
        await alice.request(f"{p}.{COLONY}.specs.echo", spec, timeout=5)
        await events.next_msg(timeout=5)  # dev has an event to push
        await events.unsubscribe()
        consumer = uuid.uuid4().hex
        config = {
            "name": consumer,
            "filter_subject": f"{p}.{COLONY}.events.>",
            "deliver_subject": f"{p}.{OTHER}.control.otto",
            "deliver_policy": "all",
            "ack_policy": "none",
            "inactive_threshold": 1_000_000_000,
        }
        body = json.dumps({"stream_name": f"{u}_EVENTS", "config": config}).encode()
        subject = f"$JS.API.CONSUMER.CREATE.{u}_EVENTS.{consumer}.{p}.{COLONY}.events.>"
        # Sent as _try sends a request: the server's permission violation, if it refuses the
        # subject, is heard by the round trip, without waiting for an answer that never comes.
        watched.errors.clear()
        inbox = alice.new_inbox()
        sub = await alice.subscribe(inbox, max_msgs=1)
        try:
            await alice.publish(subject, body, reply=inbox)
            await _round_trip(alice)
            if _refused(watched, Action.PUBLISH, subject):
                return  # refused by the server's permissions
            reply = await sub.next_msg(timeout=5)
        finally:
            await sub.unsubscribe()
        if "error" in json.loads(reply.data):
            return  # refused by JetStream
        pushed = await control.next_msg(timeout=5)
        pytest.fail(f"otto (colony {OTHER}) was pushed {pushed.subject}: {pushed.data[:60]!r}")
    finally:
        await otto.close()


@in_module_loop
async def test_a_namesake_in_another_installation_cannot_read_a_members_replies(
    world: World, tmp_path: Path
) -> None:
    """Two installations (prefixes) on one server, each with an alice in a colony dev: the
    inbox prefix names the installation, so neither reads the other's replies."""
    prefix = f"n{uuid.uuid4().hex[:10]}"
    settings = BrokerSettings(
        nats_url=world.server.url,
        prefix=prefix,
        storage="memory",
        keys_dir=world.server.keys_dir,
    )
    owner, namesake = generate(), generate()
    try:
        async with running_broker(settings) as broker:
            book = _book(broker)
            await book.put(
                Member(
                    colony_name=SERVER_SCOPE,
                    name="root",
                    public_key=owner.public_key,
                    role=Role.SERVER_OWNER,
                )
            )
            write_seed(tmp_path / "root.nk", owner)
            root_settings = _party_settings(world.server, prefix, tmp_path / "root.nk")
            async with await Client.connect(root_settings, caller="root") as root:
                await root.colony_add(COLONY)
            # The owner of the new colony: rights are decided at connect.
            async with await Client.connect(root_settings, caller="root") as root:
                await root.member_add("alice", namesake.public_key)
            claim = ConnectClaim(prefix=prefix, colony=COLONY, name="alice")
            other_alice = await nats.connect(
                world.server.url,
                nkeys_seed_str=namesake.seed.decode(),
                token=claim.token(),
                inbox_prefix=inbox_prefix(prefix, COLONY, "alice"),
                allow_reconnect=False,
            )
            try:
                overheard = await other_alice.subscribe(
                    inbox_prefix(prefix, COLONY, "alice") + ".>"
                )
                await other_alice.flush()
                alice = world.connections[Who.USER].nc
                await alice.request(f"{world.prefix}.{COLONY}.rpc.alice.list", b"{}", timeout=5)
                # The server sent any copy to the namesake before the PONG that answers this.
                await other_alice.flush()
                assert overheard.pending_msgs == 0, "the namesake got alice's reply"
            finally:
                await other_alice.close()
    finally:
        await drop_streams(world.server, prefix)
