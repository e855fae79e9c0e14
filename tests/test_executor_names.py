"""An executor name belongs to one live run: a second start is refused (or, asked to, replaces
the first); a crashed run's name and processes are taken back at once; a removed executor is
UNREGISTERED, its processes re-queued at once and its live run stopped.

The broker's liveness window is a minute here: whatever happens within a test's deadline did
not wait for an executor to be presumed lost.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client as NATS

from colonyos.broker import Broker
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.errors import (
    ExecutorNameTakenError,
    ExecutorRemovedError,
    ExecutorReplacedError,
)
from colonyos.executor import ExecutorApp, ExecutorStage, ExecutorStatus, ProcessContext
from colonyos.messages import Control, Instance, Replaced, Revoke, StateChanged, WhoIs
from colonyos.models import Conditions, ExecutorState, FunctionSpec, Process, ProcessState
from colonyos.security.keys import generate, write_seed
from colonyos.subjects import Subjects

from .conftest import COLONY
from .helpers import executor_client, raw_nats, until
from .procs import TASKS, Child, said

LIVENESS_S = 60.0


@pytest.fixture
def broker_settings(broker_settings: BrokerSettings) -> BrokerSettings:
    return msgspec.structs.replace(broker_settings, executor_liveness_s=LIVENESS_S)


@pytest.fixture
async def broker_side(settings: Settings) -> AsyncIterator[NATS]:
    """A connection that plays the broker on executors' control subjects (no member may)."""
    nc = await raw_nats(settings.nats_url)
    yield nc
    await nc.close()


def spec(executor_type: str = "held", func: str = "hold") -> FunctionSpec:
    return FunctionSpec(func_name=func, conditions=Conditions(executor_type=executor_type))


class Holder:
    """An executor whose processes hold until released, run on the test's loop."""

    def __init__(self, settings: Settings, name: str, **kw: object) -> None:
        self.statuses: list[ExecutorStatus] = []
        self.app = ExecutorApp(
            "held", name, settings=settings, heartbeat_s=0.2, on_status=self.statuses.append, **kw
        )
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.app.handler()(self._hold)
        self.task: asyncio.Task[int] | None = None

    async def _hold(self, ctx: ProcessContext) -> list[object]:
        self.started.set()
        await self.release.wait()
        return [self.app.name]

    async def start(self) -> Holder:
        self.task = asyncio.create_task(self.app.run())
        ready = asyncio.create_task(self.app.ready.wait())
        await asyncio.wait({self.task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if self.task.done():
            self.task.result()  # raises why it could not start
        assert self.app.ready.is_set(), self.statuses
        return self

    async def ended(self, timeout: float = 10.0) -> int:
        assert self.task is not None
        async with asyncio.timeout(timeout):
            return await self.task

    def said(self, stage: ExecutorStage) -> list[str]:
        return [s.message for s in self.statuses if s.stage is stage]


@pytest.fixture
async def holders() -> AsyncIterator[list[Holder]]:
    made: list[Holder] = []
    yield made
    for h in made:
        h.app.stop(force=True)
        if h.task is not None:
            await asyncio.wait({h.task}, timeout=10)


async def submitted(client: Client, s: FunctionSpec) -> Process:
    p = await client.submit(s)
    assert isinstance(p, Process)
    return p


async def test_a_name_held_by_a_live_executor_is_refused_naming_the_holder(
    client: Client, settings: Settings, holders: list[Holder]
) -> None:
    first = await Holder(settings, "same").start()
    holders.append(first)
    second = ExecutorApp("held", "same", settings=settings)
    with pytest.raises(ExecutorNameTakenError) as refused:
        await asyncio.wait_for(second.run(), timeout=10)
    err = refused.value
    assert err.holder_host == socket.gethostname() and err.holder_pid == os.getpid()
    assert f"on host {socket.gethostname()} (pid {os.getpid()}) since" in err.message
    assert "--replace" in err.message
    # The first keeps its name and its work: a process sent to it runs there.
    p = await submitted(client, spec())
    async with asyncio.timeout(10):
        await first.started.wait()
    first.release.set()
    done = await client.wait(p.process_id, timeout=10)
    assert done.state is ProcessState.SUCCESS and done.output == ["same"]


async def test_replace_takes_the_name_and_the_old_run_stops(
    client: Client, settings: Settings, holders: list[Holder]
) -> None:
    old = await Holder(settings, "same").start()
    holders.append(old)
    p = await submitted(client, spec())
    async with asyncio.timeout(10):
        await old.started.wait()
    new = Holder(settings, "same", replace=True)
    holders.append(new)
    new.release.set()
    await new.start()
    with pytest.raises(ExecutorReplacedError, match=r"replaced by another start on host"):
        await old.ended()
    # Its process was queued again at once, without a retry spent, and runs on the new one.
    done = await client.wait(p.process_id, timeout=10)
    assert done.state is ProcessState.SUCCESS and done.output == ["same"]
    assert done.retries == 0 and done.executor_losses == 1 and done.assignments == 2


async def test_a_restart_after_a_crash_takes_the_name_and_its_processes_back_at_once(
    client: Client, settings: Settings, tmp_path: Path, holders: list[Holder]
) -> None:
    """SIGKILL: the holder cannot answer, so the new start does not wait for the liveness
    window, and the process it ran is queued again at once."""
    (tmp_path / "tasks.py").write_text(TASKS)
    env = {
        "COLONIES_NATS_URL": settings.nats_url,
        "COLONIES_PREFIX": settings.prefix,
        "COLONIES_COLONY_NAME": settings.colony,
    }
    args = ["executor", "start", "python", "--type", "held", "--name", "crashy"]
    crashy = Child([*args, "--module", str(tmp_path / "tasks.py")], tmp_path / "c.log", env)
    crashy.start()
    try:
        await said(crashy, "crashy: waiting for work")
        p = await submitted(
            client,
            FunctionSpec(
                func_name="hold",
                args=[str(tmp_path / "never")],
                conditions=Conditions(executor_type="held"),
            ),
        )
        await client.wait_for_state(p.process_id, ProcessState.RUNNING, timeout=10)
    finally:
        crashy.kill()
    again = Holder(settings, "crashy")
    holders.append(again)
    again.release.set()
    await again.start()
    done = await client.wait(p.process_id, timeout=10)
    assert done.state is ProcessState.SUCCESS and done.output == ["crashy"]
    assert done.retries == 0 and done.executor_losses == 1


async def test_removal_requeues_at_once_and_stops_the_live_executor(
    client: Client, settings: Settings, holders: list[Holder]
) -> None:
    x = await Holder(settings, "X").start()
    holders.append(x)
    p = await submitted(client, spec())
    async with asyncio.timeout(10):
        await x.started.wait()
    async with client.watch(p.process_id) as watch:
        await client.executor_remove("X")
        event = await watch.next(10)
    assert isinstance(event, Process) and event.state is ProcessState.WAITING
    assert event.retries == 0 and event.executor_losses == 1
    with pytest.raises(ExecutorRemovedError, match="removed from colony 'dev' by its owner"):
        await x.ended()
    (record,) = [e for e in await client.executor_list() if e.executor_name == "X"]
    assert record.state is ExecutorState.UNREGISTERED  # kept for the record
    # Nothing goes to a removed executor: the next process waits.
    q = await submitted(client, spec())
    assert (await client.get(q.process_id)).state is ProcessState.WAITING
    # Started again, it registers afresh (approved: colony dev approves as they register).
    again = Holder(settings, "X")
    holders.append(again)
    again.release.set()
    await again.start()
    for pid in (p.process_id, q.process_id):
        done = await client.wait(pid, timeout=10)
        assert done.state is ProcessState.SUCCESS and done.output == ["X"]
    (record,) = [e for e in await client.executor_list() if e.executor_name == "X"]
    assert record.state is ExecutorState.APPROVED


async def test_removing_an_idle_executor_ends_its_parked_request(
    client: Client, settings: Settings, holders: list[Holder]
) -> None:
    """Parked in a long poll when removed: the process submitted next does not go to it."""
    x = Holder(settings, "X")
    x.app.assign_timeout_s = 30.0
    holders.append(x)
    await x.start()
    await client.executor_remove("X")
    with pytest.raises(ExecutorRemovedError):
        await x.ended()
    p = await submitted(client, spec())
    other = Holder(settings, "Y")
    holders.append(other)
    other.release.set()
    await other.start()
    done = await client.wait(p.process_id, timeout=10)
    assert done.output == ["Y"] and done.executor_losses == 0


async def test_removal_ends_the_parked_request_and_tells_the_run_itself(
    client: Client, broker_side: NATS, settings: Settings, broker: Broker
) -> None:
    """A run that neither heartbeats nor listens for anything but its answer (a raw client):
    before the removal returns, its long poll is ended and it is told on its control subject,
    both by the removal itself (a heartbeat would otherwise tell it later)."""
    service = broker.service_of(COLONY)
    assert service is not None
    told = await broker_side.subscribe(Subjects(settings.prefix).control(COLONY, "raw"))
    await broker_side.flush()
    async with executor_client(settings, "raw", "held") as raw:
        poll = asyncio.ensure_future(raw.assign(timeout=30))
        await until(lambda: len(service.parked) == 1)
        await client.executor_remove("raw")
        assert len(service.parked) == 0
        assert await asyncio.wait_for(poll, 10) is None  # "no work", at once
    # Sent before the removal's reply, on the connection that asked: already here.
    message = msgspec.json.decode((await told.next_msg(timeout=5)).data, type=Control)
    assert isinstance(message, StateChanged) and message.state is ExecutorState.UNREGISTERED


async def test_approval_is_learned_at_once_from_the_broker(
    client: Client,
    settings: Settings,
    holders: list[Holder],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    import colonyos.executor.stages

    monkeypatch.setattr(
        colonyos.executor.stages, "_APPROVAL_CHECK_S", 3600.0
    )  # only being told helps
    await client.colony_add("lab")
    lab = msgspec.structs.replace(settings, colony="lab")
    # ed runs with a key of its own: one with an owner's key is approved as it registers.
    write_seed(tmp_path / "ed.nk", generate())
    ed = Holder(msgspec.structs.replace(lab, identity=tmp_path / "ed.nk"), "ed")
    holders.append(ed)
    ed.task = asyncio.create_task(ed.app.run())
    async with asyncio.timeout(10):
        while not ed.said(ExecutorStage.PENDING):
            await asyncio.sleep(0.02)  # sleep-ok: polling its status, bounded
    assert ed.said(ExecutorStage.PENDING) == [
        "pending approval by the colony owner: colonies executor approve --name ed"
    ]
    async with await Client.connect(lab, caller="tester") as owner:  # who added lab
        await owner.executor_approve("ed")
    async with asyncio.timeout(10):
        await ed.app.ready.wait()
    assert ed.said(ExecutorStage.WAITING_FOR_WORK) == ["waiting for work"]


def test_every_control_message_kind_decodes_through_one_union() -> None:
    messages: list[Control] = [
        Revoke(process_id="p", state=ProcessState.CANCELLED, reason="cancelled"),
        WhoIs(executor_id="e"),
        StateChanged(executor_id="e", state=ExecutorState.APPROVED),
        Replaced(executor_id="e", by=Instance(executor_id="f", host="h", pid=7)),
    ]
    decoder = msgspec.json.Decoder(Control)
    for message in messages:
        data = msgspec.json.encode(message)
        assert msgspec.json.decode(data)["kind"]  # tagged on the wire
        assert decoder.decode(data) == message


async def test_control_messages_for_another_run_are_ignored(
    client: Client, broker_side: NATS, settings: Settings, holders: list[Holder]
) -> None:
    x = await Holder(settings, "X").start()
    holders.append(x)
    subject = Subjects(settings.prefix).control(COLONY, "X")
    by = Instance(executor_id="someone-else", host="elsewhere", pid=1)
    await broker_side.publish(subject, msgspec.json.encode(Replaced(executor_id="earlier", by=by)))
    await broker_side.publish(subject, b"not a control message")
    # Asked who holds its registration, it answers (and only for its own).
    reply = await broker_side.request(
        subject, msgspec.json.encode(WhoIs(executor_id=x.app.executor_id)), timeout=5
    )
    instance = msgspec.json.decode(reply.data, type=Instance)
    assert (instance.host, instance.pid) == (socket.gethostname(), os.getpid())
    assert not x.task.done()  # type: ignore[union-attr]
    await broker_side.publish(
        subject, msgspec.json.encode(Replaced(executor_id=x.app.executor_id, by=by))
    )
    with pytest.raises(ExecutorReplacedError, match="on host elsewhere"):
        await x.ended()


async def test_a_replaced_run_that_still_heartbeats_is_told_again(
    client: Client, broker_side: NATS, settings: Settings, holders: list[Holder]
) -> None:
    old = await Holder(settings, "same").start()
    holders.append(old)
    old_id = old.app.executor_id
    new = Holder(settings, "same", replace=True)
    holders.append(new)
    await new.start()
    with pytest.raises(ExecutorReplacedError):
        await old.ended()
    subject = Subjects(settings.prefix).control(COLONY, "same")
    told = await broker_side.subscribe(subject)
    await broker_side.flush()
    async with await Client.connect(settings, caller="same", executor=True) as zombie:
        await zombie.heartbeat(old_id, [])  # as if it had missed the message
        async with asyncio.timeout(10):
            while True:
                message = msgspec.json.decode((await told.next_msg(timeout=10)).data)
                if message.get("kind") == "replaced":
                    break
    assert message["executorid"] == old_id
    assert not new.task.done()  # type: ignore[union-attr]
