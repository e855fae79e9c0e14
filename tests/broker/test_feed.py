"""Reading the specs consumer in chunks: nothing lost, nothing doubled, order kept."""

from __future__ import annotations

import asyncio

from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from colonyos.broker.feed import PullFeed

from ..helpers import raw_nats


async def test_feed_hands_over_every_message_once_in_order(nats_url: str, prefix: str) -> None:
    nc = await raw_nats(nats_url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=prefix, subjects=[f"{prefix}.>"]))
    await js.add_consumer(prefix, ConsumerConfig(durable_name="d", ack_policy=AckPolicy.EXPLICIT))
    feed = PullFeed(nc, prefix, "d", batch=64, expires_s=0.2)
    async with feed:
        assert await feed.next_batch() == []  # nothing yet: an expired pull, no error
        for i in range(500):
            await js.publish(f"{prefix}.s", str(i).encode())
        seen: list[int] = []
        chunks = 0
        async with asyncio.timeout(10):
            while len(seen) < 500:
                msgs = await feed.next_batch()
                chunks += bool(msgs)
                for msg in msgs:
                    seen.append(int(msg.data))
                    await msg.ack()
        assert seen == list(range(500))
        assert chunks < 500  # taken in chunks, not one by one
        # Acknowledged means gone for good: a later pull brings nothing more.
        assert await feed.next_batch() == []
        await js.publish(f"{prefix}.s", b"late")
        async with asyncio.timeout(5):
            while not (msgs := await feed.next_batch()):
                pass
        assert [m.data for m in msgs] == [b"late"]
    await js.delete_stream(prefix)
    await nc.close()
