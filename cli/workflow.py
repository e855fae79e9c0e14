"""``colonies workflow ...``: submit Colonies workflows and follow their graphs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.live import Live
from rich.table import Table

from colonyos.client import Client
from colonyos.messages import GraphEvent
from colonyos.models import Process, ProcessGraph, ProcessState
from colonyos.specs import load_workflow_spec

from ._common import connect, load_spec_file
from ._output import console, print_json, state_text, when
from ._run import run

app = typer.Typer(help="Submit workflows and follow their process graphs.", no_args_is_help=True)

_GRAPH = typer.Option(..., "--graph", "-g", help="Process graph id.")
_JSON = typer.Option(False, "--json", help="Print JSON (Colonies keys).")


def graph_table(graph: ProcessGraph, processes: dict[str, Process]) -> Table:
    table = Table(
        title=f"graph {graph.process_graph_id[:16]}…  {graph.state.name}", title_justify="left"
    )
    for column in ("node", "func", "state", "executor", "started", "ended", "output / errors"):
        table.add_column(column)
    names = {pid: name for name, pid in graph.nodes.items()}
    for pid in graph.process_ids:
        p = processes.get(pid)
        if p is None:
            continue
        result = "; ".join(p.errors) if p.errors else " ".join(str(v) for v in p.output)
        table.add_row(
            names.get(pid, p.spec.node_name or pid[:12]),
            p.spec.func_name,
            state_text(p.state),
            p.assigned_executor_id[:12],
            when(p.start_time),
            when(p.end_time),
            result[:40],
        )
    return table


@app.command("submit")
def submit(
    ctx: typer.Context,
    spec_file: Path = typer.Option(..., "--spec", help="Workflow file: a JSON list of specs."),
    wait: bool = typer.Option(False, "--wait", help="Wait until the graph ends."),
    strict: bool = typer.Option(False, "--strict", help="Treat unknown keys as errors."),
    as_json: bool = _JSON,
    timeout: float = typer.Option(3600.0, "--timeout", help="Seconds to wait with --wait."),
) -> None:
    """Submit a workflow; prints the graph id (with --wait, exit code 0 only on SUCCESS)."""
    workflow = load_spec_file(load_workflow_spec, spec_file, strict)

    async def go() -> tuple[ProcessGraph, dict[str, Process]]:
        async with await connect(ctx) as client:
            graph = await client.submit_workflow(workflow)
            assert isinstance(graph, ProcessGraph)
            if wait:
                graph = await client.graph_wait(graph.process_graph_id, timeout=timeout)
                return graph, {p.process_id: p for p in await client.graph_processes(graph)}
            return graph, {}

    graph, processes = run(go())
    if as_json:
        print_json(graph)
    elif wait:
        console.print(graph_table(graph, processes))
    else:
        console.print(graph.process_graph_id)
    if wait and graph.state is not ProcessState.SUCCESS:
        raise typer.Exit(code=1)


@app.command("get")
def get(ctx: typer.Context, graph_id: str = _GRAPH, as_json: bool = _JSON) -> None:
    """Show a process graph and its processes."""

    async def go() -> tuple[ProcessGraph, list[Process]]:
        async with await connect(ctx) as client:
            graph = await client.graph_get(graph_id)
            return graph, await client.graph_processes(graph)

    graph, processes = run(go())
    if as_json:
        print_json({"graph": graph, "processes": processes})
    else:
        console.print(graph_table(graph, {p.process_id: p for p in processes}))


@app.command("ps")
def ps(
    ctx: typer.Context,
    count: int = typer.Option(20, "--count", "-n", help="How many (newest first)."),
    as_json: bool = _JSON,
) -> None:
    """List the colony's process graphs."""

    async def go() -> list[ProcessGraph]:
        async with await connect(ctx) as client:
            return await client.graph_list(limit=count)

    graphs = run(go())
    if as_json:
        print_json(graphs)
        return
    table = Table(title="process graphs", title_justify="left")
    table.add_column("graph id", no_wrap=True)
    for column in ("state", "processes", "submitted", "ended"):
        table.add_column(column)
    for g in graphs:
        table.add_row(
            g.process_graph_id,
            state_text(g.state),
            str(len(g.process_ids)),
            when(g.submission_time),
            when(g.end_time),
        )
    console.print(table)


@app.command("cancel")
def cancel(ctx: typer.Context, graph_id: str = _GRAPH) -> None:
    """Cancel every unfinished process of a graph."""

    async def go() -> ProcessGraph:
        async with await connect(ctx) as client:
            return await client.graph_cancel(graph_id)

    graph = run(go())
    console.print(f"graph {graph_id} {graph.state.name.lower()}")


@app.command("watch")
def watch(ctx: typer.Context, graph_id: str = _GRAPH) -> None:
    """Show a graph live until it ends; exit code 0 only if it ended SUCCESS."""

    async def go() -> ProcessGraph:
        async with await connect(ctx) as client:
            return await _watch(client, graph_id)

    graph = run(go())
    if graph.state is not ProcessState.SUCCESS:
        raise typer.Exit(code=1)


async def _watch(client: Client, graph_id: str) -> ProcessGraph:
    """Follow a graph from the colony's events: process events update its nodes, graph events
    its state; other kinds are not about it."""
    async with client.subscribe() as events:
        graph = await client.graph_get(graph_id)
        processes = {p.process_id: p for p in await client.graph_processes(graph)}
        with Live(graph_table(graph, processes), console=console, auto_refresh=False) as live:
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
