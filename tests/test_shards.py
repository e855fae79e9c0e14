"""Colonies shared out among brokers (``COLONIES_SHARDED``): each colony is led by exactly one
broker, the one rendezvous hashing names among the brokers alive; requests reach it wherever it
runs, a colony added is led before its adder hears back, a colony is removed by the broker
that leads it, and a broker that stops or joins moves only the colonies it had or takes."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import msgspec
import pytest

from colonyos.broker import Broker
from colonyos.broker.shards import owner
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.errors import ColonyNotFoundError
from colonyos.executors import echo
from colonyos.models import Colony, Process, ProcessGraph, ProcessState, WorkflowSpec
from colonyos.subjects import SERVER_SCOPE

from .conftest import open_colony, running_broker
from .helpers import spec, until

pytestmark = pytest.mark.timeout(90)

NAMES = [f"s{n}" for n in range(12)]


def test_rendezvous_spreads_the_colonies_and_a_new_broker_takes_only_its_share() -> None:
    brokers = ["a", "b", "c"]
    colonies = [f"c{n}" for n in range(3000)]
    before = {c: owner(c, brokers) for c in colonies}
    assert min(Counter(before.values()).values()) > 800  # about a third each
    assert all(owner(c, list(reversed(brokers))) == before[c] for c in colonies)
    after = {c: owner(c, [*brokers, "d"]) for c in colonies}
    moved = [c for c in colonies if after[c] != before[c]]
    assert all(after[c] == "d" for c in moved)  # nothing moves between the others
    assert 550 < len(moved) < 950  # about a quarter
    assert owner("x", []) is None


def _led_by(brokers: list[Broker], colony: str) -> list[str]:
    return [b.broker_id for b in brokers if b.service_of(colony) is not None]


async def _knows(broker: Broker, other: Broker) -> None:
    """Until ``broker`` has heard ``other`` announce itself (a broker that hears a new one
    announces itself at once: no waiting for its next look)."""
    known = lambda: other.broker_id in {b.broker_id for b in broker.roster.others("")}  # noqa: E731
    await until(known, timeout=5)


@pytest.fixture
def sharded(own_brokers: BrokerSettings) -> BrokerSettings:
    return msgspec.structs.replace(own_brokers, sharded=True, lease_ttl_s=1.0)


@pytest.fixture
async def two(sharded: BrokerSettings) -> AsyncIterator[list[Broker]]:
    """Two sharded brokers on one NATS server, each knowing the other."""
    async with (
        running_broker(sharded, owners=True) as a,
        running_broker(sharded, lead=False) as b,
    ):
        await _knows(a, b)
        await _knows(b, a)
        yield [a, b]


async def _runs(settings: Settings, colony: str, word: str) -> None:
    """A process submitted to ``colony`` runs there and ends SUCCESS."""
    here = msgspec.structs.replace(settings, colony=colony)
    async with await Client.connect(here, caller="tester") as client:
        process = await client.submit(spec(args=[word]))
        assert isinstance(process, Process)
        app = echo.build(here, "echo", f"echo-{colony}")
        async with asyncio.timeout(30):
            await app.run(burst=True)
        done = await client.wait(process.process_id, timeout=10)
    assert done.state is ProcessState.SUCCESS and done.output == [word], done.errors


async def test_each_colony_is_led_by_the_broker_rendezvous_names_and_runs_there(
    two: list[Broker], settings: Settings
) -> None:
    ids = [b.broker_id for b in two]
    for name in NAMES:
        await open_colony(settings, name)
        # Led once added: by exactly its owner.
        assert _led_by(two, name) == [owner(name, ids)]
    owners = {owner(name, ids) for name in NAMES}
    assert owners == set(ids), "twelve colonies all went to one broker"
    for broker in two:  # one colony of each broker runs a process, through that broker
        mine = next(n for n in NAMES if owner(n, ids) == broker.broker_id)
        await _runs(settings, mine, f"on-{mine}")
        assert broker.info().colonies == sum(owner(n, ids) == broker.broker_id for n in NAMES)


async def test_a_colony_led_by_another_broker_is_removed_by_it(
    two: list[Broker], settings: Settings
) -> None:
    """The server scope's leader asks the colony's leader to clear it: its processes go."""
    server = next(b for b in two if b.leading.is_set())
    other = next(b for b in two if b is not server)
    name = next(n for n in NAMES if owner(n, [b.broker_id for b in two]) == other.broker_id)
    await open_colony(settings, name)
    here = msgspec.structs.replace(settings, colony=name)
    async with await Client.connect(here, caller="tester") as client:
        assert isinstance(await client.submit(spec()), Process)
        assert await client.colony_remove(name) == 1
        with pytest.raises(ColonyNotFoundError):
            await client.colony_get(name)
    await until(lambda: not _led_by(two, name))


async def _until_settled(brokers: list[Broker], names: list[str], timeout: float = 20) -> None:
    """Until every colony is led by its owner among ``brokers``; at no moment by two."""
    ids = [b.broker_id for b in brokers]

    def settled() -> bool:
        led = {n: _led_by(brokers, n) for n in names}
        assert all(len(by) <= 1 for by in led.values()), led
        return all(by == [owner(n, ids)] for n, by in led.items())

    await until(settled, timeout=timeout)


async def test_a_broker_that_joins_takes_its_share_and_one_that_stops_hands_it_back(
    sharded: BrokerSettings, settings: Settings
) -> None:
    async with running_broker(sharded, owners=True) as a:
        for name in NAMES:
            await open_colony(settings, name)
        assert all(_led_by([a], n) == [a.broker_id] for n in NAMES)
        async with running_broker(sharded, lead=False) as b:
            await _knows(a, b)
            await _until_settled([a, b], NAMES)
            assert a.info().colonies < len(NAMES) and b.info().colonies > 0
        # b stopped: its colonies come back to a, and run there.
        await _until_settled([a], NAMES)
        await _runs(settings, NAMES[0], "back")


async def test_the_same_process_id_in_two_colonies_is_two_processes(
    two: list[Broker], settings: Settings
) -> None:
    """Ids are unique within a colony: in two colonies (led by two brokers, which cannot see
    each other's ids), one id is two processes, each run in its colony (its events are its
    own: their ids carry the KV revision, unique in the whole bucket)."""
    ids = [b.broker_id for b in two]
    first = next(n for n in NAMES if owner(n, ids) == ids[0])
    second = next(n for n in NAMES if owner(n, ids) == ids[1])
    made: list[Process] = []
    for name in (first, second):
        await open_colony(settings, name)
        here = msgspec.structs.replace(settings, colony=name)
        async with await Client.connect(here, caller="tester") as client:
            if not made:  # a workflow's process: its id was never a spec's Nats-Msg-Id, which
                # the specs stream would de-duplicate for two minutes, whatever the colony
                flow = WorkflowSpec(function_specs=[spec(args=[name], node_name="a")])
                graph = await client.submit_workflow(flow)
                assert isinstance(graph, ProcessGraph)
                made.append(await client.get(graph.process_ids[0]))
            else:
                process = await client.submit(spec(args=[name]), process_id=made[0].process_id)
                assert isinstance(process, Process)
                made.append(process)
    pid = made[0].process_id
    assert [p.process_id for p in made] == [pid, pid]
    assert [p.spec.args for p in made] == [[first], [second]]
    for name in (first, second):
        here = msgspec.structs.replace(settings, colony=name)
        async with (
            await Client.connect(here, caller="tester") as client,
            asyncio.timeout(30),
            client.watch(pid) as watch,
        ):
            await echo.build(here, "echo", f"echo-{name}").run(burst=True)
            seen: list[Process] = []
            while not seen or seen[-1].state is not ProcessState.SUCCESS:
                if isinstance(event := await watch.next(None), Process):
                    seen.append(event)
        assert all(e.spec.args == [name] for e in seen), seen


async def test_a_removed_colony_steps_down_at_once_and_comes_back_afresh(
    own_brokers: BrokerSettings, settings: Settings
) -> None:
    """Its leader steps down as it answers the removal, not at its next look (a lease of 30 s:
    ten seconds away), so the removal answers at once; the colony added again is led anew."""
    slow = msgspec.structs.replace(own_brokers, lease_ttl_s=30.0)
    async with running_broker(slow, owners=True) as broker:
        await open_colony(settings, "again")
        here = msgspec.structs.replace(settings, colony="again")
        async with await Client.connect(here, caller="tester") as client:
            assert isinstance(await client.submit(spec()), Process)
            async with asyncio.timeout(5):
                assert await client.colony_remove("again") == 1
            assert broker.service_of("again") is None
        await open_colony(settings, "again")
        await _runs(settings, "again", "afresh")


@pytest.mark.parametrize("through_look", [False, True])
async def test_a_colony_led_without_its_record_is_led_afresh_when_added_again(
    own_brokers: BrokerSettings, settings: Settings, through_look: bool
) -> None:
    """A look that read the colonies just before one was removed takes it again, with no record
    to load: when the colony is added again, that leadership goes and a new one loads it."""
    async with running_broker(own_brokers, owners=True) as broker:
        await open_colony(settings, "again")
        stale = broker.service_of("again")
        assert stale is not None
        # As a removal leaves it: the record gone, here and at the server scope; but a look
        # that read the colonies before took it again.
        server = broker.service_of(SERVER_SCOPE)
        assert server is not None
        for service in (stale, server):
            service.colonies.pop("again")
        await stale.store.colonies.delete("again")
        if through_look:  # added by another broker's server scope: this one looks again
            await stale.store.put_colony(Colony(name="again", auto_approve=True))
            await until(lambda: broker.service_of("again") not in (stale, None), timeout=10)
            return
        await open_colony(settings, "again")
        assert broker.service_of("again") is not stale
        await _runs(settings, "again", "afresh")


async def test_a_broker_that_stops_says_so_and_the_others_take_its_colonies_at_once(
    own_brokers: BrokerSettings, settings: Settings
) -> None:
    """Not a lease term later (30 s here, a look every 10 s): the others count it gone and look
    at once, and its colonies (their leases released) are theirs."""
    slow = msgspec.structs.replace(own_brokers, sharded=True, lease_ttl_s=30.0)
    async with running_broker(slow, owners=True) as a:
        async with running_broker(slow, lead=False) as b:
            await _knows(a, b)
            await _knows(b, a)
            for name in NAMES:
                await open_colony(settings, name)
            assert b.info().colonies > 0
        await until(lambda: b.broker_id not in {x.broker_id for x in a.roster.others("")})
        await until(lambda: all(_led_by([a], n) == [a.broker_id] for n in NAMES), timeout=5)


async def test_a_broker_started_without_sharding_gets_no_colony_from_the_sharded_ones(
    sharded: BrokerSettings, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Started the other way by mistake (``colonies server start`` without COLONIES_SHARDED
    beside ``broker start --sharded``), it stands by and would never lead the colonies that
    rendezvous hashing gives it: the sharded brokers leave it out, and say why."""
    plain = msgspec.structs.replace(sharded, sharded=False)
    async with (
        running_broker(sharded, owners=True) as a,
        running_broker(plain, lead=False) as b,
    ):
        await _knows(a, b)
        await _knows(b, a)
        for name in NAMES:
            await open_colony(settings, name)
        assert all(_led_by([a, b], n) == [a.broker_id] for n in NAMES)
        assert b.info().sharded is False and a.info().sharded is True
        await _runs(settings, NAMES[0], "still-here")
    said = [r.getMessage() for r in caplog.records if b.broker_id in r.getMessage()]
    assert any("without COLONIES_SHARDED" in m for m in said), said


async def test_a_broker_that_joins_gets_its_share_at_once_not_at_its_next_look(
    own_brokers: BrokerSettings, settings: Settings
) -> None:
    """The holders hand its colonies over as they hear it, and wake it when they have: it
    does not wait for its next look (every 10 s here) to take leases just released."""
    slow = msgspec.structs.replace(own_brokers, sharded=True, lease_ttl_s=30.0)
    async with running_broker(slow, owners=True) as a:
        for name in NAMES:
            await open_colony(settings, name)
        async with running_broker(slow, lead=False) as b:
            await _knows(a, b)
            await _until_settled([a, b], NAMES, timeout=3)
