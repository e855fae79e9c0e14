"""Fixtures: one real nats-server per session, secure (the auth callout, the installation's
keys), an isolated prefix per test, a live broker that answers the callout, and the session's
identity, enrolled as owner of the server and of colony ``dev`` in every prefix.

The suite runs secure by default; ``insecure_nats_url`` is the plain server for the tests of
``--insecure`` (tests/test_insecure.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from colonyos.broker import Broker
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings, default_caller
from colonyos.natsserver import NatsServer, packaged_config
from colonyos.security.keys import write_seed
from colonyos.security.permissions import Role
from colonyos.security.serverconf import ServerKeys, secure_config
from colonyos.subjects import SERVER_SCOPE, Subjects

from .helpers import OWNER, OWNER_NAMES, enroll, raw_nats, server_seeds, write_member_config
from .procs import free_port

COLONY = "dev"
# The member users of member_nats_url: an SDK client speaking as "tester", and the CLI, which
# speaks as the user at the terminal.
MEMBER_USER, MEMBER_NAME = "tester", "tester"
CLI_USER = "cli"


@pytest.fixture(scope="session", autouse=True)
def own_config_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Identities made by the tests (``colonies dev`` makes the user's on first start) go to
    a directory of the session's, never to the home of whoever runs the tests; so do the CLIs
    the tests start."""
    saved = {k: os.environ.get(k) for k in ("XDG_CONFIG_HOME", "COLONIES_IDENTITY")}
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("config-home"))
    os.environ.pop("COLONIES_IDENTITY", None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def identity_file(tmp_path_factory: pytest.TempPathFactory, own_config_home: None) -> Path:
    """The session's identity (helpers.OWNER): the seed file every ``settings`` names, and the
    one the CLIs the tests run find through ``COLONIES_IDENTITY`` (own_config_home restores
    it at the end)."""
    path = tmp_path_factory.mktemp("identity") / "owner.nk"
    write_seed(path, OWNER)
    os.environ["COLONIES_IDENTITY"] = str(path)
    return path


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
    # NATS' default payload limit, not the packaged 8MB: the size tests fill what it allows.
    base = re.sub(r"max_payload: \S+", "max_payload: 1MB", roomy_config())
    config.write_text(secure_config(base, keys))
    server = NatsServer(home / "jetstream", port=0, config=config).start()
    server_seeds[server.url] = keys.broker.seed
    yield SecureServer(server.url, home / "keys", keys)
    server_seeds.pop(server.url, None)
    server.stop()


def secure_nats(home: Path, *, keys_dir: Path | None = None, **options: Any) -> NatsServer:
    """A nats-server of a test's own (not started), configured as ``colonies server config``
    writes it: the keys under ``keys_dir`` (default ``home/keys``; made if missing, so servers
    given the same directory share the installation's keys and accounts). ``options`` go to
    NatsServer (give a fixed ``port`` to have its URL, and the brokers' seed in
    helpers.server_seeds, before it starts)."""
    keys = ServerKeys.load_or_create(keys_dir or home / "keys")
    home.mkdir(parents=True, exist_ok=True)
    config = home / "nats.conf"
    config.write_text(secure_config(roomy_config(), keys))
    server = NatsServer(home / "jetstream", config=config, **options)
    server_seeds[server.url] = keys.broker.seed
    return server


def secure_cluster(home: Path, name: str = "colonies-test") -> Iterator[list[NatsServer]]:
    """Three secure nats-servers n0, n1, n2 under ``home``, routed to each other in a cluster
    named ``name``, with the installation's keys in ``home/keys``; started, and stopped at the
    end (a generator, for fixtures to ``yield from``)."""
    ports = [free_port() for _ in range(3)]
    routes = ",".join(f"nats://127.0.0.1:{p}" for p in ports)
    servers = [
        secure_nats(
            home / f"n{i}",
            keys_dir=home / "keys",
            port=free_port(),
            http_port=0,
            extra_args=[
                *("--server_name", f"n{i}", "--cluster_name", name),
                *("--cluster", f"nats://127.0.0.1:{ports[i]}", "--routes", routes),
            ],
        )
        for i in range(3)
    ]
    for s in servers:
        s.start()
    _until_jetstream_elects(servers)
    yield servers
    for s in servers:
        server_seeds.pop(s.url, None)
        s.stop()


def _until_jetstream_elects(servers: list[NatsServer], timeout: float = 60.0) -> None:
    """Wait until every server's /healthz says its JetStream is current: a new cluster elects
    its meta leader in seconds, longer on a loaded machine, and a broker started before that
    spends its own start-up budget waiting."""

    def healthy(server: NatsServer) -> bool:
        url = f"{server.monitor_url}/healthz"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as reply:
            return bool(reply.status == 200)
        return False

    deadline = time.monotonic() + timeout
    while not all(healthy(s) for s in servers):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the cluster elected no JetStream leader within {timeout} s")
        time.sleep(0.1)  # sleep-ok: polls the servers' health under a deadline


@pytest.fixture(scope="session")
def nats_url(secure_server: SecureServer, identity_file: Path) -> str:
    return secure_server.url


@pytest.fixture(scope="session")
def insecure_nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A nats-server without authentication, for the tests of ``--insecure``."""
    server = NatsServer(tmp_path_factory.mktemp("jetstream"), port=0).start()
    yield server.url
    server.stop()


@pytest.fixture
def member_nats_url(tmp_path: Path, prefix: str) -> Iterator[str]:
    """A second nats-server, its own, in plain config mode with static users: the broker user
    (everything) and members of colony dev, each allowed exactly what a member may do (see
    helpers.member_permissions) for this test's prefix. Connect with helpers.as_user."""
    members = {MEMBER_USER: MEMBER_NAME, CLI_USER: default_caller()}
    config = write_member_config(tmp_path / "members.conf", Subjects(prefix), COLONY, members)
    server = NatsServer(tmp_path / "members-jetstream", port=0, config=config).start()
    yield server.url
    server.stop()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(nats_url: str, prefix: str, identity_file: Path) -> Settings:
    return Settings(
        nats_url=nats_url,
        colony=COLONY,
        prefix=prefix,
        request_timeout_s=5.0,
        identity=identity_file,
    )


@pytest.fixture
def broker_settings(nats_url: str, prefix: str, secure_server: SecureServer) -> BrokerSettings:
    return BrokerSettings(
        nats_url=nats_url, prefix=prefix, storage="memory", keys_dir=secure_server.keys_dir
    )


async def _drop_streams(nats_url: str, prefix: str) -> None:
    nc = await raw_nats(nats_url)
    try:
        js = nc.jetstream()
        upper = Subjects(prefix)._upper
        for info in await js.streams_info():
            name = info.config.name
            if name.startswith(upper + "_") or name.startswith(f"KV_{prefix}-"):
                await js.delete_stream(name)
    finally:
        await nc.close()


async def enroll_owners(broker: Broker) -> None:
    """The session's identity, under each of :data:`OWNER_NAMES`, as owner of the server and
    of colony ``dev`` (which a test then adds, or not) in the broker's prefix."""
    if broker.members is None:
        return  # an insecure broker: no one is enrolled
    for name in OWNER_NAMES:
        await enroll(broker.members, name, OWNER.public_key, SERVER_SCOPE, Role.SERVER_OWNER)
        await enroll(broker.members, name, OWNER.public_key, COLONY, Role.COLONY_OWNER)


@contextlib.asynccontextmanager
async def running_broker(
    broker_settings: BrokerSettings, *, lead: bool = True, owners: bool = False
) -> AsyncIterator[Broker]:
    """A broker on this loop; by default, wait until it leads (serves requests). ``owners``:
    on a secure server, enrol the session's owners (:func:`enroll_owners`) once it is up (a
    security test that enrols its own members leaves it out)."""
    broker = Broker(broker_settings)
    task = asyncio.create_task(broker.run())
    ready = asyncio.create_task((broker.leading if lead else broker.ready).wait())
    await asyncio.wait({task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        ready.cancel()
        if task.done():
            task.result()  # raises the broker's start-up error
        pytest.fail("broker did not become ready within 10 s")
    if owners:
        await enroll_owners(broker)
    try:
        yield broker
    finally:
        broker.stop()
        async with asyncio.timeout(10):
            await task


@pytest.fixture
async def broker(broker_settings: BrokerSettings) -> AsyncIterator[Broker]:
    async with running_broker(broker_settings, owners=True) as b:
        yield b
    await _drop_streams(broker_settings.nats_url, broker_settings.prefix)


@pytest.fixture
async def own_brokers(broker_settings: BrokerSettings) -> AsyncIterator[BrokerSettings]:
    """For a test that starts and stops its brokers itself: the settings, and the prefix's
    streams dropped afterwards."""
    yield broker_settings
    await _drop_streams(broker_settings.nats_url, broker_settings.prefix)


async def open_colony(settings: Settings, colony: str = COLONY) -> None:
    """Add ``colony`` (auto-approve) as ``tester``, a server owner, who owns it then; and, on a
    secure server, make the session's other names its owners too, as an owner would (a new
    colony starts with its owner alone: records written under its name before it existed are
    cleared). A connection's rights are decided when it connects: connect again to act in the
    colony."""
    async with await Client.connect(settings, caller="tester") as c:
        await c.colony_add(colony, auto_approve=True)
        secure = c.secure
    if not secure:
        return
    in_colony = msgspec.structs.replace(settings, colony=colony)
    async with await Client.connect(in_colony, caller="tester") as owner:
        for name in OWNER_NAMES:
            if name != "tester":
                await owner.member_add(name, OWNER.public_key, role="colony-owner")


@pytest.fixture
async def client(broker: Broker, settings: Settings) -> AsyncIterator[Client]:
    """``tester``'s client in colony ``dev`` (created with auto-approve), which it owns."""
    await open_colony(settings)
    c = await Client.connect(settings, caller="tester")
    yield c
    await c.aclose()


@pytest.fixture
def live_system(broker_settings: BrokerSettings, settings: Settings) -> Iterator[Settings]:
    """A broker on its own thread and event loop, for synchronous tests (CLI)."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Broker] = {}

    async def main() -> None:
        async with running_broker(broker_settings, owners=True) as b:
            holder["broker"] = b
            await open_colony(settings)
            started.set()
            await b._stopping.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(15), "broker thread did not start"
    live_loops[settings.prefix] = loop
    live_brokers[settings.prefix] = holder["broker"]
    yield settings
    live_loops.pop(settings.prefix, None)
    live_brokers.pop(settings.prefix, None)
    loop.call_soon_threadsafe(holder["broker"].stop)
    thread.join(15)
    loop.run_until_complete(_drop_streams(broker_settings.nats_url, broker_settings.prefix))
    loop.close()


# The event loop of each live_system, by prefix, so that tests can run executors on it.
live_loops: dict[str, asyncio.AbstractEventLoop] = {}
# And its broker, so that tests can check it still leads.
live_brokers: dict[str, Broker] = {}


@pytest.fixture
def live_echo(live_system: Settings) -> Iterator[Settings]:
    """An echo executor (type echo) running on the live system's loop."""
    loop = live_loops[live_system.prefix]
    app = asyncio.run_coroutine_threadsafe(_build_echo(live_system), loop).result(10)
    task = asyncio.run_coroutine_threadsafe(app.run(), loop)
    asyncio.run_coroutine_threadsafe(app.ready.wait(), loop).result(10)
    yield live_system
    loop.call_soon_threadsafe(app.stop)
    task.result(10)


async def _build_echo(settings: Settings):  # type: ignore[no-untyped-def]
    from colonyos.executors import echo

    return echo.build(settings, "echo", "live-echo")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
