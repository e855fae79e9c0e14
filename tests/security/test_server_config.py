"""A secure installation on a nats-server started by hand: `colonies server config` writes
the keys and the config, `colonies broker start --owner` enrols the first server owner."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from typer.testing import CliRunner

from colonyos.broker import Broker
from colonyos.cli.main import app
from colonyos.cli.server import _enrol
from colonyos.client import Client
from colonyos.config import Settings
from colonyos.errors import BrokerUnavailableError, NotAuthorizedError
from colonyos.natsserver import NatsServer
from colonyos.security.keys import generate, write_seed
from colonyos.security.members import MemberBook
from colonyos.subjects import SERVER_SCOPE
from tests.procs import Child

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]


async def _connected(settings: Settings, caller: str) -> Client:
    async with asyncio.timeout(30):
        while True:
            try:
                return await Client.connect(settings, caller=caller)
            except (NotAuthorizedError, BrokerUnavailableError):
                await asyncio.sleep(0.1)  # sleep-ok: until the broker answers the callout


async def test_server_config_then_a_broker_with_an_owner(tmp_path: Path) -> None:
    data = tmp_path / "colonies"
    made = CliRunner().invoke(app, ["server", "config", "--data-dir", str(data)])
    assert made.exit_code == 0, made.output
    config = data / "nats-secure.conf"
    assert "auth_callout" in config.read_text() and (data / "keys" / "issuer.nk").exists()
    root = generate()
    write_seed(tmp_path / "root.nk", root)
    with NatsServer(data / "jetstream", port=0, config=config) as server:
        broker = Child(
            ["broker", "start", "--data-dir", str(data), "--owner", f"root={root.public_key}"],
            tmp_path / "broker.log",
            {"COLONIES_NATS_URL": server.url, "XDG_CONFIG_HOME": str(tmp_path / "config")},
        ).start()
        try:
            settings = Settings(nats_url=server.url, identity=tmp_path / "root.nk")
            async with await _connected(settings, "root") as first:
                await first.colony_add("dev")
            async with await Client.connect(settings, caller="root") as owner:
                assert [m.name for m in await owner.member_list()] == ["root"]
            stranger = generate()
            write_seed(tmp_path / "stranger.nk", stranger)
            with pytest.raises(NotAuthorizedError):
                await Client.connect(
                    Settings(nats_url=server.url, identity=tmp_path / "stranger.nk"), caller="root"
                )
        finally:
            broker.stop()
    assert "server owner root" in (tmp_path / "broker.log").read_text()


def test_broker_owner_must_be_a_name_and_a_users_key() -> None:
    result = CliRunner().invoke(app, ["broker", "start", "--owner", "root"])
    assert result.exit_code == 2 and "NAME=PUBLIC_KEY" in result.output


async def test_an_owner_given_at_every_start_undoes_no_removal_and_takes_no_name(
    secure_broker: Broker, book: MemberBook
) -> None:
    """A compose file gives the same --owner to every start: a start enrols it once, and
    neither brings a removed owner back nor hands the name to another key."""
    first, other = generate(), generate()
    assert await _enrol(secure_broker, "root", first.public_key) is None
    assert await _enrol(secure_broker, "root", first.public_key) is None  # the next start
    refused = await _enrol(secure_broker, "root", other.public_key)
    assert refused is not None and "another key" in refused
    held = await book.get(SERVER_SCOPE, "root")
    assert held is not None and held.public_key == first.public_key
    assert await book.remove(SERVER_SCOPE, "root")
    refused = await _enrol(secure_broker, "root", first.public_key)
    assert refused is not None and "was removed" in refused
    held = await book.get(SERVER_SCOPE, "root")
    assert held is not None and held.removed
