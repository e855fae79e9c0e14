"""The member book reads a colony's members whole, every time: the callout counts a colony's
waiting claims from that read, and a member missing from it is a claim not counted.

nats-py's ``KeyValue.keys()`` may report an empty bucket when its values still wait in the
client's buffer (colonyos/buckets.py); with a hundred reads at once, a book listing members
through it missed them all in about one run of four.
"""

from __future__ import annotations

import asyncio

from colonyos.config import BrokerSettings
from colonyos.security.members import Member, MemberBook
from colonyos.security.permissions import Role
from colonyos.subjects import Subjects

from ..helpers import raw_nats


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
