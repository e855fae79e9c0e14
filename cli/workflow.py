"""``colonies workflow ...``: submit Colonies workflows and follow their graphs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from colonyos.client import Client
from colonyos.graphs import topological_order
from colonyos.limits import MAX_LIST_LIMIT
from colonyos.messages import GraphEvent
from colonyos.models import Process, ProcessGraph, ProcessState
from colonyos.specs import load_workflow_spec

from ._common import JSON_OPTION, TIMEOUT_OPTION, WIDE_OPTION, connect, load_spec_file
from ._output import (
    LiveView,
    console,
    duration,
    free_text,
    new_table,
    print_json,
    say,
    short,
    show_id,
    show_table,
    state_text,
    when,
)
from ._run import Awaiting, announce_wait, exit_code_for_state, run

app = typer.Typer(help="Submit workflows and follow their process graphs.", no_args_is_help=True)

_GRAPH = typer.Option(
    ..., "--graph", "-g", help="Process graph id, or a unique prefix of it (12 characters do)."
)


def in_dependency_order(graph: ProcessGraph, processes: dict[str, Process]) -> list[Process]:
    """The graph's processes, parents before children; siblings in the workflow's order,
    processes added at run time after them."""
    rank = {pid: i for i, pid in enumerate(graph.nodes.values())}
    known = sorted(
        (p for pid in graph.process_ids if (p := processes.get(pid)) is not None),
        key=lambda p: (rank.get(p.process_id, len(rank)), p.submission_time),
    )
    by_id = {p.process_id: p for p in known}
    parents = {pid: [q for q in p.parents if q in by_id] for pid, p in by_id.items()}
    return [by_id[pid] for pid in topological_order(parents)]


def graph_table(graph: ProcessGraph, processes: dict[str, Process], wide: bool = False) -> Table:
    columns = [("node", False), ("process id", True), ("func", False), ("state", True)]
    columns += [("executor", True)]
    if wide:
        columns += [("started", True), ("ended", True)]
    columns += [("duration", True), ("output / errors", False)]
    title = f"graph {show_id(graph.process_graph_id, wide)}  {state_text(graph.state)}"
    table = new_table(title, columns)
    names = {pid: name for name, pid in graph.nodes.items()}
    for p in in_dependency_order(graph, processes):
        result = "; ".join(p.errors) if p.errors else short(p.output, 200)
        row: list[str | Text] = [
            free_text(names.get(p.process_id, p.spec.node_name)),
            show_id(p.process_id, wide),
            free_text(p.spec.func_name),
            state_text(p.state),
            show_id(p.assigned_executor_id, wide),
        ]
        if wide:
            row += [when(p.start_time), when(p.end_time)]
        row += [duration(p.start_time, p.end_time), free_text(result)]
        table.add_row(*row)
    return table


@app.command("submit")
def submit(
    ctx: typer.Context,
    spec_file: Path = typer.Option(
        ..., "--spec", help="Workflow file: a JSON list of specs, or {colonyname, functionspecs}."
    ),
    wait: bool = typer.Option(False, "--wait", help="Wait until the graph ends."),
    strict: bool = typer.Option(False, "--strict", help="Treat unknown keys as errors."),
    as_json: bool = JSON_OPTION,
    timeout: float = TIMEOUT_OPTION,
    wide: bool = WIDE_OPTION,
) -> None:
    """Submit a workflow; prints the graph id (with --wait, the finished graph).

    With --wait it names the graph first, and the exit code is 0 only if it ended SUCCESS;
    on a timeout (124) or Ctrl-C (130) it says how to follow it up.
    """
    workflow = load_spec_file(load_workflow_spec, spec_file, strict, kind="workflow")
    awaiting = Awaiting.of(ctx, "graph")

    async def go() -> tuple[ProcessGraph, dict[str, Process]]:
        async with await connect(ctx) as client:
            graph = await client.submit_workflow(workflow)
            assert isinstance(graph, ProcessGraph)
            if not wait:
                return graph, {}
            awaiting.ident = graph.process_graph_id
            announce_wait(awaiting, to_stderr=as_json)
            graph = await client.graph_wait(graph.process_graph_id, timeout=timeout)
            return graph, {p.process_id: p for p in await client.graph_processes(graph)}

    graph, processes = run(go(), awaiting)
    if as_json:
        print_json(graph)
    elif wait:
        show_table(graph_table(graph, processes, wide), wide)
    else:
        say(graph.process_graph_id)
    if wait:
        raise typer.Exit(exit_code_for_state(graph.state))


@app.command("get")
def get(
    ctx: typer.Context,
    graph_id: str = _GRAPH,
    as_json: bool = JSON_OPTION,
    wide: bool = WIDE_OPTION,
) -> None:
    """Show a process graph: its processes in dependency order, with their ids."""

    async def go() -> tuple[ProcessGraph, list[Process]]:
        async with await connect(ctx) as client:
            graph = await client.graph_get(await client.resolve(graph_id, graph=True))
            return graph, await client.graph_processes(graph)

    graph, processes = run(go())
    by_id = {p.process_id: p for p in processes}
    if as_json:
        print_json({"graph": graph, "processes": in_dependency_order(graph, by_id)})
    else:
        show_table(graph_table(graph, by_id, wide), wide)


@app.command("ps")
def ps(
    ctx: typer.Context,
    count: int = typer.Option(
        20, "--count", "-n", min=1, max=MAX_LIST_LIMIT, help="How many (newest first)."
    ),
    as_json: bool = JSON_OPTION,
    wide: bool = WIDE_OPTION,
) -> None:
    """List the colony's process graphs."""

    async def go() -> list[ProcessGraph]:
        async with await connect(ctx) as client:
            return await client.graph_list(limit=count)

    graphs = run(go())
    if as_json:
        print_json(graphs)
        return
    if not graphs:
        say("no process graphs")
        return
    columns = [("graph id", True), ("state", True), ("processes", True), ("submitted", True)]
    if wide:
        columns += [("started", True), ("ended", True)]
    table = new_table("process graphs", [*columns, ("duration", True)])
    for g in graphs:
        row = [show_id(g.process_graph_id, wide), state_text(g.state), str(len(g.process_ids))]
        row.append(when(g.submission_time))
        if wide:
            row += [when(g.start_time), when(g.end_time)]
        table.add_row(*row, duration(g.start_time, g.end_time))
    show_table(table, wide)


@app.command("cancel")
def cancel(ctx: typer.Context, graph_id: str = _GRAPH, as_json: bool = JSON_OPTION) -> None:
    """Cancel every unfinished process of a graph."""

    async def go() -> ProcessGraph:
        async with await connect(ctx) as client:
            return await client.graph_cancel(await client.resolve(graph_id, graph=True))

    graph = run(go())
    if as_json:
        print_json(graph)
    else:
        say(f"graph {graph.process_graph_id} {graph.state.name.lower()}")


@app.command("remove")
def remove(ctx: typer.Context, graph_id: str = _GRAPH, as_json: bool = JSON_OPTION) -> None:
    """Remove a process graph with all its processes and their logs (none may be running:
    cancel it first)."""

    async def go() -> tuple[str, int]:
        async with await connect(ctx) as client:
            gid = await client.resolve(graph_id, graph=True)
            return gid, await client.graph_remove(gid)

    gid, count = run(go())
    if as_json:
        print_json({"processgraphid": gid, "removed": count})
    else:
        say(f"graph {gid} removed with its {count} processes")


@app.command("watch")
def watch(ctx: typer.Context, graph_id: str = _GRAPH) -> None:
    """Show a graph live until it ends; exit code 0 only if it ended SUCCESS."""
    awaiting = Awaiting.of(ctx, "graph")

    async def go() -> ProcessGraph:
        async with await connect(ctx) as client:
            awaiting.ident = await client.resolve(graph_id, graph=True)
            announce_wait(awaiting, to_stderr=False)
            return await _watch(client, awaiting.ident)

    graph = run(go(), awaiting)
    if graph.state is not ProcessState.SUCCESS:
        raise typer.Exit(code=1)


async def _watch(client: Client, graph_id: str) -> ProcessGraph:
    """Follow a graph from the colony's events: process events update its nodes, graph events
    its state; other kinds are not about it."""
    async with client.subscribe() as events:
        graph = await client.graph_get(graph_id)
        processes = {p.process_id: p for p in await client.graph_processes(graph)}
        with LiveView(graph_table(graph, processes), console=console, auto_refresh=False) as live:
            while not graph.state.is_terminal:
                event = await events.next()
                if isinstance(event, GraphEvent) and event.process_graph_id == graph_id:
                    graph = event.graph()
                elif isinstance(event, Process) and event.process_graph_id == graph_id:
                    processes[event.process_id] = event
                    if event.process_id not in graph.process_ids:
                        graph = await client.graph_get(graph_id)  # a child added at run time
                else:
                    continue
                live.update(graph_table(graph, processes), refresh=True)
            # Ended: show every node as it ended (its last event may not be read yet).
            processes = {p.process_id: p for p in await client.graph_processes(graph)}
            live.update(graph_table(graph, processes), refresh=True)
    return graph
