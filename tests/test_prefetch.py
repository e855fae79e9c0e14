"""Single-slot executors prefetch one: while their slot is busy they ask for the process to run
next, which the broker hands them only when no idle executor waits for it; it starts as soon as
the current one is reported, and goes back to the queue if the executor stops or dies first."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from colonyos.broker import Broker
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.executor import ExecutorApp, ProcessContext
from colonyos.models import FunctionSpec, Process, ProcessState

from .conftest import COLONY, open_colony, running_broker
from .helpers import spec, until
from .procs import Child, output, said

# A broker that takes a silent executor's processes back within seconds, not 30.
LIVENESS_S = 3.0

# For `colonies executor start python --module`: ``hold(path)`` runs until ``path`` exists,
# ``mark(path)`` adds a line to ``path`` naming the executor process that ran it.
TASKS = """
import os
import time


def hold(path):
    while not os.path.exists(path):
        time.sleep(0.05)  # sleep-ok: the function's own work
    return "held"


def mark(path):
    with open(path, "a") as f:
        f.write("pid %d\\n" % os.getpid())
    return "marked"
"""


class Slot:
    """An in-process executor of type ``slot`` with one slot: ``hold`` processes run until
    ``release`` is set; every function start is recorded in ``ran`` as (name, process id)."""

    def __init__(self, settings: Settings, name: str, ran: list[tuple[str, str]]) -> None:
        self.app = ExecutorApp("slot", name, settings=settings, heartbeat_s=0.2)
        self.release = asyncio.Event()
        self.task: asyncio.Task[int] | None = None

        @self.app.handler()
        async def run(ctx: ProcessContext) -> list[object]:
            ran.append((name, ctx.process.process_id))
            if ctx.process.spec.args == ["hold"]:
                await self.release.wait()
            return [name]

    async def start(self) -> Slot:
        self.task = asyncio.create_task(self.app.run())
        async with asyncio.timeout(10):
            await self.app.ready.wait()
        return self

    async def stop(self) -> None:
        if self.task is not None:
            self.release.set()
            self.app.stop(force=True)
            async with asyncio.timeout(10):
                await self.task


@pytest.fixture
async def slots() -> AsyncIterator[list[Slot]]:
    started: list[Slot] = []
    yield started
    for slot in started:
        await slot.stop()


async def submit(client: Client, *args: object, priority: int = 0) -> Process:
    p = await client.submit(spec("slot", args=list(args), priority=priority))
    assert isinstance(p, Process)
    return p


def parked(broker: Broker) -> int:
    service = broker.service_of(COLONY)
    assert service is not None
    return len(service.parked)


async def test_an_idle_executor_gets_the_next_process_before_a_busy_one_prefetching(
    broker: Broker, client: Client, settings: Settings, slots: list[Slot]
) -> None:
    ran: list[tuple[str, str]] = []
    busy = await Slot(settings, "busy", ran).start()
    slots.append(busy)
    first = await submit(client, "hold")
    await until(lambda: ran == [("busy", first.process_id)])
    await until(lambda: parked(broker) == 1)  # busy's prefetch, parked first
    idle = await Slot(settings, "idle", ran).start()
    slots.append(idle)
    await until(lambda: parked(broker) == 2)
    second = await submit(client)
    done = await client.wait(second.process_id, timeout=10)
    assert done.state is ProcessState.SUCCESS and done.output == ["idle"]
    assert (await client.get(first.process_id)).state is ProcessState.RUNNING


async def test_with_no_idle_executor_the_prefetcher_takes_the_next_in_order_and_runs_it_after(
    broker: Broker, client: Client, settings: Settings, slots: list[Slot]
) -> None:
    ran: list[tuple[str, str]] = []
    busy = await Slot(settings, "busy", ran).start()
    slots.append(busy)
    first = await submit(client, "hold")
    await until(lambda: ran == [("busy", first.process_id)])
    second = await submit(client)
    # Assigned to busy while its slot is busy, not started: it waits for the slot.
    taken = await client.wait_for_state(second.process_id, ProcessState.RUNNING, timeout=10)
    assert taken.assigned_executor_id == busy.app.executor_id
    assert second.process_id in busy.app.prefetched and ran == [("busy", first.process_id)]
    # Queued behind it: the later submitted with a higher priority goes first.
    third = await submit(client)
    fourth = await submit(client, priority=1)
    busy.release.set()
    for p in (first, second, third, fourth):
        done = await client.wait(p.process_id, timeout=10)
        assert done.state is ProcessState.SUCCESS and done.output == ["busy"]
    order = [pid for _, pid in ran]
    assert order == [p.process_id for p in (first, second, fourth, third)]
    closed = await client.get(first.process_id)
    started = await client.get(second.process_id)
    assert started.start_time < closed.end_time  # its clock ran from its assignment


async def test_a_prefetched_process_is_listed_in_heartbeats_and_not_taken_for_lost(
    own_brokers: BrokerSettings, settings: Settings, slots: list[Slot]
) -> None:
    """The broker takes a running process its executor's heartbeats leave out, a liveness
    window after its assignment, for an assignment that never arrived: a prefetched one must
    be listed although its function has not started."""
    quick = msgspec.structs.replace(
        own_brokers, executor_liveness_s=LIVENESS_S, sweep_interval_s=0.1
    )
    async with running_broker(quick, owners=True) as broker:
        await open_colony(settings)
        client = await Client.connect(settings, caller="tester")
        try:
            ran: list[tuple[str, str]] = []
            busy = await Slot(settings, "busy", ran).start()
            slots.append(busy)
            first = await submit(client, "hold")
            await until(lambda: ran == [("busy", first.process_id)])
            second = await submit(client)
            taken = await client.wait_for_state(second.process_id, ProcessState.RUNNING)
            assert broker.service_of(COLONY) is not None
            reports = broker.service_of(COLONY).reports
            # Past two liveness windows after its assignment, with heartbeats all along (many
            # sweeps have looked at it by then).
            after_ns = int(taken.start_time.timestamp() * 1e9) + int(2 * LIVENESS_S * 1e9)
            executor_id = busy.app.executor_id
            await until(lambda: reports[executor_id].wall_ns > after_ns, timeout=20)
            still = await client.get(second.process_id)
            assert still.state is ProcessState.RUNNING and still.executor_losses == 0
            assert still.assigned_executor_id == executor_id
            busy.release.set()
            done = await client.wait(second.process_id, timeout=10)
            assert done.state is ProcessState.SUCCESS and done.output == ["busy"]
            await slots.pop().stop()
        finally:
            await client.aclose()


# -- a prefetcher that stops or dies: its prefetched process runs once, elsewhere -------------
def held(func: str, path: Path) -> FunctionSpec:
    return spec("held", func_name=func, args=[str(path)])


async def prefetching_child(
    client: Client, settings: Settings, tmp_path: Path
) -> tuple[Child, Process, Process]:
    """A `colonies executor start python` process with one slot, running a held process with
    the next one (a mark) prefetched."""
    (tmp_path / "tasks.py").write_text(TASKS)
    env = {
        "COLONIES_NATS_URL": settings.nats_url,
        "COLONIES_PREFIX": settings.prefix,
        "COLONIES_COLONY_NAME": settings.colony,
        "COLONIES_HEARTBEAT": "0.2",
    }
    args = ["executor", "start", "python", "--type", "held", "--name", "ahead"]
    args += ["--concurrency", "1", "--module", str(tmp_path / "tasks.py")]
    child = Child(args, tmp_path / "ahead.log", env).start()
    try:
        await said(child, "ahead: waiting for work")
        first = await client.submit(held("hold", tmp_path / "release"))
        assert isinstance(first, Process)
        await client.wait_for_state(first.process_id, ProcessState.RUNNING, timeout=10)
        second = await client.submit(held("mark", tmp_path / "marks"))
        assert isinstance(second, Process)
        taken = await client.wait_for_state(second.process_id, ProcessState.RUNNING, timeout=10)
        (ahead,) = [e for e in await client.executor_list() if e.executor_name == "ahead"]
        assert taken.assigned_executor_id == ahead.executor_id
        assert not (tmp_path / "marks").exists()  # prefetched: not started
    except BaseException:
        child.kill()  # its held process would keep it running past the test
        raise
    return child, first, second


def elsewhere(settings: Settings, marks: Path) -> ExecutorApp:
    app = ExecutorApp("held", "elsewhere", settings=settings, heartbeat_s=0.2)

    @app.handler("mark")
    async def mark(ctx: ProcessContext) -> list[object]:
        with marks.open("a") as f:
            f.write("elsewhere\n")
        return ["elsewhere"]

    @app.handler("hold")
    async def hold(ctx: ProcessContext) -> list[object]:
        return ["elsewhere"]

    return app


async def run_once_elsewhere(
    client: Client, app: ExecutorApp, p: Process, marks: Path, *, also: Process | None = None
) -> None:
    """``app`` runs ``p`` (and ``also``, if given) once; the prefetcher never did."""
    runner = asyncio.create_task(app.run())
    try:
        done = await client.wait(p.process_id, timeout=20)
        assert done.state is ProcessState.SUCCESS and done.output == ["elsewhere"]
        assert done.executor_losses == 1 and done.retries == 0
        assert marks.read_text() == "elsewhere\n"  # run once, and not by the prefetcher
        if also is not None:
            other = await client.wait(also.process_id, timeout=20)
            assert other.state is ProcessState.SUCCESS and other.output == ["elsewhere"]
    finally:
        app.stop(force=True)
        async with asyncio.timeout(10):
            await runner


async def test_a_prefetcher_stopped_gives_its_prefetched_process_back(
    client: Client, settings: Settings, tmp_path: Path
) -> None:
    child, first, second = await prefetching_child(client, settings, tmp_path)
    try:
        assert child.proc is not None
        child.proc.send_signal(signal.SIGTERM)
        await said(child, "stopping after 1 running process finishes")
        app = elsewhere(settings, tmp_path / "marks")
        (tmp_path / "release").touch()  # the running one finishes; the prefetched goes back
        await run_once_elsewhere(client, app, second, tmp_path / "marks")
        done = await client.wait(first.process_id, timeout=10)
        assert done.state is ProcessState.SUCCESS and done.output == ["held"]
        assert await asyncio.to_thread(child.proc.wait, 15) == 0
        assert "gave 1 process back to the broker" in output(child)  # the prefetched one
    finally:
        child.kill()


async def test_a_prefetcher_killed_loses_its_prefetched_process_to_another_executor(
    own_brokers: BrokerSettings, settings: Settings, tmp_path: Path
) -> None:
    quick = msgspec.structs.replace(
        own_brokers, executor_liveness_s=LIVENESS_S, sweep_interval_s=0.1
    )
    async with running_broker(quick, owners=True):
        await open_colony(settings)
        client = await Client.connect(settings, caller="tester")
        try:
            child, first, second = await prefetching_child(client, settings, tmp_path)
            child.kill()
            app = elsewhere(settings, tmp_path / "marks")
            await run_once_elsewhere(client, app, second, tmp_path / "marks", also=first)
        finally:
            await client.aclose()
