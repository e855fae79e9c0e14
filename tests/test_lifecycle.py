"""Deadlines, retries, liveness, cancel and leases: each behaviour, bounded, without sleeps."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec
import pytest

from colonyos.broker import Broker
from colonyos.broker.lifecycle import ASSIGNMENT_LOST, Lifecycle
from colonyos.broker.transitions import EXEC_TIMEOUT, EXECUTOR_LOST, WAIT_TIMEOUT
from colonyos.client import Client
from colonyos.config import BrokerSettings
from colonyos.errors import ConflictError, NotAuthorizedError
from colonyos.executor import ExecutorApp, ProcessContext
from colonyos.models import Process, ProcessState, now
from colonyos.subjects import Subjects

from .conftest import COLONY, open_colony, running_broker
from .helpers import connect_executor, raw_nats, spec, until

# Many heartbeat periods (0.05 s): a busy machine that delays a few does not lose anyone.
LIVENESS_S = 1.5
MAX_LOSSES = 2


@pytest.fixture
def broker_settings(broker_settings: BrokerSettings) -> BrokerSettings:
    return msgspec.structs.replace(
        broker_settings,
        executor_liveness_s=LIVENESS_S,
        sweep_interval_s=0.05,
        lease_ttl_s=1.0,
        max_executor_losses=MAX_LOSSES,
    )


@contextlib.asynccontextmanager
async def heartbeating(ex: Client, running: list[str]) -> AsyncIterator[None]:
    """Heartbeats for a raw executor client, listing ``running`` (a list the test may change)."""
    (registered,) = [e for e in await ex.executor_list() if e.executor_name == ex.caller]

    async def beat() -> None:
        while True:
            await ex.heartbeat(registered.executor_id, list(running))
            await asyncio.sleep(0.05)  # sleep-ok: a heartbeat period, not a wait

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()


async def submitted(client: Client, **kw: object) -> Process:
    p = await client.submit(spec(**kw))
    assert isinstance(p, Process)
    return p


async def test_maxwaittime_fails_a_process_nobody_takes(client: Client) -> None:
    p = await submitted(client, max_wait_time=1)
    done = await client.wait(p.process_id, timeout=5)
    assert done.state is ProcessState.FAILED and done.errors == [WAIT_TIMEOUT]


async def test_maxexectime_requeues_then_fails_after_maxretries(client: Client, settings) -> None:
    first = await submitted(client, max_exec_time=1, max_retries=1)
    later = await submitted(client)
    ex = await connect_executor(settings, "slow")
    running = [first.process_id]
    alive = heartbeating(ex, running)
    await alive.__aenter__()
    got = await ex.assign(timeout=1)
    assert got is not None and got.process_id == first.process_id
    event = await client.wait_for_state(first.process_id, ProcessState.WAITING, timeout=10)
    assert event.retries == 1
    # It kept its place in the queue: it comes before the one submitted after it.
    again = await ex.assign(timeout=1)
    assert again is not None and again.process_id == first.process_id and again.retries == 1
    done = await client.wait(first.process_id, timeout=5)
    assert done.state is ProcessState.FAILED
    assert done.errors == [f"{EXEC_TIMEOUT} (attempt 2 of 2)"]
    # The late close of the first attempt changes nothing.
    with pytest.raises(ConflictError):
        await ex.close(first.process_id, ["late"], attempt=0)
    nxt = await ex.assign(timeout=1)
    assert nxt is not None and nxt.process_id == later.process_id
    await alive.__aexit__(None, None, None)
    await ex.aclose()


async def test_a_close_from_an_earlier_attempt_is_refused(client: Client, settings) -> None:
    p = await submitted(client, max_exec_time=1, max_retries=3)
    ex = await connect_executor(settings, "e1")
    alive = heartbeating(ex, [p.process_id])
    await alive.__aenter__()
    first = await ex.assign(timeout=1)
    assert first is not None
    second = await ex.assign(timeout=5)  # re-queued after 1 s, given to the same executor
    assert second is not None and second.process_id == p.process_id and second.retries == 1
    with pytest.raises(NotAuthorizedError, match="not assigned"):
        await ex.close(p.process_id, ["stale"], attempt=first.retries)
    closed = await ex.close(p.process_id, ["fresh"], attempt=second.retries)
    assert closed.state is ProcessState.SUCCESS and closed.output == ["fresh"]
    await alive.__aexit__(None, None, None)
    await ex.aclose()


async def test_silent_executor_loses_its_processes(client: Client, settings) -> None:
    """A lost executor is not the process's fault: it is queued again without a retry spent
    (even with maxretries 0), and its next assignment has a new attempt token."""
    p = await submitted(client)
    ex = await connect_executor(settings, "doomed")
    got = await ex.assign(timeout=1)
    assert got is not None and got.assignments == 1 and got.attempt == 0
    await ex.aclose()  # no more heartbeats, no more requests
    event = await client.wait_for_state(p.process_id, ProcessState.WAITING, timeout=10)
    assert event.retries == 0 and event.executor_losses == 1 and not event.is_assigned
    again = await connect_executor(settings, "heir")
    second = await again.assign(timeout=1)
    assert second is not None and second.assignments == 2 and second.attempt == 1
    with pytest.raises(NotAuthorizedError, match="not assigned"):
        await again.close(p.process_id, ["stale"], attempt=got.attempt)
    closed = await again.close(p.process_id, ["fresh"], attempt=second.attempt)
    assert closed.state is ProcessState.SUCCESS and closed.retries == 0
    await again.aclose()


async def test_a_heartbeat_under_another_name_keeps_no_one_alive(client: Client, settings) -> None:
    """Heartbeats carry the registration id in their body, but only the executor registered
    under the name they are sent as is kept alive: another executor cannot keep a dead one's
    processes from coming back."""
    p = await submitted(client)
    doomed = await connect_executor(settings, "doomed")
    got = await doomed.assign(timeout=1)
    assert got is not None
    await doomed.aclose()
    liar = await connect_executor(settings, "liar")

    async def beat_for_the_dead() -> None:
        while True:
            await liar.heartbeat(got.assigned_executor_id, [p.process_id])
            await asyncio.sleep(LIVENESS_S / 10)  # sleep-ok: pacing the forged heartbeats

    beating = asyncio.create_task(beat_for_the_dead())
    try:
        event = await client.wait_for_state(p.process_id, ProcessState.WAITING, timeout=10)
        assert event.executor_losses == 1
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
        await liar.aclose()


async def test_a_process_that_loses_every_executor_fails_after_the_bound(
    client: Client, settings
) -> None:
    """Executor losses cost no retry, but are bounded (max_executor_losses)."""
    p = await submitted(client, max_retries=-1)
    for i in range(MAX_LOSSES + 1):
        ex = await connect_executor(settings, f"doomed-{i}")
        assert await ex.assign(timeout=10) is not None
        await ex.aclose()
        if i < MAX_LOSSES:
            waiting = await client.wait_for_state(p.process_id, ProcessState.WAITING, timeout=10)
            assert waiting.executor_losses == i + 1 and waiting.retries == 0
    done = await client.wait(p.process_id, timeout=5)
    assert done.state is ProcessState.FAILED and done.executor_losses == MAX_LOSSES + 1
    assert done.errors == [
        f"{EXECUTOR_LOST}; {MAX_LOSSES + 1} executors were lost while running this process, "
        f"more than the {MAX_LOSSES} allowed (COLONIES_MAX_EXECUTOR_LOSSES)"
    ]


async def test_assignment_not_confirmed_by_heartbeats_is_requeued(client: Client, settings) -> None:
    """The assign reply was lost: the executor is alive but never lists the process."""
    p = await submitted(client, max_retries=1)
    ex = await connect_executor(settings, "forgetful")
    got = await ex.assign(timeout=1)
    assert got is not None
    async with heartbeating(ex, []):
        await client.wait_for_state(p.process_id, ProcessState.WAITING, timeout=10)
    again = await client.get(p.process_id)
    assert again.retries == 0 and again.executor_losses == 1
    # Given again and never confirmed, until more executors were lost than allowed.
    async with heartbeating(ex, []):
        for _ in range(MAX_LOSSES):
            assert await ex.assign(timeout=10) is not None
        done = await client.wait(p.process_id, timeout=10)
    assert done.state is ProcessState.FAILED and done.errors[0].startswith(ASSIGNMENT_LOST)
    await ex.aclose()


async def test_a_heartbeating_executor_keeps_a_long_job(client: Client, settings) -> None:
    """No visibility timeout: a job running for many liveness windows is never re-queued."""
    app = ExecutorApp("echo", "patient", settings=settings, heartbeat_s=0.05)
    windows = asyncio.Event()

    @app.handler()
    async def long_job(ctx: ProcessContext) -> list[object]:
        # Outlive three liveness windows, measured on the broker's own clock by its sweeps.
        await asyncio.wait_for(windows.wait(), timeout=10)
        return ["done"]

    p = await submitted(client)
    runner = asyncio.create_task(app.run(burst=True))
    # The windows count from the assignment: an executor slow to start has nothing to keep yet.
    await client.wait_for_state(p.process_id, ProcessState.RUNNING, timeout=10)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(10):
        while loop.time() - started < 3 * LIVENESS_S:
            await asyncio.sleep(0.05)  # sleep-ok: letting time pass is the point of the test
            assert (await client.get(p.process_id)).state is ProcessState.RUNNING
    windows.set()
    done = await client.wait(p.process_id, timeout=5)
    assert done.state is ProcessState.SUCCESS and done.retries == 0
    await runner


async def test_cancel_reaches_the_running_function_promptly(client: Client, settings) -> None:
    app = ExecutorApp("echo", "cancellable", settings=settings, heartbeat_s=0.05)
    started, stopped = asyncio.Event(), asyncio.Event()

    @app.handler()
    async def forever(ctx: ProcessContext) -> list[object]:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()
        return []

    p = await submitted(client)
    runner = asyncio.create_task(app.run(burst=True))
    async with asyncio.timeout(5):
        await started.wait()
        cancelled = await client.cancel(p.process_id)
        assert cancelled.state is ProcessState.CANCELLED
        await stopped.wait()
        assert await runner == 1
    assert (await client.get(p.process_id)).state is ProcessState.CANCELLED


async def test_late_close_after_cancel_is_refused(client: Client, settings) -> None:
    p = await submitted(client)
    ex = await connect_executor(settings, "e1")
    assert await ex.assign(timeout=1) is not None
    await client.cancel(p.process_id)
    with pytest.raises(ConflictError, match="CANCELLED"):
        await ex.close(p.process_id, ["too late"])
    assert (await client.get(p.process_id)).state is ProcessState.CANCELLED
    await ex.aclose()


async def test_cancel_a_waiting_process(client: Client, settings) -> None:
    p = await submitted(client)
    await client.cancel(p.process_id)
    ex = await connect_executor(settings, "e1")
    assert await ex.assign(timeout=0) is None
    with pytest.raises(ConflictError):
        await client.cancel(p.process_id)
    await ex.aclose()


class _Holder(msgspec.Struct):
    """The lease's value: who holds it (empty: handed back)."""

    holder: str


@pytest.fixture
async def standby(broker_settings: BrokerSettings, broker: Broker) -> AsyncIterator[Broker]:
    async with running_broker(broker_settings, lead=False, owners=True) as b:
        yield b


async def test_a_standby_takes_over_when_the_leader_stops(
    client: Client, settings, broker: Broker, standby: Broker
) -> None:
    assert broker.leading.is_set() and not standby.leading.is_set()
    p = await submitted(client)
    inspector = await raw_nats(settings.nats_url)  # members may not read the leases
    leases = await inspector.jetstream().key_value(Subjects(settings.prefix).bucket_leases)
    watcher = await leases.watch("broker")
    broker.stop()
    async with asyncio.timeout(5):
        await standby.leading.wait()
    holders: list[str] = []
    async with asyncio.timeout(5):
        while standby.broker_id not in holders:
            entry = await watcher.updates(timeout=5)
            if entry is not None and entry.value:
                holders.append(msgspec.json.decode(entry.value, type=_Holder).holder)
    await watcher.stop()
    await inspector.close()
    # Handed over, not left to run out: the stopping leader wrote the lease free, and the
    # standby took it from there.
    assert holders[-3:] == [broker.broker_id, "", standby.broker_id]
    ex = await connect_executor(settings, "e1")
    got = await ex.assign(timeout=2)
    assert got is not None and got.process_id == p.process_id
    await ex.close(got.process_id, [])
    q = await submitted(client)
    assert (await client.get(q.process_id)).state is ProcessState.WAITING
    await ex.aclose()


async def test_events_carry_the_revision_order(client: Client, settings) -> None:
    """Each process's events are stored in the order of its KV revisions."""

    p = await submitted(client)
    ex = await connect_executor(settings, "e1")
    got = await ex.assign(timeout=1)
    assert got is not None
    await ex.close(got.process_id, [])
    nc = await raw_nats(settings.nats_url)
    js = nc.jetstream()
    from colonyos.subjects import Subjects

    subjects = Subjects(settings.prefix)
    sub = await js.subscribe(
        subjects.events_filter(colony=COLONY, process_id=p.process_id), ordered_consumer=True
    )
    seen = []
    for _ in range(3):
        msg = await sub.next_msg(timeout=5)
        seen.append((msgspec.json.decode(msg.data, type=Process).state, msg.headers["Nats-Msg-Id"]))
    assert [s for s, _ in seen] == [
        ProcessState.WAITING,
        ProcessState.RUNNING,
        ProcessState.SUCCESS,
    ]
    revisions = [int(h.rsplit(".", 1)[1]) for _, h in seen]
    assert revisions == sorted(revisions)
    await nc.close()
    await ex.aclose()


async def test_a_sweep_that_fails_is_logged_and_the_next_one_runs(
    broker: Broker, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """A sweep that raises (the store out of reach for a moment) does not end the sweeps."""
    assert broker.service_of(COLONY) is not None

    class FailsFirst(Lifecycle):
        sweeps = 0

        async def sweep(self) -> None:
            self.sweeps += 1
            if self.sweeps == 1:
                raise RuntimeError("store out of reach")

    lifecycle = FailsFirst(broker.service_of(COLONY), liveness_s=LIVENESS_S, sweep_interval_s=0.01)
    task = asyncio.create_task(lifecycle.run())
    try:
        await until(lambda: lifecycle.sweeps >= 2 or task.done(), timeout=5)
        assert not task.done(), "the sweeps ended with the first failure"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, RuntimeError):
            await task
    assert "lifecycle sweep failed" in caplog.text and "store out of reach" in caplog.text


async def test_a_sweep_passes_processes_that_moved_on_and_expires_the_rest(
    own_brokers: BrokerSettings, settings
) -> None:
    """Deadlines popped in one sweep: one whose process may wait for ever now (the state
    machine refuses), one whose process is gone, then one really due, which still expires."""
    # The broker's own sweeps run once at its start, then not for an hour: this test sweeps.
    quiet = msgspec.structs.replace(own_brokers, sweep_interval_s=3600.0)
    async with running_broker(quiet, owners=True) as broker:
        await open_colony(settings)
        service = broker.service_of(COLONY)
        assert service is not None
        async with await Client.connect(settings, caller="tester") as client:
            kept = await submitted(client)
            due = await submitted(client, max_wait_time=1)
            service.wait_deadlines.push(1, COLONY, kept.process_id)
            service.wait_deadlines.push(2, COLONY, "0" * 64)
            await until(lambda: now() > due.wait_deadline, timeout=5)
            sweeper = Lifecycle(service, liveness_s=LIVENESS_S, sweep_interval_s=3600.0)
            await sweeper.sweep()
            assert (await client.get(kept.process_id)).state is ProcessState.WAITING
            failed = await client.get(due.process_id)
            assert failed.state is ProcessState.FAILED and failed.errors == [WAIT_TIMEOUT]
