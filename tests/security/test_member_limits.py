"""Bounds on a member's connection, enforced by nats-server itself."""

from __future__ import annotations

from collections.abc import Callable

import nats
import pytest

from colonyos.client import Client
from colonyos.security.claim import ConnectClaim
from colonyos.security.members import MemberBook
from colonyos.security.permissions import MAX_SUBSCRIPTIONS, Role, inbox_prefix
from colonyos.security.serverconf import ACCOUNT_MAX_SUBSCRIPTIONS
from tests.helpers import until
from tests.security.conftest import COLONY, Party, enroll

pytestmark = pytest.mark.timeout(60)

MakeParty = Callable[..., Party]


async def test_one_subscription_more_than_the_cap_is_refused(
    make_party: MakeParty, book: MemberBook, owner: Client
) -> None:
    party = make_party("carol")
    await enroll(book, party, COLONY, Role.USER)
    p = party.settings.prefix
    nc = await nats.connect(
        party.settings.nats_url,
        nkeys_seed_str=party.identity.seed.decode(),
        token=ConnectClaim(prefix=p, colony=COLONY, name="carol").token(),
        inbox_prefix=inbox_prefix(p, COLONY, "carol"),
        allow_reconnect=False,
    )
    try:
        assert MAX_SUBSCRIPTIONS[Role.USER] == ACCOUNT_MAX_SUBSCRIPTIONS
        for _ in range(ACCOUNT_MAX_SUBSCRIPTIONS):
            await nc.subscribe(f"{p}.{COLONY}.events.*.*.*")
        await nc.flush()
        assert nc.is_connected
        await nc.subscribe(f"{p}.{COLONY}.events.*.*.*")
        # nats-py closes the connection on this error (its error callback is not told).
        await until(lambda: nc.is_closed, timeout=5)
        assert "maximum subscriptions exceeded" in str(nc.last_error)
    finally:
        await nc.close()
