"""``colonies user add|ls|remove``: a colony owner's members."""

from __future__ import annotations

import typer

from colonyos.security.members import Member

from ._common import JSON_OPTION, connect
from ._output import console, new_table, print_json, say, show_table
from ._run import run

app = typer.Typer(
    help="The colony's users (and other members): a colony owner adds them by public key.",
    no_args_is_help=True,
)


@app.command("add")
def add(
    ctx: typer.Context,
    name: str = typer.Option(..., "--name", help="The name it acts under in the colony."),
    key: str = typer.Option(
        ..., "--key", help="Its public key (U..., from 'colonies key generate' on its machine)."
    ),
    owner: bool = typer.Option(False, "--owner", help="Make it an owner of the colony too."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Let the holder of a key into the colony as a user (submit, read, cancel)."""

    async def go() -> Member:
        async with await connect(ctx) as client:
            return await client.member_add(name, key, role="colony-owner" if owner else "user")

    member = run(go())
    if as_json:
        print_json(member)
    else:
        say(f"{member.role} {member.name} added to colony {member.colony_name}")


@app.command("ls")
def ls(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """List the colony's members: name, role and public key."""

    async def go() -> list[Member]:
        async with await connect(ctx) as client:
            return await client.member_list()

    members = run(go())
    if as_json:
        print_json(members)
    elif not members:
        say("no members: add one with 'colonies user add --name NAME --key PUBLIC_KEY'")
    else:
        table = new_table("members", [("NAME", True), ("ROLE", True), ("PUBLIC KEY", True)])
        for m in members:
            table.add_row(m.name, str(m.role), m.public_key)
        show_table(table, wide=not console.is_terminal)


@app.command("remove")
def remove(
    ctx: typer.Context,
    name: str = typer.Option(..., "--name", help="The member's name."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Remove a member: its next connection is refused (the name stays taken until an owner
    adds it again)."""

    async def go() -> None:
        async with await connect(ctx) as client:
            await client.member_remove(name)

    run(go())
    if as_json:
        print_json({"name": name, "removed": True})
    else:
        say(f"member {name} removed")
