"""A three-server NATS cluster on loopback: JetStream replicas 3, and a server lost."""

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

from .conftest import COLONY, running_broker
from .procs import free_port, until_served
from .test_assign_flow import spec
from .test_restarts import wait_created

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[NatsServer]]:
    ports = [free_port() for _ in range(3)]
    routes = ",".join(f"nats://127.0.0.1:{p}" for p in ports)
    servers = [
        NatsServer(
            tmp_path / f"n{i}",
            port=free_port(),
            extra_args=[
                "--server_name",
                f"n{i}",
                "--cluster_name",
                "colonies-test",
                "--cluster",
                f"nats://127.0.0.1:{ports[i]}",
                "--routes",
                routes,
            ],
        )
        for i in range(3)
    ]
    for s in servers:
        s.start()
    yield servers
    for s in servers:
        s.stop()


@pytest.mark.timeout(120)
async def test_a_colony_survives_losing_a_cluster_server(cluster: list[NatsServer]) -> None:
    urls = ",".join(s.url for s in cluster)
    broker_settings = BrokerSettings(nats_url=urls, prefix="clu", replicas=3, lease_ttl_s=1.0)
    settings = Settings(nats_url=urls, colony=COLONY, prefix="clu")
    async with running_broker(broker_settings, owners=True):
        client = await Client.connect(settings)
        # Interest crosses the cluster's routes a moment after the broker subscribes.
        await until_served(
            lambda: client.colony_add(COLONY, auto_approve=True), timeout=60, every=0.2
        )
        app = echo.build(settings, "echo", "echo-cluster")
        runner = asyncio.create_task(app.run())
        first = await client.submit(spec(args=["before"]))
        assert isinstance(first, Process)
        assert (await client.wait(first.process_id, timeout=20)).state is ProcessState.SUCCESS

        cluster[0].kill()  # a server dies; the rest hold every replica

        # JetStream takes the spec once the cluster has settled; a broker then makes it a process.
        second = await until_served(
            lambda: client.submit(spec(args=["after"]), confirm=False), timeout=60, every=0.2
        )
        assert isinstance(second, str)
        await wait_created(client, second)
        done = await client.wait(second, timeout=40)
        assert done.state is ProcessState.SUCCESS and done.output == ["after"]
        assert (await client.get(first.process_id)).output == ["before"]
        app.stop()
        await runner
        await client.aclose()
