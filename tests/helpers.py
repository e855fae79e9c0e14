"""Helpers shared by test modules (import from here, never from another test module)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import nats

from colonyos.broker.index import ProcessIndex
from colonyos.broker.service import Service
from colonyos.broker.store import ProcessStore
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.connection import connect_nats
from colonyos.models import Conditions, Executor, FunctionSpec, Process, ProcessState
from colonyos.security.permissions import Role, grants
from colonyos.subjects import Subjects


def spec(executor_type: str = "echo", **kw: Any) -> FunctionSpec:
    conditions = Conditions(executor_type=executor_type, **kw.pop("conditions", {}))
    return FunctionSpec(func_name=str(kw.pop("func_name", "echo")), conditions=conditions, **kw)


@contextlib.asynccontextmanager
async def executor_client(
    settings: Settings,
    name: str,
    executor_type: str = "echo",
    *,
    register: bool = True,
    **kw: Any,
) -> AsyncIterator[Client]:
    """A raw executor client, registered under ``name`` (unless not ``register``: no broker
    runs yet), closed on leaving."""
    c = await Client.connect(settings, caller=name)
    try:
        if register:
            await c.register(Executor(executor_name=name, executor_type=executor_type, **kw))
        yield c
    finally:
        await c.aclose()


async def submitted(client: Client, **kw: Any) -> Process:
    p = await client.submit(spec(**kw))
    assert isinstance(p, Process)
    return p


async def until(check: Callable[[], bool], *, timeout: float = 10.0) -> None:
    """Poll a condition on in-process state under a deadline."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)  # sleep-ok: polling state under a deadline


@contextlib.asynccontextmanager
async def standalone_service(settings: BrokerSettings) -> AsyncIterator[Service]:
    """A broker's Service on its own NATS connection, loaded from the prefix's KV, without a
    lease: what a broker that believes it leads would write with."""
    nc = await connect_nats(settings.nats_url, name="colonies-test-writer")
    subjects = Subjects(settings.prefix)
    store = ProcessStore(nc, subjects, storage=settings.storage)
    index = ProcessIndex(None)
    try:
        await store.setup()
        await index.open()
        service = Service(store, index, subjects)
        await service.load()
        yield service
    finally:
        await store.close()
        await index.close()
        await nc.close()


async def specs_drained(js: nats.js.JetStreamContext, subjects: Subjects) -> bool:
    """The specs consumer has nothing left to deliver and nothing awaiting an ack (the ack may
    trail the event a moment): polled under a deadline."""
    async with asyncio.timeout(5):
        while True:
            info = await js.consumer_info(subjects.stream_specs, subjects.consumer_specs)
            if (info.num_pending, info.num_ack_pending) == (0, 0):
                return True
            await asyncio.sleep(0.05)  # sleep-ok: polling the consumer's state under a deadline


async def stored_events(
    nats_url: str, prefix: str, colony: str, process_id: str, *, last: ProcessState
) -> list[tuple[ProcessState, int]]:
    """A process's stored events, in stream order, up to the first in state ``last``: each
    event's state and the KV revision it carries (its ``Nats-Msg-Id``)."""
    nc = await nats.connect(nats_url)
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
