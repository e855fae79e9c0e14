"""The assignment path's side roads: a queued process that is gone, unreadable or taken by
another writer when it is read back; an executor replaced while its assign waits or is
written; a write of the batch that fails; a parked assign released, cancelled or looking again.

Most run on a standalone Service (tests/helpers.py) over the test's broker's streams, so that a
test can hold its in-memory state where the race it needs happens."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec
import nats.errors
import pytest

from colonyos.broker import Broker
from colonyos.broker.assignment import Assignment
from colonyos.broker.service import Service
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.errors import ExecutorReplacedError
from colonyos.messages import Assign
from colonyos.models import Capabilities, Hardware, Process, ProcessState

from ..conftest import COLONY
from ..helpers import connect_executor, executor_client, standalone_service, submitted, until

CPU = {"conditions": {"cpu": "100m"}}  # a request held for its executor while it is handed over


async def _without_bodies(s: Service, processes: list[Process]) -> None:
    """Queue ``processes`` in ``s`` with no body kept, as past ``max_bodies``: an assign reads
    each back from KV when it pops it."""
    s.queue.max_bodies = 0
    for p in processes:
        s.track(*await s.store.get(COLONY, p.process_id))


def _parked(s: Service, executor_id: str) -> int:
    return len(s.parked_runs.get(executor_id, ()))


def _replace_executor(s: Service, name: str) -> None:
    """``name`` registered again under a new id, as a second start of it would."""
    old = s.executor(COLONY, name)
    s.executors[(COLONY, name)] = msgspec.structs.replace(old, executor_id="f" * 64)


async def test_a_queued_process_removed_meanwhile_is_passed_over_for_the_next(
    client: Client, settings: Settings, broker_settings: BrokerSettings
) -> None:
    async with executor_client(settings, "e1"):
        gone, kept = await submitted(client, **CPU), await submitted(client, **CPU)
        async with standalone_service(broker_settings) as s:
            await _without_bodies(s, [gone, kept])
            await client.remove(gone.process_id)
            got = await Assignment(s).assign(COLONY, "e1", Assign(timeout=0))
            assert got is not None and got.process_id == kept.process_id
            assert s.in_use.release(gone.process_id) is None  # nothing held for it


async def test_a_queued_process_another_writer_assigned_meanwhile_is_passed_over(
    client: Client, settings: Settings, broker_settings: BrokerSettings
) -> None:
    """Two brokers that both believe they lead: what the other wrote is learned, not fought."""
    async with executor_client(settings, "e1") as e1, executor_client(settings, "e2"):
        taken, free = await submitted(client), await submitted(client)
        async with standalone_service(broker_settings) as s:
            await _without_bodies(s, [taken, free])
            assert (await e1.assign(timeout=0)) is not None  # through the broker: `taken`
            got = await Assignment(s).assign(COLONY, "e2", Assign(timeout=0))
            assert got is not None and got.process_id == free.process_id
            running, _ = s.running[taken.process_id]
            assert running.assigned_executor_id == s.executor(COLONY, "e1").executor_id


async def test_a_batch_passes_over_processes_removed_or_unreadable_meanwhile(
    client: Client, settings: Settings, broker_settings: BrokerSettings
) -> None:
    async with executor_client(settings, "e1"):
        first, gone, bad, last = [await submitted(client, **CPU) for _ in range(4)]
        async with standalone_service(broker_settings) as s:
            await _without_bodies(s, [first, gone, bad, last])
            await client.remove(gone.process_id)
            await s.store.processes.put(s.subjects.process_key(COLONY, bad.process_id), b"{")
            got = await Assignment(s).assign_many(COLONY, "e1", Assign(timeout=0, count=4))
            assert [p.process_id for p in got] == [first.process_id, last.process_id]
            for pid in (gone.process_id, bad.process_id):
                assert s.in_use.release(pid) is None  # nothing held for either


async def test_an_assign_that_may_not_wait_never_parks(
    client: Client, settings: Settings, broker_settings: BrokerSettings
) -> None:
    async with executor_client(settings, "e1"), standalone_service(broker_settings) as s:
        executor_id = s.executor(COLONY, "e1").executor_id
        task = asyncio.create_task(Assignment(s).assign(COLONY, "e1", Assign(timeout=0)))
        await until(lambda: task.done() or _parked(s, executor_id) > 0)
        parked = _parked(s, executor_id)
        task.cancel()
        assert parked == 0 and task.done() and task.result() is None


async def test_a_run_keeps_its_parked_entry_while_one_of_its_assigns_waits(
    client: Client, settings: Settings, broker_settings: BrokerSettings
) -> None:
    """The entry by which a run that goes ends its assigns stays while any of them waits, and
    goes with the last."""
    async with executor_client(settings, "e1"), standalone_service(broker_settings) as s:
        executor_id = s.executor(COLONY, "e1").executor_id
        assignment = Assignment(s)
        waiting = asyncio.create_task(assignment.assign(COLONY, "e1", Assign(timeout=60)))
        await until(lambda: _parked(s, executor_id) == 1)
        assert await assignment.assign(COLONY, "e1", Assign(timeout=0.05)) is None
        assert _parked(s, executor_id) == 1
        s.unpark_run(executor_id)  # the run goes: its other assign answers "no work" at once
        async with asyncio.timeout(10):
            assert await waiting is None
        assert executor_id not in s.parked_runs


async def test_a_parked_assign_cancelled_as_it_is_released_is_cancelled(
    client: Client, settings: Settings, broker_settings: BrokerSettings
) -> None:
    """Released ("no work") and cancelled in the same instant: the cancellation wins."""
    async with executor_client(settings, "e1"), standalone_service(broker_settings) as s:
        executor_id = s.executor(COLONY, "e1").executor_id
        task = asyncio.create_task(Assignment(s).assign(COLONY, "e1", Assign(timeout=60)))
        await until(lambda: _parked(s, executor_id) == 1)
        s.unpark_run(executor_id)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(10):
                await task
        assert executor_id not in s.parked_runs


async def test_a_process_handed_to_an_assign_whose_executor_was_replaced_goes_back(
    client: Client, settings: Settings, broker_settings: BrokerSettings
) -> None:
    async with executor_client(settings, "e1"), standalone_service(broker_settings) as s:
        executor_id = s.executor(COLONY, "e1").executor_id
        task = asyncio.create_task(
            Assignment(s).assign(COLONY, "e1", Assign(timeout=60, executor_id=executor_id))
        )
        await until(lambda: _parked(s, executor_id) == 1)
        p = await submitted(client, **CPU)
        process, revision = await s.store.get(COLONY, p.process_id)
        s.enqueue(process, revision)  # handed to the parked assign, its cpu held for it ...
        _replace_executor(s, "e1")  # ... and its executor replaced before it wakes
        with pytest.raises(ExecutorReplacedError):
            async with asyncio.timeout(10):
                await task
        assert p.process_id in s.queue
        assert s.in_use.release(p.process_id) is None


def _on_write(
    s: Service, monkeypatch: pytest.MonkeyPatch, act: Callable[[Process], Awaitable[None]]
) -> None:
    """Run ``act`` with each process ``s`` writes, before the write (which ``act`` may fail)."""
    update = s.store.update

    async def acting(process: Process, revision: int) -> tuple[int, bytes]:
        await act(process)
        return await update(process, revision)

    monkeypatch.setattr(s.store, "update", acting)


async def test_a_batch_whose_executor_is_replaced_as_its_first_is_written_is_that_one(
    client: Client,
    settings: Settings,
    broker_settings: BrokerSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with executor_client(settings, "e1"):
        first, second = await submitted(client), await submitted(client)
        async with standalone_service(broker_settings) as s:
            executor_id = s.executor(COLONY, "e1").executor_id

            async def replace(process: Process) -> None:
                _replace_executor(s, "e1")

            _on_write(s, monkeypatch, replace)
            req = Assign(timeout=0, count=2, executor_id=executor_id)
            got = await Assignment(s).assign_many(COLONY, "e1", req)
            assert [p.process_id for p in got] == [first.process_id]
            assert got[0].state is ProcessState.RUNNING
            assert second.process_id in s.queue  # for the next request


async def test_a_batch_keeps_what_was_written_when_a_later_write_fails(
    client: Client,
    settings: Settings,
    broker_settings: BrokerSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with executor_client(settings, "e1"):
        first, failing, third = [await submitted(client) for _ in range(3)]
        async with standalone_service(broker_settings) as s:

            async def fail_one(process: Process) -> None:
                if process.process_id == failing.process_id:
                    raise nats.errors.TimeoutError  # the server did not answer this write

            _on_write(s, monkeypatch, fail_one)
            got = await Assignment(s).assign_many(COLONY, "e1", Assign(timeout=0, count=3))
            assert [p.process_id for p in got] == [first.process_id, third.process_id]
            assert failing.process_id in s.queue  # back in the queue, for the next assign
            stored, _ = await s.store.get(COLONY, failing.process_id)
            assert stored.state is ProcessState.WAITING


async def test_a_parked_assign_woken_by_capacity_coming_back_takes_what_now_fits(
    client: Client, settings: Settings, broker: Broker
) -> None:
    assert broker.service_of(COLONY) is not None
    capacity = Capabilities(hardware=[Hardware(cpu="2")])
    ex = await connect_executor(settings, "two-1", "two", capabilities=capacity)
    try:
        first = await submitted(client, executor_type="two", conditions={"cpu": "2"})
        second = await submitted(client, executor_type="two", conditions={"cpu": "2"})
        got = await ex.assign(timeout=1)
        assert got is not None and got.process_id == first.process_id
        poll = asyncio.ensure_future(ex.assign(timeout=60))
        await until(
            lambda: (
                broker.service_of(COLONY) is not None and len(broker.service_of(COLONY).parked) == 1
            )
        )
        await ex.close(first.process_id, [])  # both cores free: the parked assign looks again
        async with asyncio.timeout(10):
            woken = await poll
        assert woken is not None and woken.process_id == second.process_id
    finally:
        await ex.aclose()
