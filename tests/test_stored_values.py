"""No stored value can keep a broker from starting.

Values are written straight into the KV buckets with nats-py, as an older release, a bug or a
hand edit could have left them; the broker must lead anyway, fail what it cannot run (with the
reason, through the normal transition and its event) and run everything else.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import msgspec
import pytest
from nats.aio.client import Client as NATS

from colonyos.broker.scheduler import priority_time
from colonyos.broker.store import ProcessStore
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.errors import ColoniesError
from colonyos.messages import Control, Revoke
from colonyos.models import (
    Colony,
    Conditions,
    Executor,
    ExecutorState,
    FunctionSpec,
    Process,
    ProcessGraph,
    ProcessState,
    now,
)
from colonyos.subjects import Subjects

from .conftest import COLONY, _drop_streams, running_broker
from .helpers import connect_executor, raw_nats, spec

_encode = msgspec.json.Encoder().encode


def _pid(n: int) -> str:
    return f"{n:064x}"


def _stored(n: int, fs: FunctionSpec, **kw: object) -> Process:
    t = now()
    fs = msgspec.structs.replace(
        fs, conditions=msgspec.structs.replace(fs.conditions, colony_name=COLONY)
    )
    return Process(
        process_id=_pid(n),
        submission_time=t,
        priority_time=priority_time(int(t.timestamp() * 1e9), fs.priority),
        spec=fs,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
async def raw_store(broker_settings: BrokerSettings) -> AsyncIterator[tuple[NATS, Subjects]]:
    """The streams and buckets as a broker creates them, with no broker running yet."""
    nc = await raw_nats(broker_settings.nats_url)
    subjects = Subjects(broker_settings.prefix)
    await ProcessStore(nc, subjects, storage="memory").setup()
    yield nc, subjects
    await nc.close()
    await _drop_streams(broker_settings.nats_url, broker_settings.prefix)


async def _put(nc: NATS, bucket: str, key: str, value: bytes) -> None:
    kv = await nc.jetstream().key_value(bucket)
    await kv.put(key, value)


async def test_a_broker_starts_whatever_is_stored(
    raw_store: tuple[NATS, Subjects], broker_settings: BrokerSettings, settings: Settings
) -> None:
    nc, s = raw_store
    await _put(nc, s.bucket_colonies, COLONY, _encode(Colony(name=COLONY, auto_approve=True)))
    await _put(nc, s.bucket_colonies, "junk", b"\x00not json")
    await _put(nc, s.bucket_executors, s.executor_key(COLONY, "junk"), b"[1, 2")
    await _put(nc, s.bucket_graphs, s.process_key(COLONY, _pid(99)), b'{"nodes": 3}')

    # Stored by an older release that took any priority: its prioritytime overflows 64 bits.
    loud = _stored(1, spec(priority=200_000))
    # Garbage where a process should be.
    garbage_key = s.process_key(COLONY, _pid(2))
    # Running, with a deadline no datetime can hold.
    t = now()
    endless = _stored(
        3,
        spec(max_exec_time=10**15),
        state=ProcessState.RUNNING,
        is_assigned=True,
        assigned_executor_id="e" * 64,
        start_time=t,
        exec_deadline=t + timedelta(days=3650),
    )
    # Valid, with integers in its args that no 64-bit encoding holds: it must still run.
    huge_args = _stored(4, spec(args=[10**30, -(10**30)]))
    for process in (loud, endless, huge_args):
        key = s.process_key(COLONY, process.process_id)
        await _put(nc, s.bucket_processes, key, _encode(process))
    await _put(nc, s.bucket_processes, garbage_key, b"garbage \xff bytes")

    async with running_broker(broker_settings, owners=True) as broker:
        assert broker.leading.is_set()
        async with await Client.connect(settings, caller="tester") as c:
            failed_loud = await c.wait(loud.process_id, timeout=10)
            assert failed_loud.state is ProcessState.FAILED
            assert failed_loud.errors == [
                "its stored spec is invalid: $.priority: 200000 is out of range; "
                "a priority is between -50000 and 50000"
            ]
            failed_endless = await c.wait(endless.process_id, timeout=10)
            assert failed_endless.state is ProcessState.FAILED
            assert "$.maxexectime: 1000000000000000 is out of range" in failed_endless.errors[0]
            # Each went through the normal transition: its event is in the stream.
            async with c.subscribe(
                state=ProcessState.FAILED, since=t - timedelta(minutes=1)
            ) as events:
                seen = set()
                async with asyncio.timeout(10):
                    while len(seen) < 2:
                        event = await events.next()
                        seen.add(event.process_id)
                assert seen == {loud.process_id, endless.process_id}

            ex = await connect_executor(settings, "e1")
            got = await ex.assign(timeout=2)
            assert got is not None and got.process_id == huge_args.process_id
            assert got.spec.args == [10**30, -(10**30)]
            await ex.close(got.process_id, got.spec.args)
            fresh = await c.submit(spec(args=["fresh"]))
            assert isinstance(fresh, Process)
            again = await ex.assign(timeout=2)
            assert again is not None and again.process_id == fresh.process_id
            await ex.close(again.process_id, ["fresh"])
            assert (await c.wait(fresh.process_id, timeout=5)).state is ProcessState.SUCCESS
            # What did not decode is left alone and answers a clear error, not a timeout.
            listed = {p.process_id for p in await c.list_processes(limit=100)}
            assert _pid(2) not in listed and huge_args.process_id in listed
            with pytest.raises(ColoniesError, match=f"the stored process {_pid(2)} cannot be read"):
                await c.get(_pid(2))
            with pytest.raises(ColoniesError, match=f"process graph {_pid(99)} cannot be read"):
                await c.graph_get(_pid(99))
            await ex.aclose()


async def test_a_running_process_that_cannot_be_kept_is_taken_from_its_executor(
    raw_store: tuple[NATS, Subjects], broker_settings: BrokerSettings
) -> None:
    """Failed at load through the normal transition: its executor is told, as for a cancel."""
    nc, s = raw_store
    await _put(nc, s.bucket_colonies, COLONY, _encode(Colony(name=COLONY, auto_approve=True)))
    holder = Executor(
        executor_id="a" * 64,
        executor_name="e1",
        executor_type="echo",
        colony_name=COLONY,
        state=ExecutorState.APPROVED,
    )
    await _put(nc, s.bucket_executors, s.executor_key(COLONY, "e1"), _encode(holder))
    running = _stored(
        5,
        spec(priority=200_000),
        state=ProcessState.RUNNING,
        is_assigned=True,
        assigned_executor_id=holder.executor_id,
        start_time=now(),
    )
    key = s.process_key(COLONY, running.process_id)
    await _put(nc, s.bucket_processes, key, _encode(running))
    told = await nc.subscribe(s.control(COLONY, "e1"))
    async with running_broker(broker_settings, owners=True):
        async with asyncio.timeout(10):
            message = msgspec.json.decode((await told.next_msg(timeout=10)).data, type=Control)
    assert isinstance(message, Revoke) and message.process_id == running.process_id
    assert message.state is ProcessState.FAILED
    assert message.reason.startswith("its stored spec is invalid: $.priority")


async def test_a_broker_that_loads_twice_does_not_fail_anything_twice(
    raw_store: tuple[NATS, Subjects], broker_settings: BrokerSettings, settings: Settings
) -> None:
    nc, s = raw_store
    await _put(nc, s.bucket_colonies, COLONY, _encode(Colony(name=COLONY, auto_approve=True)))
    loud = _stored(1, spec(priority=-200_000))
    await _put(nc, s.bucket_processes, s.process_key(COLONY, loud.process_id), _encode(loud))
    async with (
        running_broker(broker_settings, owners=True),
        await Client.connect(settings, caller="tester") as c,
    ):
        first = await c.wait(loud.process_id, timeout=10)
    async with (
        running_broker(broker_settings, owners=True),
        await Client.connect(settings, caller="tester") as c,
    ):
        second = await c.get(loud.process_id)
    assert first.state is second.state is ProcessState.FAILED
    assert second.errors == first.errors and len(first.errors) == 1


async def test_a_workflow_member_that_cannot_run_fails_its_children(
    raw_store: tuple[NATS, Subjects], broker_settings: BrokerSettings, settings: Settings
) -> None:
    nc, s = raw_store
    await _put(nc, s.bucket_colonies, COLONY, _encode(Colony(name=COLONY, auto_approve=True)))
    gid = "a" * 64
    parent = _stored(
        1, spec(priority=100_000, node_name="p"), process_graph_id=gid, children=[_pid(2)]
    )
    child = _stored(
        2,
        FunctionSpec(func_name="echo", node_name="c", conditions=Conditions(executor_type="echo")),
        process_graph_id=gid,
        parents=[_pid(1)],
        wait_for_parents=True,
    )
    graph = ProcessGraph(
        process_graph_id=gid,
        colony_name=COLONY,
        root_process_ids=[_pid(1)],
        process_ids=[_pid(1), _pid(2)],
        nodes={"p": _pid(1), "c": _pid(2)},
        submission_time=now(),
    )
    for p in (parent, child):
        await _put(nc, s.bucket_processes, s.process_key(COLONY, p.process_id), _encode(p))
    await _put(nc, s.bucket_graphs, s.process_key(COLONY, gid), _encode(graph))
    async with (
        running_broker(broker_settings, owners=True),
        await Client.connect(settings, caller="tester") as c,
    ):
        done = await c.graph_wait(gid, timeout=10)
        assert done.state is ProcessState.FAILED
        assert (await c.get(_pid(2))).errors == ["parent p failed"]
