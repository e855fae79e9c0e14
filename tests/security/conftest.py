"""What the security tests add to the secure installation of tests/conftest.py (the session's
``secure_server``): a broker per test in its own prefix that enrols no one, and parties (members
or would-be members) each with its own key, enrolled here."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest

from colonyos import connection
from colonyos.broker import Broker
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.security.keys import Identity, generate, write_seed
from colonyos.security.members import MemberBook
from colonyos.security.permissions import Role
from colonyos.security.serverconf import ServerKeys
from colonyos.subjects import SERVER_SCOPE
from tests import helpers
from tests.conftest import COLONY, SecureServer, roomy_config, running_broker, secure_nats
from tests.procs import free_port

__all__ = ["SecureServer", "roomy_config"]  # imported from here by the security tests


@pytest.fixture
def secure_prefix() -> str:
    return f"s{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def secure_broker(secure_server: SecureServer, secure_prefix: str) -> AsyncIterator[Broker]:
    settings = BrokerSettings(
        nats_url=secure_server.url,
        prefix=secure_prefix,
        storage="memory",
        keys_dir=secure_server.keys_dir,
    )
    async with running_broker(settings) as broker:
        yield broker
    await drop_streams(secure_server, secure_prefix)


async def drop_streams(server: SecureServer, prefix: str) -> None:
    nc = await helpers.raw_nats(server.url)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            name = info.config.name
            if name.startswith(prefix.upper() + "_") or name.startswith(f"KV_{prefix}-"):
                await js.delete_stream(name)
    finally:
        await nc.close()


@pytest.fixture
def one_connect_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client's first connect tries once more when refused, not three times more (its
    retries are for a server that has just started): a test of a refusal hears it sooner."""
    monkeypatch.setattr(connection, "_INITIAL_CONNECT_ATTEMPTS", 1)


@pytest.fixture
def impatient_server(tmp_path: Path) -> Iterator[SecureServer]:
    """A secure nats-server of the test's own whose auth callout has half a second to answer
    (2 s by default): a connection nothing lets in is refused as it would be, sooner. No
    broker runs for it."""
    home = tmp_path / "impatient"
    server = secure_nats(home, port=free_port())
    config = home / "nats.conf"
    text = config.read_text().replace("auth_callout {", "timeout: 0.5\n  auth_callout {", 1)
    config.write_text(text)
    server.start()
    yield SecureServer(server.url, home / "keys", ServerKeys.load(home / "keys"))
    helpers.server_seeds.pop(server.url, None)
    server.stop()


@dataclass
class Party:
    """A member (or a would-be member) with its own seed file."""

    name: str
    identity: Identity
    settings: Settings

    async def client(self, colony: str | None = None) -> Client:
        settings = self.settings if colony is None else _with_colony(self.settings, colony)
        return await Client.connect(settings, caller=self.name)


def _with_colony(settings: Settings, colony: str) -> Settings:
    import msgspec

    return msgspec.structs.replace(settings, colony=colony)


@pytest.fixture
def make_party(secure_server: SecureServer, secure_prefix: str, tmp_path: Path) -> Iterator[object]:
    def make(name: str, colony: str = COLONY) -> Party:
        identity = generate()
        path = tmp_path / f"{name}-{uuid.uuid4().hex[:6]}.nk"
        write_seed(path, identity)
        settings = Settings(
            nats_url=secure_server.url,
            colony=colony,
            prefix=secure_prefix,
            identity=path,
            request_timeout_s=5.0,
        )
        return Party(name, identity, settings)

    yield make


@pytest.fixture
async def book(secure_broker: Broker) -> MemberBook:
    assert secure_broker.members is not None
    return secure_broker.members


async def enroll(book: MemberBook, party: Party, colony: str, role: Role) -> None:
    await helpers.enroll(book, party.name, party.identity.public_key, colony, role)


@pytest.fixture
async def bob(make_party: object, owner: Client) -> Party:
    """A user the colony owner added through the broker."""
    party: Party = make_party("bob")  # type: ignore[operator]
    await owner.member_add("bob", party.identity.public_key)
    return party


@pytest.fixture
async def root(make_party: object, book: MemberBook) -> Party:
    """The server owner ``root``."""
    party: Party = make_party("root")  # type: ignore[operator]
    await enroll(book, party, SERVER_SCOPE, Role.SERVER_OWNER)
    return party


@pytest.fixture
async def owner(root: Party) -> AsyncIterator[Client]:
    """``root``'s client in colony ``dev``, which it made (auto-approve) and so owns. A
    connection's rights are decided when it connects: the owner of the new colony connects
    again."""
    async with await root.client() as first:
        await first.colony_add(COLONY, auto_approve=True)
    client = await root.client()
    yield client
    await client.aclose()


async def raw_connect(url: str, **options: object) -> nats.NATS:
    return await nats.connect(url, allow_reconnect=False, connect_timeout=2, **options)
