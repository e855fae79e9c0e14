"""``colonies colony add|ls``."""

from __future__ import annotations

import typer

from colonyos.models import Colony

from ._common import connect
from ._output import colony_table, console, print_json
from ._run import run

app = typer.Typer(help="Create and list colonies.", no_args_is_help=True)


@app.command("add")
def add(
    ctx: typer.Context,
    name: str = typer.Option(..., "--name", help="Colony name."),
    auto_approve: bool = typer.Option(
        False, "--auto-approve", help="Approve executors as they register."
    ),
) -> None:
    """Create a colony."""

    async def go() -> Colony:
        async with await connect(ctx) as client:
            return await client.colony_add(name, auto_approve=auto_approve)

    colony = run(go())
    console.print(f"colony {colony.name} added (id {colony.colony_id})")


@app.command("ls")
def ls(
    ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")
) -> None:
    """List colonies."""

    async def go() -> list[Colony]:
        async with await connect(ctx) as client:
            return await client.colony_list()

    colonies = run(go())
    if as_json:
        print_json(colonies)
    else:
        console.print(colony_table(colonies))
