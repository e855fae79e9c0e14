"""submit -> assign -> close, end to end over a real nats-server."""

from __future__ import annotations

import asyncio

import pytest

from colonyos.client import Client
from colonyos.errors import ConflictError, NotAuthorizedError, ProcessNotFoundError
from colonyos.models import Process, ProcessState

from .conftest import COLONY
from .helpers import connect_executor, spec


async def test_submit_assign_close(client: Client, settings) -> None:
    submitted = await client.submit(spec(args=["hello"]))
    assert isinstance(submitted, Process)
    assert submitted.state is ProcessState.WAITING
    assert submitted.colony_name == COLONY

    ex = await connect_executor(settings, "e1")
    assigned = await ex.assign(timeout=2)
    assert assigned is not None and assigned.process_id == submitted.process_id
    assert assigned.state is ProcessState.RUNNING and assigned.is_assigned

    closed = await ex.close(assigned.process_id, ["hello"])
    assert closed.state is ProcessState.SUCCESS
    done = await client.wait(submitted.process_id, timeout=5)
    assert done.output == ["hello"]
    assert done.end_time >= done.start_time >= done.submission_time
    await ex.aclose()


async def test_failure_path(client: Client, settings) -> None:
    p = await client.submit(spec())
    ex = await connect_executor(settings, "e1")
    got = await ex.assign(timeout=2)
    assert got is not None
    failed = await ex.fail(got.process_id, ["boom"])
    assert failed.state is ProcessState.FAILED and failed.errors == ["boom"]
    assert (await client.get(p.process_id)).state is ProcessState.FAILED
    await ex.aclose()


async def test_only_the_assigned_executor_can_close(client: Client, settings) -> None:
    await client.submit(spec())
    owner = await connect_executor(settings, "owner")
    other = await connect_executor(settings, "other")
    got = await owner.assign(timeout=2)
    assert got is not None
    with pytest.raises(NotAuthorizedError):
        await other.close(got.process_id, ["stolen"])
    with pytest.raises(NotAuthorizedError):
        await other.fail(got.process_id, ["nope"])
    assert (await client.get(got.process_id)).state is ProcessState.RUNNING
    await owner.close(got.process_id, [])
    with pytest.raises(ConflictError):
        await owner.close(got.process_id, [])
    await owner.aclose()
    await other.aclose()


async def test_priority_order_then_fifo(client: Client, settings) -> None:
    low = await client.submit(spec(priority=0, args=["low-1"]))
    low2 = await client.submit(spec(priority=0, args=["low-2"]))
    high = await client.submit(spec(priority=5, args=["high"]))
    ex = await connect_executor(settings, "e1")
    order = []
    for _ in range(3):
        got = await ex.assign(timeout=2)
        assert got is not None
        order.append(got.process_id)
        await ex.close(got.process_id, [])
    assert order == [high.process_id, low.process_id, low2.process_id]
    await ex.aclose()


async def test_executor_names_and_location_matching(client: Client, settings) -> None:
    named = await client.submit(spec(conditions={"executor_names": ["wanted"]}))
    located = await client.submit(spec(conditions={"location_name": "lab"}))
    other = await connect_executor(settings, "other")
    assert await other.assign(timeout=0) is None  # neither matches 'other' (no location)
    wanted = await connect_executor(settings, "wanted")
    got = await wanted.assign(timeout=1)
    assert got is not None and got.process_id == named.process_id
    in_lab = await connect_executor(settings, "labrat", location_name="lab")
    got = await in_lab.assign(timeout=1)
    assert got is not None and got.process_id == located.process_id
    for c in (other, wanted, in_lab):
        await c.aclose()


async def test_resources_are_enforced(client: Client, settings) -> None:
    from colonyos.models import Capabilities, Hardware

    big = await client.submit(spec(conditions={"cpu": "4", "mem": "8Gi"}))
    small = await connect_executor(
        settings, "small", capabilities=Capabilities(hardware=[Hardware(cpu="2", mem="16Gi")])
    )
    assert await small.assign(timeout=0) is None
    large = await connect_executor(
        settings, "large", capabilities=Capabilities(hardware=[Hardware(cpu="4000m", mem="16Gi")])
    )
    got = await large.assign(timeout=1)
    assert got is not None and got.process_id == big.process_id
    await small.aclose()
    await large.aclose()


async def test_assign_long_poll_times_out_with_no_work(client: Client, settings) -> None:
    ex = await connect_executor(settings, "e1")
    assert await ex.assign(timeout=0.2) is None
    await ex.aclose()


async def test_one_new_process_wakes_exactly_one_parked_executor(
    client: Client, settings, broker
) -> None:
    executors = [await connect_executor(settings, f"e{i}") for i in range(3)]
    polls = [asyncio.ensure_future(ex.assign(timeout=3)) for ex in executors]
    # Wait until all three are parked at the broker before submitting.
    async with asyncio.timeout(5):
        while len(broker.service_of(COLONY).parked) < 3:
            await asyncio.sleep(0.01)  # sleep-ok: polling broker state under a deadline
    p = await client.submit(spec())
    done, pending = await asyncio.wait(polls, timeout=2, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1
    got = next(iter(done)).result()
    assert got is not None and got.process_id == p.process_id
    # The other two are still parked, not woken with nothing.
    assert all(not t.done() for t in pending)
    results = await asyncio.gather(*pending)
    assert results == [None, None]
    for ex in executors:
        await ex.aclose()


async def test_same_process_id_twice_gives_one_process(client: Client, settings) -> None:
    pid = "a" * 64
    first = await client.submit(spec(), process_id=pid)
    second = await client.submit(spec(), process_id=pid)
    assert first.process_id == second.process_id == pid
    listed = await client.list_processes()
    assert [p.process_id for p in listed] == [pid]


async def test_queued_processes_without_a_kept_body_are_read_back(
    client: Client, settings, broker
) -> None:
    broker.service_of(COLONY).queue.max_bodies = 1  # as with a very long queue
    submitted = [await client.submit(spec(args=[i])) for i in range(3)]
    ex = await connect_executor(settings, "e1")
    got = []
    for _ in range(3):
        p = await ex.assign(timeout=1)
        assert p is not None and p.state is ProcessState.RUNNING
        got.append(p)
        await ex.close(p.process_id, p.spec.args)
    assert [p.process_id for p in got] == [p.process_id for p in submitted]
    assert [p.spec.args for p in got] == [[0], [1], [2]]
    await ex.aclose()


async def test_assign_many_takes_what_is_ready_in_priority_order(
    client: Client, settings, broker
) -> None:
    broker.service_of(COLONY).queue.max_bodies = 2  # some bodies are read back from KV
    submitted = [await client.submit(spec(args=[i])) for i in range(5)]
    ex = await connect_executor(settings, "e1")
    got = await ex.assign_many(3, timeout=1)
    assert [p.process_id for p in got] == [p.process_id for p in submitted[:3]]
    assert all(p.state is ProcessState.RUNNING for p in got)
    rest = await ex.assign_many(10, timeout=1)  # two left: no waiting for more
    assert [p.spec.args for p in rest] == [[3], [4]]
    assert await ex.assign_many(4, timeout=0.2) == []
    await ex.aclose()


async def test_assign_many_waits_for_the_first(client: Client, settings, broker) -> None:
    ex = await connect_executor(settings, "e1")
    poll = asyncio.ensure_future(ex.assign_many(8, timeout=5))
    async with asyncio.timeout(5):
        while len(broker.service_of(COLONY).parked) < 1:
            await asyncio.sleep(0.01)  # sleep-ok: polling broker state under a deadline
    p = await client.submit(spec())
    got = await poll
    assert [g.process_id for g in got] == [p.process_id]
    await ex.aclose()


async def test_results_answer_each_item_on_its_own(client: Client, settings) -> None:
    from colonyos.messages import Close, Fail

    for i in range(3):
        await client.submit(spec(args=[i]))
    ex = await connect_executor(settings, "e1")
    other = await connect_executor(settings, "e2")
    a, b, c = await ex.assign_many(3, timeout=1)
    refused = await ex.send_results(
        closes=[
            Close(process_id=a.process_id, output=["a"], attempt=a.retries),
            Close(process_id=b.process_id, attempt=b.retries + 1),  # a stale attempt
            Close(process_id="f" * 64),  # no such process
        ],
        fails=[Fail(process_id=c.process_id, errors=["boom"])],
    )
    assert set(refused) == {b.process_id, "f" * 64}
    assert isinstance(refused[b.process_id], NotAuthorizedError)
    assert isinstance(refused["f" * 64], ProcessNotFoundError)
    assert (await client.get(a.process_id)).output == ["a"]
    assert (await client.get(b.process_id)).state is ProcessState.RUNNING
    assert (await client.get(c.process_id)).errors == ["boom"]
    # Only the executor a process is assigned to may report its result.
    stolen = await other.send_results(closes=[Close(process_id=b.process_id)])
    assert isinstance(stolen[b.process_id], NotAuthorizedError)
    await ex.aclose()
    await other.aclose()
