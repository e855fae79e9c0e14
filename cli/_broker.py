"""Running a broker in this process (``server start``, ``broker start``, ``dev``): making it,
waiting until it stands, stopping it and the executor ``dev`` starts beside it."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from colonyos.config import BrokerSettings
from colonyos.executor import ExecutorApp

if TYPE_CHECKING:
    # The broker and what it needs (the index on SQLite) load only for the commands that
    # run one: every other command starts without them.
    from colonyos.broker import Broker

__all__ = ["metrics_url", "serving_broker", "stop_broker", "stop_executor", "wait_ready"]


def serving_broker(settings: BrokerSettings) -> Broker:
    """The broker this process runs, its garbage collector set for serving."""
    from colonyos.broker import Broker  # loaded only by the commands that run one
    from colonyos.broker.collector import collect_less_often

    collect_less_often()
    return Broker(settings)


async def wait_ready(broker: Broker, task: asyncio.Task[None], *, lead: bool = False) -> None:
    """Until the broker stands (as leader or standby), or with ``lead`` until it serves."""
    ready = asyncio.create_task((broker.leading if lead else broker.ready).wait())
    await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()


async def stop_broker(broker: Broker, task: asyncio.Task[None]) -> None:
    broker.stop()
    await task


async def stop_executor(executor: ExecutorApp, task: asyncio.Task[int]) -> None:
    executor.stop()
    await task


def metrics_url(broker: Broker) -> str | None:
    """Where the broker serves /metrics, if it does."""
    server = broker.metrics_server
    if server is None or server.address is None:
        return None
    host, port = server.address
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"
