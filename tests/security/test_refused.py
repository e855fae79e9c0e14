"""A connection the server cuts and then refuses (its member removed): a client stops with the
reason, an executor's connection keeps trying, slower and slower, and gets back in once let in
again (a broker fail-over also refuses for a moment)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from colonyos.client import Client
from colonyos.connection import refusal
from colonyos.errors import NotAuthorizedError
from tests.helpers import until
from tests.security.conftest import Party

pytestmark = [
    pytest.mark.timeout(60),
    # nats-py leaves the socket of a refused reconnect open: its warning is not this test's.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

MakeParty = Callable[..., Party]


@pytest.fixture
async def bob(make_party: MakeParty, owner: Client) -> Party:
    party = make_party("bob")
    await owner.member_add("bob", party.identity.public_key)
    return party


async def test_a_removed_members_client_stops_with_the_reason(bob: Party, owner: Client) -> None:
    async with await bob.client() as client:
        await client.list_processes()
        await owner.member_remove("bob")
        # Refused once, it stops: no reconnecting twice a second for ever.
        await until(lambda: client.nc.is_closed, timeout=15)
        with pytest.raises(NotAuthorizedError, match=r"not allowed: .* refused 'bob'"):
            await client.list_processes()


async def test_a_connection_that_keeps_trying_backs_off_and_gets_back_in(
    bob: Party, owner: Client
) -> None:
    client = await Client.connect(bob.settings, caller="bob", keep_trying=True)
    try:
        await client.list_processes()
        await owner.member_remove("bob")
        # Each refusal doubles the wait before the next attempt (up to a minute).
        await until(lambda: client.nc.options["reconnect_time_wait"] >= 2, timeout=15)
        assert not client.nc.is_closed
        assert "not allowed" in (refusal(client.nc) or "")
        await owner.member_add("bob", bob.identity.public_key)
        await until(lambda: client.nc.is_connected, timeout=20)
        assert refusal(client.nc) is None
        assert client.nc.options["reconnect_time_wait"] == 0.5
        await client.list_processes()
    finally:
        await client.aclose()


@pytest.mark.parametrize("since", [None, datetime(2000, 1, 1, tzinfo=UTC)])
async def test_a_removed_members_event_stream_ends_with_the_reason(
    bob: Party, owner: Client, since: datetime | None
) -> None:
    """``colonies events`` (live, or replayed through a reader) stops, not waits for ever."""
    async with await bob.client() as client, client.subscribe(since=since) as events:
        await owner.member_remove("bob")
        with pytest.raises(NotAuthorizedError, match="not allowed"):
            async with asyncio.timeout(20):
                await events.next(None)
