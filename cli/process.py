"""``colonies process ...``: list, inspect, wait for, cancel and remove processes."""

from __future__ import annotations

import typer

from colonyos.models import Process, ProcessState

from ._common import connect
from ._explain import explaining, show_why_waiting
from ._output import console, print_json, process_detail, process_table
from ._run import fail, run
from .status import watch_colony

app = typer.Typer(
    help="List, inspect, wait for, cancel and remove processes.", no_args_is_help=True
)

_COUNT = typer.Option(20, "--count", "-n", help="How many to show (newest first).")
_JSON = typer.Option(False, "--json", help="Print JSON (Colonies keys).")
_TYPE = typer.Option("", "--type", help="Only this executor type.")
_LABEL = typer.Option("", "--label", help="Only processes with this label.")
_PROCESS = typer.Option(..., "--process", "-p", help="Process id.")
_WATCH = typer.Option(False, "--watch", "-w", help="Show the colony live (Ctrl-C stops).")


def _listing(
    ctx: typer.Context,
    state: ProcessState,
    count: int,
    as_json: bool,
    etype: str,
    label: str,
    live: bool = False,
) -> None:
    if live:
        _watch(ctx, 0)
        return

    async def go() -> list[Process]:
        async with await connect(ctx) as client:
            return await client.list_processes(
                state=state, executor_type=etype, label=label, limit=count
            )

    processes = run(go())
    if as_json:
        print_json(processes)
    elif not processes:
        console.print(f"no {state.name.lower()} processes")
    else:
        console.print(process_table(processes, f"{state.name.lower()} processes"))


def _listing_command(name: str, state: ProcessState) -> None:
    """``ps`` (running), ``psw`` (waiting), ``pss`` (successful), ``psf`` (failed): one shape."""
    word = {"success": "successful"}.get(state.token, state.token)

    def command(
        ctx: typer.Context,
        count: int = _COUNT,
        as_json: bool = _JSON,
        etype: str = _TYPE,
        label: str = _LABEL,
        live: bool = _WATCH,
    ) -> None:
        _listing(ctx, state, count, as_json, etype, label, live)

    command.__doc__ = f"List {word} processes."
    app.command(name)(command)


for _name, _state in (
    ("ps", ProcessState.RUNNING),
    ("psw", ProcessState.WAITING),
    ("pss", ProcessState.SUCCESS),
    ("psf", ProcessState.FAILED),
):
    _listing_command(_name, _state)


def _watch(ctx: typer.Context, count: int) -> None:
    async def go() -> None:
        async with await connect(ctx) as client:
            await watch_colony(client, count)

    run(go())


@app.command("watch")
def watch(
    ctx: typer.Context,
    count: int = typer.Option(0, "--count", "-n", help="Stop after this many events (0: never)."),
) -> None:
    """A live view of the colony: counts per state and executor type, executors online,
    throughput; updated from events as they happen."""
    _watch(ctx, count)


def _show(process: Process, as_json: bool) -> None:
    if as_json:
        print_json(process)
    else:
        console.print(process_detail(process))


@app.command("get")
def get(ctx: typer.Context, process_id: str = _PROCESS, as_json: bool = _JSON) -> None:
    """Show one process."""

    async def go() -> Process:
        async with await connect(ctx) as client:
            return await client.get(process_id)

    process = run(go())
    _show(process, as_json)
    if not as_json:
        show_why_waiting(ctx, process)


@app.command("wait")
def wait(
    ctx: typer.Context,
    process_id: str = _PROCESS,
    timeout: float = typer.Option(3600.0, "--timeout", help="Give up after this many seconds."),
    as_json: bool = _JSON,
) -> None:
    """Wait until a process ends; exit code 0 only if it ended SUCCESS."""

    async def go() -> Process:
        async with await connect(ctx) as client, explaining(client, process_id):
            return await client.wait(process_id, timeout=timeout)

    try:
        process = run(go())
    except TimeoutError:
        raise fail(f"process {process_id} did not end within {timeout:g} s") from None
    _show(process, as_json)
    if process.state is not ProcessState.SUCCESS:
        raise typer.Exit(code=1)


@app.command("cancel")
def cancel(ctx: typer.Context, process_id: str = _PROCESS) -> None:
    """Cancel a waiting or running process."""

    async def go() -> Process:
        async with await connect(ctx) as client:
            return await client.cancel(process_id)

    run(go())
    console.print(f"process {process_id} cancelled")


@app.command("remove")
def remove(ctx: typer.Context, process_id: str = _PROCESS) -> None:
    """Remove a process and its record."""

    async def go() -> None:
        async with await connect(ctx) as client:
            await client.remove(process_id)

    run(go())
    console.print(f"process {process_id} removed")
