"""A secure installation: one nats-server per session with the auth callout, the installation's
keys, a broker per test (its own prefix) that answers the callout, and members made here."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest

from colonyos.broker import Broker
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.natsserver import NatsServer, packaged_config
from colonyos.security.keys import Identity, generate, write_seed
from colonyos.security.members import Member, MemberBook
from colonyos.security.permissions import Role
from colonyos.security.serverconf import ServerKeys, secure_config
from colonyos.subjects import SERVER_SCOPE
from tests.conftest import running_broker

COLONY = "dev"


@dataclass(frozen=True)
class SecureServer:
    url: str
    keys_dir: Path
    keys: ServerKeys


def roomy_config() -> str:
    """The packaged server config with room for many tests' memory streams: each reserves its
    limits (the logs stream 1 GiB) until it drops them."""
    with packaged_config() as base:
        return re.sub(r"max_memory_store: \S+", "max_memory_store: 64GB", base.read_text())


@pytest.fixture(scope="session")
def secure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureServer]:
    home = tmp_path_factory.mktemp("secure")
    keys = ServerKeys.load_or_create(home / "keys")
    config = home / "nats.conf"
    config.write_text(secure_config(roomy_config(), keys))
    server = NatsServer(home / "jetstream", port=0, config=config).start()
    yield SecureServer(server.url, home / "keys", keys)
    server.stop()


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
    nc = await nats.connect(server.url, nkeys_seed_str=server.keys.broker.seed.decode())
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            name = info.config.name
            if name.startswith(prefix.upper() + "_") or name.startswith(f"KV_{prefix}-"):
                await js.delete_stream(name)
    finally:
        await nc.close()


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
    await book.put(
        Member(colony_name=colony, name=party.name, public_key=party.identity.public_key, role=role)
    )


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
