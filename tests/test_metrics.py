"""/metrics: the leading broker's Prometheus figures, scraped over HTTP from a real broker
against a real nats-server and read back with Prometheus' own parser."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from colonyos.broker import Broker
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.errors import ServerSetupError
from colonyos.models import Conditions, FunctionSpec, ProcessGraph, ProcessState, WorkflowSpec
from colonyos.subjects import Subjects

from .conftest import COLONY, _drop_streams, open_colony, running_broker
from .helpers import connect_executor, raw_nats, spec, standalone_service, submitted, until

LEASE_ONLY = {"colonies_broker_leading", "colonies_broker_lease_term"}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
async def metered(broker_settings: BrokerSettings) -> AsyncIterator[Broker]:
    """A leading broker serving /metrics on a free port of 127.0.0.1."""
    with_metrics = msgspec.structs.replace(broker_settings, metrics_port=0)
    async with running_broker(with_metrics, owners=True) as b:
        yield b
    await _drop_streams(broker_settings.nats_url, broker_settings.prefix)


@pytest.fixture
async def client(metered: Broker, settings: Settings) -> AsyncIterator[Client]:
    await open_colony(settings)
    c = await Client.connect(settings, caller="tester")
    yield c
    await c.aclose()


def _url(broker: Broker, path: str = "/metrics") -> str:
    assert broker.metrics_server is not None and broker.metrics_server.address is not None
    host, port = broker.metrics_server.address
    return f"http://{host}:{port}{path}"


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain; version=")
        return str(reply.read().decode())


async def families(broker: Broker) -> set[str]:
    """The names of the metric families a scrape has (with samples or not)."""
    text = await asyncio.to_thread(_get, _url(broker))
    return {family.name for family in text_string_to_metric_families(text)}


async def scrape(broker: Broker) -> Samples:
    text = await asyncio.to_thread(_get, _url(broker))
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def scraped_until(
    broker: Broker, check: Callable[[Samples], bool], *, timeout: float = 15.0
) -> Samples:
    """Scrape until ``check`` holds, under a deadline."""
    async with asyncio.timeout(timeout):
        while not check(samples := await scrape(broker)):
            await asyncio.sleep(0.05)  # sleep-ok: polling the scraped state under a deadline
    return samples


def echo(**labels: str) -> dict[str, str]:
    return {"colony": COLONY, "executortype": "echo", **labels}


async def test_counts_after_a_burst_match(metered: Broker, client: Client, settings) -> None:
    burst = 20
    pids = await client.submit_many([spec(args=[i]) for i in range(burst)])
    queued = await scraped_until(
        metered, lambda s: value(s, "colonies_processes", **echo(state="waiting")) == burst
    )
    assert value(queued, "colonies_submissions_total", **echo()) == burst
    assert value(queued, "colonies_queue_depth", **echo()) == burst
    assert value(queued, "colonies_intake_pending") == 0

    ex = await connect_executor(settings, "e1")
    try:
        for _ in range(burst):
            got = await ex.assign(timeout=5)
            assert got is not None
            await ex.close(got.process_id, [])
        for pid in pids:
            await client.wait(pid, timeout=10)
        done = await scrape(metered)
        assert value(done, "colonies_processes", **echo(state="success")) == burst
        assert value(done, "colonies_processes", **echo(state="waiting")) == 0
        assert value(done, "colonies_queue_depth", **echo()) == 0
        assert value(done, "colonies_assignments_total", **echo()) == burst
        # The waiting-time histogram has one observation per assignment.
        assert value(done, "colonies_process_waiting_seconds_count", **echo()) == burst
        assert value(done, "colonies_process_execution_seconds_count", **echo()) == burst
        assert value(done, "colonies_executors", **echo(state="online")) == 1
        assert value(done, "colonies_executors", **echo(state="offline")) == 0
        assert value(done, "colonies_broker_leading") == 1
        assert (value(done, "colonies_broker_lease_term") or 0) > 0
    finally:
        await ex.aclose()


async def test_a_failure_a_retry_a_requeue_and_a_rejection_move_their_counters(
    metered: Broker, client: Client, settings
) -> None:
    ex = await connect_executor(settings, "e1")
    try:
        # Failed by its executor: one execution observed, and one process FAILED.
        failing = await submitted(client)
        got = await ex.assign(timeout=5)
        assert got is not None and got.process_id == failing.process_id
        await ex.fail(got.process_id, ["boom"])

        # Out of time once (a retry), then closed.
        slow = await submitted(client, max_exec_time=1, max_retries=1)
        got = await ex.assign(timeout=5)
        assert got is not None and got.process_id == slow.process_id
        again = await client.wait_for_state(slow.process_id, ProcessState.WAITING, timeout=10)
        assert again.retries == 1
        got = await ex.assign(timeout=5)
        assert got is not None and got.process_id == slow.process_id
        await ex.close(got.process_id, [])

        # Its executor removed while running it: queued again (no retry spent), then closed.
        lost = await submitted(client)
        gone = await connect_executor(settings, "e2")
        try:
            got = await gone.assign(timeout=5)
            assert got is not None and got.process_id == lost.process_id
            await client.executor_remove("e2")
        finally:
            await gone.aclose()
        got = await ex.assign(timeout=5)
        assert got is not None and got.process_id == lost.process_id
        await ex.close(got.process_id, [])

        # A spec the broker cannot read: rejected.
        nc = await raw_nats(settings.nats_url)
        try:
            await nc.jetstream().publish(Subjects(settings.prefix).specs(COLONY, "echo"), b"{")
        finally:
            await nc.close()

        s = await scraped_until(
            metered, lambda s: value(s, "colonies_rejections_total", **echo()) == 1
        )
        assert value(s, "colonies_submissions_total", **echo()) == 3
        assert value(s, "colonies_retries_total", **echo()) == 1
        assert value(s, "colonies_requeues_total", **echo()) == 1
        assert value(s, "colonies_assignments_total", **echo()) == 5
        assert value(s, "colonies_process_waiting_seconds_count", **echo()) == 5
        # Ended by close or fail: the failure and the two closes (not the re-queues).
        assert value(s, "colonies_process_execution_seconds_count", **echo()) == 3
        assert value(s, "colonies_processes", **echo(state="failed")) == 1
        assert value(s, "colonies_processes", **echo(state="success")) == 2
        # The removed executor is no longer counted, online or not.
        assert value(s, "colonies_executors", **echo(state="online")) == 1
        assert value(s, "colonies_executors", **echo(state="offline")) == 0
    finally:
        await ex.aclose()


def _node(name: str, *deps: str) -> FunctionSpec:
    return FunctionSpec(
        node_name=name,
        func_name="emit",
        conditions=Conditions(executor_type="wf", dependencies=list(deps)),
    )


async def test_workflow_gauges_follow_a_graph_to_success(
    metered: Broker, client: Client, settings
) -> None:
    graph = await client.submit_workflow(WorkflowSpec(function_specs=[_node("a"), _node("b", "a")]))
    assert isinstance(graph, ProcessGraph)

    def workflows(s: Samples, state: str) -> float | None:
        return value(s, "colonies_workflows", colony=COLONY, state=state)

    waiting = await scraped_until(metered, lambda s: workflows(s, "waiting") == 1)
    assert workflows(waiting, "success") == 0
    ex = await connect_executor(settings, "w1", "wf")
    try:
        for _ in range(2):
            got = await ex.assign(timeout=5)
            assert got is not None
            await ex.close(got.process_id, [])
        done = await scraped_until(metered, lambda s: workflows(s, "success") == 1)
        assert workflows(done, "waiting") == 0
        assert workflows(done, "running") == 0
        assert value(done, "colonies_processes", colony=COLONY, executortype="wf", state="success")
    finally:
        await ex.aclose()


async def test_a_standby_reports_its_lease_and_no_colony_series(
    metered: Broker, client: Client, broker_settings: BrokerSettings
) -> None:
    await submitted(client)
    leader = await scraped_until(
        metered, lambda s: value(s, "colonies_submissions_total", **echo()) == 1
    )
    standby_settings = msgspec.structs.replace(broker_settings, metrics_port=0)
    async with running_broker(standby_settings, lead=False) as standby:
        samples = await scrape(standby)
        assert value(samples, "colonies_broker_leading") == 0
        assert value(samples, "colonies_broker_lease_term") == 0
        assert await families(standby) == LEASE_ONLY
    assert value(leader, "colonies_broker_leading") == 1


async def test_a_leader_that_steps_down_reports_its_lease_alone(
    own_brokers: BrokerSettings, settings: Settings
) -> None:
    """Its counters are still there, but another broker leads now (and so its colonies): a
    scrape of both never counts a colony's figures twice."""
    with_metrics = msgspec.structs.replace(own_brokers, metrics_port=0, lease_ttl_s=2.0)
    async with (
        running_broker(with_metrics, owners=True) as leader,
        standalone_service(with_metrics) as service,
    ):
        await open_colony(settings)
        assert "colonies_queue_depth" in await families(leader)
        term = value(await scrape(leader), "colonies_broker_lease_term") or 0
        assert term > 0
        kv = service.store.leases
        entry = await kv.get("broker")
        other = msgspec.json.encode({"holder": "other", "expires_ns": time.time_ns() + int(60e9)})
        await kv.update("broker", other, last=entry.revision)
        await until(lambda: not leader.leading.is_set())
        await until(lambda: leader.service_of(COLONY) is None)  # handed over with the rest
        assert await families(leader) == LEASE_ONLY
        samples = await scrape(leader)
        assert value(samples, "colonies_broker_leading") == 0
        assert value(samples, "colonies_broker_lease_term") == term


async def test_only_get_metrics_is_served(metered: Broker) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        await asyncio.to_thread(_get, _url(metered, "/"))
    assert err.value.code == 404
    err.value.close()  # it holds the reply's socket
    assert metered.metrics_server is not None and metered.metrics_server.address is not None
    assert metered.metrics_server.address[0] == "127.0.0.1"


async def test_no_metrics_port_no_server(broker: Broker) -> None:
    assert broker.settings.metrics_port is None and broker.metrics_server is None


async def test_a_busy_metrics_port_is_named(metered: Broker, broker_settings) -> None:
    assert metered.metrics_server is not None and metered.metrics_server.address is not None
    port = metered.metrics_server.address[1]
    busy = msgspec.structs.replace(broker_settings, metrics_port=port)
    with pytest.raises(ServerSetupError, match=rf"127\.0\.0\.1:{port}: .*--metrics-port"):
        async with running_broker(busy, lead=False):
            pass


async def test_each_colony_led_here_has_its_series_in_one_family(
    metered: Broker, client: Client, settings: Settings
) -> None:
    """Every colony's leader gives its own gauges; a scrape names each family once, with the
    samples of every colony (an exposition that named one twice would not parse)."""
    await open_colony(settings, "second")
    second = msgspec.structs.replace(settings, colony="second")
    async with await Client.connect(second, caller="tester") as other:
        await other.submit(spec())
    await client.submit(spec())
    samples = await scraped_until(
        metered,
        lambda s: all(
            value(s, "colonies_queue_depth", colony=c, executortype="echo") == 1
            for c in (COLONY, "second")
        ),
    )
    assert value(samples, "colonies_intake_pending") == 0
    text = await asyncio.to_thread(_get, _url(metered))
    named = [family.name for family in text_string_to_metric_families(text)]
    assert len(named) == len(set(named)), sorted(named)
