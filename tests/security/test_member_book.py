"""The member book reads a colony's members whole, every time: the callout counts a colony's
waiting claims from that read, and a member missing from it is a claim not counted.

nats-py's ``KeyValue.keys()`` may report an empty bucket when its values still wait in the
client's buffer (colonyos/buckets.py); with a hundred reads at once, a book listing members
through it missed them all in about one run of four.
"""

from __future__ import annotations

import asyncio

import msgspec

from colonyos.config import BrokerSettings
from colonyos.security.members import Member, MemberBook, _Mirror
from colonyos.security.permissions import Role
from colonyos.subjects import Subjects

from ..helpers import raw_nats, until_read


def _member(colony: str, i: int) -> Member:
    return Member(colony_name=colony, name=f"m{i:03d}", public_key=f"U{i:055d}", role=Role.USER)


async def test_every_member_of_a_colony_is_read_every_time(own_brokers: BrokerSettings) -> None:
    nc = await raw_nats(own_brokers.nats_url)
    try:
        book = MemberBook(nc.jetstream(), Subjects(own_brokers.prefix), storage="memory")
        await book.start()
        assert await book.all_of("a") == []  # nothing at all: said at once
        await asyncio.gather(*(book.put(_member("a", i)) for i in range(300)))
        await asyncio.gather(*(book.put(_member("ab", i)) for i in range(5)))  # a longer name
        await book.members.delete(Subjects.member_key("a", "m000"))
        await book.remove("a", "m001")  # kept as removed: not a member
        # Many reads at once keep the loop busy, as the callout's do under load.
        reads = await asyncio.gather(*(book.all_of("a") for _ in range(100)))
        for members in reads:
            assert [m.name for m in members] == [f"m{i:03d}" for i in range(2, 300)]
        assert len(await book.all_of("ab")) == 5
        forgotten = await book.forget_colony("a")
        assert sorted(forgotten) == [f"m{i:03d}" for i in range(1, 300)]
        assert await book.all_of("a") == [] and len(await book.all_of("ab")) == 5
    finally:
        await nc.close()


async def test_a_following_book_knows_its_own_writes_at_once_and_others_soon(
    own_brokers: BrokerSettings,
) -> None:
    """A broker checks the caller's record on every executor request from memory: what it
    wrote itself is known at once (a member it removed is refused on its very next request),
    what another broker's book wrote arrives with the bucket's delivery."""
    nc = await raw_nats(own_brokers.nats_url)
    try:
        subjects = Subjects(own_brokers.prefix)
        book = MemberBook(nc.jetstream(), subjects, storage="memory")
        other = MemberBook(nc.jetstream(), subjects, storage="memory")
        await book.start()
        await other.start()
        await book.put(_member("a", 1))  # before following: loaded at the start
        await book.follow()
        try:
            assert (await book.known("a", "m001")) == _member("a", 1)
            await book.put(_member("a", 2))
            assert await book.known("a", "m002") == _member("a", 2)  # no wait
            assert await book.remove("a", "m002")
            held = await book.known("a", "m002")
            assert held is not None and held.removed  # no wait
            await other.put(_member("a", 3))
            await until_read(lambda: book.known("a", "m003"), _member("a", 3))
            await other.remove("a", "m001")
            removed = msgspec.structs.replace(_member("a", 1), removed=True)
            await until_read(lambda: book.known("a", "m001"), removed)
            await other.forget_colony("a")
            await until_read(lambda: book.known("a", "m003"), None)
            assert await book.known("b", "nobody") is None
        finally:
            await book.stop_following()
        await other.put(_member("a", 4))  # no longer following: read from the bucket
        assert await book.known("a", "m004") == _member("a", 4)
    finally:
        await nc.close()


async def test_a_following_book_does_not_wait_for_the_bucket_to_know_its_own_writes(
    own_brokers: BrokerSettings,
) -> None:
    """On a cluster the bucket may deliver a write after its acknowledgement: the book knows
    its own writes without waiting for the delivery (here, one that never comes)."""
    nc = await raw_nats(own_brokers.nats_url)
    try:
        book = MemberBook(nc.jetstream(), Subjects(own_brokers.prefix), storage="memory")
        await book.start()
        await book.put(_member("a", 1))
        await book.follow()
        await book.stop_following()
        book._known = _Mirror()  # as if following, with nothing delivered yet
        await book.put(_member("a", 2))
        assert await book.known("a", "m002") == _member("a", 2)
        assert await book.remove("a", "m002")
        held = await book.known("a", "m002")
        assert held is not None and held.removed
        await book.forget_colony("a")
        assert await book.known("a", "m002") is None
    finally:
        await nc.close()
