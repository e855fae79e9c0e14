"""Which scopes a broker leads: the server scope, and colonies.

Every scope has a lease in the leases bucket (``broker`` for the server scope, ``colony.<name>``
for a colony), and a scope is led only by the holder of its lease (broker/leadership.py). Every
third of a lease term each broker looks again:

- the server scope: whoever takes its lease first;
- the colonies, one of two ways (``COLONIES_SHARDED``):
  - not sharded (the default): the broker that leads the server scope leads every colony; the
    others stand by, and take everything over when it stops renewing;
  - sharded: colony ``c`` goes to the broker with the highest ``hash(c, broker id)`` among the
    brokers alive (rendezvous hashing over the roster every broker keeps from the others'
    announcements). Every broker computes the same answer from the same roster, so there is no
    coordinator; a broker that joins takes about 1/N of the colonies, whose holders hand them
    over at their next look, and a broker that dies loses its colonies to the next-highest
    brokers within a lease term.

A colony just added is led before its adder hears back (:meth:`Shards.colony_added`), so that
its first requests find a leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from colonyos.broker.leadership import Leadership
from colonyos.broker.lease import Claim, Holding, Lease, Life, forget_dead_lives, lease_key
from colonyos.broker.service import Service
from colonyos.broker.store import ProcessStore
from colonyos.subjects import SERVER_SCOPE, Subjects

__all__ = ["Shards", "owner"]

logger = logging.getLogger(__name__)

# Leases tried at once in one look (each a KV get and a compare-and-set).
_AT_ONCE = 64
# How often the server scope's leader removes the lives of brokers long gone, and how long
# gone (in lease terms) a broker must be.
_FORGET_EVERY_S = 60.0
_DEAD_FOR_TERMS = 12


def owner(colony: str, brokers: Iterable[str]) -> str | None:
    """The broker that should lead ``colony``: the highest ``hash(colony, broker)`` (rendezvous
    hashing); None without brokers. Adding or removing a broker moves only the colonies it
    takes or had."""

    def weight(broker: str) -> bytes:
        return hashlib.blake2b(f"{colony}\0{broker}".encode(), digest_size=8).digest()

    return max(brokers, key=weight, default=None)


@dataclass(slots=True)
class _Held:
    leadership: Leadership
    task: asyncio.Task[None]


class Shards:
    """The scopes this broker leads, looked at again by :meth:`look`."""

    def __init__(
        self,
        broker_id: str,
        *,
        nc: NATS,
        store: ProcessStore,
        leases: KeyValue,
        subjects: Subjects,
        ttl_s: float,
        sharded: bool,
        peers: Callable[[], Iterable[str]],
        make: Callable[[str, Holding], Leadership],
    ) -> None:
        self.broker_id = broker_id
        self.nc = nc
        self.store = store
        self.leases_kv = leases
        self.subjects = subjects
        self.ttl_s = ttl_s
        self.sharded = sharded
        self.peers = peers  # the other brokers alive (ids)
        self.make = make
        self.held: dict[str, _Held] = {}
        self.leases: dict[str, Holding] = {}
        self._looking = asyncio.Lock()
        # The broker's own lease, under which it claims colonies (broker/lease.py).
        self.life = Life(leases, broker_id, ttl_s)
        self._ended = asyncio.Event()  # every scope handed over: the life may end
        self._living: asyncio.Task[None] | None = None
        # The earliest time (wall clock, ns) a scope refused at the last look will be free, its
        # holder silent till then (0: none): the broker looks again then, not a third of a
        # term later, so a dead holder's scopes are taken within one term.
        self.next_free_ns = 0
        self._forget_at = 0.0  # when the server scope's leader next forgets dead brokers

    # -- what is led ------------------------------------------------------------------------
    def leadership(self, scope: str) -> Leadership | None:
        """The scope's leadership while this broker serves it."""
        held = self.held.get(scope)
        if held is None or not held.leadership.serving.is_set():
            return None
        return held.leadership

    def service(self, scope: str) -> Service | None:
        found = self.leadership(scope)
        return found.service if found is not None else None

    def services(self) -> list[Service]:
        """The services of every scope served now, the server scope's first if served."""
        found = [self.service(scope) for scope in sorted(self.held, key=_server_first)]
        return [s for s in found if s is not None]

    @property
    def colonies_led(self) -> list[str]:
        return sorted(s for s in self.held if s != SERVER_SCOPE and self.leadership(s))

    def lease(self, scope: str) -> Holding:
        """The server scope's lease, or a colony's claim (held under the broker's life)."""
        if scope not in self.leases:
            key = lease_key(scope)
            self.leases[scope] = (
                Lease(self.leases_kv, key, self.broker_id, self.ttl_s)
                if scope == SERVER_SCOPE
                else Claim(self.leases_kv, key, self.life)
            )
        return self.leases[scope]

    @property
    def server_lease(self) -> Lease:
        lease = self.lease(SERVER_SCOPE)
        assert isinstance(lease, Lease)
        return lease

    def start(self) -> None:
        """Keep the broker's life (renewed by one loop) until :meth:`stop` has handed every
        scope over."""
        if self._living is None:
            self._living = asyncio.create_task(self.life.keep(self._ended), name="life")

    # -- looking again ----------------------------------------------------------------------
    async def look(self) -> bool:
        """Take the scopes this broker should lead and can, hand over those it should not;
        True when it leads every scope it should (the server scope included or not)."""
        async with self._looking:
            self.next_free_ns = 0
            self._reap()
            if not self.life.held:  # before the first renewal, or after a lapse
                await self.life.renew()
            await self._take([SERVER_SCOPE])
            colonies = await self.store.colony_names()
            due = self._due(colonies)
            handed = [s for s in self.held if s != SERVER_SCOPE and s not in due]
            for scope in handed:
                await self._hand_over(scope)
            if handed and self.sharded:
                # Their leases are free now: their new owners look again at once, rather
                # than at their next look (a third of a term away) with the colonies unled.
                with contextlib.suppress(nats.errors.Error):
                    await self.nc.publish(self.subjects.steer, b"")
            await self._drop_stale(due)
            await self._take(sorted(due - self.held.keys()))
            await self._forget_the_dead()
            return all(self.leadership(c) is not None for c in due)

    async def _forget_the_dead(self) -> None:
        """Now and then, at the server scope's leader: the lives of brokers long gone go."""
        now = time.monotonic()
        if self.leadership(SERVER_SCOPE) is None or now < self._forget_at:
            return
        self._forget_at = now + _FORGET_EVERY_S
        gone = await forget_dead_lives(
            self.store.js, self.leases_kv, dead_for_s=_DEAD_FOR_TERMS * self.ttl_s
        )
        if gone:
            logger.info("forgot %d brokers gone for over %d lease terms", gone, _DEAD_FOR_TERMS)

    async def colony_added(self, name: str) -> None:
        """A colony was just added (by this broker's server scope): lead it now if it is this
        broker's; else wake the other brokers and wait (up to a lease term) until one says it
        leads it."""
        if not self.sharded or owner(name, self._alive()) == self.broker_id:
            async with self._looking:
                await self._drop_stale({name})
                await self._take([name])
            return
        led = asyncio.Event()

        async def on_leader(msg: object) -> None:
            led.set()

        sub = await self.nc.subscribe(self.subjects.leader(name), cb=on_leader)
        try:
            await self.nc.publish(self.subjects.steer, name.encode())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.ttl_s):
                    await led.wait()
        finally:
            await sub.unsubscribe()

    async def stop(self) -> None:
        """Step down from everything: the colonies at once, then the server scope."""
        colonies = [s for s in self.held if s != SERVER_SCOPE]
        await asyncio.gather(*(self._hand_over(s) for s in colonies))
        await self._hand_over(SERVER_SCOPE)
        self._ended.set()  # the life is given up last: no colony is still led under it
        if self._living is not None:
            await self._living

    def _alive(self) -> set[str]:
        return {self.broker_id, *self.peers()}

    def _due(self, colonies: list[str]) -> set[str]:
        if not self.sharded:
            return set(colonies) if self.leadership(SERVER_SCOPE) is not None else set()
        alive = self._alive()
        return {c for c in colonies if owner(c, alive) == self.broker_id}

    async def _drop_stale(self, colonies: set[str]) -> None:
        """Step down from those of ``colonies`` led without their record: taken just as a
        colony of that name was removed, before it was added again."""
        for name in [c for c in colonies if c in self.held]:
            service = self.held[name].leadership.service
            if service is not None and name not in service.colonies:
                await self._hand_over(name)

    def _reap(self) -> None:
        """Forget the leaderships that ended (lease lost, colony removed, NATS trouble)."""
        for scope in [s for s, h in self.held.items() if h.task.done()]:
            _ended(scope, self.held.pop(scope).task)

    async def _take(self, scopes: list[str]) -> None:
        """Lead those of ``scopes`` whose lease is free, each loaded before this returns."""
        self._reap()
        for at in range(0, len(scopes), _AT_ONCE):
            batch = [s for s in scopes[at : at + _AT_ONCE] if s not in self.held]
            taken = await asyncio.gather(*(self.lease(s).try_acquire() for s in batch))
            started = [self._start(s) for s, ok in zip(batch, taken, strict=True) if ok]
            now_ns = time.time_ns()
            for scope in [s for s, ok in zip(batch, taken, strict=True) if not ok]:
                if (free_at := self.lease(scope).free_at_ns) > now_ns:
                    self.next_free_ns = min(self.next_free_ns or free_at, free_at)
            await asyncio.gather(*(self._until_serving(h) for h in started))

    def _start(self, scope: str) -> _Held:
        leadership = self.make(scope, self.lease(scope))
        task = asyncio.create_task(leadership.run(), name=f"lead-{scope}")
        held = self.held[scope] = _Held(leadership, task)
        return held

    @staticmethod
    async def _until_serving(held: _Held) -> None:
        serving = asyncio.create_task(held.leadership.serving.wait())
        await asyncio.wait({serving, held.task}, return_when=asyncio.FIRST_COMPLETED)
        serving.cancel()

    async def _hand_over(self, scope: str) -> None:
        held = self.held.pop(scope, None)
        if held is None:
            return
        held.leadership.stop()
        await asyncio.wait({held.task})
        _ended(scope, held.task)
        if scope != SERVER_SCOPE:
            self.leases.pop(scope, None)


def _ended(scope: str, task: asyncio.Task[None]) -> None:
    """Log how a leadership ended, if it failed (a defect: NATS trouble is handled inside)."""
    if not task.cancelled() and (err := task.exception()) is not None:
        logger.error("leading %s failed", scope, exc_info=err)


def _server_first(scope: str) -> tuple[bool, str]:
    return scope != SERVER_SCOPE, scope
