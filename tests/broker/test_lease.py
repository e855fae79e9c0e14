"""The lease on real KV: a holder that stops renewing (dead, cut off) loses it only when it
expires, and has stopped acting before anyone else can take it."""

from __future__ import annotations

import asyncio
import time

import msgspec

from colonyos.broker.lease import Lease
from colonyos.config import BrokerSettings

from ..conftest import running_broker
from ..helpers import standalone_service, until

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
        assert await a.try_acquire() and a.held
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
