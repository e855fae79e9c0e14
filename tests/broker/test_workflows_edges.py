"""Workflows at their edges: what the mutation run of workflows.py showed no test pinned.

The graph record (its times, ids, events, a lost compare-and-set), the ids and colony a
workflow message may choose, children added and inserted (across graphs, relinking, queue
place), the release of a child whose graph is no longer followed (and two parents ending at
once), failures and cancels passing what ended already, a redelivered workflow, and a new
leader loading graphs that ended or lost a process. docs/guarantees.md lists the mutant each
test kills.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import msgspec
import pytest

from colonyos import limits
from colonyos.broker import transitions
from colonyos.broker.store import StaleRevisionError
from colonyos.broker.workflows import Workflows, plan
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.errors import InvalidSpecError
from colonyos.messages import GraphEvent, Rejection
from colonyos.models import (
    ZERO_TIME,
    Conditions,
    FunctionSpec,
    Process,
    ProcessGraph,
    ProcessState,
    WorkflowSpec,
)
from colonyos.subjects import GRAPH_TOKEN, Subjects

from ..helpers import executor_client, raw_nats, standalone_service


def node(name: str, *deps: str, max_wait_time: int = -1) -> FunctionSpec:
    return FunctionSpec(
        node_name=name,
        func_name="f",
        max_wait_time=max_wait_time,
        conditions=Conditions(executor_type="wf", dependencies=list(deps)),
    )


def ns_of(t: datetime) -> int:
    return int(t.timestamp() * 1e9)


async def graph_in(client: Client, graph_id: str, state: ProcessState) -> ProcessGraph:
    """The graph once it is in ``state`` (its update follows the process's write)."""
    async with asyncio.timeout(10):
        while (graph := await client.graph_get(graph_id)).state is not state:
            await asyncio.sleep(0.01)  # sleep-ok: polling state under a deadline
    return graph


async def submitted_graph(client: Client, *specs: FunctionSpec) -> ProcessGraph:
    graph = await client.submit_workflow(WorkflowSpec(function_specs=list(specs)))
    assert isinstance(graph, ProcessGraph)
    return graph


@pytest.fixture
async def worker(client: Client, settings: Settings) -> AsyncIterator[Client]:
    async with executor_client(settings, "wf-1", "wf") as c:
        yield c


async def assigned(worker: Client) -> Process:
    process = await worker.assign(timeout=5)
    assert process is not None
    return process


# -- plan ------------------------------------------------------------------------------------
def test_the_nodes_of_a_workflow_queue_at_its_submission_in_node_order() -> None:
    t = datetime.now(UTC)
    ns = ns_of(t) | 0b11  # low bits set: ns + i is not ns | i, nor ns ^ i
    _, processes = plan(
        WorkflowSpec(function_specs=[node("a"), node("b"), node("c")]), "dev", "g" * 64, t, ns
    )
    # One nanosecond apart from the submission's: work submitted after the workflow queues
    # behind all of its nodes, not between them.
    assert [p.priority_time for p in processes] == [ns, ns + 1, ns + 2]


def test_roots_keep_their_max_wait_and_children_wait_for_their_parents_instead() -> None:
    t = datetime.now(UTC)
    wf = WorkflowSpec(
        function_specs=[node("a", max_wait_time=60), node("b", "a", max_wait_time=60)]
    )
    _, (root, child) = plan(wf, "dev", "g" * 64, t, ns_of(t))
    assert (root.wait_deadline - t).total_seconds() == 60
    assert child.wait_deadline == ZERO_TIME  # its wait starts when it is released


# -- what a workflow message chooses ----------------------------------------------------------
async def test_a_message_id_is_the_graph_id_only_if_it_is_64_hex_digits(
    client: Client, settings: Settings
) -> None:
    subjects = Subjects(settings.prefix)
    nc = await raw_nats(settings.nats_url)
    body = b'[{"nodename": "a", "funcname": "f", "conditions": {"executortype": "wf"}}]'
    too_long = "a" * 65
    try:
        await nc.jetstream().publish(
            subjects.workflows("dev"), body, headers={"Nats-Msg-Id": too_long}
        )
        async with asyncio.timeout(10):
            while not (graphs := await client.graph_list()):
                await asyncio.sleep(0.01)  # sleep-ok: polling state under a deadline
    finally:
        await nc.close()
    (graph,) = graphs
    assert graph.process_graph_id != too_long and len(graph.process_graph_id) == 64


@pytest.mark.parametrize("other", ["archive", "elsewhere"])  # sorting before and after "dev"
async def test_a_workflow_naming_another_colony_is_rejected(
    client: Client, settings: Settings, other: str
) -> None:
    subjects = Subjects(settings.prefix)
    nc = await raw_nats(settings.nats_url)
    try:
        events = await nc.subscribe(subjects.events_filter(colony="dev", state="rejected"))
        body = (
            b'{"colonyname": "%s", "functionspecs": '
            b'[{"nodename": "a", "funcname": "f", "conditions": {"executortype": "wf"}}]}'
        ) % other.encode()
        await nc.jetstream().publish(subjects.workflows("dev"), body)
        msg = await events.next_msg(timeout=10)
    finally:
        await nc.close()
    assert b"does not match the subject's colony" in msg.data
    assert await client.list_processes() == []


async def test_a_raw_workflow_node_too_large_to_store_is_named_in_the_rejection(
    client: Client, settings: Settings
) -> None:
    limit = limits.record_limit(client.nc.max_payload)
    conditions = {"executortype": "wf"}
    big = {"nodename": "big", "funcname": "f", "args": ["x" * (limit - 200)]}
    small = {"nodename": "a", "funcname": "f"}
    body = msgspec.json.encode([{**n, "conditions": conditions} for n in (small, big)])
    assert len(body) < client.nc.max_payload  # the message fits; its process record does not
    async with client.subscribe(executor_type=GRAPH_TOKEN, state="rejected") as rejections:
        await client.js.publish(Subjects(settings.prefix).workflows("dev"), body)
        event = await rejections.next()
    assert isinstance(event, Rejection)
    assert event.error.startswith("$[1]: the process record of node 'big' would be ")
    assert await client.list_processes() == []


# -- the graph's record -----------------------------------------------------------------------
async def test_a_graph_records_when_it_started_and_keeps_it(client: Client, worker: Client) -> None:
    graph = await submitted_graph(client, node("a"), node("b", "a"))
    assert graph.start_time == ZERO_TIME
    a = await assigned(worker)
    running = await graph_in(client, graph.process_graph_id, ProcessState.RUNNING)
    assert graph.submission_time <= running.start_time != ZERO_TIME
    assert sorted(running.process_ids) == sorted(graph.process_ids)  # rewritten, kept
    await worker.close(a.process_id, [])
    await worker.close((await assigned(worker)).process_id, [])
    done = await graph_in(client, graph.process_graph_id, ProcessState.SUCCESS)
    assert done.start_time == running.start_time < done.end_time


async def test_an_added_child_is_in_its_graph_at_once_and_queues_at_its_own_time(
    client: Client, worker: Client
) -> None:
    graph = await submitted_graph(client, node("a"))
    a = await assigned(worker)
    await graph_in(client, graph.process_graph_id, ProcessState.RUNNING)
    child = await worker.add_child(a, node("x"))
    assert child.wait_for_parents and child.parents == [a.process_id]  # runs after a
    # The graph stays RUNNING: its record takes the child with no change of state.
    stored = await client.graph_get(graph.process_graph_id)
    assert stored.state is ProcessState.RUNNING
    assert set(stored.process_ids) == {a.process_id, child.process_id}
    assert abs(child.priority_time - ns_of(child.submission_time)) < 1_000_000


async def test_a_graph_whose_running_process_went_back_to_the_queue_is_waiting_again(
    client: Client, worker: Client
) -> None:
    graph = await submitted_graph(client, node("a"))
    a = await assigned(worker)
    await graph_in(client, graph.process_graph_id, ProcessState.RUNNING)
    async with client.watch(graph.process_graph_id) as watch:
        assert await worker.release(a.assigned_executor_id) == 1
        async with asyncio.timeout(10):
            while not isinstance(event := await watch.next(None), GraphEvent):
                pass
    assert event.state is ProcessState.WAITING
    assert (await client.graph_get(graph.process_graph_id)).state is ProcessState.WAITING


async def test_a_lost_race_for_the_graph_record_is_retried(own_brokers: BrokerSettings) -> None:
    async with standalone_service(own_brokers) as service:
        workflows = Workflows(service)
        t = datetime.now(UTC)
        graph, processes = plan(WorkflowSpec(function_specs=[node("a")]), "dev", "d" * 64, t, 1)
        await workflows.start(graph, processes)
        store = service.store
        read = store.get_graph

        async def read_then_lose(colony: str, graph_id: str) -> tuple[ProcessGraph, int]:
            # Another writer (a broker that still believes it leads) writes in between.
            store.get_graph = read  # type: ignore[method-assign]
            got, revision = await read(colony, graph_id)
            await store.update_graph(got, revision)
            with pytest.raises(StaleRevisionError):
                await store.update_graph(got, revision)
            return got, revision

        store.get_graph = read_then_lose  # type: ignore[method-assign]
        pid = processes[0].process_id
        await service.transition("dev", pid, lambda p: transitions.cancel(p, now=t))
        stored, _ = await store.get_graph("dev", graph.process_graph_id)
        assert stored.state is ProcessState.CANCELLED


async def test_a_graph_event_says_a_change_of_state_only(client: Client, worker: Client) -> None:
    graph = await submitted_graph(client, node("a"))
    a = await assigned(worker)
    await graph_in(client, graph.process_graph_id, ProcessState.RUNNING)
    async with client.watch(graph.process_graph_id) as watch:
        await worker.add_child(a, node("x"))  # written to the graph, still RUNNING: no event
        await client.graph_cancel(graph.process_graph_id)
        async with asyncio.timeout(10):
            while not isinstance(event := await watch.next(None), GraphEvent):
                pass
    assert event.state is ProcessState.CANCELLED


@pytest.mark.parametrize("first", [True, False])
async def test_an_inserted_child_takes_only_its_parents_place_downstream(
    client: Client, worker: Client, first: bool
) -> None:
    graph = await submitted_graph(client, node("a"), node("b"), node("c", "a", "b"))
    # The parent whose id sorts first, or last: the other parent's must stay either way.
    parent, other = sorted([await assigned(worker), await assigned(worker)], key=_id)
    if not first:
        parent, other = other, parent
    child = await worker.add_child(parent, node("x"), insert=True)
    c = await client.get(graph.nodes["c"])
    assert sorted(c.parents) == sorted([child.process_id, other.process_id])


async def test_later_inserts_go_in_front_of_the_same_children(
    client: Client, worker: Client
) -> None:
    graph = await submitted_graph(client, node("a"), node("c", "a"))
    a = await assigned(worker)
    x1 = await worker.add_child(a, node("x1"), insert=True)
    x2 = await worker.add_child(a, node("x2"), insert=True)
    assert (await client.get(x2.process_id)).children == [graph.nodes["c"]]
    c = await client.get(graph.nodes["c"])
    assert c.parents == [x1.process_id, x2.process_id]


def _id(process: Process) -> str:
    return process.process_id


@pytest.mark.parametrize("other", ["0" * 64, "f" * 64])  # sorting before and after
async def test_a_child_is_added_only_to_its_parents_graph(
    client: Client, worker: Client, other: str
) -> None:
    graph = await submitted_graph(client, node("a"))
    a = await assigned(worker)
    elsewhere = msgspec.structs.replace(a, process_graph_id=other)
    with pytest.raises(InvalidSpecError, match=f"is not in graph {other}"):
        await worker.add_child(elsewhere, node("x"))
    assert (await client.graph_get(graph.process_graph_id)).process_ids == [a.process_id]


async def test_a_child_waits_for_a_parent_its_graph_no_longer_follows(
    client: Client, worker: Client
) -> None:
    # x cancelled ends the graph (CANCELLED), which is no longer followed: c's parents are
    # then read, and one still running keeps it waiting.
    graph = await submitted_graph(client, node("a"), node("b"), node("x"), node("c", "a", "b"))
    await client.cancel(graph.nodes["x"])
    await graph_in(client, graph.process_graph_id, ProcessState.CANCELLED)
    first, second = await assigned(worker), await assigned(worker)
    await worker.close(first.process_id, [])
    c = await client.get(graph.nodes["c"])
    assert c.state is ProcessState.WAITING and c.wait_for_parents
    await worker.close(second.process_id, [])
    assert (await assigned(worker)).process_id == graph.nodes["c"]


# -- failure ------------------------------------------------------------------------------------
async def test_a_child_that_ended_first_does_not_stop_the_failure_of_its_siblings(
    client: Client, worker: Client
) -> None:
    # a's children are [c, b]: b, taken first, was cancelled before a failed.
    graph = await submitted_graph(client, node("a"), node("c", "a"), node("b", "a"))
    await client.cancel(graph.nodes["b"])
    a = await assigned(worker)
    await worker.fail(a.process_id, ["broken"])
    async with asyncio.timeout(10):
        while not (c := await client.get(graph.nodes["c"])).state.is_terminal:
            await asyncio.sleep(0.01)  # sleep-ok: polling state under a deadline
    assert c.state is ProcessState.FAILED


async def test_a_failure_reaching_a_process_twice_still_fails_the_rest(
    client: Client, worker: Client
) -> None:
    # a's children are [e, b, c], taken from the end: c, then d, b, d again (seen), then e.
    graph = await submitted_graph(
        client, node("a"), node("e", "a"), node("b", "a"), node("c", "a"), node("d", "b", "c")
    )
    a = await assigned(worker)
    await worker.fail(a.process_id, ["broken"])
    async with asyncio.timeout(10):
        while not (await client.get(graph.nodes["e"])).state.is_terminal:
            await asyncio.sleep(0.01)  # sleep-ok: polling state under a deadline
    ended = {n: await client.get(graph.nodes[n]) for n in "ebcd"}
    assert {p.state for p in ended.values()} == {ProcessState.FAILED}
    # a's children say it was a, by its name (d follows whichever of b and c failed first).
    assert [ended[n].errors for n in "ebc"] == [["parent a failed"]] * 3


async def test_cancelling_a_graph_passes_a_process_that_ended(
    client: Client, worker: Client
) -> None:
    graph = await submitted_graph(client, node("a"), node("b"))
    for _ in range(2):
        await assigned(worker)
    running = await graph_in(client, graph.process_graph_id, ProcessState.RUNNING)
    first, other = running.process_ids  # the order graph_cancel takes them in
    await worker.close(first, [])
    cancelled = await client.graph_cancel(graph.process_graph_id)
    assert cancelled.state is ProcessState.CANCELLED
    assert (await client.get(other)).state is ProcessState.CANCELLED
    assert (await client.get(first)).state is ProcessState.SUCCESS


# -- redelivery ---------------------------------------------------------------------------------
async def test_a_redelivered_workflow_finishes_what_an_ended_process_started(
    own_brokers: BrokerSettings,
) -> None:
    async with standalone_service(own_brokers) as service:
        workflows = Workflows(service)
        t = datetime.now(UTC)
        wf = WorkflowSpec(function_specs=[node("a"), node("b", "a")])
        graph, processes = plan(wf, "dev", "e" * 64, t, ns_of(t))
        a_id, b_id = (p.process_id for p in processes)
        await workflows.start(graph, processes)
        # The broker ended a, then died before failing its child.
        service.graph_hook = None
        await service.transition("dev", a_id, lambda p: transitions.cancel(p, now=t))
        service.graph_hook = workflows.after_transition
        await workflows.start(graph, processes)  # the spec, delivered again
        a, _ = await service.store.get("dev", a_id)
        b, _ = await service.store.get("dev", b_id)
        assert (a.state, b.state) == (ProcessState.CANCELLED, ProcessState.FAILED)
        stored, _ = await service.store.get_graph("dev", graph.process_graph_id)
        assert stored.state.is_terminal


async def test_a_new_leader_finishes_a_graph_with_a_process_gone(
    own_brokers: BrokerSettings,
) -> None:
    async with standalone_service(own_brokers) as service:
        t = datetime.now(UTC)
        wf = WorkflowSpec(function_specs=[node("x"), node("a"), node("b", "a")])
        graph, processes = plan(wf, "dev", "c" * 64, t, ns_of(t))
        x, a, b = processes
        await Workflows(service).start(graph, processes)
        await service.store.purge_process(x)  # removed: the graph still names it
        # The leader ended a, then died before failing its child.
        service.graph_hook = None
        await service.transition("dev", a.process_id, lambda p: transitions.cancel(p, now=t))
        await Workflows(service).load()  # the next leader: x is skipped, a's end finished
        assert (await service.store.get("dev", b.process_id))[0].state is ProcessState.FAILED


async def test_an_end_in_a_graph_partly_removed_is_still_written(
    own_brokers: BrokerSettings,
) -> None:
    async with standalone_service(own_brokers) as service:
        workflows = Workflows(service)
        t = datetime.now(UTC)
        wf = WorkflowSpec(function_specs=[node("a"), node("b", "a"), node("c")])
        graph, (a, b, c) = plan(wf, "dev", "b" * 64, t, ns_of(t))
        await workflows.start(graph, [a, b, c])
        await service.store.purge_process(b)  # a child gone before its parent succeeded
        done = lambda p: msgspec.structs.replace(p, state=ProcessState.SUCCESS)  # noqa: E731
        assert (await service.transition("dev", a.process_id, done)).state is ProcessState.SUCCESS
        await service.store.purge_graph(graph)  # the graph record gone before c ended
        cancelled = await service.transition(
            "dev", c.process_id, lambda p: transitions.cancel(p, now=t)
        )
        assert cancelled.state is ProcessState.CANCELLED


async def test_an_ended_graph_is_no_longer_followed(own_brokers: BrokerSettings) -> None:
    async with standalone_service(own_brokers) as service:
        workflows = Workflows(service)
        t = datetime.now(UTC)
        wf = WorkflowSpec(function_specs=[node("a"), node("b", "a")])
        graph, (a, b) = plan(wf, "dev", "a" * 64, t, ns_of(t))
        await workflows.start(graph, [a, b])
        assert set(workflows.members[graph.process_graph_id]) == {a.process_id, b.process_id}
        await service.transition("dev", a.process_id, lambda p: transitions.cancel(p, now=t))
        # Ended (CANCELLED, b FAILED): nothing of it stays in memory.
        assert graph.process_graph_id not in workflows.members
        assert not {a.process_id, b.process_id} & set(workflows._graph_of)


async def test_a_child_is_released_when_its_last_two_parents_end_at_once(
    own_brokers: BrokerSettings,
) -> None:
    """In a graph no longer followed (x cancelled ended it), the end of p1 reads p2 as
    waiting; p2 ends before that check is done, so its own try finds the child being
    released already: the first try must look again."""
    async with standalone_service(own_brokers) as service:
        workflows = Workflows(service)
        t = datetime.now(UTC)
        specs = [node("p1"), node("p2"), node("x"), node("c", "p1", "p2")]
        graph, (p1, p2, x, c) = plan(WorkflowSpec(function_specs=specs), "dev", "9" * 64, t, 1)
        await workflows.start(graph, [p1, p2, x, c])
        await service.transition("dev", x.process_id, lambda p: transitions.cancel(p, now=t))
        store = service.store
        read = store.get
        p2_read, p2_done = asyncio.Event(), asyncio.Event()

        async def read_p2_then_wait(colony: str, process_id: str) -> tuple[Process, int]:
            got = await read(colony, process_id)
            if process_id == p2.process_id and not p2_read.is_set():
                p2_read.set()  # p2 read as it was (WAITING); its end comes before the check
                await p2_done.wait()
            return got

        store.get = read_p2_then_wait  # type: ignore[method-assign]
        done = lambda p: msgspec.structs.replace(p, state=ProcessState.SUCCESS)  # noqa: E731
        first = asyncio.create_task(service.transition("dev", p1.process_id, done))
        async with asyncio.timeout(10):
            await p2_read.wait()
            await service.transition("dev", p2.process_id, done)
            p2_done.set()
            await first
        store.get = read  # type: ignore[method-assign]
        child, _ = await store.get("dev", c.process_id)
        assert not child.wait_for_parents  # released


async def test_a_new_leader_passes_ended_graphs_and_finishes_the_rest(
    own_brokers: BrokerSettings,
) -> None:
    async with standalone_service(own_brokers) as service:
        t = datetime.now(UTC)
        cancel = lambda p: transitions.cancel(p, now=t)  # noqa: E731
        ended, (x,) = plan(WorkflowSpec(function_specs=[node("x")]), "dev", "8" * 64, t, 1)
        await Workflows(service).start(ended, [x])
        await service.transition("dev", x.process_id, cancel)  # its graph ends, written first
        wf = WorkflowSpec(function_specs=[node("a"), node("b", "a")])
        graph, (a, b) = plan(wf, "dev", "7" * 64, t, 2)
        await Workflows(service).start(graph, [a, b])
        # The leader ended a, then died before failing its child.
        service.graph_hook = None
        await service.transition("dev", a.process_id, cancel)
        await Workflows(service).load()
        assert (await service.store.get("dev", b.process_id))[0].state is ProcessState.FAILED
