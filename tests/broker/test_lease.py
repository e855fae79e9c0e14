"""The lease on real KV: a holder that stops renewing (dead, cut off) loses it only when it
expires, and has stopped acting before anyone else can take it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import msgspec
import pytest
from nats.aio.msg import Msg

from colonyos.broker.lease import Claim, Lease, Life, forget_dead_lives
from colonyos.buckets import latest_values
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.errors import BrokerUnavailableError
from colonyos.subjects import Subjects

from ..conftest import COLONY, open_colony, running_broker
from ..helpers import raw_nats, standalone_service, until, until_read

TTL_S = 2.0


class _Holder(msgspec.Struct):
    holder: str
    expires_ns: int


async def _expiry(lease: Lease) -> int:
    entry = await lease.kv.get(lease.key)
    return msgspec.json.decode(entry.value or b"", type=_Holder).expires_ns


async def test_a_silent_holder_loses_the_lease_at_expiry_having_stepped_down_before(
    own_brokers: BrokerSettings,
) -> None:
    async with standalone_service(own_brokers) as service:
        a = Lease(service.store.leases, "k", "a", TTL_S)
        b = Lease(service.store.leases, "k", "b", TTL_S)
        asked = time.monotonic()
        assert await a.try_acquire() and a.held
        # By a's own clock its lease runs out TTL_S after it asked, at the earliest (the expiry
        # it wrote is later still): it acts only until a moment strictly before that.
        assert a.valid_until < asked + TTL_S
        expires_ns = await _expiry(a)
        assert not await b.try_acquire()
        # a stops renewing, as a leader that died or lost NATS: b takes over at expiry.
        async with asyncio.timeout(10):
            while not await b.try_acquire():
                await asyncio.sleep(0.05)  # sleep-ok: a standby's retry period
        assert time.time_ns() >= expires_ns
        # a acted only for 80% of its term: it stopped before b could start.
        assert not a.held
        assert b.held and not await a.try_acquire()


async def test_a_standby_broker_takes_over_when_the_leaders_lease_expires(
    own_brokers: BrokerSettings,
) -> None:
    """The leader died without releasing its lease: a broker leads once it expired, not
    before."""
    settings = msgspec.structs.replace(own_brokers, lease_ttl_s=TTL_S)
    async with standalone_service(settings) as service:
        dead = Lease(service.store.leases, "broker", "dead-broker", TTL_S)
        assert await dead.try_acquire()
        expires_ns = await _expiry(dead)
        async with running_broker(settings, lead=False) as standby:
            async with asyncio.timeout(10):
                await standby.leading.wait()
            assert time.time_ns() >= expires_ns


async def test_a_leader_that_finds_its_lease_taken_steps_down(
    own_brokers: BrokerSettings,
) -> None:
    """Cut off long enough for another to take the lease: at its next renewal the leader
    stops leading, and stands by while the other holds it."""
    settings = msgspec.structs.replace(own_brokers, lease_ttl_s=TTL_S)
    async with running_broker(settings) as leader, standalone_service(settings) as service:
        assert leader.leading.is_set()
        kv = service.store.leases
        entry = await kv.get("broker")
        other = _Holder("other-broker", time.time_ns() + int(60e9))
        await kv.update("broker", msgspec.json.encode(other), last=entry.revision)
        await until(lambda: not leader.leading.is_set())
        assert await _expiry(Lease(kv, "broker", "probe", TTL_S)) == other.expires_ns


async def test_a_holder_that_finds_its_lease_taken_stops_acting_at_once(
    own_brokers: BrokerSettings,
) -> None:
    """Its term had most of a minute left by its own clock: finding another holder ends it all
    the same (else a next try that cannot reach the bucket would answer "still held")."""
    async with standalone_service(own_brokers) as service:
        kv = service.store.leases
        a = Lease(kv, "k", "a", 60.0)
        assert await a.try_acquire() and a.held
        entry = await kv.get("k")
        other = _Holder("other", time.time_ns() + int(60e9))
        await kv.update("k", msgspec.json.encode(other), last=entry.revision)
        assert not await a.try_acquire()
        assert not a.held


async def test_a_colony_claimed_under_a_life_is_taken_only_once_that_life_runs_out(
    own_brokers: BrokerSettings,
) -> None:
    """A claim has no expiry of its own: another broker takes the colony when the claimant's
    life has run out (it stopped renewing), not before; the claimant has stopped acting by
    then."""
    async with standalone_service(own_brokers) as service:
        kv = service.store.leases
        life_a, life_b = Life(kv, "a", TTL_S), Life(kv, "b", TTL_S)
        assert await life_a.renew() and await life_b.renew()
        a, b = Claim(kv, "colony.c", life_a), Claim(kv, "colony.c", life_b)
        assert await a.try_acquire() and a.held
        assert not await b.try_acquire()
        expires_ns = await _expiry(life_a.lease)
        # a's life stops renewing (its broker died); b's goes on.
        async with asyncio.timeout(10):
            while not await b.try_acquire():
                await life_b.renew()
                await asyncio.sleep(0.05)  # sleep-ok: a standby's retry period
        assert time.time_ns() >= expires_ns
        assert b.held and not a.held


async def test_a_colony_given_up_is_claimed_at_once(own_brokers: BrokerSettings) -> None:
    async with standalone_service(own_brokers) as service:
        kv = service.store.leases
        life_a, life_b = Life(kv, "a", 60.0), Life(kv, "b", 60.0)
        assert await life_a.renew() and await life_b.renew()
        a, b = Claim(kv, "colony.c", life_a), Claim(kv, "colony.c", life_b)
        assert await a.try_acquire()
        await a.release()
        assert not a.held and await b.try_acquire()


async def test_a_broker_renews_one_lease_however_many_colonies_it_leads(
    own_brokers: BrokerSettings, settings: Settings
) -> None:
    """Three colonies led: while the broker's own lease is renewed three times, no colony's
    is written."""
    quick = msgspec.structs.replace(own_brokers, lease_ttl_s=0.9)
    async with running_broker(quick, owners=True) as broker:
        for name in (COLONY, "c1", "c2"):
            await open_colony(settings, name)
        assert broker.shards is not None
        await until(lambda: len(broker.shards.colonies_led) == 3)
        life_key = broker.shards.life.lease.key
        written: list[str] = []
        nc = await raw_nats(quick.nats_url)
        bucket = Subjects(quick.prefix).bucket_leases
        try:
            sub = await nc.subscribe(f"$KV.{bucket}.>", cb=_record(written, f"$KV.{bucket}."))
            await until(lambda: written.count(life_key) >= 3, timeout=10)
            await sub.unsubscribe()
        finally:
            await nc.close()
        assert [k for k in written if k.startswith("colony.")] == []


async def test_a_broker_whose_life_lapsed_steps_down_from_its_colonies_and_claims_them_again(
    own_brokers: BrokerSettings, settings: Settings
) -> None:
    """Its own lease ran out unrenewed (a stall longer than its term): every colony it
    claimed may be another's by now, so it stops leading them, then claims them afresh."""
    quick = msgspec.structs.replace(own_brokers, lease_ttl_s=1.5)
    async with running_broker(quick, owners=True) as broker:
        assert broker.shards is not None
        await open_colony(settings)
        before = broker.leadership(COLONY)
        assert before is not None
        broker.shards.life.lease.valid_until = 0.0  # as after a stall
        await until(lambda: before.serving.is_set() is False, timeout=10)
        await until(lambda: broker.leadership(COLONY) not in (None, before), timeout=10)


def _record(written: list[str], head: str) -> Callable[[Msg], Awaitable[None]]:
    async def on_write(msg: Msg) -> None:
        written.append(msg.subject[len(head) :])

    return on_write


async def test_a_standby_looks_again_when_the_lease_it_was_refused_runs_out(
    own_brokers: BrokerSettings,
) -> None:
    """Its own looks are ten seconds apart (a 30 s term), the dead leader's lease runs out two
    seconds from now: it takes over then, not at its next look."""
    slow = msgspec.structs.replace(own_brokers, lease_ttl_s=30.0)
    async with standalone_service(slow) as service:
        dead = Lease(service.store.leases, "broker", "dead-broker", TTL_S)
        assert await dead.try_acquire()
        async with running_broker(slow, lead=False) as standby:
            async with asyncio.timeout(8):  # the next look would come at 10 s
                await standby.leading.wait()


async def test_the_lives_of_brokers_long_gone_are_forgotten(own_brokers: BrokerSettings) -> None:
    """Every broker start leaves its own lease behind; those run out long ago go, whole (no
    marker left), and a live one stays."""
    async with standalone_service(own_brokers) as service:
        kv = service.store.leases
        now = time.time_ns()
        await kv.put("alive.gone", msgspec.json.encode(_Holder("gone", now - int(120e9))))
        await kv.put("alive.stopped", msgspec.json.encode(_Holder("", 0)))
        await kv.put("alive.late", msgspec.json.encode(_Holder("late", now - int(1e9))))
        live = Life(kv, "live", 60.0)
        assert await live.renew()
        js = service.store.js
        assert await forget_dead_lives(js, kv, dead_for_s=60.0) == 2
        left = [v.key async for v in latest_values(js, kv, "alive.")]
        assert sorted(left) == ["alive.late", "alive.live"]
        stream = await js.stream_info(f"KV_{Subjects(own_brokers.prefix).bucket_leases}")
        assert stream.state.messages == 2  # no delete marker kept for the two gone


async def test_the_server_scopes_leader_forgets_brokers_long_gone(
    own_brokers: BrokerSettings,
) -> None:
    async with standalone_service(own_brokers) as service:
        kv, js = service.store.leases, service.store.js
        long_ago = time.time_ns() - int(3600e9)
        await kv.put("alive.gone", msgspec.json.encode(_Holder("gone", long_ago)))

        async def lives() -> list[str]:
            return sorted([v.key async for v in latest_values(js, kv, "alive.")])

        async with running_broker(own_brokers) as broker:
            assert broker.shards is not None
            await until_read(lives, [broker.shards.life.lease.key])


async def test_a_renewal_whose_reply_was_lost_keeps_the_lease(
    own_brokers: BrokerSettings,
) -> None:
    """The holder's last write landed but its answer did not come: the next renewal, refused
    for the revision it does not know, finds its own write and keeps the lease (a broker's
    own lease lost so would step it down from every colony it leads)."""
    async with standalone_service(own_brokers) as service:
        kv = service.store.leases
        a = Lease(kv, "k", "a", 60.0)
        assert await a.try_acquire()
        entry = await kv.get("k")
        landed = _Holder("a", time.time_ns() + int(60e9))
        await kv.update("k", msgspec.json.encode(landed), last=entry.revision)
        assert await a.try_acquire() and a.held


async def test_a_claim_reads_as_held_to_a_broker_that_knows_only_expiring_leases(
    own_brokers: BrokerSettings,
) -> None:
    """During an upgrade a broker of the earlier version, which renewed a lease per colony,
    must not take a colony claimed under a life: the claim's expiry is far away for it."""
    async with standalone_service(own_brokers) as service:
        kv = service.store.leases
        life = Life(kv, "new", 60.0)
        assert await life.renew()
        assert await Claim(kv, "colony.c", life).try_acquire()
        earlier = Lease(kv, "colony.c", "earlier", 5.0)  # as every colony's lease once was
        assert not await earlier.try_acquire()


async def test_a_life_whose_term_passes_unrenewed_ends_its_colonies_at_once(
    own_brokers: BrokerSettings, settings: Settings
) -> None:
    """A renewal that hangs (or a loop too busy to renew): the colonies step down when the
    broker's own lease stops being valid, not at the next renewal (here ten seconds away),
    and requests that come meanwhile are told the colony is changing hands."""
    slow = msgspec.structs.replace(own_brokers, lease_ttl_s=30.0)
    async with running_broker(slow, owners=True) as broker:
        await open_colony(settings)
        assert broker.shards is not None
        before = broker.leadership(COLONY)
        assert before is not None
        life = broker.shards.life
        life.lease.valid_until = time.monotonic() + 0.2  # as if the renewals stopped
        life._watch()  # the renewal just made would have set the watch so
        await until(lambda: not before.serving.is_set(), timeout=5)


async def test_a_leader_past_its_term_answers_that_the_colony_changes_hands(
    own_brokers: BrokerSettings, settings: Settings
) -> None:
    """Between its term's end and its stepping down (a stall outlived the term), a leader
    serves nothing: another broker may lead the colony by then."""
    slow = msgspec.structs.replace(own_brokers, lease_ttl_s=30.0)
    async with running_broker(slow, owners=True) as broker:
        await open_colony(settings)
        assert broker.shards is not None
        async with await Client.connect(settings, caller="tester") as client:
            await client.colony_stats()
            broker.shards.life.lease.valid_until = 0.0  # the term is over, nothing noticed yet
            with pytest.raises(BrokerUnavailableError, match="changing hands"):
                await client.colony_stats()
