"""``colonies events``: the colony's events as they happen, or replayed from a time: one
aligned line each (or one JSON object with ``--json``)."""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta

import msgspec
import typer
from rich.markup import escape

from colonyos.client import Client
from colonyos.errors import GraphNotFoundError, NotFoundError, ProcessNotFoundError
from colonyos.events import has_events
from colonyos.ids import check_id_prefix, is_full_id
from colonyos.messages import Event, GraphEvent, UnknownEvent
from colonyos.models import Process, ProcessState, now
from colonyos.subjects import GRAPH_TOKEN, REJECTED_TOKEN

from ._common import connect
from ._output import STATE_STYLE, console, err
from ._run import fail, run

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> datetime:
    """An ISO time (2026-11-25T10:00:00Z) or an age (90s, 15m, 2h, 1d)."""
    if text and text[-1] in _UNITS and text[:-1].replace(".", "", 1).isdigit():
        return now() - timedelta(seconds=float(text[:-1]) * _UNITS[text[-1]])
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise fail(f"--since {text!r}: give an ISO time or an age such as 15m or 2h") from None
    return t if t.tzinfo else t.astimezone()


def events(
    ctx: typer.Context,
    process_id: str = typer.Option("*", "--process", "-p", help="Only this process or graph."),
    executor_type: str = typer.Option(
        "*", "--type", help="Only this executor type (_graph: graph events)."
    ),
    state: str = typer.Option(
        "*", "--state", help="Only this state (waiting, running, ..., rejected)."
    ),
    since: str = typer.Option("", "--since", help="Replay from an ISO time or an age (15m)."),
    count: int = typer.Option(0, "--count", "-n", help="Stop after this many events (0: never)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """Stream the colony's events: processes, graphs and refused submissions (Ctrl-C stops)."""
    token = state if state == "*" else _state_token(state)
    start = parse_since(since) if since else None

    async def go() -> None:
        async with await connect(ctx) as client:
            wanted = process_id
            if process_id != "*":
                found = await _full_id(client, process_id)
                if found is None:
                    raise fail(
                        f"no process or graph {process_id} in colony {client.colony} "
                        "(and no event of it is kept)"
                    )
                wanted = found
            stream = client.subscribe(
                process_id=wanted, executor_type=executor_type, state=token, since=start
            )
            seen = 0
            async with stream as subscription:
                if not as_json and console.is_terminal:
                    console.print(f"[dim]{HEADER}[/]", soft_wrap=True)
                while not count or seen < count:
                    received = await subscription.receive()
                    if isinstance(received.event, UnknownEvent):
                        _skipped(received.event)
                        continue
                    if as_json:
                        print(msgspec.json.encode(received.event).decode(), flush=True)
                    else:
                        console.print(event_line(received.time, received.event), soft_wrap=True)
                    seen += 1

    run(go())


async def _full_id(client: Client, item_id: str) -> str | None:
    """The whole id of the process or graph ``item_id`` names (a unique prefix will do), or of
    a submission of which an event is kept (a refused one); None if it names nothing."""
    prefix = check_id_prefix(item_id)
    if not is_full_id(prefix):
        for graph in (False, True):
            with contextlib.suppress(NotFoundError):
                return await client.resolve(prefix, graph=graph)
        return None
    with contextlib.suppress(ProcessNotFoundError):
        await client.get(prefix)
        return prefix
    with contextlib.suppress(GraphNotFoundError):
        await client.graph_get(prefix)
        return prefix
    return prefix if await has_events(client, prefix) else None


def _state_token(text: str) -> str:
    if text == REJECTED_TOKEN:
        return text
    try:
        return ProcessState.parse(text).token
    except ValueError as e:
        raise fail(f"--state: {e}") from None


# Columns of an event line: time, state, executor type, short id, func, then what else there
# is to say (node, retries, error). The fixed part fits 68 columns.
_WIDTHS = (15, 9, 10, 12, 12)
HEADER = (
    "  ".join(
        name.ljust(width)
        for name, width in zip(("TIME", "STATE", "TYPE", "ID", "FUNC"), _WIDTHS, strict=True)
    )
    + "  DETAIL"
)


def _cell(text: str, width: int) -> str:
    text = text if len(text) <= width else text[: width - 1] + "…"
    return escape(text.ljust(width))


def event_line(when: datetime, event: Event) -> str:
    """One aligned line (rich markup) for an event of any kind."""
    if isinstance(event, Process):
        state, style = event.state.token, STATE_STYLE[event.state]
        etype, item_id, func = event.executor_type, event.process_id, event.spec.func_name
        details = []
        if event.spec.node_name:
            details.append(f"node {event.spec.node_name}")
        if event.retries or event.spec.max_retries:
            details.append(f"retries {event.retries}/{event.spec.max_retries}")
        if event.errors and event.state in (ProcessState.FAILED, ProcessState.WAITING):
            details.append(event.errors[-1])
        detail = ", ".join(details)
    elif isinstance(event, GraphEvent):
        state, style = event.state.token, STATE_STYLE[event.state]
        etype, item_id, func = GRAPH_TOKEN, event.process_graph_id, "-"
        detail = f"{len(event.process_ids)} processes"
        if event.cron_name:  # a cron's tick
            detail += f", cron {event.cron_name}"
        if event.generator_name:  # a generator's run
            detail += f", generator {event.generator_name}"
    else:
        state, style = REJECTED_TOKEN, "red"
        etype, item_id, func = event.executor_type, event.process_id, "-"
        path = event.path and event.path not in event.error
        detail = f"{event.path}: {event.error}" if path else event.error
    cells = [
        _cell(when.astimezone().strftime("%b %d %H:%M:%S"), _WIDTHS[0]),
        f"[{style}]{_cell(state, _WIDTHS[1])}[/]",
        _cell(etype, _WIDTHS[2]),
        _cell(item_id[:12], _WIDTHS[3]),
        _cell(func, _WIDTHS[4]),
        escape(detail),
    ]
    return "  ".join(cells).rstrip()


def _skipped(event: UnknownEvent) -> None:
    kind = f" (kind {event.kind!r})" if event.kind else ""
    err.print(
        f"[yellow]warning:[/] skipped an event this version cannot read{kind} on "
        f"{escape(event.subject)}: {escape(event.reason)}",
        markup=True,
        soft_wrap=True,
    )
