"""The broker service: composition root wiring NATS, the store, the index and the handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import AsyncExitStack

import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from colonyos.broker.index import ProcessIndex
from colonyos.broker.service import Service
from colonyos.broker.store import ProcessStore
from colonyos.client import connect_nats
from colonyos.config import BrokerSettings
from colonyos.subjects import Subjects

__all__ = ["Broker"]

logger = logging.getLogger(__name__)

_SHUTDOWN_GRACE_S = 5.0


class Broker:
    """Accepts specs, keeps the queue, assigns, and answers queries, until :meth:`stop`.

    ``run()`` sets :attr:`ready` once streams, buckets, consumers and the request
    subscription exist and the queue has been rebuilt from JetStream.
    """

    def __init__(self, settings: BrokerSettings) -> None:
        self.settings = settings
        self.subjects = Subjects(settings.prefix)
        self.ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self.service: Service | None = None

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        s = self.settings
        async with AsyncExitStack() as stack:
            nc: NATS = await connect_nats(s.nats_url, name="colonies-broker")
            stack.push_async_callback(self._drain, nc)
            js = nc.jetstream()
            store = ProcessStore(
                js, self.subjects, storage=s.storage, dedup_window_s=s.dedup_window_s
            )
            await store.setup()
            index_path = s.data_dir / "index.db" if s.data_dir is not None else None
            index = ProcessIndex(index_path)
            await index.open()
            stack.push_async_callback(index.close)
            service = Service(store, index, self.subjects)
            await service.load()
            self.service = service

            await nc.subscribe(
                self.subjects.rpc_all, queue=self.subjects.rpc_queue_group, cb=self._spawn_handler
            )
            specs = await js.pull_subscribe(
                self.subjects.specs_filter,
                durable=self.subjects.consumer_specs,
                stream=self.subjects.stream_specs,
                config=ConsumerConfig(
                    ack_policy=AckPolicy.EXPLICIT, ack_wait=30, max_ack_pending=-1
                ),
            )
            consume = asyncio.create_task(self._consume(specs, service))
            logger.info("broker ready on %s (prefix %s)", s.nats_url, s.prefix)
            self.ready.set()
            try:
                await self._stopping.wait()
            finally:
                consume.cancel()
                service.release_parked()
                with contextlib.suppress(asyncio.CancelledError):
                    await consume
                # A pull subscription's buffer is never consumed again: drop it before drain.
                with contextlib.suppress(nats.errors.Error):
                    await specs.unsubscribe()
                await self._finish_inflight()

    async def _spawn_handler(self, msg: Msg) -> None:
        assert self.service is not None
        task = asyncio.create_task(self.service.handle(msg))
        self._inflight.add(task)
        task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("request handler failed", exc_info=task.exception())

    async def _consume(
        self, specs: nats.js.JetStreamContext.PullSubscription, service: Service
    ) -> None:
        batch = self.settings.fetch_batch
        while True:
            try:
                msgs = await specs.fetch(batch=batch, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            try:
                await service.accept_batch(msgs)
            except Exception:
                # Unacked specs are redelivered after ack_wait; log once and keep consuming.
                logger.exception("accepting %d specs failed", len(msgs))

    async def _finish_inflight(self) -> None:
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=_SHUTDOWN_GRACE_S)
            for task in pending:
                task.cancel()

    @staticmethod
    async def _drain(nc: NATS) -> None:
        with contextlib.suppress(nats.errors.ConnectionClosedError):
            await nc.drain()
