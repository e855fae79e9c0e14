"""What the benchmarks run on: a nats-server, a broker and executors as separate OS processes,
and readings of their CPU time and memory from /proc."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType

import nats.aio.client
import nats.errors

from colonyos.client import Client
from colonyos.config import Settings
from colonyos.connection import connect_nats
from colonyos.errors import BrokerUnavailableError, ConflictError
from colonyos.natsserver import NatsServer, packaged_config
from colonyos.security.keys import generate, load_identity, write_seed
from colonyos.security.members import Member, MemberBook
from colonyos.security.permissions import Role
from colonyos.security.serverconf import ServerKeys, secure_config
from colonyos.subjects import SERVER_SCOPE, Subjects

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# A broker as installed on a server (`pip install colonyos`, without the dashboard extra):
# nats-py imports aiohttp (for websockets, about 9 MiB) whenever it can, and the development
# install has it. The dashboard, which needs it, runs in a process of its own.
SERVER_INSTALL = (
    "import runpy, sys; sys.modules['aiohttp'] = None; "
    "runpy.run_module('colonyos.cli.main', run_name='__main__')"
)
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mib(pid: int) -> float:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * PAGE / 2**20


class Child:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        out = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_port() -> int:
    """A port free on 127.0.0.1 now (for a child process to listen on)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class System:
    """nats-server + broker (+ executors on demand), each its own process, on loopback.

    ``secure``: as `colonies server start` runs it, with the auth callout; the bench client
    is the server owner (and owns colony bench), the executors connect with a key of their own.
    """

    def __init__(
        self,
        prefix: str = "bench",
        *,
        secure: bool = True,
        broker_env: dict[str, str] | None = None,
    ) -> None:
        self.prefix = prefix
        self.secure = secure
        self.broker_env = broker_env or {}  # the broker's settings beyond the system's own
        self._tmp = tempfile.TemporaryDirectory(prefix="colonies-bench-")
        self.dir = Path(self._tmp.name)
        config = None
        if secure:
            keys = ServerKeys.load_or_create(self.dir / "broker" / "keys")
            with packaged_config() as base:
                config = self.dir / "nats.conf"
                config.write_text(secure_config(base.read_text(), keys))
            self.keys = keys
            for who in ("bench", "executors"):
                write_seed(self.dir / f"{who}.nk", generate())
        self.server = NatsServer(self.dir / "js", port=0, config=config)
        self.children: list[Child] = []
        self.broker: Child | None = None
        # The broker's /metrics (scraped once at the end of a run: it costs the run nothing).
        self.metrics_port = free_port()

    @property
    def env(self) -> dict[str, str]:
        env = {
            "COLONIES_NATS_URL": self.server.url,
            "COLONIES_PREFIX": self.prefix,
            "COLONIES_COLONY_NAME": "bench",
            # Never the key of whoever runs the benchmark.
            "XDG_CONFIG_HOME": str(self.dir / "config"),
        }
        if self.secure:
            env["COLONIES_IDENTITY"] = str(self.dir / "executors.nk")
        return env

    @property
    def settings(self) -> Settings:
        identity = self.dir / "bench.nk" if self.secure else None
        return Settings(
            nats_url=self.server.url, colony="bench", prefix=self.prefix, identity=identity
        )

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    async def start(self) -> Client:
        self.server.start()
        self.broker = self.spawn(
            [
                *("-c", SERVER_INSTALL, "broker", "start"),
                *("--data-dir", str(self.dir / "broker")),
                *("--metrics-port", str(self.metrics_port)),
            ],
            "broker",
            self.broker_env,
        )
        if self.secure:
            await self._enrol_owner()
        client = await Client.connect(self.settings, caller="bench")
        async with asyncio.timeout(30):
            while True:
                try:
                    await client.colony_add("bench", auto_approve=True)
                    break
                except ConflictError:
                    break
                except BrokerUnavailableError:
                    await asyncio.sleep(0.1)
        if self.secure:  # rights are decided at connect: now the owner of colony bench too
            await client.aclose()
            client = await Client.connect(self.settings, caller="bench")
        return client

    async def raw_connect(self) -> nats.aio.client.Client:
        """A bare nats-py connection with every right (the brokers' key when secure): for the
        raw baselines and for reading stream state, which no member may."""
        seed = self.keys.broker.seed if self.secure else None
        return await connect_nats(self.server.url, name="bench-raw", seed=seed)

    async def _enrol_owner(self) -> None:
        """The bench client is the server owner, as `colonies server start` makes its user."""
        nc = await connect_nats(self.server.url, name="bench-setup", seed=self.keys.broker.seed)
        try:
            book = MemberBook(nc.jetstream(), Subjects(self.prefix))
            async with asyncio.timeout(30):
                while True:  # the broker makes the bucket when it starts
                    try:
                        await book.start()
                        break
                    except nats.errors.Error:
                        await asyncio.sleep(0.1)
            owner = load_identity(self.dir / "bench.nk").public_key
            await book.put(
                Member(
                    colony_name=SERVER_SCOPE, name="bench", public_key=owner, role=Role.SERVER_OWNER
                )
            )
        finally:
            await nc.close()

    def spawn(self, args: list[str], name: str, env: dict[str, str] | None = None) -> Child:
        child = Child(args, {**self.env, **(env or {})}, self.dir / f"{name}.log")
        self.children.append(child)
        return child

    def executors(
        self,
        count: int,
        prefix: str = "noop",
        concurrency: int = 1,
        executor_type: str = "noop",
        *,
        prefetch: bool = True,
    ) -> list[Child]:
        args = [str(concurrency), executor_type, "prefetch" if prefetch else "no-prefetch"]
        return [
            self.spawn(["-m", "bench.noop_executor", f"{prefix}-{i}", *args], f"{prefix}-{i}")
            for i in range(count)
        ]

    def stop_executors(self, executors: list[Child]) -> None:
        for child in executors:
            child.stop()
            self.children.remove(child)

    async def __aenter__(self) -> System:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for child in reversed(self.children):
            child.stop()
        self.server.stop()
        self._tmp.cleanup()
