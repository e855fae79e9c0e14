"""The lease's arithmetic and its edges on real KV, without waiting out a term: the expiry it
writes and the 80% it acts for, release, two takers at once, an unreachable bucket. Written
from the mutants of lease.py that `make mutate` left alive (docs/guarantees.md)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from colonyos.broker.lease import Lease
from colonyos.config import BrokerSettings

from ..helpers import raw_nats, until

TTL_S = 2.0


class _Holder(msgspec.Struct):
    holder: str
    expires_ns: int


async def _expiry(lease: Lease) -> int:
    entry = await lease.kv.get(lease.key)
    return msgspec.json.decode(entry.value or b"", type=_Holder).expires_ns


@pytest.fixture
async def nc(own_brokers: BrokerSettings) -> AsyncIterator[NATS]:
    conn = await raw_nats(own_brokers.nats_url)
    yield conn
    await conn.close()


@pytest.fixture
async def kv(nc: NATS, own_brokers: BrokerSettings) -> KeyValue:
    """The prefix's leases bucket, as the store makes it (dropped with the prefix)."""
    config = KeyValueConfig(
        bucket=f"{own_brokers.prefix}-leases", history=1, storage=StorageType.MEMORY
    )
    return await nc.jetstream().create_key_value(config)


@pytest.mark.parametrize(
    ("ttl_s", "ttl_ns"),
    [(TTL_S, 2_000_000_000), (2.5, 2_500_000_000), (1e9 + 0.5, 10**18 + 5 * 10**8)],
)
async def test_a_term_runs_ttl_from_the_write_and_is_acted_on_for_80_percent(
    kv: KeyValue, ttl_s: float, ttl_ns: int
) -> None:
    """The stored expiry is the wall clock at the write plus the TTL; the holder acts only for
    80% of it, counted from before the write. Renewing moves both on. (A fraction of a second
    and a term of 31 years show the arithmetic exact.)"""
    a = Lease(kv, "k", "a", ttl_s)
    assert a.ttl_ns == ttl_ns and a.valid_until == 0.0 and not a.held
    for _ in range(2):  # take, then renew
        before, before_ns = time.monotonic(), time.time_ns()
        assert await a.try_acquire()
        after, after_ns = time.monotonic(), time.time_ns()
        assert before + 0.8 * ttl_s <= a.valid_until <= after + 0.8 * ttl_s
        assert before_ns + ttl_ns <= await _expiry(a) <= after_ns + ttl_ns
        assert a.held
        entry = await kv.get("k")
        assert msgspec.json.decode(entry.value or b"", type=_Holder).holder == "a"


async def test_a_holder_past_its_term_releases_nothing(kv: KeyValue) -> None:
    """Past 80% of its term a holder has stopped acting; its lease runs out by itself (it may
    be another's already), so release writes nothing."""
    a = Lease(kv, "k", "a", 0.2)
    assert await a.try_acquire()
    await until(lambda: not a.held)
    await a.release()
    entry = await kv.get("k")
    assert msgspec.json.decode(entry.value or b"", type=_Holder).holder == "a"


async def test_a_released_lease_is_free_at_once_and_only_its_holder_releases(
    kv: KeyValue,
) -> None:
    a = Lease(kv, "k", "a", 60.0)
    b = Lease(kv, "k", "b", 60.0)
    await b.release()  # never held: writes nothing
    assert await a.try_acquire()
    await b.release()  # does not hold it: a still does
    assert await _expiry(a) > time.time_ns() and not await b.try_acquire()
    await a.release()
    assert not a.held and a.valid_until == 0.0
    assert await _expiry(a) == 0
    assert await b.try_acquire() and b.held  # at once, long before a's term would end
    await a.release()  # no longer the holder: b's lease stands
    entry = await kv.get("k")
    assert msgspec.json.decode(entry.value or b"", type=_Holder).holder == "b"


async def test_a_holder_whose_term_ran_out_may_take_its_lease_again(kv: KeyValue) -> None:
    """Its own expired entry: renewed; another's live entry: refused, and not held after."""
    a = Lease(kv, "k", "a", TTL_S)
    await kv.create("k", msgspec.json.encode(_Holder("a", time.time_ns() - 1)))
    assert await a.try_acquire() and a.held
    other = _Holder("b", time.time_ns() + int(60e9))
    await kv.update("k", msgspec.json.encode(other), last=(await kv.get("k")).revision)
    assert not await a.try_acquire()
    assert not a.held and a.valid_until == 0.0
    await a.release()  # not held: writes nothing
    assert await _expiry(a) == other.expires_ns


async def test_of_two_taking_a_free_lease_at_once_one_wins(kv: KeyValue) -> None:
    a = Lease(kv, "k", "a", 60.0)
    b = Lease(kv, "k", "b", 60.0)
    won = await asyncio.gather(a.try_acquire(), b.try_acquire())
    assert sorted(won) == [False, True]
    assert a.held is won[0] and b.held is won[1]
    loser = b if won[0] else a
    assert loser.valid_until == 0.0


async def test_a_holder_cut_off_from_the_bucket_keeps_only_its_term(kv: KeyValue, nc: NATS) -> None:
    """An unreachable bucket is no answer: the holder acts on for the rest of its term (it
    stops at 80%), one that did not hold does not start."""
    a = Lease(kv, "k", "a", 60.0)
    b = Lease(kv, "k", "b", 60.0)
    assert await a.try_acquire()
    term = a.valid_until
    await nc.close()
    assert await a.try_acquire() and a.valid_until == term
    assert not await b.try_acquire()
    await a.release()  # cannot reach it either: the lease would run out by itself
    assert not a.held and a.valid_until == 0.0
