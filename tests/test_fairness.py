"""Fairness between colonies at intake: each colony has its own consumer, read in turn.

A colony that floods its queue gets its share of the intake and no more; another colony's spec
is accepted in the next round. The consumers follow the colonies (added, removed, and those of
an older version's single consumer upgraded in place, nothing lost).
"""

from __future__ import annotations

import asyncio

import msgspec
import nats.js.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from colonyos.broker import colonyfeeds
from colonyos.broker.colonyfeeds import ColonyFeeds, open_consumer
from colonyos.broker.intake import Intake
from colonyos.broker.store import ProcessStore
from colonyos.broker.workflows import Workflows
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.messages import Rejection
from colonyos.models import Colony, Process, ProcessState
from colonyos.subjects import Subjects

from .conftest import COLONY, _drop_streams, open_colony, running_broker
from .helpers import (
    executor_client,
    raw_nats,
    spec,
    specs_drained,
    standalone_service,
    until,
)

GOOD = b'{"funcname": "f", "conditions": {"executortype": "echo"}}'
FLOODED = "flood"
FLOOD = 20_000


async def _pending(js: nats.js.JetStreamContext, subjects: Subjects, colony: str) -> int:
    """A colony's submissions in the specs stream (a work queue: not yet accepted)."""
    info = await js.stream_info(subjects.stream_specs, subjects_filter=subjects.specs(colony, ">"))
    return sum((info.state.subjects or {}).values())


async def test_a_flooded_colony_does_not_hold_up_another(
    own_brokers: BrokerSettings, settings: Settings
) -> None:
    """Colony ``flood`` has 20,000 specs queued, no executor for them; a process submitted
    to ``dev`` afterwards runs to its end while most of that backlog is still queued."""
    s = Subjects(settings.prefix)
    async with running_broker(own_brokers, owners=True):
        await open_colony(settings, FLOODED)  # first: a reader in stream order serves it first
        await open_colony(settings)
    inspector = await raw_nats(settings.nats_url)
    try:
        js = inspector.jetstream()
        for _ in range(FLOOD):  # while no broker leads: all of it queued before intake starts
            await inspector.publish(s.specs(FLOODED, "echo"), GOOD)
        await inspector.flush()
        async with asyncio.timeout(30):
            while await _pending(js, s, FLOODED) < FLOOD:
                await asyncio.sleep(0.05)  # sleep-ok: polling the stream's state under a deadline
        async with (
            running_broker(own_brokers, owners=True),
            await Client.connect(settings, caller="tester") as client,
            executor_client(settings, "ex-1") as ex,
        ):
            submitted = await client.submit(spec(), timeout=60)
            assert isinstance(submitted, Process)
            assigned = await ex.assign(timeout=60)
            assert assigned is not None and assigned.process_id == submitted.process_id
            await ex.close(assigned.process_id, ["done"])
            assert (await client.get(submitted.process_id)).state is ProcessState.SUCCESS
            # dev's process is done; the flood is still mostly waiting to become processes.
            left = await _pending(js, s, FLOODED)
            assert left > FLOOD // 10, f"only {left} of {FLOOD} flooded specs were left"
    finally:
        await inspector.close()


async def test_a_round_takes_a_share_from_every_colony_with_something(
    nats_url: str, prefix: str
) -> None:
    """Both colonies have specs received: the next round has some of each, the flooded
    colony no more than its share of the batch."""
    subjects = Subjects(prefix)
    nc = await raw_nats(nats_url)
    js = nc.jetstream()
    feeds = ColonyFeeds(nc, js, subjects, batch=64)
    try:
        await ProcessStore(nc, subjects, storage="memory").setup()
        await feeds.start([FLOODED, COLONY])
        assert await feeds.next_batch() == []  # nothing yet; every colony has a pull out
        for _ in range(200):
            await nc.publish(subjects.specs(FLOODED, "echo"), GOOD)
        await nc.publish(subjects.specs(COLONY, "echo"), GOOD)
        await nc.flush()
        await until(lambda: feeds.buffered() == {FLOODED: 64, COLONY: 1})
        taken = [subjects.submission_colony(m.subject) for m in await feeds.next_batch()]
        assert taken.count(COLONY) == 1
        assert 0 < taken.count(FLOODED) <= 64 // 2
    finally:
        await feeds.close()
        await nc.close()
        await _drop_streams(nats_url, prefix)


async def test_the_server_scope_reads_only_colonies_that_do_not_exist(
    nats_url: str, prefix: str
) -> None:
    """Another broker may lead an existing colony: the server scope's sweep leaves its
    submissions to it, and reads only those of colonies that do not exist."""
    subjects = Subjects(prefix)
    nc = await raw_nats(nats_url)
    js = nc.jetstream()
    feeds = ColonyFeeds(nc, js, subjects, batch=64, existing=lambda: {COLONY})
    try:
        await ProcessStore(nc, subjects, storage="memory").setup()
        await open_consumer(js, subjects, COLONY)  # as the server scope made it at colony add
        await feeds.start([])
        for colony in (COLONY, "ghost"):
            await js.publish(subjects.specs(colony, "echo"), GOOD)
        async with asyncio.timeout(10):
            taken: list[str] = []
            while not taken:
                taken = [subjects.submission_colony(m.subject) for m in await feeds.next_batch()]
        assert taken == ["ghost"] and feeds.colonies == {"ghost"}
        mine = await js.consumer_info(subjects.stream_specs, subjects.consumer_intake(COLONY))
        # Left to its leader: not pulled, not even asked for.
        assert (mine.num_pending, mine.num_ack_pending, mine.num_waiting) == (1, 0, 0)
    finally:
        await feeds.close()
        await nc.close()
        await _drop_streams(nats_url, prefix)


async def test_a_colony_added_while_a_round_waits_is_read_at_once(
    nats_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round waits for something to arrive (up to the next sweep); a colony added meanwhile
    pulls at once, so its first spec ends the wait rather than waiting for the next round."""
    monkeypatch.setattr(colonyfeeds, "_STRAY_SWEEP_S", 60.0)  # a round that would wait long
    subjects = Subjects(prefix)
    nc = await raw_nats(nats_url)
    js = nc.jetstream()
    feeds = ColonyFeeds(nc, js, subjects, batch=64)
    try:
        await ProcessStore(nc, subjects, storage="memory").setup()
        await feeds.start([COLONY])
        waiting = asyncio.create_task(feeds.next_batch())
        await until(lambda: bool(feeds._arrived._waiters))  # type: ignore[attr-defined]
        await feeds.add(FLOODED)
        await nc.publish(subjects.specs(FLOODED, "echo"), GOOD)
        async with asyncio.timeout(10):
            taken = await waiting
        assert [subjects.submission_colony(m.subject) for m in taken] == [FLOODED]
    finally:
        await feeds.close()
        await nc.close()
        await _drop_streams(nats_url, prefix)


async def test_a_new_leader_reads_every_colony(nats_url: str, prefix: str) -> None:
    """More colonies than are made sure of at once: each has its consumer and its feed."""
    subjects = Subjects(prefix)
    nc = await raw_nats(nats_url)
    js = nc.jetstream()
    feeds = ColonyFeeds(nc, js, subjects, batch=64)
    names = [f"c{n}" for n in range(150)]
    try:
        await ProcessStore(nc, subjects, storage="memory").setup()
        await feeds.start(names)
        assert feeds.colonies == set(names)
        consumers = {c.name for c in await js.consumers_info(subjects.stream_specs)}
        assert consumers == {subjects.consumer_intake(name) for name in names}
    finally:
        await feeds.close()
        await nc.close()
        await _drop_streams(nats_url, prefix)


async def test_colony_add_and_remove_make_and_drop_its_consumer(
    client: Client, settings: Settings
) -> None:
    s = Subjects(settings.prefix)
    inspector = await raw_nats(settings.nats_url)  # members may not read consumers
    js = inspector.jetstream()
    try:
        await client.submit(spec())
        before = (await js.stream_info(s.stream_specs)).state.last_seq
        await client.colony_add("lab", auto_approve=True)
        info = await js.consumer_info(s.stream_specs, s.consumer_intake("lab"))
        assert sorted(info.config.filter_subjects or []) == sorted(s.intake_filters("lab"))
        # Whoever leads next refuses, as this leader does, what came before the colony.
        successor = ColonyFeeds(inspector, js, s, batch=8)
        await successor.start(["lab"])
        await successor.close()
        assert successor.opened == {"lab": before}
        await client.colony_remove("lab")
        with pytest.raises(nats.js.errors.NotFoundError):
            await js.consumer_info(s.stream_specs, s.consumer_intake("lab"))
        # What is submitted to it now is read all the same, and rejected: no such colony.
        events = await inspector.subscribe(s.events_filter(colony="lab"))
        await js.publish(s.specs("lab", "echo"), GOOD, headers={"Nats-Msg-Id": "f" * 64})
        msg = await events.next_msg(timeout=10)
        assert msg.subject == s.event("lab", "echo", "rejected", "f" * 64)
        rejection = msgspec.json.decode(msg.data, type=Rejection)
        assert rejection.error == "colony 'lab' does not exist"
        assert await specs_drained(js, s)
        # Nothing left for it: the consumer that read it goes too.
        async with asyncio.timeout(10):
            while await _has_consumer(js, s.stream_specs, s.consumer_intake("lab")):
                await asyncio.sleep(0.05)  # sleep-ok: polling the consumers under a deadline
    finally:
        await inspector.close()


async def _has_consumer(js: nats.js.JetStreamContext, stream: str, name: str) -> bool:
    try:
        await js.consumer_info(stream, name)
    except nats.js.errors.NotFoundError:
        return False
    return True


async def test_a_spec_for_a_colony_no_name_could_have_is_rejected(
    client: Client, settings: Settings
) -> None:
    """A subject token that is no valid colony name (nor consumer name) is read all the same,
    by a consumer named by its digest, and rejected."""
    s = Subjects(settings.prefix)
    inspector = await raw_nats(settings.nats_url)
    try:
        odd = "no/such"  # a subject token, not a name
        events = await inspector.subscribe(s.events_filter(colony=odd))
        js = inspector.jetstream()
        await js.publish(s.specs(odd, "echo"), GOOD, headers={"Nats-Msg-Id": "c" * 64})
        msg = await events.next_msg(timeout=10)
        assert msg.subject == s.event(odd, "echo", "rejected", "c" * 64)
        assert await specs_drained(js, s)
        assert isinstance(await client.submit(spec()), Process)  # and intake goes on
    finally:
        await inspector.close()


async def test_a_spec_published_before_its_colony_was_added_is_rejected(
    broker_settings: BrokerSettings, settings: Settings
) -> None:
    """Its colony's consumer reads it (it is the colony's subject), and intake refuses it:
    it was published when the colony did not exist."""
    subjects = Subjects(settings.prefix)
    nc = await raw_nats(settings.nats_url)
    js = nc.jetstream()
    try:
        store = ProcessStore(nc, subjects, storage="memory")
        await store.setup()
        await store.put_colony(Colony(name=COLONY, auto_approve=True))
        early = "a" * 64
        ack = await js.publish(subjects.specs(COLONY, "echo"), GOOD, headers={"Nats-Msg-Id": early})
        # The colony added after it: its consumer opens at the stream's last sequence.
        await open_consumer(js, subjects, COLONY, opened=ack.seq)
        late = "b" * 64
        await js.publish(subjects.specs(COLONY, "echo"), GOOD, headers={"Nats-Msg-Id": late})
        events = await nc.subscribe(subjects.events_filter(colony=COLONY))
        puller = await js.pull_subscribe_bind(
            subjects.consumer_intake(COLONY), subjects.stream_specs
        )
        async with standalone_service(broker_settings) as service:
            intake = Intake(service, Workflows(service), {COLONY: ack.seq})
            await intake.accept_batch(await puller.fetch(2, timeout=5))
            msg = await events.next_msg(timeout=5)
            assert msg.subject == subjects.event(COLONY, "echo", "rejected", early)
            assert msgspec.json.decode(msg.data, type=Rejection).error == (
                f"colony {COLONY!r} does not exist"
            )
            process, _ = await service.store.get(COLONY, late)
            assert process.state is ProcessState.WAITING
        assert await specs_drained(js, subjects)
    finally:
        await nc.close()
        await _drop_streams(settings.nats_url, settings.prefix)


async def test_an_upgraded_installation_keeps_every_pending_spec(
    own_brokers: BrokerSettings, settings: Settings
) -> None:
    """An older version read every colony through one consumer. Specs pending on it, some
    delivered and not acked: the new broker deletes it, reads each colony on its own, and
    every spec becomes a process."""
    subjects = Subjects(settings.prefix)
    nc = await raw_nats(settings.nats_url)
    js = nc.jetstream()
    colonies = (COLONY, "other")
    per_colony = 30
    try:
        store = ProcessStore(nc, subjects, storage="memory")
        await store.setup()
        for name in colonies:
            await store.put_colony(Colony(name=name, auto_approve=True))
        await js.add_consumer(
            subjects.stream_specs,
            ConsumerConfig(durable_name=subjects.consumer_specs, ack_policy=AckPolicy.EXPLICIT),
        )
        for _ in range(per_colony):
            for name in colonies:
                await js.publish(subjects.specs(name, "echo"), GOOD)
        old = await js.pull_subscribe_bind(subjects.consumer_specs, subjects.stream_specs)
        assert len(await old.fetch(5, timeout=5)) == 5  # taken by an old broker, never acked
        await old.unsubscribe()
        async with running_broker(own_brokers, owners=True):
            assert await specs_drained(js, subjects)
            with pytest.raises(nats.js.errors.NotFoundError):
                await js.consumer_info(subjects.stream_specs, subjects.consumer_specs)
            for name in colonies:
                await js.consumer_info(subjects.stream_specs, subjects.consumer_intake(name))
            kv = await js.key_value(subjects.bucket_processes)
            keys = await kv.keys()
            for name in colonies:
                assert sum(k.startswith(f"{name}.") for k in keys) == per_colony
    finally:
        await nc.close()
