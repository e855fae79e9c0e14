"""The leading broker runs crons: on time, chained, one at a time when told, once per tick."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from datetime import timedelta

import msgspec
import pytest

from colonyos.broker import Broker
from colonyos.broker.crons import run_graph_id
from colonyos.client import Client
from colonyos.config import BrokerSettings
from colonyos.crons.client import Crons
from colonyos.crons.model import Cron
from colonyos.errors import BrokerUnavailableError, ConflictError, CronNotFoundError
from colonyos.messages import GraphEvent
from colonyos.models import ProcessGraph, ProcessState, now
from colonyos.subjects import GRAPH_TOKEN, Subjects
from tests.conftest import running_broker
from tests.crons.conftest import CHAIN, Counter
from tests.helpers import raw_nats


async def _runs(client: Client, name: str) -> list[ProcessGraph]:
    """The cron's runs, oldest first."""
    graphs = [g for g in await client.graph_list(limit=100) if g.cron_name == name]
    return sorted(graphs, key=lambda g: g.submission_time)


async def _poll_runs(client: Client, name: str, count: int, timeout: float) -> list[ProcessGraph]:
    found: list[ProcessGraph] = []

    async def enough() -> bool:
        nonlocal found
        try:
            found = await _runs(client, name)
        except BrokerUnavailableError:
            # A request that reached a broker as it stepped down goes unanswered: a client
            # riding out a take-over asks again.
            return False
        return len(found) >= count

    async with asyncio.timeout(timeout):
        while not await enough():
            await _pause()
    return found


async def _pause() -> None:
    await asyncio.sleep(0.05)  # sleep-ok: polling state under a deadline


async def _root_and_leaf(client: Client, graph: ProcessGraph) -> tuple[list[object], list[object]]:
    first = await client.get(graph.nodes["first"])
    last = await client.get(graph.nodes["last"])
    return first.input, last.output


async def test_a_cron_every_second_runs_chained_workflows(client: Client, counter: Counter) -> None:
    """Each run's roots get the previous run's leaf outputs (waitprevious makes the previous
    run end first, so the chain does not depend on how fast the executor is)."""
    start = now()
    await Crons(client).add("tick", CHAIN, cron_expression="* * * * * *", wait_for_previous=True)
    runs = await _poll_runs(client, "tick", 3, timeout=15)
    for graph in runs[:3]:
        await client.graph_wait(graph.process_graph_id, timeout=10)
    values = [await _root_and_leaf(client, g) for g in runs[:3]]
    assert values == [([], [1]), ([1], [2]), ([2], [3])]
    # Every tick is on the events stream: the graph, waiting, with the cron's name.
    ticks = []
    events = client.subscribe(executor_type=GRAPH_TOKEN, state="waiting", since=start)
    async with events, asyncio.timeout(10):
        while len(ticks) < 3:
            received = await events.receive()
            if isinstance(received.event, GraphEvent) and received.event.cron_name == "tick":
                ticks.append(received.event.process_graph_id)
    assert ticks == [g.process_graph_id for g in runs[:3]]
    assert counter.most == 1


async def test_waitprevious_never_overlaps_two_runs(client: Client, counter: Counter) -> None:
    counter.gate.clear()  # the first run holds until the test lets it go
    crons = Crons(client)
    await crons.add("slow", CHAIN, cron_expression="* * * * * *", wait_for_previous=True)
    (first,) = await _poll_runs(client, "slow", 1, timeout=10)
    # Three ticks pass while the first run goes on: none starts a run.
    held = (await crons.get("slow")).last_run
    async with asyncio.timeout(10):
        while now() < held + timedelta(seconds=3.2):
            await _pause()
    assert [g.process_graph_id for g in await _runs(client, "slow")] == [first.process_graph_id]
    counter.gate.set()
    runs = await _poll_runs(client, "slow", 3, timeout=15)
    for graph in runs[:3]:
        await client.graph_wait(graph.process_graph_id, timeout=10)
    ended = [await client.graph_get(g.process_graph_id) for g in runs[:3]]
    for before, after in itertools.pairwise(ended):
        assert before.end_time <= after.submission_time
    assert counter.most == 1


async def test_crons_run_on_after_a_broker_restart(
    client: Client, broker: Broker, broker_settings: BrokerSettings
) -> None:
    await Crons(client).add("kept", CHAIN, cron_expression="* * * * * *")
    broker.stop()
    async with asyncio.timeout(10):
        while broker.leading.is_set():
            await _pause()
    restarted = now()
    async with running_broker(broker_settings):
        async with asyncio.timeout(10):
            while not [g for g in await _runs(client, "kept") if g.submission_time > restarted]:
                await _pause()


async def test_a_tick_a_dead_leader_recorded_is_finished_once(
    client: Client, broker: Broker, broker_settings: BrokerSettings, counter: Counter
) -> None:
    """The leader wrote the run into the cron and died before its graph: the next leader
    writes that graph, with the recorded id, and starts no other run for the tick."""
    crons = Crons(client)
    added = await crons.add("once", CHAIN, cron_expression="0 0 1 1 *")
    broker.stop()
    tick = added.created.replace(microsecond=0) - timedelta(seconds=1)
    graph_id = run_graph_id(added, tick)
    pending = msgspec.structs.replace(
        added, last_run=tick, prev_process_graph_id=graph_id, run_pending=True
    )
    s = Subjects(broker_settings.prefix)
    nc = await raw_nats(broker_settings.nats_url)
    try:
        kv = await nc.jetstream().key_value(s.bucket_crons)
        await kv.put(s.cron_key("dev", "once"), msgspec.json.encode(pending))
    finally:
        await nc.close()
    async with running_broker(broker_settings):
        graph = await client.graph_wait(graph_id, timeout=15)
        assert graph.cron_name == "once" and graph.state is ProcessState.SUCCESS
        after = await crons.get("once")
        assert not after.run_pending and after.prev_process_graph_id == graph_id
        assert [g.process_graph_id for g in await _runs(client, "once")] == [graph_id]


def test_a_runs_graph_id_derives_from_the_cron_and_the_tick() -> None:
    cron = Cron(name="c", cron_id="x", colony_name="dev")
    t = now()
    assert run_graph_id(cron, t) == run_graph_id(Cron(name="c", cron_id="x", colony_name="dev"), t)
    assert run_graph_id(cron, t) != run_graph_id(cron, t + timedelta(seconds=1))
    assert len(run_graph_id(cron, t)) == 64


async def test_a_stored_cron_that_cannot_run_does_not_stop_the_others(
    client: Client, broker: Broker, broker_settings: BrokerSettings
) -> None:
    """Values written by hand or by another release: one that does not decode is skipped, one
    that today's rules refuse (an unknown time zone) is left alone; the others run."""
    s = Subjects(broker_settings.prefix)
    broker.stop()
    bad = Cron(
        name="aaa-bad",
        cron_id="bad",
        colony_name="dev",
        cron_expression="* * * * * *",
        time_zone="Nowhere/Atlantis",
        created=now(),
        workflow_spec=json.dumps({"functionspecs": CHAIN}),
    )
    nc = await raw_nats(broker_settings.nats_url)
    try:
        kv = await nc.jetstream().key_value(s.bucket_crons)
        await kv.put(s.cron_key("dev", "aaa-junk"), b"{not json")
        await kv.put(s.cron_key("dev", "aaa-bad"), msgspec.json.encode(bad))
    finally:
        await nc.close()
    async with running_broker(broker_settings):
        await Crons(client).add("good", CHAIN, cron_expression="* * * * * *")
        await _poll_runs(client, "good", 2, timeout=10)
        assert await _runs(client, "aaa-bad") == []


@pytest.fixture
async def standby(broker_settings: BrokerSettings, broker: Broker) -> AsyncIterator[Broker]:
    async with running_broker(broker_settings, lead=False) as b:
        yield b


async def test_a_standby_that_takes_over_goes_on_with_the_chain(
    client: Client, broker: Broker, standby: Broker, counter: Counter
) -> None:
    """The leader stops between ticks; the standby's runs go on from its last run: no tick
    twice, none lost to the chain (run k's leaf outputs k)."""
    await Crons(client).add("relay", CHAIN, cron_expression="* * * * * *", wait_for_previous=True)
    before = await _poll_runs(client, "relay", 2, timeout=15)
    broker.stop()
    async with asyncio.timeout(15):
        await standby.leading.wait()
    runs = await _poll_runs(client, "relay", len(before) + 2, timeout=20)
    for graph in runs:
        await client.graph_wait(graph.process_graph_id, timeout=15)
    values = [await _root_and_leaf(client, g) for g in runs]
    assert [leaf for _, leaf in values] == [[k] for k in range(1, len(runs) + 1)]
    assert [root for root, _ in values] == [[], *([k] for k in range(1, len(runs)))]


async def test_a_write_the_leader_did_not_see_is_never_written_over(
    client: Client, broker_settings: BrokerSettings
) -> None:
    """Another writer (a leader deposed a moment ago) changed the cron: the leader's next run,
    decided from what it had read, loses the compare-and-set and it goes on from what is
    stored."""
    s = Subjects(broker_settings.prefix)
    crons = Crons(client)
    added = await crons.add("cas", CHAIN, cron_expression="* * * * * *")
    await _poll_runs(client, "cas", 1, timeout=10)
    held = await crons.get("cas")
    later = held.last_run + timedelta(days=365)
    nc = await raw_nats(broker_settings.nats_url)
    try:
        kv = await nc.jetstream().key_value(s.bucket_crons)
        await kv.put(
            s.cron_key("dev", "cas"),
            msgspec.json.encode(msgspec.structs.replace(held, last_run=later)),
        )
    finally:
        await nc.close()
    written = now()
    async with asyncio.timeout(10):  # three ticks of the cron go by
        while now() < written + timedelta(seconds=3.2):
            await _pause()
    stored = await crons.get("cas")
    assert stored.last_run == later and stored.cron_id == added.cron_id


async def test_a_remove_decided_from_a_stale_record_deletes_nothing(
    client: Client, broker_settings: BrokerSettings
) -> None:
    """The record changed behind the leader (another leader wrote it): the leader's remove,
    decided from the record it holds, is refused and what is stored stays."""
    crons = Crons(client)
    held = await crons.add("kept", CHAIN, interval=3600)
    s = Subjects(broker_settings.prefix)
    nc = await raw_nats(broker_settings.nats_url)
    try:
        kv = await nc.jetstream().key_value(s.bucket_crons)
        await kv.put(s.cron_key("dev", "kept"), msgspec.json.encode(held))
        with pytest.raises(ConflictError, match="changed meanwhile"):
            await crons.remove("kept")
        assert (await kv.get(s.cron_key("dev", "kept"))).value
    finally:
        await nc.close()
    await crons.remove("kept")  # the leader read it again: now it goes
    with pytest.raises(CronNotFoundError):
        await crons.get("kept")
