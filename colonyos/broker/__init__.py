"""The broker service: composition root wiring NATS, the store, the leases and the scopes.

Several brokers may run against one NATS installation. Each scope (a colony, or the server
scope: the colonies themselves) has a lease, and only its holder leads it (broker/leadership.py:
takes its specs, answers its requests, runs its sweeps); broker/shards.py decides which scopes a
broker tries to lead: all of them on one broker with the others standing by, or the colonies
shared out among the brokers (``COLONIES_SHARDED``). Every process write is a compare-and-set in
KV, so even two brokers that both believe they lead a colony cannot assign one process twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from contextlib import AsyncExitStack
from datetime import UTC, datetime

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from colonyos.broker.callout import Callout
from colonyos.broker.collector import return_freed_memory
from colonyos.broker.exposition import MetricsServer, Scraper
from colonyos.broker.kicker import Kicker
from colonyos.broker.leadership import Leadership
from colonyos.broker.lease import Holding
from colonyos.broker.metrics import BrokerMetrics
from colonyos.broker.service import Service, new_id
from colonyos.broker.shards import Shards
from colonyos.broker.statistics import Roster, this_broker
from colonyos.broker.store import ProcessStore
from colonyos.config import BrokerSettings
from colonyos.connection import connect_nats, shown_url
from colonyos.limits import check_server_payload
from colonyos.security.members import MemberBook
from colonyos.security.serverconf import ServerKeys
from colonyos.statistics import BrokerInfo
from colonyos.subjects import SERVER_SCOPE, Subjects

__all__ = ["Broker"]

logger = logging.getLogger(__name__)


class Broker:
    """Runs until :meth:`stop`. :attr:`ready` is set once it is connected and standing;
    :attr:`leading` while it leads the server scope and every colony due to it (broker/shards.py
    decides which)."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.settings = settings
        self.subjects = Subjects(settings.prefix)
        self.broker_id = new_id()[:16]
        self.ready = asyncio.Event()
        self.leading = asyncio.Event()
        self._stopping = asyncio.Event()
        self._look_now = asyncio.Event()
        self.shards: Shards | None = None
        # Who may connect, as whom (used by the auth callout on a secure installation).
        self.members: MemberBook | None = None
        self._kicker: Kicker | None = None
        # Counted whether or not served; /metrics (settings.metrics_port) shows them.
        self.metrics = BrokerMetrics()
        self.metrics_server: MetricsServer | None = None
        self.started = datetime.now(UTC)
        # The other brokers, from their announcements (every broker announces itself every
        # third of a lease term: one not heard from for a whole term is gone).
        self.roster = Roster(settings.lease_ttl_s)
        self.roster.joined = self._on_joined

    def info(self) -> BrokerInfo:
        """What this broker says of itself: on the brokers subject, and in server_status."""
        me = this_broker(self.broker_id, self.started)
        server = self.leadership(SERVER_SCOPE)
        led = self.shards.colonies_led if self.shards is not None else []
        me = msgspec.structs.replace(
            me, colonies=len(led), colony_names=led, sharded=self.settings.sharded
        )
        if server is None or server.since is None:
            return me
        return msgspec.structs.replace(me, leading=True, leading_since=server.since)

    def leadership(self, scope: str) -> Leadership | None:
        """The scope's leadership (a colony, or the server scope) while this broker serves it."""
        return self.shards.leadership(scope) if self.shards is not None else None

    def service_of(self, scope: str) -> Service | None:
        """The service of a scope (a colony, or the server scope) while this broker serves it."""
        found = self.leadership(scope)
        return found.service if found is not None else None

    def stop(self) -> None:
        self._stopping.set()

    def _services(self) -> list[Service]:
        return self.shards.services() if self.shards is not None else []

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
            shards = self.shards = Shards(
                self.broker_id,
                nc=nc,
                store=store,
                leases=store.leases,
                subjects=self.subjects,
                ttl_s=s.lease_ttl_s,
                sharded=s.sharded,
                peers=self._peers,
                make=functools.partial(self._leadership, nc, store),
            )
            shards.start()
            stack.push_async_callback(self._step_down, shards)
            if s.metrics_port is not None:
                scraper = Scraper(
                    self.metrics,
                    shards.server_lease,
                    self._services,
                    liveness_s=s.executor_liveness_s,
                )
                self.metrics_server = MetricsServer(scraper.render)
                await self.metrics_server.start(s.metrics_host, s.metrics_port)
                stack.push_async_callback(self.metrics_server.close)
            roster = await nc.subscribe(self.subjects.brokers, cb=self.roster.on_announce)
            stack.push_async_callback(self._unsubscribe, roster)
            steer = await nc.subscribe(self.subjects.steer, cb=self._on_steer)
            stack.push_async_callback(self._unsubscribe, steer)
            leaving = await nc.subscribe(self.subjects.leaving, cb=self._on_leaving)
            stack.push_async_callback(self._unsubscribe, leaving)
            trimming = asyncio.create_task(return_freed_memory(self._stopping), name="trim")
            stack.push_async_callback(_ended, trimming)
            self.ready.set()
            logger.info(
                "broker %s standing on %s (prefix %s%s)",
                self.broker_id,
                shown_url(s.nats_url),
                s.prefix,
                ", colonies sharded" if s.sharded else "",
            )
            await self._steer(nc, shards)

    def _leadership(self, nc: NATS, store: ProcessStore, scope: str, lease: Holding) -> Leadership:
        assert self.members is not None and self.shards is not None
        return Leadership(
            scope,
            nc=nc,
            store=store,
            lease=lease,
            settings=self.settings,
            members=self.members,
            roster=self.roster,
            me=self.info,
            kicker=self._kicker,
            colony_added=self.shards.colony_added,
        )

    async def _steer(self, nc: NATS, shards: Shards) -> None:
        """Every third of a lease term (or at once when told the colonies changed): say this
        broker is here, and take or hand over scopes."""
        period = self.settings.lease_ttl_s / 3
        while not self._stopping.is_set():
            # Cleared before the look, not after: a wake-up that comes during the look (leases
            # released by another broker meanwhile) makes another look at once.
            self._look_now.clear()
            await self._announce(nc)
            try:
                complete = await shards.look()
            except (nats.errors.Error, TimeoutError) as err:
                logger.warning("broker %s cannot look at its leases: %s", self.broker_id, err)
                complete = False
            if complete and shards.leadership(SERVER_SCOPE) is not None:
                if not self.leading.is_set():
                    logger.info("broker %s leads", self.broker_id)
                self.leading.set()
            elif shards.leadership(SERVER_SCOPE) is None:
                self.leading.clear()
            await self._pause(_next_look(period, shards.next_free_ns))

    async def _on_steer(self, msg: Msg) -> None:
        self._look_now.set()

    def _peers(self) -> list[str]:
        """The other brokers alive that share the colonies out as this one does: a sharded
        broker gives no colony to one started without COLONIES_SHARDED, which would never
        take it (it leads colonies only while it leads the server scope)."""
        return [
            b.broker_id
            for b in self.roster.others(self.broker_id)
            if b.sharded is None or b.sharded == self.settings.sharded
        ]

    def _on_joined(self, broker_id: str) -> None:
        """A broker not heard before: announce and look now, so that it knows this one at once
        and, sharded, gets its colonies without waiting for the next look. One that shares the
        colonies out otherwise is a mistake of configuration: said, once."""
        if broker_id == self.broker_id:
            return
        self._look_now.set()
        other = next((b for b in self.roster.others("") if b.broker_id == broker_id), None)
        mine = self.settings.sharded
        if other is not None and other.sharded is not None and other.sharded != mine:
            logger.warning(
                "broker %s on %s (pid %d) was started %s COLONIES_SHARDED, this one %s: "
                "start every broker of an installation the same way (the sharded ones give "
                "no colony to the others)",
                other.broker_id,
                other.host,
                other.pid,
                "with" if other.sharded else "without",
                "with" if mine else "without",
            )

    async def _on_leaving(self, msg: Msg) -> None:
        broker_id = msg.data.decode(errors="replace")
        if broker_id != self.broker_id:
            self.roster.forget(broker_id)
            self._look_now.set()

    async def _step_down(self, shards: Shards) -> None:
        """Hand over everything, then say so: the others take what this broker led at once
        (its leases are released), not once its announcements are a term old."""
        self.leading.clear()
        await shards.stop()
        with contextlib.suppress(nats.errors.Error):
            await shards.nc.publish(self.subjects.leaving, self.broker_id.encode())
            await shards.nc.flush()

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
        """Say this broker is here (the others count it when they share out the colonies; the
        leader of the server scope lists it in server_status)."""
        with contextlib.suppress(nats.errors.Error):
            await nc.publish(self.subjects.brokers, msgspec.json.encode(self.info()))

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the broker is stopped or told to look again."""
        stopping = asyncio.ensure_future(self._stopping.wait())
        told = asyncio.ensure_future(self._look_now.wait())
        try:
            await asyncio.wait(
                {stopping, told}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stopping.cancel()
            told.cancel()

    @staticmethod
    async def _unsubscribe(sub: object) -> None:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()  # type: ignore[attr-defined]

    @staticmethod
    async def _drain(nc: NATS) -> None:
        with contextlib.suppress(nats.errors.ConnectionClosedError):
            await nc.drain()


# How long after a lease was due to run out the next look tries it (clocks and writes vary).
_AFTER_FREE_S = 0.05


def _next_look(period: float, free_at_ns: int) -> float:
    """Seconds until the next look: a third of a term, or sooner when a lease refused at
    this look runs out (its holder silent till then) earlier."""
    if not free_at_ns:
        return period
    return min(period, max(0.0, (free_at_ns - time.time_ns()) / 1e9) + _AFTER_FREE_S)


async def _ended(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
