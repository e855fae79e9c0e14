"""The broker's JetStream write path: sequences, compare-and-set, and every way a write fails."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import StreamConfig

from colonyos.broker.publisher import JetStreamPublisher

from ..helpers import raw_nats

_CAS = "Nats-Expected-Last-Subject-Sequence"


@pytest.fixture
async def nc(nats_url: str, prefix: str) -> AsyncIterator[NATS]:
    conn = await raw_nats(nats_url)
    await conn.jetstream().add_stream(StreamConfig(name=prefix, subjects=[f"{prefix}.>"]))
    yield conn
    await conn.jetstream().delete_stream(prefix)
    await conn.close()


async def test_writes_return_their_stream_sequences_in_order(nc: NATS, prefix: str) -> None:
    publisher = JetStreamPublisher(nc)
    await publisher.start()
    futures = [await publisher.publish(f"{prefix}.k{i}", b"x") for i in range(200)]
    assert await asyncio.gather(*futures) == list(range(1, 201))
    assert await publisher.write(f"{prefix}.k0", b"y", {_CAS: "1"}) == 201
    await publisher.stop()


async def test_lost_compare_and_set_raises_nats_py_s_error(nc: NATS, prefix: str) -> None:
    publisher = JetStreamPublisher(nc)
    await publisher.start()
    await publisher.write(f"{prefix}.key", b"1", {_CAS: "0"})
    with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
        await publisher.write(f"{prefix}.key", b"2", {_CAS: "0"})
    other = await publisher.publish(f"{prefix}.key", b"3", {"Nats-Expected-Stream": "nope"})
    with pytest.raises(nats.js.errors.BadRequestError):
        await other
    await publisher.stop()


async def test_a_replicated_stream_s_lost_compare_and_set_is_one_too(nc: NATS, prefix: str) -> None:
    """A replicated stream answers a loser whose rival is still being replicated with err_code
    10164 (no sequence named): a lost race like 10071, not a failure to report. The answer is
    given by a subscriber standing in for such a stream (a race one cannot time here)."""

    async def replicated_stream(msg: Msg) -> None:
        await msg.respond(
            b'{"error":{"code":400,"err_code":10164,"description":"wrong last sequence"}}'
        )

    await nc.subscribe(f"{prefix}-replicated.key", cb=replicated_stream)
    publisher = JetStreamPublisher(nc)
    await publisher.start()
    with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
        await publisher.write(f"{prefix}-replicated.key", b"2", {_CAS: "1"})
    await publisher.stop()


async def test_a_subject_no_stream_takes_has_no_responders(nc: NATS, prefix: str) -> None:
    publisher = JetStreamPublisher(nc)
    await publisher.start()
    with pytest.raises(nats.errors.NoRespondersError):
        await publisher.write(f"{prefix}-nowhere.x", b"x")
    await publisher.stop()


async def test_an_unanswered_write_times_out_and_stop_fails_the_rest(nc: NATS, prefix: str) -> None:
    # A core subscriber that never answers stands in for a server that does not acknowledge.
    async def ignore(msg: object) -> None:
        pass

    await nc.subscribe(f"{prefix}-silent.>", cb=ignore)
    publisher = JetStreamPublisher(nc, timeout_s=0.3)
    await publisher.start()
    with pytest.raises(nats.errors.TimeoutError):
        async with asyncio.timeout(5):
            await publisher.write(f"{prefix}-silent.a", b"x")
    publisher.timeout_s = 60
    pending = await publisher.publish(f"{prefix}-silent.b", b"x")
    await publisher.stop()
    with pytest.raises(nats.errors.ConnectionClosedError):
        await pending
