"""Statistics: the percentile maths, a colony's and its functions' counts and times after a
burst of processes, the server's status with its standbys, and the JSON keys scripts rely on."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from colonyos import limits
from colonyos.broker import Broker
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.models import ZERO_TIME, ProcessState, WorkflowSpec
from colonyos.statistics import (
    BrokerInfo,
    ColonyStats,
    FunctionStats,
    ServerStatus,
    percentile,
    seconds_between,
    summarize,
)
from tests.conftest import _drop_streams, open_colony, running_broker
from tests.helpers import executor_client, raw_nats, spec

pytestmark = pytest.mark.timeout(60)


# -- the maths ----------------------------------------------------------------------------------


def test_percentiles_are_nearest_rank() -> None:
    twenty = [float(v) for v in range(1, 21)]
    assert percentile(twenty, 50) == 10.0
    assert percentile(twenty, 95) == 19.0
    assert percentile(twenty, 100) == 20.0
    assert percentile(twenty, 1) == 1.0
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 50) == 0.0
    with pytest.raises(ValueError, match="not in"):
        percentile(twenty, 0)
    with pytest.raises(ValueError, match="not in"):
        percentile(twenty, 101)


def test_a_summary_of_durations_in_any_order() -> None:
    s = summarize([3.0, 0.5, 10.0, 1.0])
    assert (s.count, s.min, s.p50, s.p95, s.max) == (4, 0.5, 1.0, 10.0, 10.0)
    assert s.avg == pytest.approx(3.625)
    assert summarize([]).count == 0 and summarize([]).max == 0.0


def test_a_duration_needs_both_ends() -> None:
    """A process not started has no waiting time, one not ended no execution time (Go's zero
    time marks them), rather than a duration from year 1."""
    t = datetime(2026, 1, 1, tzinfo=UTC)
    assert seconds_between(t, t + timedelta(seconds=1.5)) == 1.5
    assert seconds_between(t, ZERO_TIME) is None
    assert seconds_between(ZERO_TIME, t) is None
    assert seconds_between(t, t - timedelta(seconds=1)) == 0.0  # clocks apart: never negative


def test_a_functions_counts_add_up() -> None:
    f = FunctionStats.of(
        "f", "echo", {"success": 3, "failed": 1, "waiting": 2}, [1.0, 2.0], [0.25, 0.75]
    )
    assert (f.counter, f.successful, f.failed, f.waiting, f.running) == (6, 3, 1, 2, 0)
    assert (f.min_wait_time, f.max_wait_time, f.p50_wait_time) == (1.0, 2.0, 1.0)
    assert (f.p50_exec_time, f.p95_exec_time, f.avg_exec_time) == (0.25, 0.75, 0.5)
    assert (f.wait_samples, f.exec_samples) == (2, 2)


# -- the JSON keys ------------------------------------------------------------------------------

COLONY_KEYS = [
    "colonyname",
    "executors",
    "activeexecutors",
    "offlineexecutors",
    "pendingexecutors",
    "unregisteredexecutors",
    "waitingprocesses",
    "runningprocesses",
    "successfulprocesses",
    "failedprocesses",
    "cancelledprocesses",
    "waitingworkflows",
    "runningworkflows",
    "successfulworkflows",
    "failedworkflows",
    "cancelledworkflows",
]
FUNCTION_KEYS = [
    "funcname",
    "executortype",
    "counter",
    "waiting",
    "running",
    "successful",
    "failed",
    "cancelled",
    "waitsamples",
    "execsamples",
    "minwaittime",
    "maxwaittime",
    "avgwaittime",
    "p50waittime",
    "p95waittime",
    "minexectime",
    "maxexectime",
    "avgexectime",
    "p50exectime",
    "p95exectime",
]
SERVER_KEYS = [
    "buildversion",
    "uptime",
    "leader",
    "standbys",
    "streams",
    "messages",
    "bytes",
    "nats",
]
BROKER_KEYS = [
    "brokerid",
    "host",
    "pid",
    "version",
    "since",
    "leading",
    "leadingsince",
    "colonies",
    "colonynames",
    "sharded",
]


def _keys(value: msgspec.Struct) -> list[str]:
    return list(msgspec.json.decode(msgspec.json.encode(value)))


def test_the_json_keys_stay_as_documented() -> None:
    """Scripts read these keys: renaming or reordering one is a change of the interface."""
    assert _keys(ColonyStats(colony_name="dev")) == COLONY_KEYS
    assert _keys(FunctionStats(func_name="f", executor_type="e")) == FUNCTION_KEYS
    assert _keys(ServerStatus()) == SERVER_KEYS
    assert _keys(BrokerInfo(broker_id="b")) == BROKER_KEYS


# -- against a broker ---------------------------------------------------------------------------


def _expected(values: list[float]) -> tuple[float, float, float]:
    """p50, p95 and max by nearest rank, computed here on their own."""
    ordered = sorted(values)
    n = len(ordered)
    return ordered[math.ceil(0.5 * n) - 1], ordered[math.ceil(0.95 * n) - 1], ordered[-1]


async def test_counts_and_times_after_a_burst(client: Client, settings: Settings) -> None:
    """13 processes of ``work``: 8 closed, 3 failed, 1 cancelled while it ran, 1 left waiting;
    2 of ``other`` waiting on a type no executor has. The counts are exact, and the times are
    those of the processes (a cancelled one has a waiting time, and no execution time)."""
    work = [await client.submit(spec(func_name="work", args=[i])) for i in range(13)]
    for _ in range(2):
        await client.submit(spec("nobody", func_name="other"))
    done = []
    async with executor_client(settings, "worker-1") as worker:
        for i in range(11):
            p = await worker.assign(timeout=10)
            assert p is not None
            if i < 8:
                done.append(await worker.close(p.process_id, ["ok"]))
            else:
                done.append(await worker.fail(p.process_id, ["broken"]))
        p = await worker.assign(timeout=10)
        assert p is not None
        cancelled = await client.cancel(p.process_id)
        stats = await client.colony_stats()
    assert (stats.waiting_processes, stats.running_processes) == (3, 0)
    assert (stats.successful_processes, stats.failed_processes) == (8, 3)
    assert stats.cancelled_processes == 1
    assert (stats.executors, stats.active_executors, stats.offline_executors) == (1, 1, 0)
    assert stats.colony_name == settings.colony

    found = {(f.func_name, f.executor_type): f for f in await client.function_stats()}
    assert list(found) == [("work", "echo"), ("other", "nobody")]  # most called first
    w = found[("work", "echo")]
    assert (w.counter, w.successful, w.failed, w.waiting, w.cancelled) == (13, 8, 3, 1, 1)
    o = found[("other", "nobody")]
    assert (o.counter, o.waiting, o.max_wait_time, o.max_exec_time) == (2, 2, 0.0, 0.0)
    assert (o.wait_samples, o.exec_samples) == (0, 0)  # no time is known: none started
    assert (w.wait_samples, w.exec_samples) == (12, 11)  # the cancelled one did not end its run

    waits = [(p.start_time - p.submission_time).total_seconds() for p in [*done, cancelled]]
    execs = [(p.end_time - p.start_time).total_seconds() for p in done]
    p50, p95, top = _expected(waits)
    assert (w.p50_wait_time, w.p95_wait_time, w.max_wait_time) == pytest.approx((p50, p95, top))
    p50, p95, top = _expected(execs)
    assert (w.p50_exec_time, w.p95_exec_time, w.max_exec_time) == pytest.approx((p50, p95, top))
    assert w.min_exec_time == pytest.approx(min(execs))
    assert len(work) == 13 and cancelled.end_time > cancelled.start_time


async def test_workflows_by_state(client: Client) -> None:
    nodes = [spec("nobody", func_name="a", node_name="a"), spec("nobody", node_name="b")]
    graph = await client.submit_workflow(WorkflowSpec(function_specs=nodes))
    stats = await client.colony_stats()
    assert (stats.waiting_workflows, stats.cancelled_workflows) == (1, 0)
    assert not isinstance(graph, str)
    await client.graph_cancel(graph.process_graph_id)
    stats = await client.colony_stats()
    assert (stats.waiting_workflows, stats.cancelled_workflows) == (0, 1)
    assert stats.cancelled_processes == 2


async def test_an_executor_goes_offline_when_silent(
    own_brokers: BrokerSettings, settings: Settings
) -> None:
    """A registered executor that is not heard from within the liveness window counts as
    offline; one that keeps asking for work, as active (polled: the window is short)."""
    quick = msgspec.structs.replace(own_brokers, executor_liveness_s=1.0)
    async with running_broker(quick, owners=True):
        await open_colony(settings)
        async with (
            await Client.connect(settings, caller="tester") as c,
            executor_client(settings, "quiet"),
            executor_client(settings, "busy") as busy,
        ):
            async with asyncio.timeout(30):
                while True:
                    await busy.assign(timeout=0.1)
                    stats = await c.colony_stats()
                    if (stats.active_executors, stats.offline_executors) == (1, 1):
                        break
            assert stats.executors == 2
            await c.executor_remove("quiet")
            stats = await c.colony_stats()
            assert (stats.unregistered_executors, stats.offline_executors) == (1, 0)


async def test_the_server_status_names_the_leader_standbys_and_streams(
    broker: Broker, client: Client, broker_settings: BrokerSettings
) -> None:
    await client.submit(spec("nobody"))
    status = await client.server_status()
    assert status.leader is not None and status.leader.broker_id == broker.broker_id
    assert status.leader.leading and status.build_version == status.leader.version
    assert status.uptime >= 0 and status.standbys == []
    names = {s.name: s for s in status.streams}
    events = names[client.subjects.stream_events]  # the specs stream is a work queue
    assert events.messages >= 1 and events.bytes > 0
    assert names[client.subjects.stream_specs].consumers == 1
    assert client.subjects.kv_stream(client.subjects.bucket_processes) in names
    assert status.messages == sum(s.messages for s in status.streams)
    assert status.nats is not None and status.nats.jetstream and status.nats.server_id
    assert status.nats.max_payload == client.nc.max_payload and status.nats.servers

    async with running_broker(broker_settings, lead=False) as standby:
        found: list[str] = []

        async def standbys() -> list[str]:
            return [b.broker_id for b in (await client.server_status()).standbys]

        async with asyncio.timeout(20):
            while found != [standby.broker_id]:
                found = await standbys()
        got = (await client.server_status()).standbys[0]
        assert not got.leading and got.pid > 0 and got.version == status.build_version


async def test_standbys_that_stop_announcing_leave_the_roster() -> None:
    from colonyos.broker.statistics import Roster

    t = [0.0]
    roster = Roster(5.0, clock=lambda: t[0])
    roster.heard(BrokerInfo(broker_id="a"))
    roster.heard(BrokerInfo(broker_id="b"))
    assert [b.broker_id for b in roster.others("a")] == ["b"]
    t[0] = 4.0
    roster.heard(BrokerInfo(broker_id="a"))
    t[0] = 6.0  # b silent for more than the window
    assert [b.broker_id for b in roster.others("z")] == ["a"]


async def test_the_states_of_every_process_are_counted(client: Client) -> None:
    """Each of the five states lands in its own count."""
    p = await client.submit(spec("nobody"))
    await client.cancel(p.process_id)
    await client.submit(spec("nobody"))
    stats = await client.colony_stats()
    assert (stats.cancelled_processes, stats.waiting_processes) == (1, 1)
    assert ProcessState.CANCELLED.token == "cancelled"


async def test_function_stats_hold_what_one_reply_can(client: Client) -> None:
    """Four functions whose names take a third of a reply each: the reply holds the first
    that fit, rather than fail for being larger than one message."""
    third = limits.record_limit(client.nc.max_payload) // 3
    for i in range(4):
        await client.submit(spec("nobody", func_name=f"f{i}" + "x" * third))
    found = await client.function_stats()
    assert 0 < len(found) < 4


async def test_a_stream_not_made_yet_is_left_out(client: Client, nats_url: str) -> None:
    gone = client.subjects.kv_stream(client.subjects.bucket_crons)
    nc = await raw_nats(nats_url)
    try:
        await nc.jetstream().delete_stream(gone)
    finally:
        await nc.close()
    names = [s.name for s in (await client.server_status()).streams]
    assert gone not in names and client.subjects.stream_events in names


def test_the_roster_keeps_a_bounded_number_of_brokers() -> None:
    """Each announcement is a standby the reply lists: past the bound, the one heard from
    longest ago goes (a reply must fit one message)."""
    from colonyos.broker.statistics import MAX_BROKERS, Roster

    t = [0.0]
    roster = Roster(1e9, clock=lambda: t[0])
    for i in range(MAX_BROKERS + 1):
        t[0] = float(i)
        roster.heard(BrokerInfo(broker_id=f"b{i}"))
    kept = {b.broker_id for b in roster.others("")}
    assert len(kept) == MAX_BROKERS and "b0" not in kept and f"b{MAX_BROKERS}" in kept


async def test_statistics_on_an_insecure_server(
    insecure_nats_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No identities: anyone may ask all three (the server status on the server scope)."""
    monkeypatch.delenv("COLONIES_IDENTITY", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config-home"))
    plain = Settings(nats_url=insecure_nats_url, colony="dev", prefix=prefix)
    try:
        settings = BrokerSettings(nats_url=insecure_nats_url, prefix=prefix, storage="memory")
        async with running_broker(settings), await Client.connect(plain, caller="anyone") as c:
            assert not c.secure
            await c.colony_add("dev", auto_approve=True)
            await c.submit(spec("nobody"))
            assert (await c.colony_stats()).waiting_processes == 1
            assert [f.counter for f in await c.function_stats()] == [1]
            status = await c.server_status()
            assert status.leader is not None and status.leader.leading
    finally:
        await _drop_streams(insecure_nats_url, prefix)
