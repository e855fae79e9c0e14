"""The broker service: composition root wiring NATS, the store, the index and the handlers.

Several brokers may run against one NATS installation. They share a lease: the holder leads
(takes specs, answers requests, runs the lifecycle sweeps), the others stand by and take over
when the leader stops renewing. Every process write is a compare-and-set in KV, so even two
brokers that both believe they lead cannot assign one process twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from contextlib import AsyncExitStack
from datetime import UTC, datetime

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from colonyos.broker.admin import Admin
from colonyos.broker.assignment import Assignment
from colonyos.broker.callout import Callout
from colonyos.broker.colonyfeeds import ColonyFeeds
from colonyos.broker.crons import CronRunner
from colonyos.broker.explain import Explainer
from colonyos.broker.exposition import MetricsServer, Scraper
from colonyos.broker.generators import GeneratorRunner
from colonyos.broker.index import ProcessIndex
from colonyos.broker.intake import Intake
from colonyos.broker.kicker import Kicker
from colonyos.broker.lease import Lease
from colonyos.broker.lifecycle import Lifecycle
from colonyos.broker.membership import Membership
from colonyos.broker.metrics import BrokerMetrics
from colonyos.broker.readers import Readers
from colonyos.broker.registry import Registry
from colonyos.broker.removal import Removal
from colonyos.broker.reports import Reports
from colonyos.broker.retention import Retention
from colonyos.broker.service import Service, new_id
from colonyos.broker.statistics import Roster, Statistics, this_broker
from colonyos.broker.store import ProcessStore
from colonyos.broker.workflows import Workflows
from colonyos.config import BrokerSettings
from colonyos.connection import connect_nats, shown_url
from colonyos.limits import check_server_payload
from colonyos.security.members import MemberBook
from colonyos.security.serverconf import ServerKeys
from colonyos.statistics import BrokerInfo
from colonyos.subjects import Subjects

__all__ = ["Broker"]

logger = logging.getLogger(__name__)

_SHUTDOWN_GRACE_S = 5.0
# How long a loop told to stop is given before it is told again.
_CANCEL_AGAIN_S = 0.05
_LEASE_KEY = "broker"
# Spec batches being written at once while the next is fetched.
_BATCHES_IN_FLIGHT = 2


class Broker:
    """Runs until :meth:`stop`. :attr:`ready` is set once it is connected and standing (as
    leader or standby); :attr:`leading` while it holds the lease and serves."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.settings = settings
        self.subjects = Subjects(settings.prefix)
        self.broker_id = new_id()[:16]
        self.ready = asyncio.Event()
        self.leading = asyncio.Event()
        self._stopping = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self.service: Service | None = None
        self.readers: Readers | None = None
        # Who may connect, as whom (used by the auth callout on a secure installation).
        self.members: MemberBook | None = None
        self._kicker: Kicker | None = None
        # Counted whether or not served; /metrics (settings.metrics_port) shows them.
        self.metrics = BrokerMetrics()
        self.metrics_server: MetricsServer | None = None
        self.started = datetime.now(UTC)
        self._leading_since: datetime | None = None
        # The other brokers, from their announcements (a standby announces every third of a
        # lease term: one not heard from for a whole term is gone).
        self.roster = Roster(settings.lease_ttl_s)

    def info(self) -> BrokerInfo:
        """What this broker says of itself: on the brokers subject, and in server_status."""
        me = this_broker(self.broker_id, self.started)
        if self._leading_since is None:
            return me
        return msgspec.structs.replace(me, leading=True, leading_since=self._leading_since)

    def stop(self) -> None:
        self._stopping.set()

    def _serving(self) -> Service | None:
        """The service, while this broker leads."""
        return self.service if self.leading.is_set() else None

    async def run(self) -> None:
        s = self.settings
        async with AsyncExitStack() as stack:
            keys = ServerKeys.load(s.keys_dir) if s.keys_dir is not None else None
            nc = await connect_nats(
                s.nats_url,
                name=f"colonies-broker-{self.broker_id}",
                seed=keys.broker.seed if keys is not None else None,
                tls_ca=s.tls_ca,
            )
            stack.push_async_callback(self._drain, nc)
            check_server_payload(nc.max_payload)
            store = ProcessStore(
                nc,
                self.subjects,
                storage=s.storage,
                dedup_window_s=s.dedup_window_s,
                replicas=s.replicas,
                retention_s=s.retention_s,
                metrics=self.metrics,
            )
            if not await self._setup(store):
                return
            stack.push_async_callback(store.close)
            self.members = MemberBook(
                store.js, self.subjects, storage=s.storage, replicas=s.replicas
            )
            await self.members.start()
            if keys is not None:
                # Every executor request checks the caller's record: from memory.
                await self.members.follow()
                stack.push_async_callback(self.members.stop_following)
                # Every broker, leading or not, lets members in: it needs only the book.
                callout = Callout(s.nats_url, self.subjects, keys, self.members, tls_ca=s.tls_ca)
                await callout.start()
                stack.push_async_callback(callout.stop)
                system = await connect_nats(
                    s.nats_url,
                    name="colonies-broker-system",
                    seed=keys.system.seed,
                    tls_ca=s.tls_ca,
                )
                stack.push_async_callback(self._drain, system)
                self._kicker = Kicker(system, s.prefix)
                self.members.lapsed = self._kicker.cut  # a lapsed claim's holder goes
            lease = Lease(store.leases, _LEASE_KEY, self.broker_id, s.lease_ttl_s)
            stack.push_async_callback(lease.release)
            if s.metrics_port is not None:
                scraper = Scraper(
                    self.metrics, lease, self._serving, liveness_s=s.executor_liveness_s
                )
                self.metrics_server = MetricsServer(scraper.render)
                await self.metrics_server.start(s.metrics_host, s.metrics_port)
                stack.push_async_callback(self.metrics_server.close)
            roster = await nc.subscribe(self.subjects.brokers, cb=self.roster.on_announce)
            stack.push_async_callback(self._unsubscribe, roster)
            self.ready.set()
            logger.info(
                "broker %s standing on %s (prefix %s)",
                self.broker_id,
                shown_url(s.nats_url),
                s.prefix,
            )
            while not self._stopping.is_set():
                if await lease.try_acquire():
                    try:
                        await self._lead(nc, store, lease)
                    except (nats.errors.Error, TimeoutError) as err:
                        # NATS went away while taking over or serving: stand by and try again.
                        logger.warning("broker %s stopped leading: %s", self.broker_id, err)
                        self.leading.clear()
                        await lease.release()
                        await self._pause(s.lease_ttl_s / 3)
                else:
                    await self._announce(nc)
                    await self._pause(s.lease_ttl_s / 3)

    async def _setup(self, store: ProcessStore) -> bool:
        """Create streams and buckets, waiting for a cluster that is still electing its
        leader. False if the broker was stopped meanwhile."""
        delay = 0.2
        while not self._stopping.is_set():
            try:
                await store.setup()
                return True
            except (
                nats.js.errors.ServiceUnavailableError,
                nats.errors.NoRespondersError,
                nats.errors.TimeoutError,
            ) as err:
                logger.warning("JetStream not ready yet (%s); trying again", err)
            await self._pause(delay)
            delay = min(delay * 2, 2.0)
        return False

    async def _announce(self, nc: NATS) -> None:
        """Say this broker stands by (the leader lists it in server_status)."""
        with contextlib.suppress(nats.errors.Error):
            await nc.publish(self.subjects.brokers, msgspec.json.encode(self.info()))

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    async def _lead(self, nc: NATS, store: ProcessStore, lease: Lease) -> None:
        """Serve while the lease holds; return when it is lost or the broker stops."""
        s = self.settings
        async with AsyncExitStack() as stack:
            index = ProcessIndex(s.data_dir / "index.db" if s.data_dir is not None else None)
            await index.open()
            stack.push_async_callback(index.close)
            service = Service(
                store, index, self.subjects, max_executor_losses=s.max_executor_losses
            )
            Assignment(service)
            Reports(service)
            feeds = ColonyFeeds(nc, store.js, self.subjects, batch=s.fetch_batch)
            stack.push_async_callback(feeds.close)
            admin = Admin(service, liveness_s=s.executor_liveness_s, feeds=feeds)
            assert self.members is not None
            Membership(service, admin, self.members, secure=s.keys_dir is not None)
            if self._kicker is not None:
                service.cut = self._kicker.cut
            Explainer(service, liveness_s=s.executor_liveness_s)
            Statistics(service, admin, me=self.info, roster=self.roster)
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
            lifecycle = Lifecycle(
                service, liveness_s=s.executor_liveness_s, sweep_interval_s=s.sweep_interval_s
            )
            retention = Retention(
                removal, retention_s=s.retention_s, interval_s=s.retention_sweep_s
            )
            await feeds.start(service.colonies)
            rpc = await nc.subscribe(
                self.subjects.rpc_all,
                queue=self.subjects.rpc_queue_group,
                cb=self._spawn_handler,
            )
            stack.push_async_callback(self._unsubscribe, rpc)
            beats = await nc.subscribe(self.subjects.heartbeats_all, cb=self._on_heartbeat)
            stack.push_async_callback(self._unsubscribe, beats)
            packs = await generators.listen()
            stack.push_async_callback(self._unsubscribe, packs)
            stack.push_async_callback(store.settle)
            stack.push_async_callback(self._finish_inflight)
            stack.callback(service.release_parked)
            tasks = [
                asyncio.create_task(self._consume(feeds, intake), name="consume-specs"),
                asyncio.create_task(lifecycle.run(), name="lifecycle"),
                asyncio.create_task(retention.run(), name="retention"),
                asyncio.create_task(crons.run(), name="crons"),
                asyncio.create_task(generators.run(), name="generators"),
            ]
            stack.push_async_callback(self._cancel, tasks)
            # The server has the request subscription before anyone is told this broker leads:
            # a request sent at once must not find "no responders".
            await nc.flush()
            self._leading_since = datetime.now(UTC)
            self.leading.set()
            stack.callback(self.leading.clear)
            stack.callback(self._stepped_down)
            # Stepping down, the first thing is to take no more requests: one taken after the
            # in-flight ones were waited for would go unanswered (its asker waiting out its
            # timeout) instead of finding no responders, or the next leader, at once.
            stack.push_async_callback(self._stop_taking, rpc)
            # Executors parked at a leader that died would wait out their long poll: tell them.
            await nc.publish(self.subjects.leader, self.broker_id.encode())
            logger.info("broker %s leads", self.broker_id)
            await self._hold(lease)
            logger.info("broker %s steps down", self.broker_id)

    def _stepped_down(self) -> None:
        self._leading_since = None

    async def _hold(self, lease: Lease) -> None:
        """Renew the lease until it is lost or the broker stops."""
        period = self.settings.lease_ttl_s / 3
        while not self._stopping.is_set():
            await self._pause(period)
            if self._stopping.is_set():
                return
            try:
                async with asyncio.timeout(period):
                    renewed = await lease.try_acquire()
            except TimeoutError:
                renewed = lease.held
            if not renewed:
                logger.warning("broker %s lost its lease", self.broker_id)
                return

    async def _spawn_handler(self, msg: Msg) -> None:
        assert self.service is not None
        task = asyncio.create_task(self.service.handle(msg))
        self._inflight.add(task)
        task.add_done_callback(self._handler_done)

    async def _on_heartbeat(self, msg: Msg) -> None:
        if self.service is not None:
            self.service.heartbeat(msg)

    def _handler_done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("request handler failed", exc_info=task.exception())

    async def _consume(self, feeds: ColonyFeeds, intake: Intake) -> None:
        """Take specs, the colonies in turn, and accept them; the next are taken while earlier
        ones are written (an accepted batch waits for its slowest write; overlapping them
        keeps JetStream busy)."""
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
                task.add_done_callback(functools.partial(self._accepted, accepting, len(msgs)))
        finally:
            for task in accepting:
                task.cancel()

    @staticmethod
    def _accepted(accepting: set[asyncio.Task[None]], count: int, task: asyncio.Task[None]) -> None:
        accepting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # NATS trouble: those specs are delivered again after the backoff. Log once, go on.
            logger.error("accepting %d specs failed", count, exc_info=task.exception())

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

    @staticmethod
    async def _drain(nc: NATS) -> None:
        with contextlib.suppress(nats.errors.ConnectionClosedError):
            await nc.drain()
