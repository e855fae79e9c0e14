"""The state and transition path's side roads: who may be given work, a write that finds its
revision stale or names another colony's process, a reload of a process removed meanwhile, a
malformed heartbeat, a registration stored before its resources were checked, the parked
assigns answered as the broker stops.

They run on a standalone Service (tests/helpers.py) over the test's broker's streams, so that
a test can set the in-memory state the road starts from."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from colonyos.broker import transitions
from colonyos.broker.scheduler import Capacity, Offer
from colonyos.broker.service import Service
from colonyos.client import Client
from colonyos.config import BrokerSettings
from colonyos.errors import (
    ExecutorRemovedError,
    ExecutorReplacedError,
    NotAuthorizedError,
    ProcessNotFoundError,
)
from colonyos.messages import Revoke
from colonyos.models import (
    Capabilities,
    Executor,
    ExecutorState,
    Hardware,
    Process,
    ProcessState,
    now,
)

from ..conftest import COLONY
from ..helpers import standalone_service, submitted

RUN = "5" * 64  # the registered run's id; the tests ask with ids on both sides of it


def _executor(s: Service, state: ExecutorState, name: str = "e1") -> None:
    s.remember_executor(
        Executor(
            executor_id=RUN, executor_type="t", executor_name=name, colony_name=COLONY, state=state
        )
    )


async def test_only_the_registered_run_of_an_approved_executor_is_given_work(
    client: Client, broker_settings: BrokerSettings
) -> None:
    async with standalone_service(broker_settings) as s:
        _executor(s, ExecutorState.APPROVED)
        assert s.approved(COLONY, "e1", RUN).executor_id == RUN
        assert s.approved(COLONY, "e1").executor_id == RUN  # no run named: any
        for other in ("0" * 64, "9" * 64):
            with pytest.raises(ExecutorReplacedError, match="replaced by another start"):
                s.approved(COLONY, "e1", other)


@pytest.mark.parametrize("state", [ExecutorState.PENDING, ExecutorState.REJECTED])
async def test_an_executor_not_approved_is_told_to_ask_for_approval(
    client: Client, broker_settings: BrokerSettings, state: ExecutorState
) -> None:
    async with standalone_service(broker_settings) as s:
        _executor(s, state)
        with pytest.raises(NotAuthorizedError, match=f"is {state.name}, not APPROVED"):
            s.approved(COLONY, "e1", RUN)


async def test_a_removed_executor_is_told_it_was_removed(
    client: Client, broker_settings: BrokerSettings
) -> None:
    async with standalone_service(broker_settings) as s:
        _executor(s, ExecutorState.UNREGISTERED)
        with pytest.raises(ExecutorRemovedError, match="removed from colony"):
            s.approved(COLONY, "e1", RUN)


async def test_a_write_that_takes_a_running_process_away_tells_its_executor_unasked(
    client: Client, broker_settings: BrokerSettings
) -> None:
    """Notifying is the default: only executors' own reports, which need no telling, opt out."""
    p = await submitted(client)
    async with standalone_service(broker_settings) as s:
        _executor(s, ExecutorState.APPROVED)
        executor = s.executor(COLONY, "e1")
        await s.transition(
            COLONY, p.process_id, lambda q: transitions.assign(q, executor, now=now())
        )
        control = await s.store.nc.subscribe(s.subjects.control(COLONY, "e1"))
        await s.transition(COLONY, p.process_id, lambda q: transitions.cancel(q, now=now()))
        told = msgspec.json.decode((await control.next_msg(timeout=10)).data, type=Revoke)
        await control.unsubscribe()
        assert (told.process_id, told.state) == (p.process_id, ProcessState.CANCELLED)


def _later(p: Process) -> Process:
    return msgspec.structs.replace(p, priority_time=p.priority_time + 1)


async def test_a_write_from_a_stale_revision_reads_the_process_again_and_is_made(
    client: Client, broker_settings: BrokerSettings
) -> None:
    p = await submitted(client)
    async with standalone_service(broker_settings) as s:
        read = await s.store.get(COLONY, p.process_id)
        await s.transition(COLONY, p.process_id, _later, current=read)  # `read` is now stale
        done = await s.transition(COLONY, p.process_id, _later, current=read)
        assert done.priority_time == p.priority_time + 2


@pytest.mark.parametrize("colony", ["aaa", "zzz"])  # before and after "dev"
async def test_a_process_known_in_memory_is_not_written_for_another_colony(
    client: Client, broker_settings: BrokerSettings, colony: str
) -> None:
    p = await submitted(client)
    async with standalone_service(broker_settings) as s:
        read = await s.store.get(COLONY, p.process_id)
        with pytest.raises(ProcessNotFoundError):
            await s.transition(colony, p.process_id, _later, current=read)
        assert (await s.store.get(COLONY, p.process_id))[1] == read[1]  # not written


async def test_a_process_removed_before_it_is_reloaded_is_dropped(
    client: Client, broker_settings: BrokerSettings
) -> None:
    p = await submitted(client)
    async with standalone_service(broker_settings) as s:
        s.queue.remove(p.process_id)  # popped for an assign, whose write found it changed
        await client.remove(p.process_id)
        await s.reload(p)  # learns it is gone, rather than failing the assign
        assert p.process_id not in s.running
        assert not s.queue.remove(p.process_id)  # not queued again


async def test_a_malformed_heartbeat_is_logged_and_ignored(
    client: Client, broker_settings: BrokerSettings, caplog: pytest.LogCaptureFixture
) -> None:
    async with standalone_service(broker_settings) as s:
        nc = s.store.nc
        subject = s.subjects.heartbeat(COLONY, "e1")
        sub = await nc.subscribe(subject)
        await nc.publish(subject, b"{not json")
        msg = await sub.next_msg(timeout=10)
        await sub.unsubscribe()
        s.heartbeat(msg)
        assert f"ignored a malformed heartbeat on {subject}" in caplog.text


async def test_a_registration_with_resources_that_do_not_parse_offers_none(
    client: Client, broker_settings: BrokerSettings
) -> None:
    """Stored before registrations were checked: it loads, with nothing to offer."""
    bad = Executor(
        executor_id=RUN,
        executor_type="t",
        executor_name="old",
        colony_name=COLONY,
        location_name="lab",
        capabilities=Capabilities(hardware=[Hardware(cpu="lots", mem="9Gi", storage="1Ti")]),
    )
    async with standalone_service(broker_settings) as s:
        s.remember_executor(bad)
        assert s.capacity_of(bad) == Capacity("old", "lab", 0, 0, 0, 0, 0)


async def test_a_stopping_broker_answers_every_parked_assign(
    client: Client, broker_settings: BrokerSettings
) -> None:
    async with standalone_service(broker_settings) as s:
        loop = asyncio.get_running_loop()
        waiters = [loop.create_future() for _ in range(3)]
        for i, waiter in enumerate(waiters):
            s.parked.park(COLONY, f"type{i % 2}", Offer(Capacity(f"e{i}", "")), waiter)
        s.release_parked()
        assert all(w.cancelled() for w in waiters)
