"""A member reading a stream slowly: paused for longer than its JWT lets it answer a message
(the response permission's time), it still receives everything. JetStream's flow control asks
the reader for a reply; a reply past that time is refused by the server, and the consumer would
wait for it for ever."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import nats
import pytest

from colonyos.client import Client
from colonyos.ordered import OrderedReader
from colonyos.security import jwt, permissions
from colonyos.security.keys import generate
from tests.security.conftest import COLONY, Party, SecureServer

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

MakeParty = Callable[..., Party]
_MESSAGES = 200
_SIZE = 64 * 1024  # enough bytes for the server to ask for flow control several times
_TTL_S = 1.0


async def test_a_reader_paused_past_the_response_time_still_receives_everything(
    make_party: MakeParty,
    owner: Client,
    secure_server: SecureServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(permissions, "RESPONSE_TTL_S", _TTL_S)
    party = make_party("bob")
    await owner.member_add("bob", party.identity.public_key)
    subjects = owner.subjects
    broker = await nats.connect(
        secure_server.url, nkeys_seed_str=secure_server.keys.broker.seed.decode()
    )
    try:
        js = broker.jetstream()
        for i in range(_MESSAGES):
            await js.publish(subjects.logs(COLONY, "p1"), i.to_bytes(4, "big") * (_SIZE // 4))
    finally:
        await broker.close()
    async with await party.client() as bob:  # its JWT answers within _TTL_S
        reader = OrderedReader(
            bob.nc, "logs", subjects.logs(COLONY, "p1"), bob.open_reader, heartbeat_s=0.5
        )
        async with reader:
            first = await reader.next(timeout=10)
            assert first.data[:4] == (0).to_bytes(4, "big")
            # The caller stops reading for longer than a reply to flow control may wait (the
            # pause is what is tested: the server refuses a late reply, whatever the clock).
            await asyncio.sleep(_TTL_S * 2)  # sleep-ok: the pause itself is what is tested
            seen = [first.data[:4]]
            async with asyncio.timeout(30):
                while len(seen) < _MESSAGES:
                    seen.append((await reader.next()).data[:4])
    assert seen == [i.to_bytes(4, "big") for i in range(_MESSAGES)]


def test_the_user_jwt_names_the_response_time_the_reader_counts_on() -> None:
    token = jwt.user_jwt(
        user_nkey=generate().public_key,
        name="p/dev/bob",
        account="COLONIES",
        issuer=generate("account"),
        publish=["a"],
        subscribe=["b"],
        subscriptions=8,
        expires_s=60,
    )
    resp = jwt.decode(token)["nats"]["resp"]
    assert resp == {"max": 1, "ttl": int(permissions.RESPONSE_TTL_S * 1e9)}
