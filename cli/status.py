"""The live colony view of ``colonies process watch`` (and ``ps --watch``), fed by events."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque

import msgspec
from rich.console import Group
from rich.live import Live
from rich.table import Table

from colonyos.client import Client
from colonyos.messages import Heartbeat
from colonyos.models import ZERO_TIME, Process, ProcessState

from ._output import STATE_STYLE, console

_ONLINE_S = 15.0  # an executor heard from within this is shown online
_RATE_WINDOW_S = 10.0
_beat_decoder = msgspec.json.Decoder(Heartbeat)


class ColonyView:
    """Counts per state and per executor type, executors online, and throughput.

    Starts from the broker's counts once, then follows events: each event says the new state,
    and the process's fields say which state it left.
    """

    def __init__(self, colony: str) -> None:
        self.colony = colony
        self.states: dict[str, int] = {}
        self.by_type: dict[str, dict[str, int]] = {}
        self.heard: dict[str, float] = {}
        self.ended: deque[float] = deque()
        self.known: dict[str, ProcessState] = {}

    def apply(self, p: Process) -> None:
        before = self.known.get(p.process_id, _left(p))
        self.known[p.process_id] = p.state
        etype = self.by_type.setdefault(p.executor_type, {})
        if before is not None:
            self.states[before.token] = max(0, self.states.get(before.token, 0) - 1)
            etype[before.token] = max(0, etype.get(before.token, 0) - 1)
        self.states[p.state.token] = self.states.get(p.state.token, 0) + 1
        etype[p.state.token] = etype.get(p.state.token, 0) + 1
        if p.state.is_terminal:
            self.ended.append(time.monotonic())

    def rate(self) -> float:
        cutoff = time.monotonic() - _RATE_WINDOW_S
        while self.ended and self.ended[0] < cutoff:
            self.ended.popleft()
        return len(self.ended) / _RATE_WINDOW_S

    def render(self) -> Group:
        order = [s.token for s in ProcessState]
        states = Table(title=f"colony {self.colony}", title_justify="left")
        for token in order:
            states.add_column(
                token, justify="right", style=STATE_STYLE[ProcessState[token.upper()]]
            )
        states.add_row(*(str(self.states.get(t, 0)) for t in order))
        types = Table(title="per executor type", title_justify="left")
        types.add_column("executor type")
        for token in order:
            types.add_column(token, justify="right")
        for etype, counts in sorted(self.by_type.items()):
            types.add_row(etype, *(str(counts.get(t, 0)) for t in order))
        now = time.monotonic()
        online = sorted(n for n, t in self.heard.items() if now - t < _ONLINE_S)
        footer = (
            f"executors online: {len(online)} {' '.join(online)}\n"
            f"throughput: {self.rate():.1f} processes/s (last {_RATE_WINDOW_S:g} s)"
        )
        return Group(states, types, footer)


def _left(p: Process) -> ProcessState | None:
    """The state an event's process came from, read from its fields (None: it is new)."""
    if p.state is ProcessState.WAITING:
        return ProcessState.RUNNING if p.retries and p.start_time == ZERO_TIME else None
    if p.state is ProcessState.RUNNING:
        return ProcessState.WAITING
    return ProcessState.RUNNING if p.start_time != ZERO_TIME else ProcessState.WAITING


async def watch_colony(
    client: Client, count: int = 0, ready: asyncio.Event | None = None
) -> ColonyView:
    """Run the live view until Ctrl-C, or until ``count`` events have been shown. ``ready``
    is set once it listens and has the starting counts."""
    view = ColonyView(client.colony)
    beats = await client.nc.subscribe(client.subjects.heartbeat(client.colony, "*"))
    try:
        async with client.subscribe() as events:
            stats = await client.stats()
            view.states = dict(stats.states)
            view.by_type = {k: dict(v) for k, v in stats.executor_types.items()}
            if ready is not None:
                ready.set()
            seen = 0
            with Live(view.render(), console=console, auto_refresh=False) as live:
                while not count or seen < count:
                    await _next_change(view, events, beats)
                    seen += 1
                    live.update(view.render(), refresh=True)
    finally:
        with contextlib.suppress(Exception):
            await beats.unsubscribe()
    return view


async def _next_change(view: ColonyView, events: object, beats: object) -> None:
    event_task = asyncio.ensure_future(events.next())  # type: ignore[attr-defined]
    beat_task = asyncio.ensure_future(beats.next_msg(timeout=None))  # type: ignore[attr-defined]
    try:
        while True:
            done, _ = await asyncio.wait(
                {event_task, beat_task}, return_when=asyncio.FIRST_COMPLETED, timeout=1.0
            )
            if beat_task in done:
                msg = beat_task.result()
                view.heard[msg.subject.rsplit(".", 1)[-1]] = time.monotonic()
                beat_task = asyncio.ensure_future(beats.next_msg(timeout=None))  # type: ignore[attr-defined]
            if event_task in done:
                event = event_task.result()
                if isinstance(event, Process):
                    view.apply(event)
                return
    finally:
        for task in (event_task, beat_task):
            task.cancel()
