"""Helpers shared by test modules (import from here, never from another test module)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from colonyos.broker.index import ProcessIndex
from colonyos.broker.service import Service
from colonyos.broker.store import ProcessStore
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings, default_caller
from colonyos.connection import connect_nats
from colonyos.errors import BrokerUnavailableError, ProcessNotFoundError
from colonyos.models import Conditions, Executor, ExecutorState, FunctionSpec, Process, ProcessState
from colonyos.security.keys import generate
from colonyos.security.members import Member, MemberBook
from colonyos.security.permissions import Role, grants, inbox_prefix
from colonyos.subjects import Subjects

# The example specs shipped with the project, and the tests' own data files.
EXAMPLES = Path(__file__).parents[1] / "examples"
DATA = Path(__file__).parent / "data"


def base_args(settings: Settings) -> list[str]:
    """The CLI's global options that point it at ``settings``' server, prefix and colony."""
    return ["--nats", settings.nats_url, "--prefix", settings.prefix, "--colony", settings.colony]


# -- who the tests are on a secure server -------------------------------------------------------

# The session's identity: the key of ``settings`` and of the CLIs the tests run. conftest enrols
# it under these names (the SDK's ``tester``, the CLI's login name) as owner of the server and
# of colony dev in every test's prefix.
OWNER = generate()
OWNER_NAMES = ("tester", default_caller())
# The broker seed of each secure nats-server the tests run, by URL (conftest fills it).
server_seeds: dict[str, bytes] = {}


async def raw_nats(url: str, **options: Any) -> NATS:
    """A raw NATS connection that plays the broker or an inspector of its streams and buckets:
    on a secure server with the brokers' key (no member may touch a stream), else as is."""
    seed = server_seeds.get(url)
    if seed is not None:
        options.setdefault("nkeys_seed_str", seed.decode())
    return await nats.connect(url, **options)


async def request_as(
    nc: NATS, prefix: str, colony: str, caller: str, op: str, body: bytes, timeout: float = 5.0
) -> Msg:
    """A raw rpc request as ``caller`` makes it, on ``nc`` (raw_nats): the broker answers only
    into the caller's inbox (``_INBOX.P.C.N``), whoever publishes."""
    inbox = f"{inbox_prefix(prefix, colony, caller)}.{uuid.uuid4().hex}"
    sub = await nc.subscribe(inbox, max_msgs=1)
    try:
        await nc.publish(Subjects(prefix).rpc(colony, caller, op), body, reply=inbox)
        return await sub.next_msg(timeout=timeout)
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


async def enroll(
    book: MemberBook | None,
    name: str,
    public_key: str = OWNER.public_key,
    colony: str = "dev",
    role: Role = Role.USER,
) -> None:
    """Make ``name`` (by default with the session's key) a member of ``colony`` in ``role``,
    as its owner would; nothing on an insecure broker (``book`` None)."""
    if book is not None:
        await book.put(Member(colony_name=colony, name=name, public_key=public_key, role=role))


def spec(executor_type: str = "echo", **kw: Any) -> FunctionSpec:
    conditions = Conditions(executor_type=executor_type, **kw.pop("conditions", {}))
    return FunctionSpec(func_name=str(kw.pop("func_name", "echo")), conditions=conditions, **kw)


async def connect_executor(
    settings: Settings, name: str, executor_type: str = "echo", **kw: Any
) -> Client:
    """An executor's raw client, registered under ``name``. On a secure server a first
    registration is made on a connection that may only register: once approved (the test
    colonies approve automatically) it connects again, as executors do."""
    c = await Client.connect(settings, caller=name, executor=True)
    try:
        executor = Executor(executor_name=name, executor_type=executor_type, **kw)
        registered = await c.register(executor)
        if c.secure and registered.state is ExecutorState.APPROVED:
            await c.aclose()
            c = await Client.connect(settings, caller=name, executor=True)
    except BaseException:
        await c.aclose()
        raise
    return c


@contextlib.asynccontextmanager
async def executor_client(
    settings: Settings,
    name: str,
    executor_type: str = "echo",
    *,
    register: bool = True,
    **kw: Any,
) -> AsyncIterator[Client]:
    """:func:`connect_executor` (unless not ``register``: no broker runs yet, it only
    connects), closed on leaving."""
    if register:
        c = await connect_executor(settings, name, executor_type, **kw)
    else:
        c = await Client.connect(settings, caller=name, executor=True)
    try:
        yield c
    finally:
        await c.aclose()


async def wait_created(client: Client, pid: str) -> None:
    """A spec accepted by JetStream but not yet by a broker has no process yet: poll for it."""
    async with asyncio.timeout(30):
        while True:
            try:
                await client.get(pid)
                return
            except (ProcessNotFoundError, BrokerUnavailableError):
                await asyncio.sleep(0.1)  # sleep-ok: polling the state under a deadline


async def submitted(client: Client, **kw: Any) -> Process:
    p = await client.submit(spec(**kw))
    assert isinstance(p, Process)
    return p


async def until(check: Callable[[], bool], *, timeout: float = 10.0) -> None:
    """Poll a condition on in-process state under a deadline."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)  # sleep-ok: polling state under a deadline


async def until_read(
    read: Callable[[], Awaitable[object]], expected: object, *, timeout: float = 10.0
) -> None:
    """Poll an asynchronous read until it gives ``expected``, under a deadline."""
    async with asyncio.timeout(timeout):
        while await read() != expected:
            await asyncio.sleep(0.01)  # sleep-ok: polling state under a deadline


@contextlib.asynccontextmanager
async def standalone_service(
    settings: BrokerSettings, *, load: bool = True, colony: str = "dev"
) -> AsyncIterator[Service]:
    """A broker's Service of ``colony`` on its own NATS connection, loaded from the prefix's KV
    (unless not ``load``), without a lease: what a broker that believes it leads the colony
    would write with."""
    seed = server_seeds.get(settings.nats_url)
    nc = await connect_nats(settings.nats_url, name="colonies-test-writer", seed=seed)
    subjects = Subjects(settings.prefix)
    store = ProcessStore(nc, subjects, storage=settings.storage)
    index = ProcessIndex(None)
    try:
        await store.setup()
        await index.open()
        service = Service(
            store,
            index,
            subjects,
            max_executor_losses=settings.max_executor_losses,
            scope=colony,
        )
        if load:
            await service.load()
        yield service
    finally:
        await store.close()
        await index.close()
        await nc.close()


async def specs_drained(js: nats.js.JetStreamContext, subjects: Subjects) -> bool:
    """The specs stream, a work queue, holds nothing: every submission was taken and acked
    (the ack may trail the event a moment). Polled under a deadline."""
    async with asyncio.timeout(5):
        while True:
            if (await js.stream_info(subjects.stream_specs)).state.messages == 0:
                return True
            await asyncio.sleep(0.05)  # sleep-ok: polling the consumer's state under a deadline


async def stored_events(
    nats_url: str, prefix: str, colony: str, process_id: str, *, last: ProcessState
) -> list[tuple[ProcessState, int]]:
    """A process's stored events, in stream order, up to the first in state ``last``: each
    event's state and the KV revision it carries (its ``Nats-Msg-Id``)."""
    nc = await raw_nats(nats_url)
    try:
        subject = Subjects(prefix).events_filter(colony=colony, process_id=process_id)
        sub = await nc.jetstream().subscribe(subject, ordered_consumer=True)
        seen: list[tuple[ProcessState, int]] = []
        async with asyncio.timeout(10):
            while not seen or seen[-1][0] is not last:
                msg = await sub.next_msg(timeout=10)
                state = msgspec.json.decode(msg.data, type=Process).state
                seen.append((state, int((msg.headers or {})["Nats-Msg-Id"].rsplit(".", 1)[1])))
        return seen
    finally:
        await nc.close()


# -- a server that enforces a member's permissions ----------------------------------------------

BROKER_USER = "broker"
PASSWORD = "secret"


def member_permissions(subjects: Subjects, colony: str, name: str) -> dict[str, Any]:
    """A user's rights in ``colony`` under ``name``, exactly as the auth callout grants them
    (colonyos/security/permissions.py), in nats-server's config form."""
    granted = grants(subjects, colony, name, (Role.USER,))
    return {
        "publish": {"allow": list(granted.publish)},
        "subscribe": {"allow": list(granted.subscribe)},
        "allow_responses": {"max": 1},
    }


def write_member_config(
    path: Path, subjects: Subjects, colony: str, members: dict[str, str]
) -> Path:
    """A nats-server config (plain config mode, static users, all with password
    :data:`PASSWORD`): :data:`BROKER_USER` may do everything; each member user (user -> the
    name it speaks as) only what :func:`member_permissions` grants."""
    users: list[dict[str, Any]] = [{"user": BROKER_USER, "password": PASSWORD}]
    for user, name in members.items():
        users.append(
            {
                "user": user,
                "password": PASSWORD,
                "permissions": member_permissions(subjects, colony, name),
            }
        )
    path.write_text(json.dumps({"authorization": {"users": users}}))
    return path


def as_user(url: str, user: str) -> str:
    """The server's URL with ``user``'s credentials in it."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{user}:{PASSWORD}@{rest}"
