"""Fixtures of the generator tests: an executor that outputs the args each process got."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.executor import ExecutorApp, ProcessContext
from colonyos.models import ProcessGraph
from colonyos.subjects import Subjects
from tests.helpers import raw_nats
from tests.procs import until_served

ARGS_TYPE = "args"

# One node that outputs its args: what the generator gave it, after its own.
ONE: list[dict[str, Any]] = [
    {"nodename": "take", "funcname": "args", "conditions": {"executortype": ARGS_TYPE}}
]


@contextlib.asynccontextmanager
async def args_app(settings: Settings, executor_type: str = ARGS_TYPE) -> AsyncIterator[None]:
    """An executor of ``executor_type`` whose processes output their args, running."""
    app = ExecutorApp(executor_type, f"{executor_type}-1", settings=settings)

    @app.handler()
    async def handle(ctx: ProcessContext) -> list[Any]:
        return list(ctx.process.spec.args)

    task = asyncio.create_task(app.run())
    ready = asyncio.create_task(app.ready.wait())
    await asyncio.wait({task, ready}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    assert ready.done(), f"the {executor_type} executor did not become ready"
    try:
        yield
    finally:
        app.stop(force=True)
        async with asyncio.timeout(10):
            await task


@pytest.fixture
async def args_executor(client: Client, settings: Settings) -> AsyncIterator[None]:
    async with args_app(settings):
        yield


async def generator_runs(client: Client, name: str) -> list[ProcessGraph]:
    """The generator's runs, oldest first."""
    graphs = [g for g in await client.graph_list(limit=100) if g.generator_name == name]
    return sorted(graphs, key=lambda g: g.submission_time)


async def poll_runs(client: Client, name: str, count: int, timeout: float) -> list[ProcessGraph]:
    """At least ``count`` runs of the generator, polled under a deadline (through a broker
    that is only starting to answer, after a restart)."""
    async with asyncio.timeout(timeout):
        while len(found := await until_served(lambda: generator_runs(client, name))) < count:
            await asyncio.sleep(0.05)  # sleep-ok: polling state under a deadline
    return found


async def root_args(client: Client, graph: ProcessGraph) -> list[Any]:
    """The args the run's root got, once it has run (its output)."""
    ended = await client.graph_wait(graph.process_graph_id, timeout=30)
    (root,) = ended.root_process_ids
    return list((await client.get(root)).output)


async def stream_emptied(settings: BrokerSettings) -> None:
    """Every packed argument has been purged from the stream (once used), polled under a
    deadline."""
    nc = await raw_nats(settings.nats_url)
    try:
        js, stream = nc.jetstream(), Subjects(settings.prefix).stream_generators
        async with asyncio.timeout(10):
            while (await js.stream_info(stream)).state.messages:
                await asyncio.sleep(0.05)  # sleep-ok: polling state under a deadline
    finally:
        await nc.close()
