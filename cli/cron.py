"""``colonies cron add|ls|get|run|remove``: workflows that start themselves on a schedule."""

from __future__ import annotations

import asyncio
import math
from datetime import datetime, timedelta
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from colonyos.crons.client import Crons
from colonyos.crons.model import Cron
from colonyos.crons.schedule import next_runs
from colonyos.models import now

from ._common import JSON_OPTION, WIDE_OPTION, connect, load_workflow_file
from ._output import (
    LiveView,
    console,
    free_text,
    new_table,
    print_detail,
    print_json,
    say,
    show_id,
    show_table,
)
from ._output import when as shown_time
from ._run import fail, run
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
    help="Run a workflow on a schedule: a cron expression or every N seconds.",
    no_args_is_help=True,
)

_NAME = name_option("cron")
_NEXT_RUNS = 3  # one line of 80 columns
_WATCH_S = 1.0


def schedule_text(cron: Cron) -> str:
    """``0/5 * * * * *``, ``30 3 * * * Europe/Paris``, ``every 60 s``, ``every 60 s, random``."""
    if cron.interval > 0:
        return f"every {cron.interval} s" + (", random" if cron.random else "")
    return cron.cron_expression + (f" {cron.time_zone}" if cron.time_zone else "")


@app.command("add")
def add(
    ctx: typer.Context,
    name: str = _NAME,
    spec_file: Path = SPEC_OPTION,
    expression: str = typer.Option(
        "",
        "--cron",
        help="Cron expression: six fields, seconds first ('0/5 * * * * *'), or five.",
    ),
    interval: int | None = typer.Option(
        None, "--interval", min=1, help="Instead of --cron: every this many seconds."
    ),
    random: bool = typer.Option(
        False, "--random", help="With --interval: at a random moment within each interval."
    ),
    wait_previous: bool = typer.Option(
        False, "--waitprevious", help="Start no run while the previous one has not ended."
    ),
    time_zone: str = typer.Option(
        "", "--timezone", help="Time zone of --cron, such as Europe/Paris (default: UTC)."
    ),
    strict: bool = STRICT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Add a cron: the workflow runs on each tick, its roots given the previous run's
    outputs."""
    if bool(expression) == (interval is not None):
        raise fail("give either --cron EXPRESSION or --interval SECONDS")
    workflow = load_workflow_file(spec_file, strict)

    cron = connected(
        ctx,
        lambda client: Crons(client).add(
            name,
            workflow,
            cron_expression=expression,
            interval=interval if interval is not None else -1,
            random=random,
            wait_for_previous=wait_previous,
            time_zone=time_zone,
        ),
    )
    if as_json:
        print_json(cron)
    else:
        say(f"cron {cron.name} added ({schedule_text(cron)}); next run {shown_time(cron.next_run)}")


@app.command("ls")
def ls(
    ctx: typer.Context,
    watch: bool = typer.Option(
        False, "--watch", help="Keep the list on screen, counting down to each next run."
    ),
    as_json: bool = JSON_OPTION,
    wide: bool = WIDE_OPTION,
) -> None:
    """List the colony's crons: schedule, next run, last run and its graph."""
    if watch and as_json:
        raise fail("--watch shows a live table; leave out --json")

    async def go() -> list[Cron]:
        async with await connect(ctx) as client:
            crons = await Crons(client).list()
            if watch:
                with LiveView(cron_table(crons, wide, now()), console=console) as live:
                    while True:  # until Ctrl-C
                        await asyncio.sleep(_WATCH_S)  # sleep-ok: a live view's refresh
                        crons = await Crons(client).list()
                        live.update(cron_table(crons, wide, now()), refresh=True)
            return crons

    crons = run(go())
    if as_json:
        print_json(crons)
    elif not crons:
        say("no crons: add one with 'colonies cron add --name N --spec F --cron EXPR'")
    else:
        show_table(cron_table(crons, wide), wide)


def cron_table(crons: list[Cron], wide: bool = False, at: datetime | None = None) -> Table:
    """The crons, one a row; given the time ``at``, also how long until each next run."""
    columns = [("name", False), ("schedule", False), ("next run", True)]
    if at is not None:
        columns.append(("in", True))
    columns += [("last run", True), ("last graph", True)]
    title = "" if at is None else f"crons at {shown_time(at)} (Ctrl-C stops)"
    table = new_table(title, columns)
    today = (at or now()).astimezone().date()
    for cron in crons:
        waits = ", waits" if cron.wait_for_prev_process_graph else ""
        row: list[str | Text] = [
            free_text(cron.name),
            free_text(schedule_text(cron) + waits),
            short_time(cron.next_run, today),
        ]
        if at is not None:
            row.append(countdown(cron.next_run - at))
        row.append(short_time(cron.last_run, today) or "never")
        row.append(show_id(cron.prev_process_graph_id, wide))
        table.add_row(*row)
    return table


def countdown(left: timedelta) -> str:
    """``7s``, ``4m05s``, ``2h30m``, ``3d``: how long until a run (0s once it is due)."""
    seconds = max(0, math.ceil(left.total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d"


@app.command("get")
def get(ctx: typer.Context, name: str = _NAME, as_json: bool = JSON_OPTION) -> None:
    """Show a cron: its schedule and next run times, its last run and that run's graph."""
    cron = connected(ctx, lambda client: Crons(client).get(name))
    if as_json:
        print_json(cron)
        return
    t = now()
    upcoming = ", ".join(shown_time(x) for x in next_runs(cron, _latest(cron, t), _NEXT_RUNS))
    print_detail(
        [
            ("name", cron.name),
            ("cron id", cron.cron_id),
            ("schedule", schedule_text(cron)),
            ("waits", "for the previous run to end" if cron.wait_for_prev_process_graph else ""),
            ("added by", cron.initiator_name),
            ("added", shown_time(cron.created)),
            ("next runs", upcoming),
            ("last run", shown_time(cron.last_run) or "never"),
            ("last graph", cron.prev_process_graph_id),
            ("workflow", node_names(cron.workflow_spec)),
        ]
    )


def _latest(cron: Cron, t: datetime) -> datetime:
    """Count next runs from now, or from the last run if that is later (a manual run)."""
    return max(t, cron.last_run)


@app.command("run")
def run_now(ctx: typer.Context, name: str = _NAME, as_json: bool = JSON_OPTION) -> None:
    """Start a run now, once, beside the schedule; prints its graph id."""
    cron = connected(ctx, lambda client: Crons(client).run(name))
    if as_json:
        print_json(cron)
    else:
        say(cron.prev_process_graph_id)


add_remove_command(app, "cron", Crons, "Remove a cron; runs already started go on.")
