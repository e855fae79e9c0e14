"""Real capacity and why a process waits, over a real nats-server and broker.

* an executor describes its machine, so Colonies' tutorial spec runs on a default executor;
* running processes use up capacity: concurrency never overcommits, and the bookkeeping follows
  every way a process leaves RUNNING (also a broker restart);
* raw assigns may bound themselves with Colonies' ``availablecpu``/``availablemem``;
* ``explain`` says why a process waits, to any client (raw NATS too).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from colonyos import machine
from colonyos.broker import Broker, transitions
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.executor import ExecutorApp, ProcessContext
from colonyos.models import (
    Capabilities,
    Conditions,
    FunctionSpec,
    Hardware,
    Process,
    ProcessState,
    now,
)
from colonyos.resources import format_bytes, human_bytes, parse_bytes, parse_cpu_millis
from colonyos.security.permissions import Role

from .conftest import COLONY, open_colony, running_broker
from .helpers import connect_executor, enroll, raw_nats, request_as

GiB = 2**30


def spec(executor_type: str, **conditions: Any) -> FunctionSpec:
    return FunctionSpec(
        func_name="f", conditions=Conditions(executor_type=executor_type, **conditions)
    )


async def submitted(client: Client, s: FunctionSpec) -> Process:
    p = await client.submit(s)
    assert isinstance(p, Process)
    return p


async def until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll broker state under a deadline (the state has no event of its own)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)  # sleep-ok: polling broker state under a deadline
    assert predicate(), what


async def executor_client(
    settings: Settings, name: str, executor_type: str, *hardware: Hardware
) -> Client:
    capabilities = Capabilities(hardware=list(hardware))
    return await connect_executor(settings, name, executor_type, capabilities=capabilities)


@contextlib.asynccontextmanager
async def serving(app: ExecutorApp) -> AsyncIterator[asyncio.Task[int]]:
    task = asyncio.create_task(app.run())
    async with asyncio.timeout(10):
        await app.ready.wait()
    try:
        yield task
    finally:
        app.stop()
        async with asyncio.timeout(10):
            await task


def parked(broker: Broker) -> int:
    assert broker.service_of(COLONY) is not None
    return len(broker.service_of(COLONY).parked)


# -- an executor describes its machine ---------------------------------------------------------


async def test_colonies_tutorial_spec_runs_on_a_default_executor(client: Client, settings) -> None:
    hw = machine.describe()
    if parse_cpu_millis(hw.cpu) < 1000 or parse_bytes(hw.mem) < 10 * GiB:
        pytest.skip(f"this machine has cpu {hw.cpu}, mem {hw.mem}: less than the tutorial asks")
    app = ExecutorApp("tutorial", "tutorial-1", settings=settings)  # told nothing

    @app.handler()
    async def run(ctx: ProcessContext) -> list[object]:
        return ["ran"]

    tutorial = await submitted(client, spec("tutorial", nodes=1, cpu="1000m", mem="10Gi"))
    async with serving(app):
        done = await client.wait(tutorial.process_id, timeout=10)
    assert done.state is ProcessState.SUCCESS and done.output == ["ran"]


async def test_a_default_executor_takes_what_its_machine_has_and_explains_the_rest(
    client: Client, settings, broker: Broker
) -> None:
    hw = machine.describe()
    app = ExecutorApp("sized", "sized-1", settings=settings)
    assert app.capabilities.hardware == [hw]

    @app.handler()
    async def run(ctx: ProcessContext) -> list[object]:
        return []

    fits = await submitted(client, spec("sized", cpu=hw.cpu, mem=hw.mem, nodes=1))
    too_big = format_bytes(parse_bytes(hw.mem) + GiB)
    big = await submitted(client, spec("sized", cpu=hw.cpu, mem=too_big))
    async with serving(app):
        done = await client.wait(fits.process_id, timeout=10)
        assert done.state is ProcessState.SUCCESS
        await until(lambda: parked(broker) == 1, "the executor asks again, and waits")
        why = await client.explain(big.process_id)
    assert why.state is ProcessState.WAITING
    assert why.reason == "no executor of type 'sized' meets its conditions"
    have, want = human_bytes(parse_bytes(hw.mem)), human_bytes(parse_bytes(too_big))
    assert why.details == [f"sized-1: mem {have} < {want} requested"]
    assert [f.executor_name for f in why.executors] == ["sized-1"]


# -- running processes use up capacity ---------------------------------------------------------


async def test_concurrency_never_overcommits(client: Client, settings, broker: Broker) -> None:
    """A 4-core executor with 8 slots runs at most two `cpu: 2` processes at once."""
    app = ExecutorApp(
        "cores",
        "cores-1",
        settings=settings,
        concurrency=8,
        capabilities=Capabilities(hardware=[Hardware(cpu="4", mem="16Gi")]),
        assign_timeout_s=60,  # longer than the waits below: only freed capacity wakes it
    )
    inside, peak, gate = 0, 0, asyncio.Event()

    @app.handler()
    async def hold(ctx: ProcessContext) -> list[object]:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        await asyncio.wait_for(gate.wait(), timeout=20)
        inside -= 1
        return []

    processes = [await submitted(client, spec("cores", cpu="2")) for _ in range(5)]
    async with serving(app):
        # Two run; the executor, with six free slots, asks again and is told to wait.
        await until(lambda: inside == 2 and parked(broker) == 1, "two running, one parked")
        assert broker.service_of(COLONY) is not None and len(broker.service_of(COLONY).queue) == 3
        waiting = [p for p in processes if (await client.get(p.process_id)).state == 0]
        why = await client.explain(waiting[0].process_id)
        assert why.reason == "every executor of type 'cores' that meets its conditions is busy"
        assert why.details == ["cores-1: busy: 4 of 4 cpu in use by 2 running processes"]
        gate.set()
        for p in processes:
            assert (await client.wait(p.process_id, timeout=15)).state is ProcessState.SUCCESS
    assert peak == 2


async def _leave_running(how: str, client: Client, broker: Broker, ex: Client, pid: str) -> None:
    assert broker.service_of(COLONY) is not None
    if how == "close":
        await ex.close(pid, [])
    elif how == "fail":
        await ex.fail(pid, ["no"])
    elif how == "cancel":
        await client.cancel(pid)
    elif how == "requeue":  # as the lifecycle sweeps do, for a lost executor or maxexectime
        await broker.service_of(COLONY).transition(
            COLONY, pid, lambda p: transitions.requeue(p, "test", now=now()), notify=False
        )


# (A running process cannot be removed: it is cancelled first.)
@pytest.mark.parametrize("how", ["close", "fail", "cancel", "requeue"])
async def test_capacity_comes_back_however_a_process_leaves_running(
    how: str, client: Client, settings, broker: Broker
) -> None:
    retried = spec("two", cpu="2")
    retried.max_retries = 1  # so that a re-queue puts it back in the queue, at its place
    first = await submitted(client, retried)
    second = await submitted(client, spec("two", cpu="2"))
    ex = await executor_client(settings, "two-1", "two", Hardware(cpu="2"))
    got = await ex.assign(timeout=1)
    assert got is not None and got.process_id == first.process_id
    assert await ex.assign(timeout=0) is None  # both cores in use
    await _leave_running(how, client, broker, ex, first.process_id)
    got = await ex.assign(timeout=1)
    assert got is not None
    expected = first.process_id if how == "requeue" else second.process_id
    assert got.process_id == expected
    await ex.aclose()


async def test_capacity_in_use_survives_a_broker_restart(
    broker_settings: BrokerSettings, settings: Settings
) -> None:
    async with running_broker(broker_settings, owners=True):
        await open_colony(settings)
        client = await Client.connect(settings, caller="tester")
        first = await submitted(client, spec("two", cpu="2"))
        ex = await executor_client(settings, "two-1", "two", Hardware(cpu="2"))
        got = await ex.assign(timeout=1)
        assert got is not None and got.process_id == first.process_id
    async with running_broker(broker_settings, owners=True) as restarted:
        second = await submitted(client, spec("two", cpu="2"))
        await until(
            lambda: (
                restarted.service_of(COLONY) is not None
                and second.process_id in restarted.service_of(COLONY).queue
            ),
            "the new process is queued",
        )
        assert await ex.assign(timeout=0) is None  # the first still holds both cores
        why = await client.explain(second.process_id)
        assert why.details == ["two-1: busy: 2 of 2 cpu in use by 1 running process"]
        await ex.close(first.process_id, [])
        got = await ex.assign(timeout=1)
        assert got is not None and got.process_id == second.process_id
    await ex.aclose()
    await client.aclose()


# -- raw NATS: executors that state nothing, availablecpu, explain -----------------------------


async def raw_request(settings: Settings, caller: str, op: str, body: dict[str, Any]) -> Any:
    nc = await raw_nats(settings.nats_url)
    try:
        data = json.dumps(body).encode()
        msg = await request_as(nc, settings.prefix, COLONY, caller, op, data)
    finally:
        await nc.close()
    return json.loads(msg.data)


async def test_raw_assign_with_available_cpu_and_mem(
    client: Client, settings, broker: Broker
) -> None:
    await enroll(broker.members, "raw-1", role=Role.EXECUTOR)
    p = await submitted(client, spec("raw", cpu="2", mem="1Gi"))
    await raw_request(
        settings,
        "raw-1",
        "register",
        {"executor": {"executorname": "raw-1", "executortype": "raw"}},
    )  # registers no capabilities: nothing is a limit, as in Colonies
    for bounds in ({"availablecpu": "1"}, {"availablemem": "512Mi"}):
        reply = await raw_request(settings, "raw-1", "assign", {"timeout": 0, **bounds})
        assert reply == {"result": None}, bounds
    reply = await raw_request(settings, "raw-1", "assign", {"timeout": 0, "availablecpu": "lots"})
    assert reply["error"]["detail"]["path"] == "$.availablecpu"
    assert "not a cpu quantity" in reply["error"]["message"]
    reply = await raw_request(
        settings, "raw-1", "assign", {"timeout": 1, "availablecpu": "2000m", "availablemem": ""}
    )
    assert reply["result"]["processid"] == p.process_id


async def test_explain_over_raw_nats(client: Client, settings) -> None:
    p = await submitted(client, spec("nobody", cpu="1"))
    reply = await raw_request(settings, "someone", "explain", {"processid": p.process_id})
    result = reply["result"]
    assert result["reason"] == "no executor of type 'nobody' is registered in colony 'dev'"
    assert result["processid"] == p.process_id and result["state"] == 0
    ex = await executor_client(settings, "small-1", "nobody", Hardware(cpu="500m"))
    reply = await raw_request(settings, "someone", "explain", {"processid": p.process_id})
    assert reply["result"]["details"] == ["small-1: cpu 0.5 < 1 requested"]
    assert reply["result"]["executors"][0]["online"] is True
    await ex.aclose()
    reply = await raw_request(settings, "someone", "explain", {"processid": "0" * 64})
    assert reply["error"]["code"] == "process_not_found"


async def test_a_registration_with_a_bad_quantity_is_refused(
    client: Client, settings, broker: Broker
) -> None:
    await enroll(broker.members, "bad-1", role=Role.EXECUTOR)
    reply = await raw_request(
        settings,
        "bad-1",
        "register",
        {
            "executor": {
                "executorname": "bad-1",
                "executortype": "x",
                "capabilities": {"hardware": [{"cpu": "2"}, {"mem": "lots"}]},
            }
        },
    )
    assert reply["error"]["detail"]["path"] == "$.executor.capabilities.hardware[1].mem"


async def test_waiting_for_parents_is_explained(client: Client, settings) -> None:
    from colonyos.models import WorkflowSpec

    parent = FunctionSpec(
        node_name="first", func_name="f", conditions=Conditions(executor_type="wf")
    )
    child = FunctionSpec(
        node_name="second",
        func_name="f",
        conditions=Conditions(executor_type="wf", dependencies=["first"]),
    )
    graph = await client.submit_workflow(WorkflowSpec(function_specs=[parent, child]))
    assert not isinstance(graph, str)
    why = await client.explain(graph.nodes["second"])
    assert why.reason == "waiting for 1 of its 1 parents to succeed"
    assert why.details == ["first: WAITING"]


async def test_a_process_that_can_run_waits_its_turn(
    client: Client, settings, broker: Broker
) -> None:
    ex = await executor_client(settings, "busy-1", "queue")  # registered, not asking for work
    await submitted(client, spec("queue", executor_names=["elsewhere"]))  # not in its way
    first = await submitted(client, spec("queue"))
    second = await submitted(client, spec("queue"))
    queue = broker.service_of(COLONY).queue if broker.service_of(COLONY) is not None else None
    await until(lambda: queue is not None and second.process_id in queue, "both are queued")
    why = await client.explain(second.process_id)
    assert why.reason == "it waits its turn: 1 process of type 'queue' ahead of it"
    assert why.details == ["busy-1: can take it (running 0)"] and why.ahead == 1
    why = await client.explain(first.process_id)
    assert why.reason == "it is next: an executor that can take it has not asked for work yet"
    await ex.aclose()
