"""The Service's in-memory state as it follows the processes it writes or loads: the deadline
heaps, the running set, the capacity a process held and the parked assigns waiting for it, the
revisions loaded whose event may be missing, and the grace a new leader gives executors.

Each test runs on a standalone Service (tests/helpers.py) over the test broker's streams, and
tracks processes as read back from storage (equal values, new objects)."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import msgspec
import pytest

from colonyos.broker import transitions as t
from colonyos.broker.scheduler import Capacity, Offer
from colonyos.broker.service import LOOK_AGAIN, Picked, Service
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.models import Executor, Process, ProcessState, now

from .conftest import COLONY
from .helpers import executor_client, standalone_service, submitted

CPU = {"conditions": {"cpu": "100m"}}  # a request held for its executor while it runs
HOLDER = Executor(executor_id="a" * 64, executor_type="echo", executor_name="e1")


def _decoded(process: Process) -> Process:
    return msgspec.json.decode(msgspec.json.encode(process), type=Process)


def _due(s: Service, heap: str) -> set[str]:
    """The process ids a deadline heap holds (emptying it)."""
    far = 2**62
    return {pid for _, pid in getattr(s, heap).pop_due(far)}


def _parked_for_holder(s: Service) -> asyncio.Future[Picked]:
    """An assign of HOLDER's parked under another executor type, so that no process of type
    echo is handed to it: only capacity coming back wakes it."""
    waiter: asyncio.Future[Picked] = asyncio.get_running_loop().create_future()
    offer = Offer(Capacity(name="e1", location=""), executor_id=HOLDER.executor_id, in_use=s.in_use)
    s.parked.park(COLONY, "other", offer, waiter)
    return waiter


async def test_only_a_waiting_process_with_a_wait_deadline_is_in_its_heap(
    client: Client, broker_settings: BrokerSettings
) -> None:
    plain, timed = await submitted(client), await submitted(client)
    async with standalone_service(broker_settings) as s:
        _due(s, "wait_deadlines")
        s.track(*await s.store.get(COLONY, plain.process_id))  # wait_deadline: ZERO_TIME
        p, rev = await s.store.get(COLONY, timed.process_id)
        s.track(_decoded(msgspec.structs.replace(p, wait_deadline=now() + timedelta(hours=1))), rev)
        assert _due(s, "wait_deadlines") == {timed.process_id}


async def test_only_a_running_process_with_an_exec_deadline_is_in_its_heap(
    client: Client, broker_settings: BrokerSettings
) -> None:
    plain, timed = await submitted(client), await submitted(client, max_exec_time=60)
    async with standalone_service(broker_settings) as s:
        for p in (plain, timed):
            stored, rev = await s.store.get(COLONY, p.process_id)
            s.track(_decoded(t.assign(stored, HOLDER, now=now())), rev)
        assert s.running.keys() >= {plain.process_id, timed.process_id}
        assert _due(s, "exec_deadlines") == {timed.process_id}


async def test_a_process_waiting_for_its_parents_is_neither_queued_nor_running(
    client: Client, broker_settings: BrokerSettings
) -> None:
    p = await submitted(client)
    async with standalone_service(broker_settings) as s:
        stored, rev = await s.store.get(COLONY, p.process_id)
        s.track(msgspec.structs.replace(stored, wait_for_parents=True), rev)
        assert p.process_id not in s.running
        assert not s.queue.ahead_of(p.process_id) and len(s.queue) == 0


async def test_capacity_given_back_by_a_requeued_process_wakes_its_executors_parked_assign(
    client: Client, broker_settings: BrokerSettings
) -> None:
    p = await submitted(client, max_retries=3, **CPU)
    async with standalone_service(broker_settings) as s:
        stored, rev = await s.store.get(COLONY, p.process_id)
        running = t.assign(stored, HOLDER, now=now())
        s.track(running, rev)
        waiter = _parked_for_holder(s)
        requeued = t.requeue(running, "past its maxexectime", now=now())
        assert requeued.state is ProcessState.WAITING  # not FAILED: a retry was left
        s.track(requeued, rev + 1)
        assert waiter.done() and waiter.result() is LOOK_AGAIN


async def test_a_running_process_written_again_wakes_no_parked_assign(
    client: Client, broker_settings: BrokerSettings
) -> None:
    p = await submitted(client, **CPU)
    async with standalone_service(broker_settings) as s:
        stored, rev = await s.store.get(COLONY, p.process_id)
        running = t.assign(stored, HOLDER, now=now())
        s.track(running, rev)
        waiter = _parked_for_holder(s)
        s.track(msgspec.structs.replace(running, errors=["a note"]), rev + 1)  # still holds it
        assert not waiter.done()
        assert s.parked.take_all_of(HOLDER.executor_id) == [waiter]


async def test_a_loaded_revision_is_confirmed_once_before_it_changes(
    client: Client, broker_settings: BrokerSettings
) -> None:
    p = await submitted(client)
    async with standalone_service(broker_settings) as s:
        assert p.process_id in s.unconfirmed
        stored, rev = await s.store.get(COLONY, p.process_id)
        await s.confirm(stored, rev)
        assert p.process_id not in s.unconfirmed


async def test_a_removed_process_leaves_nothing_unconfirmed_behind(
    client: Client, broker_settings: BrokerSettings
) -> None:
    """Loaded but never changed, then removed: its id does not stay in the set for ever."""
    p = await submitted(client)
    async with standalone_service(broker_settings) as s:
        assert p.process_id in s.unconfirmed
        s.forget(p.process_id)
        assert p.process_id not in s.unconfirmed


async def test_a_loading_leader_gives_each_executor_a_grace_and_counts_what_it_loaded(
    client: Client,
    settings: Settings,
    broker_settings: BrokerSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with executor_client(settings, "e1"):
        await submitted(client)
        await submitted(client)
        with caplog.at_level(logging.INFO, logger="colonyos.broker.service"):
            async with standalone_service(broker_settings) as s:
                executor_id = s.executor(COLONY, "e1").executor_id
                assert s.heard[executor_id] == s.lead_start  # a grace, not a sign of life
    loaded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("colony ")]
    assert loaded and " 2 processes (2 waiting, 0 running)" in loaded[-1]


def _cannot_enqueue(process: Process, revision: int) -> None:
    raise RuntimeError("no room")


async def test_a_created_process_that_cannot_be_queued_ends_failed_with_the_reason(
    client: Client, broker_settings: BrokerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = await submitted(client)
    async with standalone_service(broker_settings) as s:
        stored, rev = await s.store.get(COLONY, p.process_id)
        monkeypatch.setattr(s, "enqueue", _cannot_enqueue)
        await s.admit(stored, rev)
        failed, _ = await s.store.get(COLONY, p.process_id)
        assert failed.state is ProcessState.FAILED
        assert failed.errors == ["it cannot be queued: RuntimeError: no room"]


async def test_a_loaded_process_that_cannot_be_queued_ends_failed_and_the_load_goes_on(
    client: Client, broker_settings: BrokerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = await submitted(client)
    async with standalone_service(broker_settings, load=False) as s:
        monkeypatch.setattr(s, "enqueue", _cannot_enqueue)
        await s.load()
        failed, _ = await s.store.get(COLONY, p.process_id)
        assert failed.state is ProcessState.FAILED
        assert failed.errors == ["it cannot be queued: RuntimeError: no room"]


async def test_a_loaded_process_neither_kept_nor_failed_is_logged_and_left(
    client: Client,
    broker_settings: BrokerSettings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    p = await submitted(client)

    async def refuse(process: Process, revision: int, reason: str) -> None:
        raise ValueError("refused to refuse")

    async with standalone_service(broker_settings, load=False) as s:
        monkeypatch.setattr(s, "enqueue", _cannot_enqueue)
        monkeypatch.setattr(s, "refuse", refuse)
        await s.load()
        left, _ = await s.store.get(COLONY, p.process_id)
        assert left.state is ProcessState.WAITING
    assert any("nor marked FAILED; left as it is" in r.getMessage() for r in caplog.records)


async def test_nats_trouble_while_failing_a_loaded_process_stops_the_load(
    client: Client, broker_settings: BrokerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker stands by and loads again, rather than lead without the process."""
    await submitted(client)

    async def refuse(process: Process, revision: int, reason: str) -> None:
        raise TimeoutError

    async with standalone_service(broker_settings, load=False) as s:
        monkeypatch.setattr(s, "enqueue", _cannot_enqueue)
        monkeypatch.setattr(s, "refuse", refuse)
        with pytest.raises(TimeoutError):
            await s.load()
