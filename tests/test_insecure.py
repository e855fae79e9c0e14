"""``--insecure``: the rest of the suite runs secure; here the core path runs on a nats-server
without authentication, as a party without an identity: submit, assign, close, a workflow, the
CLI's ``function submit --wait``, and ``colonies dev --insecure``, which says it is insecure."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner

from colonyos.broker import Broker
from colonyos.cli.main import app
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.errors import BrokerUnavailableError, ColonyNotFoundError, ProcessNotFoundError
from colonyos.executors import echo
from colonyos.models import Process, ProcessState
from colonyos.specs import load_workflow_spec

from .conftest import COLONY, _drop_streams, running_broker
from .helpers import connect_executor, spec
from .procs import Child, free_port

EXAMPLES = Path(__file__).parents[1] / "examples"

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def no_identity(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No seed named, none at the default place: a party without an identity."""
    monkeypatch.delenv("COLONIES_IDENTITY", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config-home"))


@pytest.fixture
def plain(insecure_nats_url: str, prefix: str, no_identity: None) -> Settings:
    return Settings(nats_url=insecure_nats_url, colony=COLONY, prefix=prefix)


@pytest.fixture
async def plain_broker(plain: Settings) -> AsyncIterator[Broker]:
    settings = BrokerSettings(nats_url=plain.nats_url, prefix=plain.prefix, storage="memory")
    async with running_broker(settings) as broker:  # no keys: no callout
        async with await Client.connect(plain, caller="anyone") as c:
            await c.colony_add(COLONY, auto_approve=True)
        yield broker
    await _drop_streams(plain.nats_url, plain.prefix)


async def test_submit_assign_close_without_an_identity(
    plain: Settings, plain_broker: Broker
) -> None:
    async with await Client.connect(plain, caller="anyone") as user:
        assert not user.secure
        submitted = await user.submit(spec(args=["hello"]))
        assert isinstance(submitted, Process)
        worker = await connect_executor(plain, "worker")
        try:
            assert not worker.secure
            got = await worker.assign(timeout=5)
            assert got is not None and got.process_id == submitted.process_id
            await worker.close(got.process_id, ["done"])
        finally:
            await worker.aclose()
        done = await user.wait(submitted.process_id, timeout=10)
        assert done.state is ProcessState.SUCCESS and done.output == ["done"]


async def test_a_request_to_a_colony_that_does_not_exist_says_so(
    plain: Settings, plain_broker: Broker
) -> None:
    """No broker leads a colony that does not exist, so its requests find no responders: the
    client asks the server scope why, and says the colony does not exist."""
    nowhere = msgspec.structs.replace(plain, colony="nowhere")
    async with await Client.connect(nowhere, caller="anyone") as client:
        with pytest.raises(ColonyNotFoundError):
            await client.list_processes()


async def test_a_workflow_without_an_identity(plain: Settings, plain_broker: Broker) -> None:
    workflow, _ = load_workflow_spec((EXAMPLES / "workflow.json").read_bytes())
    async with await Client.connect(plain, caller="anyone") as user:
        graph = await user.submit_workflow(workflow)
        await echo.build(plain, "echo", "echo-insecure").run(burst=True)
        ended = await user.graph_wait(graph.process_graph_id, timeout=30)
        assert ended.state is ProcessState.SUCCESS


async def test_the_cli_submits_and_waits_without_an_identity(
    plain: Settings, plain_broker: Broker
) -> None:
    base = ["--nats", plain.nats_url, "--prefix", plain.prefix, "--colony", COLONY]
    submit = ["function", "submit", "--spec", str(EXAMPLES / "echo.json"), "--wait", "--json"]
    executor = echo.build(plain, "echo", "echo-cli")
    running = asyncio.create_task(executor.run())
    try:
        result = await asyncio.to_thread(CliRunner().invoke, app, [*base, *submit])
    finally:
        executor.stop()
        await asyncio.wait_for(running, 10)
    assert result.exit_code == 0, result.output
    process = json.loads(result.stdout)
    assert process["state"] == 2 and process["out"] == ["helloworld"]


@pytest.mark.slow
async def test_dev_insecure_says_so_runs_a_spec_and_stops(
    tmp_path: Path, no_identity: None
) -> None:
    port = free_port()
    args = ["dev", "--insecure", "--port", str(port), "--data-dir", str(tmp_path / "data")]
    dev = Child(args, tmp_path / "dev.log", {}).start()
    settings = Settings(nats_url=f"nats://127.0.0.1:{port}", colony=COLONY)
    try:
        async with asyncio.timeout(30):
            while True:
                try:
                    client = await Client.connect(settings)
                    break
                except BrokerUnavailableError:  # not listening yet
                    await asyncio.sleep(0.1)  # sleep-ok: polling for the server to listen
        async with client, asyncio.timeout(30):
            while True:  # colony dev exists once the banner is out
                try:
                    await client.colony_get(COLONY)
                    break
                except (BrokerUnavailableError, ColonyNotFoundError):
                    await asyncio.sleep(0.1)  # sleep-ok: polling for the colony to exist
            assert not client.secure
            submitted = await client.submit(spec(args=["plain"]), confirm=False)
            while True:  # accepted by JetStream, then by the broker
                try:
                    done = await client.wait(str(submitted), timeout=20)
                    break
                except ProcessNotFoundError:
                    await asyncio.sleep(0.1)  # sleep-ok: polling for the process to exist
            assert done.state is ProcessState.SUCCESS and done.output == ["plain"]
    finally:
        assert dev.proc is not None
        dev.proc.send_signal(signal.SIGINT)
        code = dev.proc.wait(30)
    log = (tmp_path / "dev.log").read_text()
    assert code == 0, log
    assert "INSECURE" in log and "anyone who can reach this server" in log
    assert not (tmp_path / "data" / "keys").exists()  # no installation keys made
