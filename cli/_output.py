"""Consoles, tables and JSON output shared by the commands."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from colonyos.models import ZERO_TIME, Colony, Executor, Process, ProcessState

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

STATE_STYLE = {
    ProcessState.WAITING: "yellow",
    ProcessState.RUNNING: "cyan",
    ProcessState.SUCCESS: "green",
    ProcessState.FAILED: "red",
    ProcessState.CANCELLED: "magenta",
}


def print_json(value: Any) -> None:
    """One JSON document on stdout, with the Colonies keys (for scripts)."""
    print(msgspec.json.encode(value).decode())


def when(t: datetime) -> str:
    return "" if t == ZERO_TIME else t.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def state_text(state: ProcessState) -> str:
    return f"[{STATE_STYLE[state]}]{state.name}[/]"


def short(values: Iterable[Any], width: int = 40) -> str:
    text = " ".join(str(v) for v in values)
    return text if len(text) <= width else text[: width - 1] + "…"


def process_table(processes: list[Process], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("process id", no_wrap=True)  # whole, so that it can be copied
    for column in ("func", "args", "executor type", "state", "submitted", "ended"):
        table.add_column(column, overflow="ellipsis")
    for p in processes:
        table.add_row(
            p.process_id,
            p.spec.func_name,
            short(p.spec.args),
            p.executor_type,
            state_text(p.state),
            when(p.submission_time),
            when(p.end_time),
        )
    return table


def process_detail(p: Process) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows = [
        ("process id", p.process_id),
        ("state", state_text(p.state)),
        ("colony", p.colony_name),
        ("executor type", p.executor_type),
        ("func", p.spec.func_name),
        ("args", short(p.spec.args, 200)),
        ("kwargs", msgspec.json.encode(p.spec.kwargs).decode() if p.spec.kwargs else ""),
        ("label", p.spec.label),
        ("priority", str(p.spec.priority)),
        ("assigned executor", p.assigned_executor_id),
        ("retries", f"{p.retries} of {p.spec.max_retries}"),
        ("submitted", when(p.submission_time)),
        ("started", when(p.start_time)),
        ("ended", when(p.end_time)),
        ("output", short(p.output, 200)),
        ("errors", "; ".join(p.errors)),
    ]
    for key, value in rows:
        if value:
            table.add_row(key, value)
    return table


def executor_table(executors: list[Executor]) -> Table:
    table = Table(title="executors", title_justify="left")
    for column in ("name", "type", "state", "location", "last heard"):
        table.add_column(column)
    for e in executors:
        table.add_row(
            e.executor_name,
            e.executor_type,
            e.state.name,
            e.location_name,
            when(e.last_heard_from_time),
        )
    return table


def colony_table(colonies: list[Colony]) -> Table:
    table = Table(title="colonies", title_justify="left")
    for column in ("name", "colony id", "auto-approve"):
        table.add_column(column)
    for c in colonies:
        table.add_row(c.name, c.colony_id, "yes" if c.auto_approve else "no")
    return table
