"""What ``colonies cron`` and ``colonies generator`` share: a workflow kept under a name in
the colony, added from a file, shown, listed and removed alike."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date, datetime
from typing import Any, Protocol, TypeVar

import msgspec
import typer

from colonyos.client import Client
from colonyos.models import ZERO_TIME

from ._common import JSON_OPTION, connect
from ._output import print_json, say
from ._run import run

T = TypeVar("T")

SPEC_OPTION = typer.Option(
    ..., "--spec", help="Workflow file (a JSON list of specs), or one function spec."
)
STRICT_OPTION = typer.Option(False, "--strict", help="Treat unknown keys as errors.")


def name_option(what: str) -> Any:
    """``--name``, required: the name of the ``what`` (cron, generator)."""
    return typer.Option(..., "--name", help=f"The {what}'s name (unique in the colony).")


def connected(ctx: typer.Context, call: Callable[[Client], Awaitable[T]]) -> T:
    """``call`` with a client of the command's colony; errors as :func:`run` says them."""

    async def go() -> T:
        async with await connect(ctx) as client:
            return await call(client)

    return run(go())


def node_names(workflow_spec: str) -> str:
    """The nodes of a stored workflow (Colonies' JSON string), ``a, b, c``."""
    nodes = msgspec.json.decode(workflow_spec or "{}", type=dict[str, Any])
    return ", ".join(str(s.get("nodename", "")) for s in nodes.get("functionspecs", []))


def short_time(t: datetime, today: date) -> str:
    """``19:59:30`` today, ``Dec 02 03:00`` another day (local time): a table at 80 columns
    keeps room for the schedule."""
    if t == ZERO_TIME:
        return ""
    local = t.astimezone()
    return local.strftime("%H:%M:%S" if local.date() == today else "%b %d %H:%M")


class _Removes(Protocol):
    async def remove(self, name: str) -> None: ...


def add_remove_command(
    app: typer.Typer, what: str, kind: Callable[[Client], _Removes], doc: str
) -> None:
    """``remove --name N [--json]`` on ``app``: remove the ``what`` through ``kind`` (the
    client's crons, generators); ``doc`` is its help."""

    def remove(
        ctx: typer.Context, name: str = name_option(what), as_json: bool = JSON_OPTION
    ) -> None:
        connected(ctx, lambda client: kind(client).remove(name))
        if as_json:
            print_json({"name": name, "removed": True})
        else:
            say(f"{what} {name} removed")

    remove.__doc__ = doc
    app.command("remove")(remove)
