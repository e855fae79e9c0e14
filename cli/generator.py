"""``colonies generator add|pack|ls|get|remove``: workflows started by the arguments packed
into them."""

from __future__ import annotations

from pathlib import Path

import msgspec
import typer
from rich.table import Table

from colonyos.generators.client import Generators
from colonyos.generators.model import NO_TIMEOUT, Generator
from colonyos.models import now

from ._common import JSON_OPTION, WIDE_OPTION, load_workflow_file
from ._output import free_text, new_table, print_detail, print_json, say, show_id, show_table
from ._output import when as shown_time
from ._run import fail
from ._standing import (
    SPEC_OPTION,
    STRICT_OPTION,
    add_remove_command,
    connected,
    name_option,
    node_names,
    short_time,
)

app = typer.Typer(
    help="Run a workflow when enough arguments have been packed into it.",
    no_args_is_help=True,
)

_NAME = name_option("generator")


def trigger_text(generator: Generator) -> str:
    """``3 args``, ``3 args or 60 s``."""
    text = f"{generator.trigger} arg" + ("s" if generator.trigger != 1 else "")
    return text + (f" or {generator.timeout} s" if generator.timeout > 0 else "")


@app.command("add")
def add(
    ctx: typer.Context,
    name: str = _NAME,
    spec_file: Path = SPEC_OPTION,
    trigger: int = typer.Option(
        ..., "--trigger", min=1, help="Start a run when this many arguments are packed."
    ),
    timeout: int | None = typer.Option(
        None,
        "--timeout",
        min=1,
        help="Or when the first waiting argument has waited this many seconds (default: never).",
    ),
    strict: bool = STRICT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Add a generator: each run's roots get the packed arguments after their own args."""
    workflow = load_workflow_file(spec_file, strict)

    generator = connected(
        ctx,
        lambda client: Generators(client).add(
            name, workflow, trigger=trigger, timeout=timeout or NO_TIMEOUT
        ),
    )
    if as_json:
        print_json(generator)
    else:
        say(f"generator {generator.name} added: a run per {trigger_text(generator)}")


@app.command("pack")
def pack(
    ctx: typer.Context,
    name: str = _NAME,
    arg: str = typer.Option(
        ..., "--arg", help='The argument, a JSON value: 42, "text", {"file": "a.csv"}.'
    ),
    text: bool = typer.Option(
        False, "--text", help="Take --arg as text (a JSON string), not as JSON."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Pack one argument into a generator; stored when this returns."""
    data = msgspec.json.encode(arg) if text else arg.encode()
    if not text:
        try:
            msgspec.json.decode(data)
        except msgspec.DecodeError:
            raise fail(
                f"$.arg: {arg!r} is not JSON: write a string in quotes ('\"{arg}\"'), or add --text"
            ) from None

    seq = connected(ctx, lambda client: Generators(client).pack_json(name, data))
    if as_json:
        print_json({"name": name, "seq": seq})
    else:
        say(f"packed into {name} (stream sequence {seq})")


@app.command("ls")
def ls(ctx: typer.Context, as_json: bool = JSON_OPTION, wide: bool = WIDE_OPTION) -> None:
    """List the colony's generators: trigger, arguments waiting, last run and its graph."""
    generators = connected(ctx, lambda client: Generators(client).list())
    if as_json:
        print_json(generators)
    elif not generators:
        say("no generators: add one with 'colonies generator add --name N --spec F --trigger 3'")
    else:
        show_table(generator_table(generators, wide), wide)


def generator_table(generators: list[Generator], wide: bool = False) -> Table:
    columns = [("name", False), ("runs at", False), ("waiting", True)]
    columns += [("last run", True), ("last graph", True)]
    table = new_table("", columns)
    today = now().astimezone().date()
    for generator in generators:
        table.add_row(
            free_text(generator.name),
            free_text(trigger_text(generator)),
            str(generator.queue_size),
            short_time(generator.last_run, today) or "never",
            show_id(generator.last_process_graph_id, wide),
        )
    return table


@app.command("get")
def get(ctx: typer.Context, name: str = _NAME, as_json: bool = JSON_OPTION) -> None:
    """Show a generator: its trigger, what waits, its last run and that run's graph."""
    generator = connected(ctx, lambda client: Generators(client).get(name))
    if as_json:
        print_json(generator)
        return
    waiting = str(generator.queue_size)
    if generator.queue_size:
        waiting += f", the first packed {shown_time(generator.first_pack)}"
    print_detail(
        [
            ("name", generator.name),
            ("generator id", generator.generator_id),
            ("runs at", trigger_text(generator)),
            ("waiting", waiting),
            ("added by", generator.initiator_name),
            ("added", shown_time(generator.created)),
            ("last run", shown_time(generator.last_run) or "never"),
            ("last graph", generator.last_process_graph_id),
            ("workflow", node_names(generator.workflow_spec)),
        ]
    )


add_remove_command(
    app,
    "generator",
    Generators,
    "Remove a generator and the arguments that wait; runs already started go on.",
)
