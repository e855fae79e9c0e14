"""Specs published straight to NATS, and bad input: a clear error each, nothing else changes."""

from __future__ import annotations

import asyncio

import msgspec
import nats
import pytest

from colonyos.client import Client
from colonyos.errors import BrokerUnavailableError, ColonyNotFoundError, InvalidSpecError
from colonyos.generators.client import Generators
from colonyos.messages import Empty, Rejection
from colonyos.models import Conditions, FunctionSpec, Process, ProcessState
from colonyos.subjects import Subjects

from .conftest import COLONY
from .helpers import connect_executor, raw_nats, spec


async def next_event(sub: nats.aio.subscription.Subscription) -> nats.aio.msg.Msg:
    return await sub.next_msg(timeout=5)


async def test_raw_nats_spec_becomes_a_process_and_runs(client: Client, settings) -> None:
    subjects = Subjects(settings.prefix)
    nc = await raw_nats(settings.nats_url)
    events = await nc.subscribe(subjects.events_filter(colony=COLONY))
    js = nc.jetstream()
    body = b'{"conditions": {"executortype": "echo"}, "funcname": "echo", "args": ["raw"]}'
    await js.publish(subjects.specs(COLONY, "echo"), body)
    msg = await next_event(events)
    assert ".waiting." in msg.subject
    process = msgspec.json.decode(msg.data, type=Process)
    assert process.spec.args == ["raw"] and len(process.process_id) == 64

    ex = await connect_executor(settings, "e1")
    got = await ex.assign(timeout=2)
    assert got is not None and got.process_id == process.process_id
    await ex.close(got.process_id, ["raw"])
    assert (await client.wait(process.process_id, timeout=5)).state is ProcessState.SUCCESS
    await ex.aclose()
    await nc.close()


async def test_core_nats_publish_is_captured_too(client: Client, settings) -> None:
    subjects = Subjects(settings.prefix)
    nc = await raw_nats(settings.nats_url)
    events = await nc.subscribe(subjects.events_filter(colony=COLONY, state="waiting"))
    await nc.publish(
        subjects.specs(COLONY, "echo"), b'{"conditions": {"executortype": "echo"}, "funcname": "f"}'
    )
    msg = await next_event(events)
    assert msgspec.json.decode(msg.data, type=Process).spec.func_name == "f"
    await nc.close()


@pytest.mark.parametrize(
    ("body", "path", "reason"),
    [
        (b"{not json", "$", "malformed JSON"),
        (
            b'{"conditions": {"executortype": "echo"}, "funcname": 7}',
            "$.funcname",
            "expected `str`",
        ),
        (b'{"conditions": {"executortype": "echo"}}', "$.funcname", "required"),
        (
            b'{"conditions": {"executortype": "other"}, "funcname": "f"}',
            "$.conditions.executortype",
            "does not match",
        ),
    ],
)
async def test_raw_invalid_spec_gives_a_rejection_event(
    client: Client, settings, body: bytes, path: str, reason: str
) -> None:
    subjects = Subjects(settings.prefix)
    nc = await raw_nats(settings.nats_url)
    events = await nc.subscribe(subjects.events_filter(colony=COLONY))
    await nc.jetstream().publish(subjects.specs(COLONY, "echo"), body)
    msg = await next_event(events)
    assert ".rejected." in msg.subject
    rejection = msgspec.json.decode(msg.data, type=Rejection)
    assert rejection.path == path and reason in rejection.error
    # And the system keeps working.
    ok = await client.submit(spec())
    assert isinstance(ok, Process)
    assert [p.process_id for p in await client.list_processes()] == [ok.process_id]
    await nc.close()


async def test_unknown_colony_is_rejected_with_its_name(client: Client, settings) -> None:
    s = FunctionSpec(func_name="f", conditions=Conditions(executor_type="echo", colony_name="nope"))
    with pytest.raises(ColonyNotFoundError, match="'nope'"):
        await client.submit(s)
    with pytest.raises(ColonyNotFoundError):
        await client.get("a" * 64, colony="nope")
    assert isinstance(await client.submit(spec()), Process)


async def test_oversized_spec_is_refused_before_it_is_sent(client: Client) -> None:
    big = spec(args=["x" * (client.nc.max_payload + 1)])
    with pytest.raises(InvalidSpecError, match="this server stores at most"):
        await client.submit(big)
    assert isinstance(await client.submit(spec()), Process)


async def test_unknown_process(client: Client) -> None:
    from colonyos.errors import ProcessNotFoundError

    with pytest.raises(ProcessNotFoundError):
        await client.get("b" * 64)
    with pytest.raises(ProcessNotFoundError):
        await client.get("not-an-id")


async def test_bad_request_body_is_a_clear_error(client: Client, settings) -> None:
    subjects = Subjects(settings.prefix)
    reply = await client.nc.request(subjects.rpc(COLONY, "tester", "get"), b"{", timeout=5)
    assert b"malformed get request" in reply.data
    reply = await client.nc.request(subjects.rpc(COLONY, "tester", "frobnicate"), b"{}", timeout=5)
    assert b"unknown operation" in reply.data


async def test_submit_without_a_broker_is_kept_until_one_starts(settings, broker_settings) -> None:
    """JetStream holds accepted specs: a broker that starts later still runs them."""
    from .conftest import _drop_streams, open_colony, running_broker

    async with running_broker(broker_settings, owners=True):  # lets the client in
        await open_colony(settings)
        c = await Client.connect(settings)
    async with c:
        pid = await c.submit(spec(), confirm=False)
        assert isinstance(pid, str)
        async with c.watch(pid) as watch, running_broker(broker_settings, owners=True):
            event = await watch.next(10)
            assert isinstance(event, Process) and event.state is ProcessState.WAITING
    await _drop_streams(broker_settings.nats_url, broker_settings.prefix)


async def test_broker_restart_rebuilds_queue_and_index(settings, broker_settings) -> None:
    from .conftest import _drop_streams, open_colony, running_broker

    async with running_broker(broker_settings, owners=True):
        await open_colony(settings)
        async with await Client.connect(settings) as c:
            first = await c.submit(spec(priority=1))
            second = await c.submit(spec())
    async with running_broker(broker_settings, owners=True) as b:
        assert b.service_of(COLONY) is not None and len(b.service_of(COLONY).queue) == 2
        async with await Client.connect(settings) as c:
            listed = await c.list_processes(state=ProcessState.WAITING)
            assert {p.process_id for p in listed} == {first.process_id, second.process_id}
        ex = await connect_executor(settings, "e1")
        got = await ex.assign(timeout=1)
        assert got is not None and got.process_id == first.process_id
        await ex.aclose()
    await _drop_streams(broker_settings.nats_url, broker_settings.prefix)


async def test_concurrent_submissions_all_arrive(client: Client) -> None:
    results = await asyncio.gather(*(client.submit(spec(args=[i])) for i in range(50)))
    assert len({p.process_id for p in results}) == 50
    listed = await client.list_processes(state=ProcessState.WAITING, limit=1000)
    assert len(listed) == 50


async def test_same_id_after_the_dedup_window_gives_the_same_process(
    settings, broker_settings
) -> None:
    from .conftest import _drop_streams, open_colony, running_broker
    from .helpers import connect_executor

    nats_url, prefix = settings.nats_url, settings.prefix
    window = msgspec.structs.replace(broker_settings, dedup_window_s=0.2)
    async with running_broker(window, owners=True):
        await open_colony(settings)
        c = await Client.connect(settings)
        pid = "c" * 64
        first = await c.submit(spec(args=["first"]), process_id=pid)
        ex = await connect_executor(settings, "e1")
        got = await ex.assign(timeout=1)
        assert got is not None
        await ex.close(pid, ["done"])
        await asyncio.sleep(0.3)  # sleep-ok: outliving JetStream's dedup window is the point
        again = await c.submit(spec(args=["second"]), process_id=pid)
        assert isinstance(first, Process) and isinstance(again, Process)
        assert again.process_id == pid and again.state is ProcessState.SUCCESS
        assert again.output == ["done"] and again.spec.args == ["first"]
        await ex.aclose()
        await c.aclose()
    await _drop_streams(nats_url, prefix)


async def test_submit_many_pipelines_and_every_spec_becomes_a_process(client: Client) -> None:
    async with client.subscribe(state=ProcessState.WAITING) as events:
        pids = await client.submit_many([spec(args=[i]) for i in range(200)])
        assert len(set(pids)) == 200
        seen = set()
        async with asyncio.timeout(20):
            while len(seen) < 200:
                event = await events.next()
                seen.add(event.process_id)
    assert seen == set(pids)
    with pytest.raises(InvalidSpecError, match="funcname"):
        await client.submit_many([FunctionSpec(conditions=Conditions(executor_type="echo"))])


async def test_a_closed_connection_is_said_in_the_clients_words(client: Client, settings) -> None:
    """Submitting or packing on a connection that is closed (refused too long, or closed by its
    owner) raises the client's error, never nats-py's."""
    generators = Generators(client)
    await generators.add(
        "feed", [{"nodename": "n", "funcname": "f", "conditions": {"executortype": "x"}}], trigger=2
    )
    await generators.pack("feed", 1)  # the generator is known: the next pack goes straight out
    await client.nc.close()
    with pytest.raises(BrokerUnavailableError, match="closed"):
        await client.submit(spec(), confirm=False)
    with pytest.raises(BrokerUnavailableError, match="closed"):
        await generators.pack("feed", 2)


async def test_a_request_whose_handler_fails_unexpectedly_is_answered_at_once(
    client: Client, broker
) -> None:
    """A defect in a handler (or NATS trouble it did not expect) is told to the asker now,
    naming the operation, not left to its timeout."""

    async def boom(colony: str, caller: str, req: Empty) -> None:
        raise RuntimeError("a defect")

    broker.service_of(COLONY).register_ops(boom=(Empty, boom))
    async with asyncio.timeout(2):  # the request timeout is 5 s
        with pytest.raises(BrokerUnavailableError, match="failed on 'boom': a defect"):
            await client._request("boom", Empty(), type(None))
