"""A result that also asks for the next process (``results_next``): an executor that runs one
process at a time reports it and takes its next in one request, when the broker has one for it
at once; a broker that does not know the request is asked with plain results instead."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

import pytest
from nats.aio.msg import Msg

from colonyos.broker import Broker
from colonyos.client import Client
from colonyos.config import Settings
from colonyos.executor import ExecutorApp, ProcessContext
from colonyos.messages import Close
from colonyos.models import Process, ProcessState
from colonyos.subjects import Subjects

from .conftest import COLONY
from .helpers import executor_client, raw_nats, submitted, until_read

N = 20


def _close(p: Process) -> Close:
    return Close(process_id=p.process_id, output=["done"], attempt=p.attempt)


async def test_a_result_brings_the_process_that_waits_next(
    broker: Broker, client: Client, settings: Settings
) -> None:
    async with executor_client(settings, "ex1") as ex:
        first = await submitted(client)
        second = await submitted(client)
        [taken] = await ex.assign_many(1, 5)
        assert taken.process_id == first.process_id
        refused, brought = await ex.send_results_next([_close(taken)], [], executor_id="")
        assert refused == {}
        assert [p.process_id for p in brought] == [second.process_id]
        assert brought[0].state is ProcessState.RUNNING
        assert (await client.get(first.process_id)).state is ProcessState.SUCCESS
        # Nothing waits now: the result is taken, and nothing is brought.
        refused, brought = await ex.send_results_next([_close(brought[0])], [], executor_id="")
        assert refused == {} and brought == []
        assert (await client.get(second.process_id)).state is ProcessState.SUCCESS


async def test_a_result_whose_outcomes_would_crowd_the_reply_brings_nothing(
    broker: Broker, client: Client, settings: Settings
) -> None:
    """Each refused result's outcome carries its error: past a kilobyte of them, the reply
    must leave room for nothing else (a process record may fill a message but for 4 KiB)."""
    async with executor_client(settings, "ex1") as ex:
        waiting = await submitted(client)
        unknown = [Close(process_id=f"{i:064x}", output=[]) for i in range(N)]
        refused, brought = await ex.send_results_next(unknown, [], executor_id="")
        assert len(refused) == N and brought == []
        assert (await client.get(waiting.process_id)).state is ProcessState.WAITING
        refused, brought = await ex.send_results_next(unknown[:1], [], executor_id="")
        assert len(refused) == 1 and [p.process_id for p in brought] == [waiting.process_id]


@pytest.fixture
async def requests(settings: Settings) -> AsyncIterator[collections.Counter[str]]:
    """The executor requests made in colony dev, by operation."""
    counted: collections.Counter[str] = collections.Counter()

    async def count(msg: Msg) -> None:
        counted[msg.subject.rsplit(".", 1)[1]] += 1

    nc = await raw_nats(settings.nats_url)
    await nc.subscribe(Subjects(settings.prefix).rpc(COLONY, "*", "*"), cb=count)
    yield counted
    await nc.close()


def _one_slot(settings: Settings) -> ExecutorApp:
    """An executor of type ``one`` with one slot whose processes return ``["ran"]``."""
    app = ExecutorApp("one", "one-1", settings=settings)

    @app.handler()
    async def run(ctx: ProcessContext) -> list[object]:
        return ["ran"]

    return app


async def _run_queued(client: Client, settings: Settings) -> list[Process]:
    """``N`` processes queued first, then run by one single-slot executor to the last."""
    queued = [await submitted(client, executor_type="one") for _ in range(N)]
    app = _one_slot(settings)
    task = asyncio.create_task(app.run())
    try:
        return [await client.wait(p.process_id, timeout=20) for p in queued]
    finally:
        app.stop()
        async with asyncio.timeout(10):
            await task


async def test_a_single_slot_executor_pays_one_request_per_process_with_work_queued(
    broker: Broker, client: Client, settings: Settings, requests: collections.Counter[str]
) -> None:
    done = await _run_queued(client, settings)
    assert all(p.state is ProcessState.SUCCESS for p in done)
    taking = ("assign", "assign_many", "results", "results_next", "close", "fail")
    asked = sum(requests[op] for op in taking)
    # Two per process if each result and each next process took a request of its own.
    assert asked <= N + 3, dict(requests)
    assert requests["results_next"] >= N - 2, dict(requests)


async def test_an_executor_whose_broker_does_not_know_the_request_reports_with_results(
    broker: Broker, client: Client, settings: Settings, requests: collections.Counter[str]
) -> None:
    service = broker.service_of(COLONY)
    assert service is not None
    service._ops.pop("results_next")  # as a broker of an earlier version
    done = await _run_queued(client, settings)
    assert [p.output for p in done] == [["ran"]] * N
    assert requests["results_next"] == 1 and requests["results"] >= 1, dict(requests)


async def test_a_run_stopped_with_a_result_out_gives_back_what_that_result_brings(
    broker: Broker, client: Client, settings: Settings
) -> None:
    """The result of the first process is still at the broker when the run is stopped: the
    release waits for its answer, so the process it brought goes back to the queue at once
    (not after the liveness window, as an assignment its run never started)."""
    service = broker.service_of(COLONY)
    assert service is not None
    decoder, handler = service._ops["results_next"]
    asked, gate, released = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def held_results(*args: object) -> object:
        asked.set()
        await gate.wait()
        return await handler(*args)

    decode_release, release = service._ops["release"]

    async def seen_release(*args: object) -> object:
        released.set()
        return await release(*args)

    service._ops["results_next"] = (decoder, held_results)
    service._ops["release"] = (decode_release, seen_release)
    first, second = [await submitted(client, executor_type="one") for _ in range(2)]
    app = _one_slot(settings)
    task = asyncio.create_task(app.run())
    try:
        async with asyncio.timeout(10):
            await asked.wait()
        app.stop(force=True)
        # Without waiting for the result, the release comes at once.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await released.wait()
        gate.set()
        async with asyncio.timeout(10):
            await task
        assert (await client.get(first.process_id)).state is ProcessState.SUCCESS
        await until_read(lambda: _state(client, second), ProcessState.WAITING)
    finally:
        gate.set()
        if not task.done():
            app.stop(force=True)
            await task


async def _state(client: Client, p: Process) -> ProcessState:
    return (await client.get(p.process_id)).state
