"""Who may do what with generators on a secure installation: the colony's owner and users add
and remove them; executors may read them and pack arguments, as users may, by a plain
JetStream publish on the colony's generator subjects, and nobody packs into another colony."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import nats.errors
import pytest

from colonyos.client import Client
from colonyos.connection import refused_at_once
from colonyos.errors import NotAuthorizedError
from colonyos.generators.client import Generators
from tests.security.conftest import Party

pytestmark = pytest.mark.timeout(60)

MakeParty = Callable[..., Party]

WORKFLOW: list[dict[str, Any]] = [
    {"nodename": "a", "funcname": "echo", "conditions": {"executortype": "nobody"}}
]


async def _queued(generators: Generators, name: str, count: int) -> None:
    async with asyncio.timeout(10):
        while (await generators.get(name)).queue_size < count:
            await asyncio.sleep(0.05)  # sleep-ok: polling state under a deadline


async def test_owner_and_user_manage_generators_and_a_user_packs_raw(
    owner: Client, bob: Party
) -> None:
    await Generators(owner).add("by-owner", WORKFLOW, trigger=10)
    async with await bob.client() as bob_client:
        generators = Generators(bob_client)
        added = await generators.add("by-bob", WORKFLOW, trigger=10)
        assert added.initiator_name == "bob"
        await generators.pack("by-bob", {"from": "sdk"})
        # The user's own connection, a plain JetStream publish: acknowledged, so stored.
        subject = bob_client.subjects.generator("dev", "by-bob")
        ack = await bob_client.nc.jetstream().publish(subject, b'{"from": "raw"}')
        assert ack.seq > 0
        await _queued(generators, "by-bob", 2)
        await generators.remove("by-owner")
        assert [g.name for g in await generators.list()] == ["by-bob"]


async def test_an_executor_packs_and_reads_but_may_not_add_or_remove(
    owner: Client, make_party: MakeParty
) -> None:
    await Generators(owner).add("kept", WORKFLOW, trigger=10)
    worker = make_party("worker-1")
    await owner.member_add(
        "worker-1", worker.identity.public_key, role="executor", executor_type="echo"
    )
    async with await worker.client() as executor_client:
        generators = Generators(executor_client)
        with pytest.raises(NotAuthorizedError, match="generator add is for the owner and users"):
            await generators.add("mine", WORKFLOW, trigger=1)
        with pytest.raises(NotAuthorizedError, match="'worker-1' is an executor"):
            await generators.remove("kept")
        await generators.pack("kept", 42)
        await _queued(generators, "kept", 1)
        assert [g.name for g in await generators.list()] == ["kept"]


async def test_nobody_packs_into_another_colonys_generator(owner: Client, bob: Party) -> None:
    async with await bob.client() as bob_client:
        subject = bob_client.subjects.generator("elsewhere", "feed")
        publishing = bob_client.nc.jetstream().publish(subject, b"1")
        with pytest.raises(nats.errors.TimeoutError):
            await refused_at_once(bob_client.nc, subject, publishing)
