"""Consoles, tables and JSON output shared by the commands."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table
from rich.text import Text

from colonyos.messages import ExecutorInfo
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


def executor_table(executors: list[ExecutorInfo]) -> Text:
    """Aligned columns, one executor a line (whole names, which other commands take); the
    capabilities come last and are never cut. Print with ``soft_wrap=True``."""
    header = ("NAME", "TYPE", "STATE", "ONLINE", "HEARD", "RUNNING", "CAPABILITIES")
    rows = [
        (
            e.executor_name,
            e.executor_type,
            e.state.name.lower(),
            "online" if e.online else "offline",
            heard_text(e.last_heard_from_time),
            str(e.running),
            capabilities_text(e),
        )
        for e in executors
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = [_aligned(header, widths, style="bold")]
    lines += [_aligned(row, widths, style="") for row in rows]
    return Text("\n").join(lines)


def _aligned(row: tuple[str, ...], widths: list[int], style: str) -> Text:
    """One line of :func:`executor_table`: the running count right-aligned, online green."""
    line = Text(style=style)
    for i, cell in enumerate(row):
        last = i == len(widths)
        text = cell if last else cell.rjust(widths[i]) if i == 5 else cell.ljust(widths[i])
        if not style and i == 3:
            line.append(text, style="green" if cell == "online" else "dim")
        else:
            line.append(text)
        if not last:
            line.append("  ")
    return line


def heard_text(t: datetime, today: date | None = None) -> str:
    """A wall-clock time, short: the time of day if it is today, else the date too."""
    if t == ZERO_TIME:
        return "never"
    local = t.astimezone()
    if local.date() == (today or datetime.now().astimezone().date()):
        return local.strftime("%H:%M:%S")
    return local.strftime("%b %d %H:%M")


def capabilities_text(e: Executor) -> str:
    """What it registered it can offer: cpu, mem and gpus of its hardware entries."""
    parts = []
    for h in e.capabilities.hardware:
        if h.cpu:
            parts.append(f"cpu {h.cpu}")
        if h.mem:
            parts.append(f"mem {h.mem}")
        if h.gpu.count:
            gpu = f"gpu {h.gpu.count}"
            parts.append(f"{gpu} {h.gpu.name}".strip() if h.gpu.name else gpu)
    return ", ".join(parts) or "-"


def colony_table(colonies: list[Colony]) -> Table:
    table = Table(title="colonies", title_justify="left")
    for column in ("name", "colony id", "auto-approve"):
        table.add_column(column)
    for c in colonies:
        table.add_row(c.name, c.colony_id, "yes" if c.auto_approve else "no")
    return table
