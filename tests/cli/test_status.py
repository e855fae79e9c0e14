"""The live colony view follows events and heartbeats, starts from the broker's executors, and
redraws on a clock: throughput falls to 0 when idle, a silent executor goes offline."""

from __future__ import annotations

import asyncio
import io

from rich.console import Console, Group

from colonyos.cli.status import ONLINE_S, RATE_WINDOW_S, ColonyView, watch_colony
from colonyos.client import Client
from colonyos.executors import echo
from colonyos.messages import ExecutorInfo, ProcessEvent, Stats
from colonyos.models import ProcessState, now

from ..helpers import connect_executor, spec


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def text(group: Group) -> str:
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(group)
    return console.export_text()


class Recording(ColonyView):
    """A view that keeps the text of every frame it draws."""

    def __init__(self, *args, **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kw)
        self.frames: list[str] = []

    def render(self) -> Group:
        group = super().render()
        self.frames.append(text(group))
        return group


async def test_colony_view_follows_events(client: Client, settings) -> None:  # type: ignore[no-untyped-def]
    await client.submit(spec())  # counted from the broker's stats when the view starts
    ready = asyncio.Event()
    # After it starts: one submission (1 event), then two processes run (4 events).
    view_task = asyncio.create_task(watch_colony(client, count=5, ready=ready))
    async with asyncio.timeout(5):
        await ready.wait()
    await client.submit(spec())
    runner = asyncio.create_task(echo.build(settings, "echo", "echo-view").run(burst=True))
    async with asyncio.timeout(10):
        view = await view_task
    assert await runner == 2
    assert {k: v for k, v in view.states.items() if v} == {"success": 2}
    assert {k: v for k, v in view.by_type["echo"].items() if v} == {"success": 2}
    assert "echo-view" in view.online()
    assert view.rate() > 0


async def test_view_shows_executors_online_from_its_start_and_redraws_on_a_clock(
    client: Client, settings
) -> None:  # type: ignore[no-untyped-def]
    ex = await connect_executor(settings, "quiet-1")  # heard once (it registered), then silent
    clock = FakeClock()
    view = Recording(client.colony, clock=clock)
    ready = asyncio.Event()
    watching = asyncio.create_task(watch_colony(client, ready=ready, view=view, tick_s=0.02))
    try:
        async with asyncio.timeout(5):
            await ready.wait()
        # Online from the start: from the broker's list, before any heartbeat.
        assert "executors online: 1  quiet-1" in view.frames[0]
        # No event, no heartbeat: only the clock moves, and the view is drawn again.
        clock.now += ONLINE_S + 1
        async with asyncio.timeout(5):
            while "offline (silent over" not in view.frames[-1]:
                await asyncio.sleep(0.01)  # sleep-ok: polling the drawn frames under a deadline
        assert "executors online: 0" in view.frames[-1] and "quiet-1" in view.frames[-1]
        # A heartbeat brings it back.
        registered = [e for e in await client.executor_list() if e.executor_name == "quiet-1"]
        await ex.heartbeat(registered[0].executor_id, [])
        async with asyncio.timeout(5):
            while "executors online: 1  quiet-1" not in view.frames[-1]:
                await asyncio.sleep(0.01)  # sleep-ok: polling the drawn frames under a deadline
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        await ex.aclose()


def test_throughput_falls_to_zero_and_silent_executors_go_offline() -> None:
    clock = FakeClock()
    view = ColonyView("dev", clock=clock)
    wall = now()
    view.seed(
        Stats(),
        [
            ExecutorInfo(
                executor_name="e1", executor_type="echo", online=True, last_heard_from_time=wall
            ),
            ExecutorInfo(executor_name="e2", executor_type="echo", online=False),
        ],
    )
    assert view.online() == ["e1"] and view.offline() == ["e2"]
    started = now()
    for i in range(5):
        pid = f"{i:064x}"
        process = ProcessEvent(process_id=pid, state=ProcessState.SUCCESS, start_time=started)
        assert view.apply(process)
    assert view.rate() == 5 / RATE_WINDOW_S
    assert "throughput: 0.5 processes/s" in text(view.render())
    clock.now += RATE_WINDOW_S + 0.1
    assert view.rate() == 0
    frame = text(view.render())
    assert "throughput: 0.0 processes/s" in frame and "executors online: 1  e1" in frame
    clock.now += ONLINE_S
    frame = text(view.render())
    assert "executors online: 0" in frame and "e1 e2" in frame
    view.heard_from("e2")
    assert view.online() == ["e2"]
