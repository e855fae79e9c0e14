"""Consoles, tables and JSON output shared by the commands.

Tables are built to stay readable at 80 columns and in pipes: ids are shown short (the first
12 characters, which every command accepts as a prefix), fixed-format values (ids, states,
times, counts) are never cut, and only free text (function names, arguments, outputs) gives
way when the terminal is narrow. ``--wide`` shows every column and whole ids, at the table's
natural width whatever the terminal's.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

import msgspec
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from colonyos.ids import short_id
from colonyos.messages import ExecutorInfo
from colonyos.models import ZERO_TIME, Colony, Executor, Process, ProcessState, now

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

STATE_STYLE = {
    ProcessState.WAITING: "yellow",
    ProcessState.RUNNING: "cyan",
    ProcessState.SUCCESS: "green",
    ProcessState.FAILED: "red",
    ProcessState.CANCELLED: "magenta",
}

# Wide enough for any table: --wide prints at the table's natural width.
_UNBOUNDED = 100_000
# The key column of a detail view ("assigned executor").
_KEY_WIDTH = 19


def print_json(value: Any) -> None:
    """One JSON document on stdout, with the Colonies keys (for scripts)."""
    print(msgspec.json.encode(value).decode())


def say(text: str, out: Console = console) -> None:
    """A plain line (no markup), never wrapped nor cut by us: whole ids stay whole for
    copying, log lines stay lines in a pipe."""
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def when(t: datetime) -> str:
    return "" if t == ZERO_TIME else t.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def state_text(state: ProcessState) -> str:
    return f"[{STATE_STYLE[state]}]{state.name}[/]"


def short(values: Iterable[Any], width: int = 40) -> str:
    text = " ".join(str(v) for v in values)
    return text if len(text) <= width else text[: width - 1] + "…"


def show_id(ident: str, wide: bool) -> str:
    return ident if wide else short_id(ident)


def duration(start: datetime, end: datetime) -> str:
    """How long from ``start`` to ``end`` (or until now, if it has not ended): 0.4s, 3m05s,
    2h07m, 3d04h. Empty if it has not started."""
    if start == ZERO_TIME:
        return ""
    return seconds_text(max(0.0, ((now() if end == ZERO_TIME else end) - start).total_seconds()))


def seconds_text(seconds: float) -> str:
    """A duration in seconds, short: 12ms, 3.4s, 3m05s, 2h07m, 3d04h."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def free_text(text: str) -> Text:
    """A cell that gives way (cut with an ellipsis) when the terminal is narrow."""
    return Text(text, no_wrap=True, overflow="ellipsis")


def new_table(title: str, columns: Iterable[tuple[str, bool]]) -> Table:
    """A table without borders, with (header, is_fixed) columns. Fixed columns (ids, states,
    times, counts) are never cut; the others hold free text, in :func:`free_text` cells, and
    take what width is left."""
    table = Table(title=title, title_justify="left", box=None, pad_edge=False, header_style="bold")
    for header, is_fixed in columns:
        table.add_column(header, no_wrap=is_fixed)
    return table


def show_table(table: Table, wide: bool = False) -> None:
    """Print a table: to the terminal's width, or with ``wide`` at its natural width."""
    if wide:
        Console(highlight=False, width=_UNBOUNDED).print(table)
    else:
        console.print(table)


def process_table(processes: list[Process], title: str, wide: bool = False) -> Table:
    columns = [("process id", True), ("func", False)]
    if wide:
        columns.append(("args", False))
    columns += [("executor type", False), ("state", True), ("submitted", True)]
    if wide:
        columns += [("started", True), ("ended", True)]
    columns.append(("duration", True))
    table = new_table(title, columns)
    for p in processes:
        row: list[str | Text] = [show_id(p.process_id, wide), free_text(p.spec.func_name)]
        if wide:
            row.append(free_text(short(p.spec.args, 200)))
        row += [free_text(p.executor_type), state_text(p.state), when(p.submission_time)]
        if wide:
            row += [when(p.start_time), when(p.end_time)]
        row.append(duration(p.start_time, p.end_time))
        table.add_row(*row)
    return table


def print_detail(rows: Iterable[tuple[str, str | Text]]) -> None:
    """A detail view, one ``key  value`` line per non-empty value, never cut nor folded by
    us (ids stay whole for copying; a long value is wrapped by the terminal)."""
    for key, value in rows:
        if not value:
            continue
        line = Text(f"{key:<{_KEY_WIDTH}}", style="bold")
        line.append(value if isinstance(value, Text) else Text(value))
        console.print(line, soft_wrap=True)


def process_detail(p: Process) -> list[tuple[str, str | Text]]:
    errors = "; ".join(p.errors)
    return [
        ("process id", p.process_id),
        ("state", Text(p.state.name, style=STATE_STYLE[p.state])),
        ("colony", p.colony_name),
        ("executor type", p.executor_type),
        ("func", p.spec.func_name),
        ("args", short(p.spec.args, 200)),
        ("kwargs", msgspec.json.encode(p.spec.kwargs).decode() if p.spec.kwargs else ""),
        ("label", p.spec.label),
        ("priority", str(p.spec.priority)),
        ("process graph", p.process_graph_id),
        ("assigned executor", p.assigned_executor_id),
        ("retries", f"{p.retries} of {p.spec.max_retries}"),
        ("submitted", when(p.submission_time)),
        ("started", when(p.start_time)),
        ("ended", when(p.end_time)),
        ("duration", duration(p.start_time, p.end_time)),
        ("output", short(p.output, 200)),
        ("errors", errors),
    ]


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


def colony_table(colonies: list[Colony], wide: bool = False) -> Table:
    table = new_table("colonies", [("name", True), ("colony id", True), ("auto-approve", True)])
    for c in colonies:
        table.add_row(c.name, show_id(c.colony_id, wide), "yes" if c.auto_approve else "no")
    return table


class LiveView(Live):
    """rich's ``Live`` for the CLI's live tables. On a terminal rich ends the last line of the
    view when it stops; on a file or a pipe it does not, and whatever came next (``interrupted
    waiting for ...`` after a Ctrl-C, the next command's output) began on the table's last row.
    This ends it there too."""

    def stop(self) -> None:
        was_started = self.is_started
        super().stop()
        if was_started and not self.console.is_terminal and not self.transient:
            self.console.line()
