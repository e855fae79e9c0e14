"""Readers (broker-made consumers) are bounded per member and in all, and opens throttled; a
reader whose consumer the server removed no longer holds a place."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from colonyos.broker import Broker
from colonyos.broker import readers as readers_module
from colonyos.client import Client
from colonyos.errors import BrokerUnavailableError, NotAuthorizedError
from colonyos.messages import ReaderOpen
from colonyos.security.permissions import inbox_prefix
from colonyos.security.throttle import Throttle
from tests.security.conftest import COLONY, Party

pytestmark = pytest.mark.timeout(60)

MakeParty = Callable[..., Party]


@pytest.fixture
async def bob(make_party: MakeParty, owner: Client) -> AsyncIterator[Client]:
    party = make_party("bob")
    await owner.member_add("bob", party.identity.public_key)
    async with await party.client() as client:
        yield client


def _open(client: Client, n: int) -> ReaderOpen:
    inbox = inbox_prefix(client.subjects.prefix, COLONY, client.caller)
    return ReaderOpen(
        stream="events",
        filter_subject=client.subjects.events_filter(colony=COLONY),
        deliver_subject=f"{inbox}.reader{n}",
    )


async def test_one_reader_more_than_a_member_may_hold_is_refused_until_one_goes(
    bob: Client, secure_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readers_module, "MAX_READERS_PER_CALLER", 2)
    first = await bob.open_reader(_open(bob, 1))
    await bob.open_reader(_open(bob, 2))
    with pytest.raises(NotAuthorizedError, match="'bob' in colony 'dev' has 2 readers open"):
        await bob.open_reader(_open(bob, 3))
    # The server removes a consumer nobody listens to (here at once): its place is free.
    assert secure_broker.service_of(COLONY) is not None
    await secure_broker.service_of(COLONY).store.js.delete_consumer(
        bob.subjects.stream_events, first
    )
    await bob.open_reader(_open(bob, 3))


async def test_one_reader_more_than_the_broker_keeps_is_refused(
    bob: Client, owner: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readers_module, "MAX_READERS", 2)
    await bob.open_reader(_open(bob, 1))
    await owner.open_reader(_open(owner, 1))
    with pytest.raises(BrokerUnavailableError, match="2 readers open, the most it keeps"):
        await bob.open_reader(_open(bob, 2))


async def test_opening_readers_too_often_is_refused(bob: Client, secure_broker: Broker) -> None:
    led = secure_broker.leadership(COLONY)
    assert led is not None and led.readers is not None
    led.readers.opens = Throttle(burst=2, per_s=1.0, clock=lambda: 0.0)
    await bob.open_reader(_open(bob, 1))
    await bob.open_reader(_open(bob, 2))
    with pytest.raises(NotAuthorizedError, match="'bob' in colony 'dev' opens readers too often"):
        await bob.open_reader(_open(bob, 3))
