"""Removing processes, workflows and colonies, and the retention sweep: what is removed goes with
everything that belongs to it (record and history, log; for a colony also events, executors and
pending submissions), nothing running is removed, and nothing else is touched."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest

from colonyos.broker import Broker
from colonyos.broker.removal import Removal
from colonyos.broker.retention import Retention
from colonyos.broker.workflows import Workflows
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings, parse_duration
from colonyos.errors import (
    BrokerUnavailableError,
    ColonyNotFoundError,
    ConflictError,
    GraphNotFoundError,
    InvalidSpecError,
    NotAuthorizedError,
    ProcessNotFoundError,
)
from colonyos.models import (
    Conditions,
    FunctionSpec,
    Process,
    ProcessGraph,
    ProcessState,
    WorkflowSpec,
)
from colonyos.subjects import Subjects

from .conftest import COLONY, open_colony, running_broker
from .helpers import connect_executor, enroll, raw_nats, standalone_service


def _spec(executor_type: str = "echo", node: str = "", deps: tuple[str, ...] = ()) -> FunctionSpec:
    return FunctionSpec(
        node_name=node,
        func_name="echo",
        conditions=Conditions(executor_type=executor_type, dependencies=list(deps)),
    )


async def _executor(settings: Settings, name: str) -> Client:
    return await _executor_of(settings, name, "echo")


async def _executor_of(settings: Settings, name: str, executor_type: str) -> Client:
    return await connect_executor(settings, name, executor_type)


async def _run_one(ex: Client, *, log: str = "", fail: bool = False) -> Process:
    got = await ex.assign(timeout=5)
    assert got is not None
    if log:
        await ex.add_logs(got.process_id, [log], attempt=got.retries)
    if fail:
        return await ex.fail(got.process_id, ["boom"], attempt=got.retries)
    return await ex.close(got.process_id, ["ok"], attempt=got.retries)


async def _submitted(client: Client, spec: FunctionSpec | None = None) -> Process:
    process = await client.submit(spec or _spec())
    assert isinstance(process, Process)
    return process


async def _messages(url: str, stream: str, subject: str) -> int:
    nc = await raw_nats(url)  # members may not read a stream's state
    try:
        info = await nc.jetstream().stream_info(stream, subjects_filter=subject)
    finally:
        await nc.close()
    return sum((info.state.subjects or {}).values())


async def _history(url: str, subjects: Subjects, key: str) -> int:
    bucket = subjects.bucket_processes
    return await _messages(url, subjects.kv_stream(bucket), subjects.kv_subject(bucket, key))


async def test_remove_takes_the_record_its_history_and_its_log(
    client: Client, settings: Settings
) -> None:
    s = Subjects(settings.prefix)
    ex = await _executor(settings, "e1")
    done = await _submitted(client)
    await _run_one(ex, log="a line")
    pid = done.process_id
    assert await _messages(client.settings.nats_url, s.stream_logs, s.logs(COLONY, pid)) == 1
    assert (
        await _history(client.settings.nats_url, s, s.process_key(COLONY, pid)) == 3
    )  # waiting, running, ok
    await client.remove(pid)
    with pytest.raises(ProcessNotFoundError):
        await client.get(pid)
    assert (
        await _history(client.settings.nats_url, s, s.process_key(COLONY, pid)) == 0
    )  # no delete marker
    assert await _messages(client.settings.nats_url, s.stream_logs, s.logs(COLONY, pid)) == 0
    assert [p.process_id for p in await client.list_processes(state=ProcessState.SUCCESS)] == []
    # The events stay: they are the audit trail, aged out with the retention.
    assert (
        await _messages(client.settings.nats_url, s.stream_events, s.events_filter(process_id=pid))
        == 3
    )
    await ex.aclose()


async def test_nothing_running_and_nothing_of_a_workflow_is_removed_alone(
    client: Client, settings: Settings
) -> None:
    ex = await _executor(settings, "e1")
    running = await _submitted(client)
    assert await ex.assign(timeout=5) is not None
    with pytest.raises(ConflictError, match="cancel it first"):
        await client.remove(running.process_id)
    graph = await client.submit_workflow(WorkflowSpec(function_specs=[_spec(node="a")]))
    assert isinstance(graph, ProcessGraph)
    with pytest.raises(ConflictError, match="workflow remove"):
        await client.remove(graph.process_ids[0])
    with pytest.raises(InvalidSpecError, match="cancel them first"):
        await client.remove_all(ProcessState.RUNNING)
    assert (await client.get(running.process_id)).state is ProcessState.RUNNING
    await ex.aclose()


async def test_removeall_takes_one_state_and_leaves_the_rest(
    client: Client, settings: Settings
) -> None:
    ex = await _executor(settings, "e1")
    ok = [await _submitted(client) for _ in range(3)]
    for _ in ok:
        await _run_one(ex)
    failed = await _submitted(client)
    await _run_one(ex, fail=True)
    waiting = await _submitted(client)
    other_type = await _submitted(client, _spec("other"))
    assert await client.remove_all(ProcessState.SUCCESS) == 3
    for p in ok:
        with pytest.raises(ProcessNotFoundError):
            await client.get(p.process_id)
    for p in (failed, waiting, other_type):
        await client.get(p.process_id)
    assert await client.remove_all(ProcessState.WAITING, executor_type="other") == 1
    assert (await client.get(waiting.process_id)).state is ProcessState.WAITING
    assert await client.remove_all(ProcessState.WAITING) == 1
    # A removed waiting process is not handed out any more.
    assert await ex.assign(timeout=0.2) is None
    await ex.aclose()


async def test_workflow_remove_takes_the_graph_and_its_processes(
    client: Client, settings: Settings
) -> None:
    s = Subjects(settings.prefix)
    ex = await _executor(settings, "e1")
    graph = await client.submit_workflow(
        WorkflowSpec(function_specs=[_spec(node="a"), _spec(node="b", deps=("a",))])
    )
    assert isinstance(graph, ProcessGraph)
    await _run_one(ex, log="first")
    with pytest.raises(ConflictError, match="running"):
        assert await ex.assign(timeout=5) is not None
        await client.graph_remove(graph.process_graph_id)
    await ex.close(graph.process_ids[1], ["done"])
    assert (await client.graph_wait(graph.process_graph_id, timeout=5)).state.is_terminal
    assert await client.graph_remove(graph.process_graph_id) == 2
    with pytest.raises(GraphNotFoundError):
        await client.graph_get(graph.process_graph_id)
    for pid in graph.process_ids:
        with pytest.raises(ProcessNotFoundError):
            await client.get(pid)
        assert await _messages(client.settings.nats_url, s.stream_logs, s.logs(COLONY, pid)) == 0
    assert await client.graph_list() == []
    await ex.aclose()


# nats-py leaves the socket of a refused reconnect open: its warning is not this test's.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_colony_remove_takes_everything_of_that_colony_only(
    client: Client, settings: Settings, broker: Broker
) -> None:
    s = Subjects(settings.prefix)
    await client.colony_add("lab", auto_approve=True)
    await enroll(broker.members, "user", colony="lab")
    lab = msgspec.structs.replace(settings, colony="lab")
    kept = await _submitted(client)  # in colony dev
    async with await Client.connect(lab, caller="user") as user:
        ex = await _executor(lab, "lab-1")
        await _submitted(user)
        await _run_one(ex, log="lab line")
        running = await _submitted(user)
        assert await ex.assign(timeout=5) is not None
        await _submitted(user)  # waiting
        graph = await user.submit_workflow(WorkflowSpec(function_specs=[_spec(node="a")]))
        assert isinstance(graph, ProcessGraph)
        # A submission no broker has taken yet: it must not come back as a process later.
        await user.nc.jetstream().publish(s.specs("lab", "echo"), b"{}")

        inspector = await raw_nats(settings.nats_url)  # hears what only lab-1 may hear
        told = await inspector.subscribe(s.control("lab", "lab-1"))
        await inspector.flush()
        removed = await client.colony_remove("lab")
        # What ran is cancelled first, so its executor is told at once.
        assert (await told.next_msg(timeout=5)).data
        await inspector.close()
        assert removed >= 4
        with pytest.raises(ColonyNotFoundError):
            await client.colony_get("lab")
        # The executor that ran a process cannot close it any more. On a secure server its
        # connection was cut with the colony, and the server refuses it back, naming the
        # colony's absence among the reasons (an insecure one: the broker says the colony is
        # gone; a request caught in the cut: no answer).
        with pytest.raises(
            (ColonyNotFoundError, NotAuthorizedError, BrokerUnavailableError)
        ) as refused:
            await ex.close(running.process_id, ["late"])
        if isinstance(refused.value, NotAuthorizedError):
            assert "the colony does not exist" in refused.value.message
        await ex.aclose()
    for stream, subject in (
        (s.kv_stream(s.bucket_processes), s.kv_subject(s.bucket_processes, "lab.*")),
        (s.kv_stream(s.bucket_graphs), s.kv_subject(s.bucket_graphs, "lab.*")),
        (s.kv_stream(s.bucket_executors), s.kv_subject(s.bucket_executors, "lab.*")),
        (s.stream_logs, s.logs("lab", "*")),
        (s.stream_events, s.events_filter(colony="lab")),
        (s.stream_specs, s.specs("lab", "*")),
    ):
        assert await _messages(client.settings.nats_url, stream, subject) == 0, subject
    assert (await client.get(kept.process_id)).state is ProcessState.WAITING
    # The other colony keeps its events.
    assert (
        await _messages(client.settings.nats_url, s.stream_events, s.events_filter(colony=COLONY))
        >= 1
    )
    # The name can be used again, and starts empty.
    await client.colony_add("lab")
    await enroll(broker.members, "user", colony="lab")  # the removed colony forgot its members
    async with await Client.connect(lab, caller="user") as user:
        assert await user.list_processes(state=ProcessState.SUCCESS) == []
        assert await user.executor_list() == []


@pytest.fixture
async def short_retention(broker_settings: BrokerSettings) -> AsyncIterator[Broker]:
    settings = msgspec.structs.replace(
        broker_settings,
        dedup_window_s=0.3,
        retention_s=0.3,
        retention_sweep_s=0.1,
    )
    async with running_broker(settings, owners=True) as broker:
        yield broker


async def _until_gone(client: Client, process_id: str) -> None:
    async with asyncio.timeout(10):
        while True:
            try:
                await client.get(process_id)
            except ProcessNotFoundError:
                return
            await asyncio.sleep(0.1)  # sleep-ok: polling the state under a deadline


async def test_retention_removes_what_ended_long_enough_ago(
    short_retention: Broker, settings: Settings
) -> None:
    await open_colony(settings)
    async with await Client.connect(settings, caller="tester") as client:
        ex = await _executor(settings, "e1")
        finished = await _submitted(client)
        await _run_one(ex, log="old")
        # Two branches: one fails (the graph ends FAILED at once), the other goes on running.
        graph = await client.submit_workflow(
            WorkflowSpec(function_specs=[_spec(node="a"), _spec(node="b")])
        )
        assert isinstance(graph, ProcessGraph)
        await _run_one(ex, fail=True)
        still = await ex.assign(timeout=5)
        assert still is not None
        assert (await client.graph_wait(graph.process_graph_id, timeout=5)).state.is_terminal
        later = await _submitted(client, _spec("later"))
        later_ex = await _executor_of(settings, "later-1", "later")
        await _run_one(later_ex)  # ends after the graph's state did
        waiting = await _submitted(client)

        await _until_gone(client, finished.process_id)
        await _until_gone(client, later.process_id)
        # Kept: a waiting process, and every process of a graph with a process still running,
        # though the graph's state ended before something the sweep has removed.
        assert (await client.get(waiting.process_id)).state is ProcessState.WAITING
        for pid in graph.process_ids:
            await client.get(pid)
        await ex.close(still.process_id, ["done"], attempt=still.retries)
        for pid in graph.process_ids:
            await _until_gone(client, pid)
        with pytest.raises(GraphNotFoundError):
            await client.graph_get(graph.process_graph_id)
        assert (await client.get(waiting.process_id)).state is ProcessState.WAITING
        await ex.aclose()
        await later_ex.aclose()


async def test_retention_keeps_what_ended_less_long_ago(
    client: Client, settings: Settings, broker_settings: BrokerSettings
) -> None:
    """A sweep with a retention of an hour leaves a process that ended a moment ago; a sweep
    with none removes it (so the first left it for its age, not for anything else)."""
    ex = await _executor(settings, "e1")
    p = await _submitted(client)
    await _run_one(ex, log="recent")
    async with standalone_service(broker_settings) as service:
        removal = Removal(service, Workflows(service))
        assert await Retention(removal, retention_s=3600, interval_s=60).sweep() == 0
        assert (await service.store.get(COLONY, p.process_id))[0].state is ProcessState.SUCCESS
        assert await Retention(removal, retention_s=0, interval_s=60).sweep() == 1
    with pytest.raises(ProcessNotFoundError):
        await client.get(p.process_id)
    await ex.aclose()


def test_durations_for_the_retention_setting() -> None:
    assert parse_duration("7d") == 7 * 86_400
    assert parse_duration("12h") == 43_200
    assert parse_duration("90s") == 90
    assert parse_duration("3600") == 3600
    for bad in ("", "soon", "-1d", "0"):
        with pytest.raises(ValueError, match=r"duration|more than zero"):
            parse_duration(bad)
    assert BrokerSettings.from_env({"COLONIES_RETENTION": "2d"}).retention_s == 2 * 86_400
