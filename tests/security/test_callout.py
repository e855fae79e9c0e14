"""The auth callout against a real nats-server: who gets in, as whom, and what the server
itself refuses them."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import pytest

from colonyos.client import Client
from colonyos.errors import NotAuthorizedError
from colonyos.models import Conditions, FunctionSpec, ProcessState
from colonyos.security.claim import ConnectClaim
from colonyos.security.keys import Identity, generate
from colonyos.security.members import MemberBook
from colonyos.security.permissions import Role, inbox_prefix
from tests.helpers import until
from tests.security.conftest import COLONY, Party, SecureServer, enroll

pytestmark = pytest.mark.timeout(60)

MakeParty = Callable[..., Party]


class Watched:
    """A member's raw connection that records what the server refuses it."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: nats.NATS | None = None

    async def error_cb(self, err: Exception) -> None:
        self.errors.append(str(err).lower())

    async def refused(self, needle: str) -> bool:
        """Whether the server says it refused ``needle`` (within a few seconds)."""
        assert self.nc is not None
        await self.nc.flush()
        await until(lambda: any(needle.lower() in e for e in self.errors), timeout=5)
        return True

    async def allowed(self, needle: str) -> bool:
        """Nothing refused about ``needle`` after a round trip to the server."""
        assert self.nc is not None
        await self.nc.flush()
        await self.nc.flush()
        return not any(needle.lower() in e for e in self.errors)


async def _watched(party: Party, colony: str = COLONY) -> Watched:
    w = Watched()
    claim = ConnectClaim(prefix=party.settings.prefix, colony=colony, name=party.name)
    w.nc = await nats.connect(
        party.settings.nats_url,
        nkeys_seed_str=party.identity.seed.decode(),
        token=claim.token(),
        inbox_prefix=inbox_prefix(party.settings.prefix, colony, party.name),
        error_cb=w.error_cb,
        allow_reconnect=False,
    )
    return w


@pytest.fixture
async def alice(make_party: MakeParty, book: MemberBook, owner: Client) -> Party:
    party = make_party("alice")
    await enroll(book, party, COLONY, Role.USER)
    return party


@pytest.fixture
async def watched_alice(alice: Party) -> AsyncIterator[Watched]:
    w = await _watched(alice)
    yield w
    assert w.nc is not None
    await w.nc.close()


async def test_a_member_connects_and_submits(alice: Party) -> None:
    async with await alice.client() as client:
        spec = FunctionSpec(func_name="f", conditions=Conditions(executor_type="echo"))
        process = await client.submit(spec)
        assert (await client.get(process.process_id)).initiator_name == "alice"


@pytest.mark.usefixtures("one_connect_retry")
async def test_a_members_name_with_another_key_is_refused(
    alice: Party, make_party: MakeParty
) -> None:
    mallory = make_party("alice")  # the same name, her own key
    with pytest.raises(NotAuthorizedError, match="not allowed"):
        await mallory.client()


@pytest.mark.usefixtures("one_connect_retry")
async def test_a_refusal_while_no_broker_answers_says_that_may_be_why(
    make_party: MakeParty, impatient_server: SecureServer
) -> None:
    """Nothing answers the callout for a prefix no broker serves: the server refuses the
    connection once its callout times out, and the client names that among the reasons."""
    import msgspec

    party = make_party("alice")
    settings = msgspec.structs.replace(
        party.settings, nats_url=impatient_server.url, prefix="nobrokerhere"
    )
    with pytest.raises(NotAuthorizedError, match="no broker is running to let it in"):
        await Client.connect(settings, caller="alice")


@pytest.mark.usefixtures("one_connect_retry")
async def test_a_connection_without_identity_is_refused(
    secure_server: SecureServer, alice: Party, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.delenv("COLONIES_IDENTITY", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "nothing"))
    import msgspec

    settings = msgspec.structs.replace(alice.settings, identity=None)
    with pytest.raises(NotAuthorizedError, match="no identity"):
        await Client.connect(settings, caller="alice")


async def _raw_connect(server: SecureServer, party: Party, signer: Identity) -> bytes:
    """A CONNECT by hand claiming ``party``'s key and name, the nonce signed by ``signer``;
    the server's first answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(server.url))
    try:
        info = json.loads((await reader.readline()).split(b" ", 1)[1])
        sig = base64.b64encode(signer.sign(info["nonce"].encode())).decode()
        claim = ConnectClaim(prefix=party.settings.prefix, colony=COLONY, name=party.name)
        connect = {
            "verbose": False,
            "pedantic": False,
            "protocol": 1,
            "headers": True,
            "nkey": party.identity.public_key,
            "sig": sig,
            "auth_token": claim.token(),
        }
        writer.write(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.readline()
    finally:
        writer.close()


async def test_a_known_key_with_another_keys_signature_is_refused(
    secure_server: SecureServer, alice: Party
) -> None:
    """The server does not check the nkey's signature in callout mode: the callout must."""
    answer = await _raw_connect(secure_server, alice, generate())
    assert answer.startswith(b"-ERR") and b"authorization violation" in answer.lower()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def test_the_same_connection_with_the_right_signature_gets_in(
    secure_server: SecureServer, alice: Party
) -> None:
    """The forgery test's raw CONNECT, signed by the right key: only the signature differs."""
    assert await _raw_connect(secure_server, alice, alice.identity) == b"PONG\r\n"


async def test_a_member_cannot_reach_another_colony_or_name(
    watched_alice: Watched, alice: Party
) -> None:
    p = alice.settings.prefix
    nc = watched_alice.nc
    assert nc is not None
    # Its own colony: allowed.
    await nc.publish(f"{p}.{COLONY}.specs.echo", b"{}")
    await nc.subscribe(f"{p}.{COLONY}.events.*.*.*")
    assert await watched_alice.allowed(f"{p}.{COLONY}")
    # Another colony, another name, the buckets and the stream API: refused by the server.
    for subject in (
        f"{p}.other.specs.echo",
        f"{p}.other.workflows",
        f"{p}.{COLONY}.rpc.root.executor_approve",
        f"{p}.other.rpc.alice.get",
        f"$KV.{p}-processes.{COLONY}.x",
        f"$JS.API.STREAM.INFO.{p.upper()}_EVENTS",
        f"$JS.API.CONSUMER.CREATE.{p.upper()}_EVENTS.x.{p}.other.events.>",
        f"{p}.{COLONY}.heartbeats.alice",
    ):
        await nc.publish(subject, b"{}")
        assert await watched_alice.refused(f'publish to "{subject}"'), subject
    for subject in (f"{p}.other.events.>", f"{p}.{COLONY}.control.alice", f"_INBOX.{p}.dev.root.>"):
        await nc.subscribe(subject)
        assert await watched_alice.refused(f'subscription to "{subject}"'), subject


async def test_the_raw_nats_example_submits_to_a_secure_colony(
    alice: Party, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/examples/raw_publish.py, as printed, against this installation."""
    path = Path(__file__).parents[2] / "docs" / "examples" / "raw_publish.py"
    spec = importlib.util.spec_from_file_location("raw_publish", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.setattr(example, "PREFIX", alice.settings.prefix)
    assert alice.settings.identity is not None
    process_id = await example.submit(
        str(alice.settings.identity), "alice", alice.settings.nats_url
    )
    async with await alice.client() as client:
        process = await client.wait_for_state(process_id, ProcessState.WAITING, timeout=10)
        assert process.process_id == process_id and process.state is ProcessState.WAITING
