"""One test for each documented behaviour that had none: each fails when the line of the broker
that keeps the promise is broken (see docs/guarantees.md)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

import msgspec
import pytest

from colonyos.broker import Broker, transitions
from colonyos.broker.reports import Reports
from colonyos.broker.transitions import WAIT_TIMEOUT
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.errors import NotAuthorizedError, ProcessExistsError
from colonyos.executor import ExecutorApp, ProcessContext
from colonyos.messages import Close, GraphEvent, ProcessEvent, Rejection
from colonyos.models import (
    Conditions,
    FunctionSpec,
    Process,
    ProcessGraph,
    ProcessState,
    WorkflowSpec,
    now,
)

from .conftest import COLONY, open_colony, running_broker
from .helpers import (
    executor_client,
    spec,
    standalone_service,
    stored_events,
    submitted,
    until,
)


@pytest.fixture
def broker_settings(broker_settings: BrokerSettings) -> BrokerSettings:
    return msgspec.structs.replace(broker_settings, sweep_interval_s=0.05)


def node(name: str, *deps: str, args: list[Any] | None = None) -> FunctionSpec:
    return FunctionSpec(
        node_name=name,
        func_name="emit",
        args=args if args is not None else [name],
        conditions=Conditions(executor_type="echo", dependencies=list(deps)),
    )


async def nodes_of(client: Client, graph: ProcessGraph) -> dict[str, Process]:
    processes = {p.process_id: p for p in await client.graph_processes(graph)}
    return {name: processes[pid] for name, pid in graph.nodes.items()}


async def test_one_new_process_resolves_exactly_one_parked_request(
    client: Client, settings: Settings, broker: Broker
) -> None:
    """Wake-ups, not only assignments: the other parked requests are never woken (woken ones
    would lose the compare-and-set and park again, unseen by the executors)."""
    assert broker.service_of(COLONY) is not None
    service = broker.service_of(COLONY)
    async with (
        executor_client(settings, "e0") as e0,
        executor_client(settings, "e1") as e1,
        executor_client(settings, "e2") as e2,
    ):
        polls = [asyncio.ensure_future(ex.assign(timeout=20)) for ex in (e0, e1, e2)]
        await until(lambda: len(service.parked) == 3)
        parked = service.parked.all_waiters()
        first = await submitted(client)
        done, _ = await asyncio.wait(polls, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1
        assert sum(w.done() for w in parked) == 1
        assert len(service.parked) == 2
        # The two others get the next two, one each.
        rest = [await submitted(client), await submitted(client)]
        got = await asyncio.gather(*polls)
    assert sorted(p.process_id for p in got if p is not None) == sorted(
        p.process_id for p in [first, *rest]
    )


async def test_a_new_leader_stores_a_loaded_revisions_event_before_the_next(
    own_brokers: BrokerSettings, settings: Settings
) -> None:
    """A broker wrote a revision and died before publishing its event: the next leader stores
    that event before the event of the next transition."""
    async with contextlib.AsyncExitStack() as stack:  # a secure server lets in through a broker
        async with running_broker(own_brokers, owners=True):
            await open_colony(settings)
            c = await stack.enter_async_context(await Client.connect(settings, caller="tester"))
            p = await submitted(c)
            ex = await stack.enter_async_context(executor_client(settings, "e1"))
        # No broker runs: one that dies after its KV write, before its event.
        async with standalone_service(own_brokers) as dying:
            process, waiting = await dying.store.get(COLONY, p.process_id)
            taken = transitions.assign(process, dying.executor(COLONY, "e1"), now=now())
            subjects = dying.subjects
            subject = subjects.kv_subject(
                subjects.bucket_processes, subjects.process_key(COLONY, p.process_id)
            )
            cas = {"Nats-Expected-Last-Subject-Sequence": str(waiting)}
            running = await dying.store.publisher.write(subject, dying.store.encoded(taken), cas)
        async with running_broker(own_brokers, owners=True):
            closed = await ex.close(p.process_id, ["done"], attempt=0)
            assert closed.state is ProcessState.SUCCESS
        events = await stored_events(
            settings.nats_url, settings.prefix, COLONY, p.process_id, last=ProcessState.SUCCESS
        )
    assert [state for state, _ in events] == [
        ProcessState.WAITING,
        ProcessState.RUNNING,
        ProcessState.SUCCESS,
    ]
    assert [revision for _, revision in events][:2] == [waiting, running]
    assert events[2][1] > running


async def test_log_lines_only_from_the_executor_that_holds_the_process(
    client: Client, settings: Settings
) -> None:
    p = await submitted(client)
    async with (
        executor_client(settings, "owner") as owner,
        executor_client(settings, "other") as other,
    ):
        got = await owner.assign(timeout=5)
        assert got is not None and got.process_id == p.process_id
        with pytest.raises(NotAuthorizedError, match="not assigned"):
            await other.add_logs(p.process_id, ["not mine"])
        await owner.add_logs(p.process_id, ["mine"], attempt=got.attempt)
        await owner.close(p.process_id, [], attempt=got.attempt)
    lines = [entry.message async for entry in client.logs(p.process_id)]
    assert lines == ["mine"]


def fan_in() -> WorkflowSpec:
    """a; then b, c and e, each after a; then d, after b, c and e (in that order)."""
    return WorkflowSpec(
        function_specs=[
            node("a"),
            node("b", "a", args=["from-b"]),
            node("c", "a", args=["from-c"]),
            node("e", "a", args=["from-e"]),
            node("d", "b", "c", "e"),
        ]
    )


async def run_parents_against_their_order(ex: Client, *, one_batch: bool) -> Process:
    """Run a, then b, c and e at once (three slots) and end them against their order in d's
    dependencies: e, c, then b, one request each; or b, then e and c in one ``results`` batch.
    The child d as it is assigned.

    In the batch, the end of c or of e releases d (whichever of the two the broker's
    interleaving lets see both ended), never b's: a broker that put the output of the parent
    whose end released the child first (outputs gathered as the parents come in) gives d c's
    or e's output first, whatever that interleaving."""
    a = await ex.assign(timeout=5)
    assert a is not None and a.spec.node_name == "a"
    await ex.close(a.process_id, ["a"], attempt=a.attempt)
    slots = [await ex.assign(timeout=5) for _ in range(3)]
    by_name = {p.spec.node_name: p for p in slots if p is not None}
    b, c, e = by_name["b"], by_name["c"], by_name["e"]
    if one_batch:
        await ex.close(b.process_id, list(b.spec.args), attempt=b.attempt)
        closes = [
            Close(process_id=p.process_id, output=list(p.spec.args), attempt=p.attempt)
            for p in (e, c)
        ]
        assert await ex.send_results(closes=closes) == {}
    else:
        for p in (e, c, b):
            await ex.close(p.process_id, list(p.spec.args), attempt=p.attempt)
    d = await ex.assign(timeout=5)
    assert d is not None and d.spec.node_name == "d"
    return d


@pytest.mark.parametrize("one_batch", [False, True], ids=["one-by-one", "one-batch"])
async def test_a_child_gets_its_parents_outputs_in_dependency_order(
    client: Client, settings: Settings, one_batch: bool
) -> None:
    """Parents that finish against their order in the spec, one by one or two of them in one
    batch: the child's input still follows the spec (b's output, then c's, then e's)."""
    graph = await client.submit_workflow(fan_in())
    assert isinstance(graph, ProcessGraph)
    async with executor_client(settings, "three-slots") as ex:
        d = await run_parents_against_their_order(ex, one_batch=one_batch)
        assert d.input == ["from-b", "from-c", "from-e"]
        await ex.close(d.process_id, list(d.input), attempt=d.attempt)
    done = await client.graph_wait(graph.process_graph_id, timeout=10)
    assert done.state is ProcessState.SUCCESS


async def test_cancelling_a_process_fails_its_unfinished_descendants(client: Client) -> None:
    graph = await client.submit_workflow(
        WorkflowSpec(function_specs=[node("a"), node("b", "a"), node("c", "b")])
    )
    assert isinstance(graph, ProcessGraph)
    await client.cancel(graph.nodes["a"])
    done = await client.graph_wait(graph.process_graph_id, timeout=10)
    nodes = await nodes_of(client, done)
    assert nodes["a"].state is ProcessState.CANCELLED
    for name in ("b", "c"):
        assert nodes[name].state is ProcessState.FAILED
    assert nodes["b"].errors == ["parent a cancelled"]
    assert nodes["c"].errors == ["parent b failed"]


async def test_maxwaittime_counts_again_from_a_requeue(client: Client, settings: Settings) -> None:
    """A process re-queued after its maxexectime may wait maxwaittime again, from then on."""
    async with executor_client(settings, "slow") as ex:
        poll = asyncio.ensure_future(ex.assign(timeout=10))
        # Parked before the process exists: it is assigned at once, whatever maxwaittime is.
        p = await submitted(client, max_wait_time=2, max_exec_time=1, max_retries=1)
        got = await poll
        assert got is not None and got.process_id == p.process_id
        again = await client.wait_for_state(p.process_id, ProcessState.WAITING, timeout=10)
    assert again.retries == 1
    # Re-armed at the re-queue, which came after the first run's execution deadline.
    assert again.wait_deadline >= got.exec_deadline + timedelta(seconds=2)
    done = await client.wait(p.process_id, timeout=10)
    assert done.state is ProcessState.FAILED and done.errors == [WAIT_TIMEOUT]


async def test_unlimited_retries_are_unlimited(client: Client, settings: Settings) -> None:
    """``maxretries: -1``: running out of time re-queues it, however many times."""
    p = await submitted(client, max_exec_time=1, max_retries=-1)
    async with executor_client(settings, "slow") as ex:
        for retries in range(3):
            got = await ex.assign(timeout=10)
            assert got is not None and got.process_id == p.process_id
            assert got.retries == retries
            await client.wait_for_state(p.process_id, ProcessState.WAITING, timeout=10)
        last = await ex.assign(timeout=10)
        assert last is not None and last.retries == 3
        done = await ex.close(p.process_id, ["at last"], attempt=last.attempt)
    assert done.state is ProcessState.SUCCESS and done.errors == [] and done.retries == 3


async def test_a_new_run_under_a_name_requeues_the_old_runs_processes_at_once(
    client: Client, settings: Settings
) -> None:
    """The old run does not answer (crashed): registering the name again queues what it ran
    before the register returns, as an executor loss; the old run's close is refused."""
    p = await submitted(client, max_retries=0)
    async with executor_client(settings, "e1") as old:
        got = await old.assign(timeout=5)
        assert got is not None and got.process_id == p.process_id
        async with executor_client(settings, "e1") as new:
            back = await client.get(p.process_id)
            assert back.state is ProcessState.WAITING and not back.is_assigned
            assert back.executor_losses == 1 and back.retries == 0
            again = await new.assign(timeout=5)
            assert again is not None and again.process_id == p.process_id
            assert again.attempt == got.attempt + 1
            with pytest.raises(NotAuthorizedError, match="not assigned"):
                await old.close(p.process_id, ["old"], attempt=got.attempt)
            done = await new.close(p.process_id, ["new"], attempt=again.attempt)
    assert done.state is ProcessState.SUCCESS and done.output == ["new"]


async def test_a_requeue_stops_the_running_function(client: Client, settings: Settings) -> None:
    """Out of time and queued again: the executor is told, its function stops, and the next
    attempt runs."""
    app = ExecutorApp("echo", "timed-out", settings=settings, heartbeat_s=0.05)
    first_stopped = asyncio.Event()

    @app.handler()
    async def slow_then_fast(ctx: ProcessContext) -> list[object]:
        if ctx.process.retries == 0:
            try:
                await asyncio.Event().wait()
            finally:
                first_stopped.set()
        return ["second"]

    p = await submitted(client, max_exec_time=1, max_retries=1)
    runner = asyncio.create_task(app.run())
    try:
        async with asyncio.timeout(10):
            await first_stopped.wait()
        done = await client.wait(p.process_id, timeout=10)
    finally:
        app.stop()
        await asyncio.wait_for(runner, 15)  # a function that never stopped is cancelled
    assert done.state is ProcessState.SUCCESS and done.output == ["second"]
    assert done.retries == 1


async def test_a_graph_says_each_change_of_its_state(client: Client, settings: Settings) -> None:
    graph = await client.submit_workflow(WorkflowSpec(function_specs=[node("a"), node("b", "a")]))
    assert isinstance(graph, ProcessGraph) and graph.state is ProcessState.WAITING
    states: list[ProcessState] = []
    async with client.watch(graph.process_graph_id) as watch:
        async with executor_client(settings, "e1") as ex:
            for name in ("a", "b"):
                p = await ex.assign(timeout=5)
                assert p is not None and p.spec.node_name == name
                await ex.close(p.process_id, [name], attempt=p.attempt)
        async with asyncio.timeout(10):
            while not states or not states[-1].is_terminal:
                event = await watch.next(None)
                if isinstance(event, GraphEvent):
                    assert event.process_graph_id == graph.process_graph_id
                    states.append(event.state)
    assert states == [ProcessState.RUNNING, ProcessState.SUCCESS]


async def test_add_child_as_a_branch_runs_beside_the_existing_children(
    client: Client, settings: Settings
) -> None:
    """Without ``insert``, the new child is one more child of the parent: the parent's other
    children keep it as their parent and run too."""
    graph = await client.submit_workflow(WorkflowSpec(function_specs=[node("a"), node("b", "a")]))
    assert isinstance(graph, ProcessGraph)
    async with executor_client(settings, "e1") as ex:
        a = await ex.assign(timeout=5)
        assert a is not None and a.spec.node_name == "a"
        branch = await ex.add_child(a, node("branch"))
        assert branch.parents == [a.process_id]
        await ex.close(a.process_id, ["from-a"], attempt=a.attempt)
        ran: dict[str, list[Any]] = {}
        for _ in range(2):
            p = await ex.assign(timeout=5)
            assert p is not None
            ran[p.process_id] = list(p.input)
            await ex.close(p.process_id, [], attempt=p.attempt)
    assert ran == {graph.nodes["b"]: ["from-a"], branch.process_id: ["from-a"]}
    done = await client.graph_wait(graph.process_graph_id, timeout=10)
    assert done.state is ProcessState.SUCCESS and len(done.process_ids) == 3
    parent = await client.get(a.process_id)
    assert parent.children == [graph.nodes["b"], branch.process_id]


async def test_a_new_leader_finishes_a_half_done_workflow(
    own_brokers: BrokerSettings, settings: Settings
) -> None:
    """A broker wrote a parent's success and died before releasing its child: the next
    leader releases it, with the parent's output."""
    async with contextlib.AsyncExitStack() as stack:  # a secure server lets in through a broker
        async with running_broker(own_brokers, owners=True):
            await open_colony(settings)
            c = await stack.enter_async_context(await Client.connect(settings, caller="tester"))
            graph = await c.submit_workflow(
                WorkflowSpec(function_specs=[node("a"), node("b", "a")])
            )
            assert isinstance(graph, ProcessGraph)
            ex = await stack.enter_async_context(executor_client(settings, "e1"))
            a = await ex.assign(timeout=5)
            assert a is not None and a.spec.node_name == "a"
        # No broker leads: one without its workflow part writes a's success, and dies.
        async with standalone_service(own_brokers) as dying:
            closed = await Reports(dying).close(
                COLONY, "e1", Close(process_id=a.process_id, output=["from-a"])
            )
            assert closed.state is ProcessState.SUCCESS
        async with running_broker(own_brokers, owners=True):
            b = await ex.assign(timeout=5)
            assert b is not None and b.process_id == graph.nodes["b"] and b.input == ["from-a"]
            await ex.close(b.process_id, ["done"], attempt=b.attempt)
            done = await c.graph_wait(graph.process_graph_id, timeout=10)
    assert done.state is ProcessState.SUCCESS


DEDUP_WINDOW_S = 2.0


async def test_the_same_id_after_the_dedup_window_is_refused_by_kv(
    own_brokers: BrokerSettings, settings: Settings
) -> None:
    """Within JetStream's dedup window the second publish is dropped; after it, the spec
    reaches the broker, whose KV create refuses the existing key: still one process."""
    bs = msgspec.structs.replace(own_brokers, dedup_window_s=DEDUP_WINDOW_S)
    pid = "d" * 64
    async with running_broker(bs, owners=True):
        await open_colony(settings)
        async with (
            await Client.connect(settings, caller="tester") as c,
            executor_client(settings, "e1") as ex,
        ):
            loop = asyncio.get_running_loop()
            sent = loop.time()
            first = await c.submit(spec(), process_id=pid)
            subject = c.subjects.specs(COLONY, "echo")
            again = msgspec.json.encode(spec())
            headers = {"Nats-Msg-Id": pid}
            assert (await c.js.publish(subject, again, headers=headers)).duplicate
            got = await ex.assign(timeout=5)
            assert got is not None and got.process_id == first.process_id == pid
            while loop.time() - sent < DEDUP_WINDOW_S + 0.5:
                await asyncio.sleep(0.1)  # sleep-ok: letting the dedup window pass is the point
            async with c.watch(pid) as watch:
                assert not (await c.js.publish(subject, again, headers=headers)).duplicate
                async with asyncio.timeout(10):
                    event = await watch.next(None)
                    while not isinstance(event, Rejection | ProcessEvent):
                        event = await watch.next(None)
            # Refused, not written over (which would be a process event).
            assert isinstance(event, Rejection) and event.code == ProcessExistsError.code
            assert [p.process_id for p in await c.list_processes()] == [pid]
            now_ = await c.get(pid)
            assert now_.state is ProcessState.RUNNING and now_.assignments == 1
