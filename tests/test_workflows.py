"""Workflows: graphs, input passing, dynamic children, failure cascade, rejection, cancel."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from colonyos.client import Client
from colonyos.errors import InvalidSpecError
from colonyos.executor import ExecutorApp, ProcessContext
from colonyos.graphs import check_workflow
from colonyos.messages import Rejection
from colonyos.models import Conditions, FunctionSpec, ProcessGraph, ProcessState, WorkflowSpec
from colonyos.specs import load_workflow_spec

from .helpers import DATA, raw_nats


def node(name: str, func: str = "emit", *deps: str, args: list[Any] | None = None) -> FunctionSpec:
    return FunctionSpec(
        node_name=name,
        func_name=func,
        args=args if args is not None else [name],
        conditions=Conditions(executor_type="wf", dependencies=list(deps)),
    )


def wf(*specs: FunctionSpec) -> WorkflowSpec:
    return WorkflowSpec(function_specs=list(specs))


def workflow_executor(settings, name: str = "wf-1") -> ExecutorApp:  # type: ignore[no-untyped-def]
    """emit: returns its args; concat: returns its input; fail: raises; fan: adds children."""
    app = ExecutorApp("wf", name, settings=settings)

    @app.handler("emit")
    async def emit(ctx: ProcessContext) -> list[Any]:
        return list(ctx.process.spec.args)

    @app.handler("concat")
    async def concat(ctx: ProcessContext) -> list[Any]:
        return list(ctx.process.input)

    @app.handler("sum")
    async def total(ctx: ProcessContext) -> list[Any]:
        return [sum(ctx.process.input)]

    @app.handler("fail")
    async def fail(ctx: ProcessContext) -> list[Any]:
        raise RuntimeError("broken on purpose")

    @app.handler("map")
    async def mapper(ctx: ProcessContext) -> list[Any]:
        # Map-reduce built at run time: n squares, each between this process and its children.
        n = int(ctx.process.spec.args[0])
        for i in range(1, n + 1):
            square = FunctionSpec(
                func_name="emit", args=[i * i], conditions=Conditions(executor_type="wf")
            )
            await ctx.add_child(square, insert=True)
        return []

    return app


async def run_until_done(client: Client, settings, graph: ProcessGraph) -> ProcessGraph:  # type: ignore[no-untyped-def]
    app = workflow_executor(settings)
    runner = asyncio.create_task(app.run())
    try:
        return await client.graph_wait(graph.process_graph_id, timeout=20)
    finally:
        app.stop()
        await runner


async def by_node(client: Client, graph: ProcessGraph) -> dict[str, Any]:
    processes = {p.process_id: p for p in await client.graph_processes(graph)}
    return {name: processes[pid] for name, pid in graph.nodes.items()}


async def test_diamond_passes_outputs_in_dependency_order(client: Client, settings) -> None:
    graph = await client.submit_workflow(
        wf(
            node("a"),
            node("b", "emit", "a", args=["from-b"]),
            node("c", "emit", "a", args=["from-c"]),
            node("d", "concat", "b", "c"),
        )
    )
    assert isinstance(graph, ProcessGraph) and graph.state is ProcessState.WAITING
    nodes = await by_node(client, graph)
    assert not nodes["a"].wait_for_parents and nodes["d"].wait_for_parents
    assert nodes["d"].parents == [nodes["b"].process_id, nodes["c"].process_id]
    done = await run_until_done(client, settings, graph)
    assert done.state is ProcessState.SUCCESS
    nodes = await by_node(client, done)
    assert nodes["b"].input == ["a"] and nodes["c"].input == ["a"]
    assert nodes["d"].input == ["from-b", "from-c"] and nodes["d"].output == ["from-b", "from-c"]
    # Order of execution: a before b and c, both before d.
    assert nodes["a"].end_time <= min(nodes["b"].start_time, nodes["c"].start_time)
    assert max(nodes["b"].end_time, nodes["c"].end_time) <= nodes["d"].start_time


async def test_fan_out_fan_in(client: Client, settings) -> None:
    leaves = [node(f"n{i}", "emit", "root", args=[i]) for i in range(10)]
    graph = await client.submit_workflow(
        wf(node("root"), *leaves, node("total", "sum", *[f"n{i}" for i in range(10)]))
    )
    assert isinstance(graph, ProcessGraph)
    done = await run_until_done(client, settings, graph)
    nodes = await by_node(client, done)
    assert done.state is ProcessState.SUCCESS
    assert nodes["total"].input == list(range(10)) and nodes["total"].output == [45]


async def test_dynamic_children_build_a_map_reduce(client: Client, settings) -> None:
    graph = await client.submit_workflow(
        wf(node("map", "map", args=[5]), node("reduce", "sum", "map"))
    )
    assert isinstance(graph, ProcessGraph)
    done = await run_until_done(client, settings, graph)
    assert done.state is ProcessState.SUCCESS
    nodes = await by_node(client, done)
    assert nodes["reduce"].output == [1 + 4 + 9 + 16 + 25]
    assert len(done.process_ids) == 7  # map, reduce and the five squares
    assert len(nodes["reduce"].parents) == 5


async def test_a_failure_fails_unfinished_descendants(client: Client, settings) -> None:
    graph = await client.submit_workflow(
        wf(
            node("a"),
            node("ok", "emit", "a"),
            node("bad", "fail", "a"),
            node("after-bad", "emit", "bad"),
            node("end", "concat", "ok", "after-bad"),
        )
    )
    assert isinstance(graph, ProcessGraph)
    done = await run_until_done(client, settings, graph)
    assert done.state is ProcessState.FAILED
    nodes = await by_node(client, done)
    assert nodes["a"].state is ProcessState.SUCCESS and nodes["ok"].state is ProcessState.SUCCESS
    assert nodes["bad"].errors == ["RuntimeError: broken on purpose"]
    for name in ("after-bad", "end"):
        assert nodes[name].state is ProcessState.FAILED
        assert nodes[name].start_time == nodes[name].start_time.min.replace(
            tzinfo=nodes[name].start_time.tzinfo
        )  # never ran
        assert nodes[name].errors == ["parent bad failed"] or "parent" in nodes[name].errors[0]


async def test_cancel_a_whole_workflow(client: Client) -> None:
    graph = await client.submit_workflow(wf(node("a"), node("b", "emit", "a")))
    assert isinstance(graph, ProcessGraph)
    cancelled = await client.graph_cancel(graph.process_graph_id)
    assert cancelled.state is ProcessState.CANCELLED
    nodes = await by_node(client, cancelled)
    assert {p.state for p in nodes.values()} == {ProcessState.CANCELLED}


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([node("a", "emit", "b"), node("b", "emit", "a")], "cycle: "),
        ([node("a"), node("b", "emit", "ghost")], "unknown node(s) 'ghost'"),
        ([node("a"), node("a")], "node 'a' appears twice"),
        (
            [node("a"), FunctionSpec(func_name="x", conditions=Conditions(executor_type="wf"))],
            "nodename",
        ),
    ],
)
async def test_bad_graphs_are_rejected_and_leave_nothing(
    client: Client, specs: list[FunctionSpec], message: str
) -> None:
    with pytest.raises(InvalidSpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        await client.submit_workflow(wf(*specs))
    assert await client.list_processes() == []
    assert await client.graph_list() == []


async def test_the_broker_rejects_what_a_raw_publisher_sends(client: Client, settings) -> None:

    from colonyos.subjects import Subjects

    subjects = Subjects(settings.prefix)
    nc = await raw_nats(settings.nats_url)
    events = await nc.subscribe(subjects.events_filter(colony="dev", state="rejected"))
    body = b'[{"nodename": "a", "funcname": "f", "conditions": {"executortype": "wf", "dependencies": ["a"]}}]'
    await nc.jetstream().publish(subjects.workflows("dev"), body)
    msg = await events.next_msg(timeout=5)
    assert b"cycle" in msg.data and ".events._graph.rejected." in msg.subject
    assert await client.list_processes() == []
    await nc.close()


def test_cycle_message_names_the_nodes() -> None:
    with pytest.raises(InvalidSpecError) as info:
        check_workflow(
            wf(node("a", "emit", "c"), node("b", "emit", "a"), node("c", "emit", "b"), node("d"))
        )
    assert info.value.detail["nodes"][0] == info.value.detail["nodes"][-1]
    assert set(info.value.detail["nodes"]) == {"a", "b", "c"}


def test_colonies_workflow_files_plan() -> None:
    for path in sorted((DATA / "colonies-examples" / "workflows").glob("*.json")):
        workflow, _ = load_workflow_spec(path.read_bytes())
        order = check_workflow(workflow)
        assert len(order) == len(workflow.function_specs), path


async def test_subscription_sees_every_event_under_concurrency(client: Client, settings) -> None:
    """Fifty processes run at once: a subscriber sees all 150 transitions, none twice."""
    from colonyos.executors import echo

    async with client.subscribe(executor_type="echo") as events:
        pids = [
            (
                await client.submit(
                    FunctionSpec(func_name="f", conditions=Conditions(executor_type="echo"))
                )
            ).process_id  # type: ignore[union-attr]
            for _ in range(50)
        ]
        app = echo.build(settings, "echo", "echo-sub")
        runner = asyncio.create_task(app.run())
        seen: list[tuple[str, ProcessState]] = []
        async with asyncio.timeout(20):
            while len(seen) < 150:
                event = await events.next()
                seen.append((event.process_id, event.state))  # type: ignore[union-attr]
        app.stop()
        await runner
    assert len(set(seen)) == 150
    for pid in pids:
        assert [s for p, s in seen if p == pid] == [
            ProcessState.WAITING,
            ProcessState.RUNNING,
            ProcessState.SUCCESS,
        ]


async def test_wait_for_state_cannot_miss_a_transition(client: Client, settings) -> None:
    from .helpers import connect_executor, spec

    p = await client.submit(spec())
    ex = await connect_executor(settings, "e1")
    got = await ex.assign(timeout=1)
    assert got is not None
    # RUNNING happened before the call: it is seen anyway.
    running = await client.wait(p.process_id, ProcessState.RUNNING, timeout=2)
    assert running.state is ProcessState.RUNNING
    await ex.close(got.process_id, [])
    done = await client.wait_for_state(p.process_id, ProcessState.SUCCESS, timeout=2)
    assert done.state is ProcessState.SUCCESS
    await ex.aclose()


async def test_events_replay_from_a_time(client: Client, settings) -> None:
    from colonyos.models import now

    from .helpers import spec

    t0 = now()
    first = await client.submit(spec())
    async with client.subscribe(since=t0) as events:
        event = await events.next(5)
    assert event.process_id == first.process_id and event.state is ProcessState.WAITING  # type: ignore[union-attr]


async def test_no_process_of_a_graph_runs_before_all_are_written(client: Client, settings) -> None:
    """A root that ran and finished before its children existed would find nobody to release:
    the graph would never end. Every process's first event comes before the root runs."""
    leaves = [node(f"n{i}", "emit", "root", args=[i]) for i in range(40)]
    app = workflow_executor(settings)
    runner = asyncio.create_task(app.run())
    await app.ready.wait()  # parked: the root could be handed over at once
    try:
        async with client.subscribe(executor_type="wf") as events:
            graph = await client.submit_workflow(
                wf(node("root"), *leaves, node("sink", "concat", *(f"n{i}" for i in range(40))))
            )
            seen: list[tuple[str, ProcessState]] = []
            async with asyncio.timeout(20):
                while ("sink", ProcessState.SUCCESS) not in seen:
                    event = await events.next()
                    assert not isinstance(event, Rejection)
                    seen.append((event.spec.node_name, event.state))
    finally:
        app.stop()
        await runner
    root_runs = seen.index(("root", ProcessState.RUNNING))
    first_events = {name: seen.index((name, ProcessState.WAITING)) for name in graph.nodes}
    assert max(first_events.values()) < root_runs
    assert len(first_events) == 42
