"""``colonies colony stats``, ``colonies function stats`` and ``colonies server status``:
the numbers, once (``process watch`` is the live view)."""

from __future__ import annotations

from datetime import UTC, datetime

import typer
from rich.table import Table
from rich.text import Text

from colonyos.models import ProcessState
from colonyos.statistics import BrokerInfo, ColonyStats, FunctionStats, ServerStatus

from ._common import JSON_OPTION, connect
from ._output import (
    STATE_STYLE,
    console,
    free_text,
    new_table,
    print_detail,
    print_json,
    say,
    seconds_text,
)
from ._run import run

_STATES = [s.token for s in ProcessState]


def size_text(n: int) -> str:
    """A byte count, short: 512 B, 3.4 KiB, 12.0 MiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# -- colony stats -------------------------------------------------------------------------------


def colony_stats_table(s: ColonyStats) -> Table:
    table = Table(title=f"colony {s.colony_name}", title_justify="left", box=None, pad_edge=False)
    table.add_column("")
    for token in _STATES:
        table.add_column(token, justify="right", style=STATE_STYLE[ProcessState[token.upper()]])
    processes = [
        s.waiting_processes,
        s.running_processes,
        s.successful_processes,
        s.failed_processes,
        s.cancelled_processes,
    ]
    workflows = [
        s.waiting_workflows,
        s.running_workflows,
        s.successful_workflows,
        s.failed_workflows,
        s.cancelled_workflows,
    ]
    table.add_row("processes", *map(str, processes))
    table.add_row("workflows", *map(str, workflows))
    return table


def colony_stats(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """The colony's processes and workflows by state, and its executors online and offline
    (Colonies' 'colony stats')."""

    async def go() -> ColonyStats:
        async with await connect(ctx) as client:
            return await client.colony_stats()

    s = run(go())
    if as_json:
        print_json(s)
        return
    console.print(colony_stats_table(s))
    say(
        f"executors: {s.executors} registered, {s.active_executors} online, "
        f"{s.offline_executors} offline, {s.pending_executors} pending approval, "
        f"{s.unregistered_executors} removed"
    )


# -- function stats -----------------------------------------------------------------------------


def function_stats_table(found: list[FunctionStats]) -> Table:
    columns = [("func", False), ("executor type", False), ("count", True), ("failed", True)]
    columns += [(h, True) for h in ("wait p50", "p95", "max", "exec p50", "p95", "max")]
    table = new_table("per function: waiting time (submitted to started), then execution", columns)
    for f in found:
        times = (
            f.p50_wait_time,
            f.p95_wait_time,
            f.max_wait_time,
            f.p50_exec_time,
            f.p95_exec_time,
            f.max_exec_time,
        )
        failed = Text(str(f.failed), style="red" if f.failed else "")
        # No sample: '-' (a broker from before the sample counts sends none: its times show).
        waited, ran = f.wait_samples or f.max_wait_time, f.exec_samples or f.max_exec_time
        waits = [seconds_text(t) if waited else "-" for t in times[:3]]
        execs = [seconds_text(t) if ran else "-" for t in times[3:]]
        table.add_row(
            free_text(f.func_name),
            free_text(f.executor_type),
            str(f.counter),
            failed,
            *waits,
            *execs,
        )
    return table


def function_stats(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """Per function name and executor type: how many processes, how many failed, and their
    waiting (submitted to started) and execution (started to ended) times: p50, p95, max."""

    async def go() -> list[FunctionStats]:
        async with await connect(ctx) as client:
            return await client.function_stats()

    found = run(go())
    if as_json:
        print_json(found)
    elif not found:
        say("no processes yet: submit one with 'colonies function submit --spec FILE'")
    else:
        console.print(function_stats_table(found))


# -- server status ------------------------------------------------------------------------------


def _broker_text(b: BrokerInfo) -> str:
    sharded = ", sharded" if b.sharded else ""
    return f"{b.broker_id} on {b.host} (pid {b.pid}, colonyos {b.version}{sharded})"


# Colonies named beside a broker in server status; beyond, how many more.
_NAMED = 8


def _colonies_text(b: BrokerInfo) -> str:
    n = b.colonies
    text = f"{n} {'colony' if n == 1 else 'colonies'}"
    names = b.colony_names[:_NAMED]
    if not names:
        return text  # a broker of an earlier version says only how many
    more = f", and {n - len(names)} more" if n > len(names) else ""
    return f"{text}: {', '.join(names)}{more}"


def _ago(t: datetime) -> str:
    return seconds_text(max(0.0, (datetime.now(UTC) - t).total_seconds()))


def server_detail(s: ServerStatus) -> list[tuple[str, str | Text]]:
    rows: list[tuple[str, str | Text]] = [
        ("version", s.build_version),
        ("uptime", seconds_text(s.uptime)),
    ]
    if s.leader is not None:
        rows.append(("leading broker", _broker_text(s.leader)))
        rows.append(("leading for", _ago(s.leader.leading_since)))
        rows.append(("leads", _colonies_text(s.leader)))
    for b in s.standbys:  # sharded brokers lead colonies of their own
        if b.colonies:
            rows.append(("broker", _broker_text(b)))
            rows.append(("leads", _colonies_text(b)))
        else:
            rows.append(("standby", _broker_text(b)))
    if not s.standbys:
        rows.append(("standbys", Text("none: no broker takes over if the leader stops")))
    n = s.nats
    if n is not None:
        rows.append(("nats server", f"nats-server {n.version}"))
        rows.append(("server name", n.server_name))
        rows.append(("cluster", n.cluster))  # shown only in a cluster
        rows.append(("connected to", n.connected_url))
        rows.append(("known servers", ", ".join(n.servers)))
        rows.append(("max payload", size_text(n.max_payload)))
    rows.append(
        (
            "jetstream",
            f"{s.messages} messages, {size_text(s.bytes)} in {len(s.streams)} streams",
        )
    )
    return rows


def streams_table(s: ServerStatus) -> Table:
    table = new_table(
        "streams", [("stream", False), ("messages", True), ("bytes", True), ("consumers", True)]
    )
    for st in s.streams:
        table.add_row(free_text(st.name), str(st.messages), size_text(st.bytes), str(st.consumers))
    return table


def server_status(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """The installation: version, uptime, the leading broker and those standing by, the NATS
    server and the cluster's servers, and the streams' messages and bytes (a server owner's
    command)."""

    async def go() -> ServerStatus:
        async with await connect(ctx) as client:
            return await client.server_status()

    s = run(go())
    if as_json:
        print_json(s)
        return
    print_detail(server_detail(s))
    console.print()
    console.print(streams_table(s))
