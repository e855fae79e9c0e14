"""The live colony view of ``colonies process watch`` (and ``ps --watch``), fed by events and
heartbeats, and redrawn on a clock."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

import nats.errors
from nats.aio.msg import Msg
from rich.console import Group
from rich.table import Table

from colonyos.client import Client
from colonyos.config import BrokerSettings
from colonyos.messages import Event, ExecutorInfo, GraphEvent, Rejection, Stats, UnknownEvent
from colonyos.models import ZERO_TIME, Process, ProcessState

from ._output import STATE_STYLE, LiveView, console

# Shown online: heard from within the broker's (default) liveness window, as `executor ls`.
ONLINE_S = BrokerSettings().executor_liveness_s
RATE_WINDOW_S = 10.0
TICK_S = 1.0  # redraw at least this often, events or not
_DRAW_S = 0.1  # and at most this often, however fast events come


class ColonyView:
    """Counts per state and per executor type, executors online, and throughput.

    Starts from the broker's counts and executor list, then follows events (each says the new
    state, and the process's fields say which state it left) and heartbeats. Time comes from
    ``clock`` (monotonic seconds), so that what depends on it (throughput, online) can be
    driven in tests.
    """

    def __init__(self, colony: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.colony = colony
        self.clock = clock
        self.states: dict[str, int] = {}
        self.by_type: dict[str, dict[str, int]] = {}
        self.heard: dict[str, float] = {}  # executor name -> clock time last heard from
        self.ended: deque[float] = deque()
        self.known: dict[str, ProcessState] = {}
        self.rejected = 0
        self.skipped = 0

    def seed(self, stats: Stats, executors: list[ExecutorInfo]) -> None:
        """The broker's counts and executors when the view starts."""
        self.states = dict(stats.states)
        self.by_type = {k: dict(v) for k, v in stats.executor_types.items()}
        now, wall = self.clock(), datetime.now(UTC)
        for e in executors:
            if e.online and e.last_heard_from_time != ZERO_TIME:
                age = max(0.0, (wall - e.last_heard_from_time).total_seconds())
                self.heard[e.executor_name] = now - age
            else:
                self.heard[e.executor_name] = float("-inf")  # known, offline

    def heard_from(self, executor_name: str) -> None:
        self.heard[executor_name] = self.clock()

    def apply(self, event: Event | UnknownEvent) -> bool:
        """Follow one event; False if it was not one this view can read (skipped)."""
        if isinstance(event, UnknownEvent):
            self.skipped += 1
            return False
        if isinstance(event, Rejection):
            self.rejected += 1
        elif isinstance(event, Process):
            self._apply_process(event)
        # A graph event changes no process count: its processes have their own events.
        return isinstance(event, Process | GraphEvent | Rejection)

    def _apply_process(self, p: Process) -> None:
        before = self.known.get(p.process_id, _left(p))
        self.known[p.process_id] = p.state
        etype = self.by_type.setdefault(p.executor_type, {})
        if before is not None:
            self.states[before.token] = max(0, self.states.get(before.token, 0) - 1)
            etype[before.token] = max(0, etype.get(before.token, 0) - 1)
        self.states[p.state.token] = self.states.get(p.state.token, 0) + 1
        etype[p.state.token] = etype.get(p.state.token, 0) + 1
        if p.state.is_terminal:
            self.ended.append(self.clock())

    def rate(self) -> float:
        """Processes ended per second over the last :data:`RATE_WINDOW_S` (0 when idle)."""
        cutoff = self.clock() - RATE_WINDOW_S
        while self.ended and self.ended[0] < cutoff:
            self.ended.popleft()
        return len(self.ended) / RATE_WINDOW_S

    def online(self) -> list[str]:
        now = self.clock()
        return sorted(n for n, t in self.heard.items() if now - t <= ONLINE_S)

    def offline(self) -> list[str]:
        now = self.clock()
        return sorted(n for n, t in self.heard.items() if now - t > ONLINE_S)

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
        online, offline = self.online(), self.offline()
        lines = [f"executors online: {len(online)}  {' '.join(online)}".rstrip()]
        if offline:
            lines.append(f"offline (silent over {ONLINE_S:g} s): {' '.join(offline)}")
        lines.append(f"throughput: {self.rate():.1f} processes/s (last {RATE_WINDOW_S:g} s)")
        if self.rejected:
            lines.append(f"rejected submissions since the view started: {self.rejected}")
        if self.skipped:
            lines.append(f"skipped {self.skipped} events this version cannot read")
        return Group(states, types, "\n".join(lines))


def _left(p: Process) -> ProcessState | None:
    """The state an event's process came from, read from its fields (None: it is new)."""
    if p.state is ProcessState.WAITING:
        return ProcessState.RUNNING if p.retries and p.start_time == ZERO_TIME else None
    if p.state is ProcessState.RUNNING:
        return ProcessState.WAITING
    return ProcessState.RUNNING if p.start_time != ZERO_TIME else ProcessState.WAITING


async def watch_colony(
    client: Client,
    count: int = 0,
    ready: asyncio.Event | None = None,
    *,
    view: ColonyView | None = None,
    tick_s: float = TICK_S,
) -> ColonyView:
    """Run the live view until Ctrl-C, or until ``count`` events have been shown. It redraws
    as events come (up to ten times a second) and every ``tick_s`` in between, so that
    throughput falls to 0 when the colony is idle and a silent executor goes offline.
    ``ready`` is set once it listens and has the starting counts and executors."""
    view = view or ColonyView(client.colony)

    async def on_beat(msg: Msg) -> None:
        view.heard_from(msg.subject.rsplit(".", 1)[-1])

    beats = await client.nc.subscribe(client.subjects.heartbeat(client.colony, "*"), cb=on_beat)
    try:
        async with client.subscribe() as events:
            view.seed(await client.stats(), await client.executor_list())
            if ready is not None:
                ready.set()
            seen, drawn = 0, time.monotonic()
            with LiveView(view.render(), console=console, auto_refresh=False) as live:
                while not count or seen < count:
                    try:
                        event = await events.next(tick_s)
                    except TimeoutError:
                        drawn = float("-inf")  # a tick: nothing happened, but time did
                    else:
                        seen += view.apply(event)
                    if time.monotonic() - drawn >= _DRAW_S or seen == count:
                        live.update(view.render(), refresh=True)
                        drawn = time.monotonic()
    finally:
        with contextlib.suppress(nats.errors.Error):
            await beats.unsubscribe()
    return view
