"""``colonies process ...``: list, inspect, wait for, cancel and remove processes."""

from __future__ import annotations

import typer

from colonyos.limits import MAX_LIST_LIMIT
from colonyos.models import Process, ProcessState

from ._common import JSON_OPTION, TIMEOUT_OPTION, WIDE_OPTION, connect, wait_for_process
from ._explain import explaining, show_why_waiting
from ._output import print_detail, print_json, process_detail, process_table, say, show_table
from ._run import Awaiting, exit_code_for_state, run
from .status import watch_colony

app = typer.Typer(
    help="List, inspect, wait for, cancel and remove processes.", no_args_is_help=True
)

_COUNT = typer.Option(
    20, "--count", "-n", min=1, max=MAX_LIST_LIMIT, help="How many to show (newest first)."
)
_TYPE = typer.Option("", "--type", help="Only this executor type.")
_LABEL = typer.Option("", "--label", help="Only processes with this label.")
_PROCESS = typer.Option(
    ..., "--process", "-p", help="Process id, or a unique prefix of it (12 characters do)."
)
_WATCH = typer.Option(False, "--watch", "-w", help="Show the colony live (Ctrl-C stops).")


def _listing(
    ctx: typer.Context,
    state: ProcessState,
    count: int,
    as_json: bool,
    etype: str,
    label: str,
    live: bool = False,
    wide: bool = False,
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
        say(f"no {state.name.lower()} processes")
    else:
        show_table(process_table(processes, f"{state.name.lower()} processes", wide), wide)


def _listing_command(name: str, state: ProcessState) -> None:
    """``ps`` (running), ``psw`` (waiting), ``pss`` (successful), ``psf`` (failed), ``psc``
    (cancelled): one shape."""
    word = {"success": "successful"}.get(state.token, state.token)

    def command(
        ctx: typer.Context,
        count: int = _COUNT,
        as_json: bool = JSON_OPTION,
        etype: str = _TYPE,
        label: str = _LABEL,
        live: bool = _WATCH,
        wide: bool = WIDE_OPTION,
    ) -> None:
        _listing(ctx, state, count, as_json, etype, label, live, wide)

    command.__doc__ = f"List {word} processes."
    app.command(name)(command)


for _name, _state in (
    ("ps", ProcessState.RUNNING),
    ("psw", ProcessState.WAITING),
    ("pss", ProcessState.SUCCESS),
    ("psf", ProcessState.FAILED),
    ("psc", ProcessState.CANCELLED),
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
    count: int = typer.Option(
        0, "--count", "-n", min=0, help="Stop after this many events (0: never)."
    ),
) -> None:
    """A live view of the colony: counts per state and executor type, executors online,
    throughput; updated from events as they happen."""
    _watch(ctx, count)


def _show(process: Process, as_json: bool) -> None:
    if as_json:
        print_json(process)
    else:
        print_detail(process_detail(process))


@app.command("get")
def get(ctx: typer.Context, process_id: str = _PROCESS, as_json: bool = JSON_OPTION) -> None:
    """Show one process."""

    async def go() -> Process:
        async with await connect(ctx) as client:
            return await client.get(await client.resolve(process_id))

    process = run(go())
    _show(process, as_json)
    if not as_json:
        show_why_waiting(ctx, process)


@app.command("wait")
def wait(
    ctx: typer.Context,
    process_id: str = _PROCESS,
    timeout: float = TIMEOUT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Wait until a process ends; exit code 0 only if it ended SUCCESS.

    It names the process first; on a timeout (exit code 124) or Ctrl-C (130) it says how to
    follow the process up, which goes on.
    """
    awaiting = Awaiting.of(ctx, "process")

    async def go() -> Process:
        async with await connect(ctx) as client:
            awaiting.ident = await client.resolve(process_id)
            async with explaining(client, awaiting.ident):
                return await wait_for_process(client, awaiting, timeout=timeout, to_stderr=as_json)

    process = run(go(), awaiting)
    _show(process, as_json)
    raise typer.Exit(exit_code_for_state(process.state))


@app.command("cancel")
def cancel(ctx: typer.Context, process_id: str = _PROCESS, as_json: bool = JSON_OPTION) -> None:
    """Cancel a waiting or running process."""

    async def go() -> Process:
        async with await connect(ctx) as client:
            return await client.cancel(await client.resolve(process_id))

    process = run(go())
    if as_json:
        print_json(process)
    else:
        say(f"process {process.process_id} cancelled")


@app.command("remove")
def remove(ctx: typer.Context, process_id: str = _PROCESS, as_json: bool = JSON_OPTION) -> None:
    """Remove a process with its record and its log (not a running one: cancel it first)."""

    async def go() -> str:
        async with await connect(ctx) as client:
            pid = await client.resolve(process_id)
            await client.remove(pid)
            return pid

    pid = run(go())
    if as_json:
        print_json({"processid": pid, "removed": True})
    else:
        say(f"process {pid} removed")


_REMOVABLE = ("waiting", "success", "failed", "cancelled")


def _removable_state(text: str) -> ProcessState:
    try:
        state = ProcessState.parse(text)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    if state is ProcessState.RUNNING:
        raise typer.BadParameter("running processes are never removed: cancel them first")
    return state


@app.command("removeall")
def removeall(
    ctx: typer.Context,
    state: str = typer.Option(
        ..., "--state", help=f"Remove every process in this state: {', '.join(_REMOVABLE)}."
    ),
    etype: str = _TYPE,
    as_json: bool = JSON_OPTION,
) -> None:
    """Remove every process of the colony in one state, with their logs (never running ones;
    processes of workflows go with 'colonies workflow remove')."""
    which = _removable_state(state)

    async def go() -> int:
        async with await connect(ctx) as client:
            return await client.remove_all(which, executor_type=etype)

    count = run(go())
    if as_json:
        print_json({"state": which.name.lower(), "removed": count})
    else:
        say(f"removed {count} {which.name.lower()} processes")
