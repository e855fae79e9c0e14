"""Fixtures of the cron tests: a counting executor whose runs chain through a cron."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from colonyos.client import Client
from colonyos.config import Settings
from colonyos.executor import ExecutorApp, ProcessContext

COUNT_TYPE = "counter"

# Two nodes: "first" outputs one more than the sum of its input (the previous run's leaves'
# outputs); "last" passes what it gets on. So run k's leaf outputs k, when it chains.
CHAIN: list[dict[str, Any]] = [
    {"nodename": "first", "funcname": "count", "conditions": {"executortype": COUNT_TYPE}},
    {
        "nodename": "last",
        "funcname": "pass",
        "conditions": {"executortype": COUNT_TYPE, "dependencies": ["first"]},
    },
]


@dataclass
class Counter:
    """What the executor saw: how many functions ran at once at most, and a gate the test can
    close to make a run slow."""

    app: ExecutorApp
    running: int = 0
    most: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def counter(client: Client, settings: Settings) -> AsyncIterator[Counter]:
    app = ExecutorApp(COUNT_TYPE, "counter-1", settings=settings)
    seen = Counter(app)
    seen.gate.set()

    @app.handler()
    async def handle(ctx: ProcessContext) -> list[Any]:
        seen.running += 1
        seen.most = max(seen.most, seen.running)
        try:
            await seen.gate.wait()
            values = [v for v in ctx.process.input if isinstance(v, int)]
            if ctx.process.spec.func_name == "count":
                return [1 + sum(values)]
            return values
        finally:
            seen.running -= 1

    task = asyncio.create_task(app.run())
    ready = asyncio.create_task(app.ready.wait())
    await asyncio.wait({task, ready}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    assert ready.done(), "the counting executor did not become ready"
    yield seen
    seen.gate.set()
    app.stop(force=True)
    async with asyncio.timeout(10):
        await task
