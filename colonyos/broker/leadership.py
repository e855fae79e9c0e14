"""Leading one scope: a colony (its intake, requests, heartbeats, sweeps, crons, generators) or
the server scope (the colonies themselves, the server's status, submissions to colonies that
do not exist).

A scope is led by the broker that holds its lease (``colony.<name>``, or ``broker`` for the
server scope): a :class:`Leadership` loads what the scope keeps from JetStream, subscribes to
the scope's requests, serves until the lease is lost or it is told to stop, then steps down in
order (no more requests taken, those taken answered, events acknowledged). Which scopes a
broker tries to lead is decided in broker/shards.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from colonyos.broker.admin import Admin
from colonyos.broker.assignment import Assignment
from colonyos.broker.colonyfeeds import ColonyFeeds
from colonyos.broker.crons import CronRunner
from colonyos.broker.explain import Explainer
from colonyos.broker.generators import GeneratorRunner
from colonyos.broker.index import ProcessIndex
from colonyos.broker.intake import Intake
from colonyos.broker.kicker import Kicker
from colonyos.broker.lease import Holding
from colonyos.broker.lifecycle import Lifecycle
from colonyos.broker.membership import Membership
from colonyos.broker.readers import Readers
from colonyos.broker.registry import Registry
from colonyos.broker.removal import Removal
from colonyos.broker.reports import Reports
from colonyos.broker.retention import Retention
from colonyos.broker.service import Service
from colonyos.broker.statistics import Roster, Statistics
from colonyos.broker.store import ProcessStore
from colonyos.broker.workflows import Workflows
from colonyos.config import BrokerSettings
from colonyos.errors import BrokerUnavailableError, ColoniesError
from colonyos.messages import Handover
from colonyos.security.members import MemberBook
from colonyos.statistics import BrokerInfo
from colonyos.subjects import SERVER_SCOPE, Subjects

__all__ = ["Leadership"]

logger = logging.getLogger(__name__)

_SHUTDOWN_GRACE_S = 5.0
# How long a loop told to stop is given before it is told again.
_CANCEL_AGAIN_S = 0.05
# Spec batches being written at once while the next is fetched.
_BATCHES_IN_FLIGHT = 2

_encode = msgspec.json.Encoder().encode
_decode_handover = msgspec.json.Decoder(Handover).decode


class Leadership:
    """One scope led by this broker, from taking its lease to stepping down."""

    def __init__(
        self,
        scope: str,
        *,
        nc: NATS,
        store: ProcessStore,
        lease: Holding,
        settings: BrokerSettings,
        members: MemberBook,
        roster: Roster,
        me: Callable[[], BrokerInfo],
        kicker: Kicker | None,
        colony_added: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.scope = scope
        self.nc = nc
        self.store = store
        self.lease = lease
        self.settings = settings
        self.subjects = Subjects(settings.prefix)
        self.members = members
        self.roster = roster
        self.me = me
        self.kicker = kicker
        self.colony_added = colony_added
        # Set once loaded and taking requests; cleared as it steps down.
        self.serving = asyncio.Event()
        self.since: datetime | None = None
        self.service: Service | None = None
        self.readers: Readers | None = None
        self._stopping = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()

    @property
    def is_server(self) -> bool:
        return self.scope == SERVER_SCOPE

    def stop(self) -> None:
        """Step down (the lease is released as it does)."""
        self._stopping.set()

    async def run(self) -> None:
        """Serve while the lease holds; return when it is lost or :meth:`stop` is called. The
        lease is released on the way out."""
        try:
            await self._lead()
        except (nats.errors.Error, TimeoutError) as err:
            # NATS went away while taking over or serving: the broker tries again later.
            logger.warning("stopped leading %s: %s", self._named, err)
        finally:
            self.serving.clear()
            await self.lease.release()

    @property
    def _named(self) -> str:
        return "the server scope" if self.is_server else f"colony {self.scope}"

    def _index_path(self) -> Path | None:
        data_dir = self.settings.data_dir
        if data_dir is None or self.is_server:
            return None  # the server scope keeps no processes
        return data_dir / "index" / f"{self.scope}.db"

    async def _lead(self) -> None:
        s, nc, store = self.settings, self.nc, self.store
        async with AsyncExitStack() as stack:
            path = self._index_path()
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            index = ProcessIndex(path)
            await index.open()
            stack.push_async_callback(index.close)
            service = Service(
                store,
                index,
                self.subjects,
                max_executor_losses=s.max_executor_losses,
                scope=self.scope,
            )
            Reports(service, Assignment(service))
            feeds = ColonyFeeds(
                nc,
                store.js,
                self.subjects,
                batch=s.fetch_batch,
                existing=(lambda: service.colonies) if self.is_server else None,
            )
            stack.push_async_callback(feeds.close)
            admin = Admin(service, liveness_s=s.executor_liveness_s, feeds=feeds)
            admin.colony_added = self.colony_added
            Membership(service, admin, self.members, secure=s.keys_dir is not None)
            if self.kicker is not None:
                service.cut = self.kicker.cut
            Explainer(service, liveness_s=s.executor_liveness_s)
            Statistics(service, admin, me=self.me, roster=self.roster)
            self.readers = Readers(service)
            workflows = Workflows(service)
            crons = CronRunner(service, workflows)
            generators = GeneratorRunner(service, workflows)
            removal = Removal(service, workflows, crons, generators, feeds)
            Registry(service)
            await service.load()
            await workflows.load()
            await crons.load()
            await generators.load()
            self.service = service
            intake = Intake(service, workflows, feeds.opened)
            await feeds.start([] if self.is_server else list(service.colonies))
            rpc = await nc.subscribe(
                self.subjects.rpc_scope(self.scope),
                queue=self.subjects.rpc_queue_group,
                cb=self._spawn_handler,
            )
            stack.push_async_callback(self._unsubscribe, rpc)
            tasks = [asyncio.create_task(self._consume(feeds, intake), name="consume-specs")]
            if not self.is_server:
                beats = await nc.subscribe(
                    self.subjects.heartbeats(self.scope), cb=self._on_heartbeat
                )
                stack.push_async_callback(self._unsubscribe, beats)
                packs = await generators.listen()
                stack.push_async_callback(self._unsubscribe, packs)
                handover = await nc.subscribe(
                    self.subjects.handover(self.scope),
                    cb=functools.partial(self._on_handover, removal),
                )
                stack.push_async_callback(self._unsubscribe, handover)
                lifecycle = Lifecycle(
                    service, liveness_s=s.executor_liveness_s, sweep_interval_s=s.sweep_interval_s
                )
                retention = Retention(
                    removal, retention_s=s.retention_s, interval_s=s.retention_sweep_s
                )
                tasks += [
                    asyncio.create_task(lifecycle.run(), name="lifecycle"),
                    asyncio.create_task(retention.run(), name="retention"),
                    asyncio.create_task(crons.run(), name="crons"),
                    asyncio.create_task(generators.run(), name="generators"),
                ]
            stack.push_async_callback(store.settle)
            stack.push_async_callback(self._finish_inflight)
            stack.callback(service.release_parked)
            stack.push_async_callback(self._cancel, tasks)
            # The server has the request subscription before anyone is told this scope is led:
            # a request sent at once must not find "no responders".
            await nc.flush()
            self.since = datetime.now(UTC)
            self.serving.set()
            stack.callback(self.serving.clear)
            # Stepping down, the first thing is to take no more requests: one taken after the
            # in-flight ones were waited for would go unanswered (its asker waiting out its
            # timeout) instead of finding no responders, or the next leader, at once.
            stack.push_async_callback(self._stop_taking, rpc)
            if not self.is_server:
                # Executors parked at a leader that died would wait out their long poll.
                await nc.publish(self.subjects.leader(self.scope), self.me().broker_id.encode())
            logger.info("leading %s", self._named)
            await self._hold()
            logger.info("stepping down from %s", self._named)

    async def _hold(self) -> None:
        """Keep the lease (or claim) until it is lost or this leadership is stopped."""
        await self.lease.keep(self._stopping)
        if not self._stopping.is_set():
            logger.warning("lost the lease of %s", self._named)

    async def _spawn_handler(self, msg: Msg) -> None:
        assert self.service is not None
        if not self.lease.held:
            # Its term is over (a stall outlived it): another broker may lead the scope by
            # now. The asker tries again, and finds the leader.
            await _refuse(msg, BrokerUnavailableError(f"{self._named} is changing hands"))
            return
        task = asyncio.create_task(self.service.handle(msg))
        self._inflight.add(task)
        task.add_done_callback(self._handler_done)

    async def _on_heartbeat(self, msg: Msg) -> None:
        if self.service is not None:
            self.service.heartbeat(msg)

    async def _on_handover(self, removal: Removal, msg: Msg) -> None:
        """The server scope removes this colony: clear it here (what is live is cancelled,
        executors told, every record purged), then step down. The reply is the count, or the
        error."""
        try:
            req = _decode_handover(msg.data)
            removed = await removal.clear_colony(self.scope, req.caller)
            body = _encode({"result": removed})
        except ColoniesError as err:
            body = _encode({"error": err.to_reply()})
        except Exception as err:
            logger.exception("clearing colony %s failed", self.scope)
            failed = BrokerUnavailableError(f"clearing colony {self.scope} failed: {err}")
            body = _encode({"error": failed.to_reply()})
        else:
            self.stop()  # the colony is gone: nothing is left to lead
        with contextlib.suppress(nats.errors.Error):
            await msg.respond(body)

    def _handler_done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("request handler failed", exc_info=task.exception())

    async def _consume(self, feeds: ColonyFeeds, intake: Intake) -> None:
        """Take specs and accept them; the next are taken while earlier ones are written (an
        accepted batch waits for its slowest write; overlapping them keeps JetStream busy)."""
        accepting: set[asyncio.Task[None]] = set()
        try:
            while True:
                if len(accepting) >= _BATCHES_IN_FLIGHT:
                    await asyncio.wait(accepting, return_when=asyncio.FIRST_COMPLETED)
                msgs = await feeds.next_batch()
                if not msgs:
                    continue
                task = asyncio.create_task(intake.accept_batch(msgs))
                accepting.add(task)
                task.add_done_callback(functools.partial(_accepted, accepting, len(msgs)))
        finally:
            for task in accepting:
                task.cancel()

    async def _finish_inflight(self) -> None:
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=_SHUTDOWN_GRACE_S)
            for task in pending:
                task.cancel()

    @staticmethod
    async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
        """Cancel the leader's loops and wait until each has ended. One cancellation is not
        enough: on Python 3.11, ``asyncio.wait_for`` (which nats-py's requests use) swallows a
        cancellation that arrives with the answer, and the loop goes on (a deposed leader
        starting runs, answering requests). Cancel again until it ends."""
        pending = set(tasks)
        while pending:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=_CANCEL_AGAIN_S)
        for task in tasks:
            if not task.cancelled() and (err := task.exception()) is not None:
                raise err

    @staticmethod
    async def _stop_taking(sub: Subscription) -> None:
        """Take no more requests, but answer those already received (drain, not unsubscribe:
        these would be dropped, their askers waiting out their timeout)."""
        with contextlib.suppress(nats.errors.Error):
            await sub.drain()  # type: ignore[no-untyped-call]  # nats-py leaves it unannotated

    @staticmethod
    async def _unsubscribe(sub: object) -> None:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()  # type: ignore[attr-defined]


async def _refuse(msg: Msg, err: ColoniesError) -> None:
    with contextlib.suppress(nats.errors.Error):
        await msg.respond(_encode({"error": err.to_reply()}))


def _accepted(accepting: set[asyncio.Task[None]], count: int, task: asyncio.Task[None]) -> None:
    accepting.discard(task)
    if not task.cancelled() and task.exception() is not None:
        # NATS trouble: those specs are delivered again after the backoff. Log once, go on.
        logger.error("accepting %d specs failed", count, exc_info=task.exception())
