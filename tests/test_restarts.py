"""Restarts lose nothing: a broker killed with SIGKILL, and the NATS server itself. Each test
runs its own secure nats-server (the installation's keys, the auth callout), as a user's would
be: members let in again after a restart are let in by a broker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.executors import echo
from colonyos.models import Process, ProcessState
from colonyos.natsserver import NatsServer

from .conftest import COLONY, open_colony, running_broker, secure_nats
from .helpers import OWNER, server_seeds, spec, wait_created
from .procs import Child, free_port, until_served

pytestmark = pytest.mark.slow


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A secure nats-server of this test's own (file storage), that the test may stop and
    restart; its keys under ``tmp_path/nats/keys``."""
    server = secure_nats(tmp_path / "nats", port=free_port()).start()
    yield server
    server_seeds.pop(server.url, None)
    server.stop()


@pytest.fixture
def keys_dir(own_nats: NatsServer, tmp_path: Path) -> Path:
    return tmp_path / "nats" / "keys"


@pytest.fixture
def cli_env(own_nats: NatsServer, keys_dir: Path) -> dict[str, str]:
    """The environment of a `colonies broker start` of this server: its keys, and the
    session's identity (the one of ``settings``) enrolled as server owner ``tester``."""
    return {
        "COLONIES_LEASE_TTL": "1",
        "COLONIES_NATS_URL": own_nats.url,
        "COLONIES_KEYS_DIR": str(keys_dir),
        "COLONIES_SERVER_OWNER": f"tester={OWNER.public_key}",
    }


def own_settings(own_nats: NatsServer, prefix: str, identity: Path) -> Settings:
    return Settings(nats_url=own_nats.url, colony=COLONY, prefix=prefix, identity=identity)


async def run_echo_until_done(settings: Settings, pids: list[str], client: Client) -> list[Process]:
    app = echo.build(settings, "echo", "echo-restart")
    runner = asyncio.create_task(app.run())
    try:
        for pid in pids:
            await wait_created(client, pid)
        return [await client.wait(pid, timeout=30) for pid in pids]
    finally:
        app.stop()
        await runner


async def test_nats_restart_loses_no_accepted_process(
    own_nats: NatsServer, keys_dir: Path, identity_file: Path, tmp_path: Path
) -> None:
    prefix = "restart"
    broker_settings = BrokerSettings(
        nats_url=own_nats.url,
        prefix=prefix,
        data_dir=tmp_path / "data",
        lease_ttl_s=1.0,
        keys_dir=keys_dir,
    )
    settings = own_settings(own_nats, prefix, identity_file)
    async with running_broker(broker_settings, owners=True) as broker:
        await open_colony(settings)
        client = await Client.connect(settings)
        before = await client.submit(spec())
        assert isinstance(before, Process)

        own_nats.stop()
        own_nats.start()  # same port, same store directory

        # Everyone reconnects by themselves: the broker leads again and serves.
        # Reconnecting: any error means "not yet".
        after = await until_served(lambda: client.submit(spec()), errors=(Exception,), every=0.2)
        assert isinstance(after, Process)
        assert broker.leading.is_set()
        done = await run_echo_until_done(settings, [before.process_id, after.process_id], client)
        assert [p.state for p in done] == [ProcessState.SUCCESS, ProcessState.SUCCESS]
        await client.aclose()


async def test_broker_killed_with_sigkill_loses_nothing(
    own_nats: NatsServer, cli_env: dict[str, str], identity_file: Path, tmp_path: Path
) -> None:
    prefix = "sigkill"
    env = {**cli_env, "COLONIES_PREFIX": prefix}
    first = Child(["broker", "start", "--data-dir", str(tmp_path / "b1")], tmp_path / "b1.log", env)
    first.start()
    settings = own_settings(own_nats, prefix, identity_file)
    # Not let in (or not served) until the broker runs and has enrolled its owner.
    await until_served(lambda: open_colony(settings), errors=(Exception,))
    client = await Client.connect(settings)
    submitted = [await client.submit(spec(args=[i])) for i in range(20)]
    more = [await client.submit(spec(args=[i]), confirm=False) for i in range(20, 60)]
    first.kill()  # in the middle of accepting the second batch, most likely
    second = Child(
        ["broker", "start", "--data-dir", str(tmp_path / "b2")], tmp_path / "b2.log", env
    )
    second.start()
    try:
        pids = [p.process_id for p in submitted if isinstance(p, Process)] + [
            p for p in more if isinstance(p, str)
        ]
        done = await run_echo_until_done(settings, pids, client)
        assert all(p.state is ProcessState.SUCCESS for p in done)
        assert len({p.process_id for p in done}) == 60
    finally:
        second.stop()
        await client.aclose()


@pytest.mark.timeout(90)
async def test_parked_executors_move_to_a_new_leader_at_once(
    own_nats: NatsServer, cli_env: dict[str, str], identity_file: Path, tmp_path: Path
) -> None:
    """An executor parked in a long poll at a leader that is SIGKILLed does not wait out its
    poll: the new leader announces itself and the executor asks it."""
    prefix = "failover"
    env = {**cli_env, "COLONIES_PREFIX": prefix}
    log = tmp_path / "b1.log"
    first = Child(["-v", "broker", "start", "--data-dir", str(tmp_path / "b1")], log, env)
    first.start()
    settings = own_settings(own_nats, prefix, identity_file)
    await until_served(lambda: open_colony(settings), errors=(Exception,))
    client = await Client.connect(settings)
    app = echo.build(settings, "echo", "echo-parked")
    app.assign_timeout_s = 60.0  # a long poll that outlives the whole test
    runner = asyncio.create_task(app.run())
    async with asyncio.timeout(20):  # until the executor waits in the first broker's long poll
        while "echo-parked in dev parked" not in log.read_text():
            await asyncio.sleep(0.05)  # sleep-ok: polling the broker's log under a deadline
    first.kill()
    second = Child(
        ["broker", "start", "--data-dir", str(tmp_path / "b2")], tmp_path / "b2.log", env
    )
    second.start()
    try:
        pid = await until_served(lambda: client.submit(spec(args=["moved"]), confirm=False))
        await wait_created(client, str(pid))
        done = await client.wait(str(pid), timeout=20)  # far less than the 60 s long poll
        assert done.state is ProcessState.SUCCESS and done.output == ["moved"]
    finally:
        app.stop()
        await runner
        second.stop()
        await client.aclose()
