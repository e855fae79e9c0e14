"""The live colony view follows events: counts, executors online, throughput."""

from __future__ import annotations

import asyncio

from colonyos.cli.status import watch_colony
from colonyos.client import Client
from colonyos.executors import echo

from ..test_assign_flow import spec


async def test_colony_view_follows_events(client: Client, settings) -> None:
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
    assert "echo-view" in view.heard
    assert view.rate() > 0
