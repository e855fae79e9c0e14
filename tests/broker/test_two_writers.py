"""Two writers on one bucket (two brokers that both believe they lead): the compare-and-set
on the process's KV revision lets exactly one of them win each transition."""

from __future__ import annotations

import pytest

from colonyos.broker.assignment import Assignment
from colonyos.broker.reports import Reports
from colonyos.broker.store import StaleRevisionError
from colonyos.broker.transitions import assign as assign_step
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.errors import ConflictError
from colonyos.messages import Assign, Close
from colonyos.models import ProcessState

from ..conftest import COLONY
from ..helpers import executor_client, standalone_service, submitted


async def test_two_services_race_assign_and_close_one_wins_each(
    client: Client, settings: Settings, broker_settings: BrokerSettings
) -> None:
    p = await submitted(client)
    async with (
        executor_client(settings, "e1"),
        executor_client(settings, "e2"),
        standalone_service(broker_settings) as a,
        standalone_service(broker_settings) as b,
    ):
        # Both loaded the same WAITING revision; both try to assign it.
        assert p.process_id in a.queue and p.process_id in b.queue
        won = await Assignment(a).assign(COLONY, "e1", Assign(timeout=0))
        lost = await Assignment(b).assign(COLONY, "e2", Assign(timeout=0))
        assert won is not None and won.process_id == p.process_id
        assert lost is None
        stored = await client.get(p.process_id)
        assert stored.state is ProcessState.RUNNING and stored.assignments == 1
        assert stored.assigned_executor_id == won.assigned_executor_id

    async with (
        standalone_service(broker_settings) as a,
        standalone_service(broker_settings) as b,
    ):
        # Both loaded the same RUNNING revision; both close it, with different outputs.
        first = await Reports(a).close(COLONY, "e1", Close(process_id=p.process_id, output=["a"]))
        assert first.state is ProcessState.SUCCESS
        with pytest.raises(ConflictError):
            await Reports(b).close(COLONY, "e1", Close(process_id=p.process_id, output=["b"]))
    done = await client.get(p.process_id)
    assert done.state is ProcessState.SUCCESS and done.output == ["a"]


async def test_a_write_at_a_stale_revision_raises(
    client: Client, settings: Settings, broker_settings: BrokerSettings
) -> None:
    p = await submitted(client)
    async with (
        executor_client(settings, "e1"),
        standalone_service(broker_settings) as a,
        standalone_service(broker_settings) as b,
    ):
        process, revision = await a.store.get(COLONY, p.process_id)
        taken = assign_step(process, a.executor(COLONY, "e1"), now=process.submission_time)
        await a.store.update(taken, revision)
        with pytest.raises(StaleRevisionError):
            await b.store.update(taken, revision)
