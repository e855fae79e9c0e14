"""``colonies colony add|ls|remove``."""

from __future__ import annotations

import typer

from colonyos.models import Colony

from ._common import JSON_OPTION, WIDE_OPTION, connect
from ._output import colony_table, print_json, say, show_table
from ._run import run
from .stats import colony_stats

app = typer.Typer(help="Create, list and remove colonies.", no_args_is_help=True)


@app.command("add")
def add(
    ctx: typer.Context,
    name: str = typer.Option(..., "--name", help="Colony name."),
    auto_approve: bool = typer.Option(
        False, "--auto-approve", help="Approve executors as they register."
    ),
    owner: str = typer.Option(
        "", "--owner", help="Public key of its owner (default: yours, the server owner's)."
    ),
    owner_name: str = typer.Option(
        "", "--owner-name", help="The name its owner acts under in it (default: 'owner')."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Create a colony (a server owner's command)."""

    async def go() -> Colony:
        async with await connect(ctx) as client:
            return await client.colony_add(
                name, auto_approve=auto_approve, owner_key=owner, owner_name=owner_name
            )

    colony = run(go())
    if as_json:
        print_json(colony)
    else:
        say(f"colony {colony.name} added (id {colony.colony_id})")


@app.command("ls")
def ls(ctx: typer.Context, as_json: bool = JSON_OPTION, wide: bool = WIDE_OPTION) -> None:
    """List colonies."""

    async def go() -> list[Colony]:
        async with await connect(ctx) as client:
            return await client.colony_list()

    colonies = run(go())
    if as_json:
        print_json(colonies)
    elif not colonies:
        say("no colonies: create one with 'colonies colony add --name NAME'")
    else:
        show_table(colony_table(colonies, wide), wide)


@app.command("remove")
def remove(
    ctx: typer.Context,
    name: str = typer.Option(..., "--name", help="Colony name."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Remove a colony and everything in it: its processes (running ones are cancelled first),
    workflows, executors, logs, events and submissions not yet taken."""

    async def go() -> int:
        async with await connect(ctx) as client:
            return await client.colony_remove(name)

    count = run(go())
    if as_json:
        print_json({"name": name, "removed": count})
    else:
        say(f"colony {name} removed with its {count} processes")


app.command("stats")(colony_stats)
