"""A three-server secure NATS cluster on loopback: every server has the installation's config
(the same keys and accounts, from one keys directory) plus its cluster block; JetStream replicas
3, a server lost, and members let in on one server by a broker connected to another."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.executors import echo
from colonyos.models import Process, ProcessState
from colonyos.natsserver import NatsServer

from .conftest import COLONY, open_colony, running_broker, secure_cluster
from .helpers import spec, wait_created
from .procs import until_served

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[NatsServer]]:
    """A cluster of this test's own: for a test that takes a server down."""
    yield from secure_cluster(tmp_path)


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NatsServer]]:
    """One cluster for the tests that leave every server up, each in a prefix of its own: a new
    cluster takes seconds to elect its JetStream leader before the first stream is made."""
    yield from secure_cluster(tmp_path_factory.mktemp("cluster"))


def cluster_settings(
    cluster: list[NatsServer], identity: Path, *, broker_on: str, clients_on: str, prefix: str
) -> tuple[BrokerSettings, Settings]:
    """The settings of a broker on ``broker_on`` and its clients on ``clients_on``, with the
    cluster's keys (beside its servers' homes: see conftest.secure_cluster)."""
    keys_dir = cluster[0].store_dir.parents[1] / "keys"
    broker_settings = BrokerSettings(
        nats_url=broker_on,
        prefix=prefix,
        replicas=3,
        lease_ttl_s=1.0,
        keys_dir=keys_dir,
    )
    return broker_settings, Settings(
        nats_url=clients_on, colony=COLONY, prefix=prefix, identity=identity
    )


@pytest.mark.timeout(120)
async def test_a_colony_survives_losing_a_cluster_server(
    cluster: list[NatsServer], identity_file: Path
) -> None:
    urls = ",".join(s.url for s in cluster)
    broker_settings, settings = cluster_settings(
        cluster, identity_file, broker_on=urls, clients_on=urls, prefix="clu"
    )
    async with running_broker(broker_settings, owners=True):
        # Interest crosses the cluster's routes a moment after the broker subscribes (the
        # callout's too: until then a member is not let in).
        await until_served(
            lambda: open_colony(settings), timeout=60, every=0.2, errors=(Exception,)
        )
        # A client that lives through the server's loss, as an application's does: its
        # reconnect may be refused while the broker's callout reconnects too, and it tries
        # again (a command-line client, which stops when refused, would say why and end).
        client = await Client.connect(settings, keep_trying=True)
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


@pytest.mark.timeout(120)
async def test_the_callout_lets_members_in_across_the_cluster(
    shared_cluster: list[NatsServer], identity_file: Path, prefix: str
) -> None:
    """A member connecting to server n2 is let in (and served) by a broker connected to n0 only:
    the server asks the callout through the cluster's routes."""
    cluster = shared_cluster
    broker_settings, settings = cluster_settings(
        cluster, identity_file, broker_on=cluster[0].url, clients_on=cluster[2].url, prefix=prefix
    )
    async with running_broker(broker_settings, owners=True):
        await until_served(
            lambda: open_colony(settings), timeout=60, every=0.2, errors=(Exception,)
        )
        async with await Client.connect(settings) as client:
            assert client.secure
            # On n2 itself (nats-py may move to a server it learned of, were n2 to refuse it).
            assert client.nc.connected_url is not None
            assert client.nc.connected_url.port == cluster[2].port
            app = echo.build(settings, "echo", "echo-n2")
            runner = asyncio.create_task(app.run())
            p = await client.submit(spec(args=["across"]))
            assert isinstance(p, Process)
            done = await client.wait(p.process_id, timeout=20)
            assert done.state is ProcessState.SUCCESS and done.output == ["across"]
            app.stop()
            await runner


@pytest.mark.timeout(120)
async def test_the_server_status_shows_the_cluster_and_a_standby_on_another_server(
    shared_cluster: list[NatsServer], identity_file: Path, prefix: str
) -> None:
    """A client on n2 sees its server and cluster, every server of the cluster (announced by
    the cluster, not given), the leader on n0 and a standby on n1 (heard across the routes)."""
    cluster = shared_cluster
    broker_settings, settings = cluster_settings(
        cluster, identity_file, broker_on=cluster[0].url, clients_on=cluster[2].url, prefix=prefix
    )
    on_n1 = msgspec.structs.replace(broker_settings, nats_url=cluster[1].url)
    async with running_broker(broker_settings, owners=True) as leader:
        await until_served(
            lambda: open_colony(settings), timeout=60, every=0.2, errors=(Exception,)
        )
        async with (
            running_broker(on_n1, lead=False) as standby,
            await Client.connect(settings) as client,
        ):
            async with asyncio.timeout(60):
                while True:
                    status = await client.server_status()
                    seen = [b.broker_id for b in status.standbys]
                    assert status.nats is not None
                    if len(status.nats.servers) == 3 and seen == [standby.broker_id]:
                        break
                    await asyncio.sleep(0.2)  # sleep-ok: polling the state under a deadline
            assert (status.nats.server_name, status.nats.cluster) == ("n2", "colonies-test")
            assert status.leader is not None and status.leader.broker_id == leader.broker_id
            ports = {s.port for s in cluster}
            assert {int(u.rsplit(":", 1)[1]) for u in status.nats.servers} == ports
