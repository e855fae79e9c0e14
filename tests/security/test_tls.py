"""TLS for client connections, with a certificate authority made for the test (trustme)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import trustme

from colonyos.broker import Broker
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.errors import BrokerUnavailableError
from colonyos.models import Conditions, FunctionSpec
from colonyos.natsserver import NatsServer
from colonyos.security.serverconf import tls_config
from tests.conftest import running_broker
from tests.security.conftest import roomy_config

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A server that takes TLS connections only; the URL and the authority's certificate."""
    home = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(home / "server.pem"))
    ca.cert_pem.write_to_path(str(home / "ca.pem"))
    config = home / "nats.conf"
    config.write_text(tls_config(roomy_config(), home / "server.pem", home / "server.pem"))
    server = NatsServer(home / "jetstream", port=0, config=config).start()
    yield server.url, home / "ca.pem"
    server.stop()


async def test_broker_and_client_work_over_tls(tls_server: tuple[str, Path]) -> None:
    url, ca = tls_server
    settings = BrokerSettings(nats_url=url, prefix="tls", storage="memory", tls_ca=ca)
    async with running_broker(settings):
        client_settings = Settings(nats_url=url, prefix="tls", tls_ca=ca)
        async with await Client.connect(client_settings, caller="tester") as client:
            await client.colony_add("dev")
            spec = FunctionSpec(func_name="f", conditions=Conditions(executor_type="echo"))
            process = await client.submit(spec)
            assert (await client.get(process.process_id)).process_id == process.process_id


async def test_a_server_certificate_from_an_unknown_authority_is_refused_clearly(
    tls_server: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = tls_server
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    for ca in (None, other):  # the system's authorities, then another one
        settings = msgspec.structs.replace(Settings(nats_url=url, prefix="tls"), tls_ca=ca)
        if ca is None:
            settings = msgspec.structs.replace(settings, nats_url=url.replace("nats://", "tls://"))
        with pytest.raises(BrokerUnavailableError, match="TLS with the NATS server"):
            await Client.connect(settings, caller="tester")


async def test_a_broker_without_tls_is_not_let_in(tls_server: tuple[str, Path]) -> None:
    url, _ = tls_server
    broker = Broker(BrokerSettings(nats_url=url, prefix="tls2", storage="memory"))
    with pytest.raises(BrokerUnavailableError):
        await broker.run()
