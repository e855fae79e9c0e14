"""An assign marked as a prefetch, on a standalone Service (tests/helpers.py) so that a test can
hold the park and the queue where the case it needs happens."""

from __future__ import annotations

import asyncio

from colonyos.broker.assignment import Assignment
from colonyos.broker.service import Picked
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.messages import Assign
from colonyos.models import ProcessState

from ..conftest import COLONY
from ..helpers import executor_client, standalone_service, submitted


async def test_a_prefetch_leaves_a_queued_process_to_an_idle_executor_parked_for_it(
    client: Client, settings: Settings, broker_settings: BrokerSettings
) -> None:
    """Queued, and an idle executor's assign parked that matches it (as one woken to look at
    the queue again is, for a moment): the prefetch hands it over and takes the next."""
    async with executor_client(settings, "idle"), executor_client(settings, "busy"):
        first, second = await submitted(client), await submitted(client)
        async with standalone_service(broker_settings) as s:
            assignment = Assignment(s)
            waiter: asyncio.Future[Picked] = asyncio.get_running_loop().create_future()
            idle = s.executor(COLONY, "idle")
            s.parked.park(COLONY, "echo", assignment.offer(idle, Assign()), waiter)
            got = await assignment.assign(COLONY, "busy", Assign(timeout=0, prefetch=True))
            assert waiter.done() and waiter.result()[0].process_id == first.process_id
            assert got is not None and got.process_id == second.process_id
            assert got.state is ProcessState.RUNNING
            assert got.assigned_executor_id == s.executor(COLONY, "busy").executor_id


async def test_a_prefetch_takes_one_process_whatever_count_it_asks(
    client: Client, settings: Settings, broker_settings: BrokerSettings
) -> None:
    async with executor_client(settings, "busy"):
        queued = [await submitted(client) for _ in range(3)]
        async with standalone_service(broker_settings) as s:
            assignment = Assignment(s)
            got = await assignment.assign_many(
                COLONY, "busy", Assign(timeout=0, count=3, prefetch=True)
            )
            assert [p.process_id for p in got] == [queued[0].process_id]
            assert len(s.queue) == 2
            plain = await assignment.assign_many(COLONY, "busy", Assign(timeout=0, count=3))
            assert [p.process_id for p in plain] == [p.process_id for p in queued[1:]]


async def test_a_prefetch_leaves_a_process_with_a_maxexectime_queued(
    client: Client, settings: Settings, broker_settings: BrokerSettings
) -> None:
    """Its clock would run while it waits behind the prefetcher's running process: it stays
    queued for an assign that can start it at once."""
    async with executor_client(settings, "busy"):
        timed = await submitted(client, max_exec_time=30)
        async with standalone_service(broker_settings) as s:
            assignment = Assignment(s)
            got = await assignment.assign(COLONY, "busy", Assign(timeout=0, prefetch=True))
            assert got is None and len(s.queue) == 1
            got = await assignment.assign(COLONY, "busy", Assign(timeout=0))
            assert got is not None and got.process_id == timed.process_id
