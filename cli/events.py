"""``colonies events``: lifecycle events as they happen, or replayed from a time."""

from __future__ import annotations

from datetime import datetime, timedelta

import msgspec
import typer

from colonyos.messages import Event, GraphEvent, Rejection, UnknownEvent
from colonyos.models import Process, ProcessState, now
from colonyos.subjects import REJECTED_TOKEN

from ._common import connect
from ._output import console, err, state_text
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
    process_id: str = typer.Option("*", "--process", "-p", help="Only this process."),
    executor_type: str = typer.Option("*", "--type", help="Only this executor type."),
    state: str = typer.Option("*", "--state", help="Only this state (waiting, running, ...)."),
    since: str = typer.Option("", "--since", help="Replay from an ISO time or an age (15m)."),
    count: int = typer.Option(0, "--count", "-n", help="Stop after this many events (0: never)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """Stream lifecycle events of the colony (Ctrl-C stops)."""
    token = state if state == "*" else _state_token(state)
    start = parse_since(since) if since else None

    async def go() -> None:
        async with await connect(ctx) as client:
            stream = client.subscribe(
                process_id=process_id, executor_type=executor_type, state=token, since=start
            )
            seen = 0
            async with stream as subscription:
                async for event in subscription:
                    if isinstance(event, UnknownEvent):
                        _skipped(event)
                        continue
                    _show(event, as_json)
                    seen += 1
                    if count and seen >= count:
                        return

    run(go())


def _state_token(text: str) -> str:
    if text == REJECTED_TOKEN:
        return text
    try:
        return ProcessState.parse(text).token
    except ValueError as e:
        raise fail(f"--state: {e}") from None


def _show(event: Event, as_json: bool) -> None:
    if as_json:
        print(msgspec.json.encode(event).decode())
        return
    if isinstance(event, Process):
        console.print(
            f"{event.process_id}  {state_text(event.state):<18}  {event.executor_type}  "
            f"{event.spec.func_name}  retries {event.retries}"
        )
    elif isinstance(event, GraphEvent):
        console.print(
            f"{event.process_graph_id}  {state_text(event.state):<18}  graph  "
            f"{len(event.process_ids)} processes"
        )
    elif isinstance(event, Rejection):
        console.print(
            f"{event.process_id}  [red]rejected[/]  {event.executor_type}  {event.error}",
            markup=True,
        )


def _skipped(event: UnknownEvent) -> None:
    err.print(
        f"[yellow]warning:[/] skipped an event this version cannot read on {event.subject}: "
        f"{event.reason}",
        markup=True,
        soft_wrap=True,
    )
