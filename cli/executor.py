"""``colonies executor ...``: run the shipped executors, and manage registrations."""

from __future__ import annotations

from typing import Any

import typer

from colonyos.messages import ExecutorInfo
from colonyos.models import GPU, Capabilities, Executor, Hardware

from ._common import connect, settings_of
from ._executors import KINDS, build_executor
from ._output import console, executor_table, print_json
from ._run import fail, run

app = typer.Typer(help="Run executors and manage their registrations.", no_args_is_help=True)

_NAME = typer.Option(..., "--name", help="Executor name.")


@app.command("start")
def start(
    ctx: typer.Context,
    kind: str = typer.Argument(..., help=f"Which shipped executor: {', '.join(KINDS)}."),
    executor_type: str = typer.Option("", "--type", help="Executor type (default: KIND)."),
    name: str = typer.Option("", "--name", help="Executor name (default: TYPE-hostname)."),
    burst: bool = typer.Option(False, "--burst", help="Exit once no more work can be assigned."),
    allow: list[str] = typer.Option(
        [], "--allow", help="shell: a program it may run (repeat); none by default."
    ),
    module: list[str] = typer.Option(
        [], "--module", help="python: module or file.py whose functions it runs (repeat)."
    ),
    location: str = typer.Option("", "--location", help="Location name, for locationname."),
    cpu: str = typer.Option("", "--cpu", help="CPU it offers, e.g. '4' or '500m'."),
    mem: str = typer.Option("", "--mem", help="Memory it offers, e.g. '16Gi'."),
    gpus: int = typer.Option(0, "--gpus", help="GPUs it offers."),
    concurrency: int = typer.Option(1, "--concurrency", "-c", help="Processes run at once."),
) -> None:
    """Start a shipped executor in the foreground (Ctrl-C stops it after the current process)."""
    if kind not in KINDS:
        raise fail(f"unknown executor kind {kind!r}; choose one of {', '.join(KINDS)}")
    options: dict[str, Any] = {}
    if kind == "shell":
        options["allow"] = allow
    if kind == "python":
        options["modules"] = module

    async def go() -> int:
        app_ = build_executor(
            kind, settings_of(ctx), executor_type or kind, name or None, **options
        )
        app_.location_name = location
        app_.concurrency = max(1, concurrency)
        if cpu or mem or gpus:
            app_.capabilities = Capabilities(
                hardware=[Hardware(cpu=cpu, mem=mem, gpu=GPU(count=gpus))]
            )
        console.print(
            f"executor [bold]{app_.name}[/] (type {app_.executor_type}) in colony "
            f"{app_.settings.colony}: waiting for work" + (" (burst)" if burst else "")
        )
        return await app_.serve(burst=burst)

    handled = run(go())
    console.print(f"handled {handled} processes")


@app.command("ls")
def ls(
    ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")
) -> None:
    """List the colony's executors: state, online or not (heard from within the broker's
    liveness window), when last heard from, processes running, capabilities."""

    async def go() -> list[ExecutorInfo]:
        async with await connect(ctx) as client:
            return await client.executor_list()

    executors = run(go())
    if as_json:
        print_json(executors)
    elif not executors:
        console.print("no executors registered")
    else:
        console.print(executor_table(executors), soft_wrap=True)


@app.command("approve")
def approve(ctx: typer.Context, name: str = _NAME) -> None:
    """Approve a registered executor, so that it can be assigned work."""

    async def go() -> Executor:
        async with await connect(ctx) as client:
            return await client.executor_approve(name)

    run(go())
    console.print(f"executor {name} approved")


@app.command("reject")
def reject(ctx: typer.Context, name: str = _NAME) -> None:
    """Reject a registered executor: it gets no work."""

    async def go() -> Executor:
        async with await connect(ctx) as client:
            return await client.executor_reject(name)

    run(go())
    console.print(f"executor {name} rejected")


@app.command("remove")
def remove(ctx: typer.Context, name: str = _NAME) -> None:
    """Remove an executor's registration."""

    async def go() -> None:
        async with await connect(ctx) as client:
            await client.executor_remove(name)

    run(go())
    console.print(f"executor {name} removed")
