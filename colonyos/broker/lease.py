"""Leases in a KV bucket: which broker leads what, with failover when a leader goes silent.

A :class:`Lease`'s value names the holder and when the lease runs out (wall clock,
nanoseconds). Taking, renewing and handing over are compare-and-set writes on the key's
revision, so two brokers can never both believe they took the same revision. A leader that
cannot renew in time stops leading before its lease runs out, so a new leader only starts
after the old one has stopped. The server scope is led under a lease (``broker``).

A broker may lead hundreds of colonies, and a lease renewed per colony was most of what a
colony at rest cost (a write every third of a term each). So a broker keeps one lease of its
own, its :class:`Life` (``alive.<broker id>``), and holds each colony under a :class:`Claim`
(``colony.<name>``): a compare-and-set naming the broker, with no expiry of its own, good for
as long as the broker's life lasts. Another broker takes a claimed colony only once the
claimant's life has run out (or the claim was given up); a broker whose life lapsed (it could
not renew in time) has lost every claim made before, and steps down from those colonies
before it claims anything again. One write every third of a term, however many colonies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from colonyos.buckets import latest_values, purge_key
from colonyos.subjects import SERVER_SCOPE

__all__ = ["Claim", "Holding", "Lease", "Life", "forget_dead_lives", "lease_key"]

_SERVER_LEASE = "broker"


logger = logging.getLogger(__name__)


class _Holder(msgspec.Struct, frozen=True):
    holder: str
    expires_ns: int
    # A colony's claim: held while the holder's life lasts (expires_ns says only "far away",
    # for brokers of an earlier version).
    claim: bool = False


_encode = msgspec.json.Encoder().encode
_decode_holder = msgspec.json.Decoder(_Holder).decode
# How a claim reads to a broker of an earlier version, which knows only expiring leases: held
# until far beyond any term (so it never takes a claimed colony), instead of run out.
_CLAIMED_UNTIL_NS = 2**62


def _read(value: bytes | None) -> _Holder:
    """A lease's value; one that cannot be read (written by hand) holds nothing."""
    try:
        return _decode_holder(value or b"")
    except msgspec.DecodeError:
        return _Holder("", 0)


class Lease:
    def __init__(self, kv: KeyValue, key: str, holder: str, ttl_s: float) -> None:
        self.kv = kv
        self.key = key
        self.holder = holder
        self.ttl_ns = int(ttl_s * 1e9)
        self._revision: int | None = None
        # Monotonic time until which this holder may act; 0 when not holding.
        self.valid_until = 0.0
        # The bucket revision at which this holder last took the lease (0: never): it grows
        # with every change of hands, so each leader's term has a higher number.
        self.term = 0
        # When another holds it: when its term runs out (wall clock, ns; 0: not known).
        self.free_at_ns = 0

    @property
    def held(self) -> bool:
        return time.monotonic() < self.valid_until

    async def try_acquire(self) -> bool:
        """Take the lease if free or expired, or renew it if held; False if another holds it."""
        started = time.monotonic()
        now_ns = time.time_ns()
        value = _encode(_Holder(self.holder, now_ns + self.ttl_ns))
        try:
            if self.held and self._revision is not None:
                # Renewing: a compare-and-set on this holder's own last write, one request (a
                # broker renews one lease per colony it leads). Anyone's write since means
                # the lease is not ours any more.
                try:
                    self._revision = await self.kv.update(self.key, value, last=self._revision)
                except nats.js.errors.KeyWrongLastSequenceError:
                    return await self._own_write_landed()
                self.valid_until = started + self.ttl_ns / 1e9 * 0.8
                return True
            try:
                entry = await self.kv.get(self.key)
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                self._revision = await self.kv.create(self.key, value)
            else:
                current = _read(entry.value)
                if current.holder != self.holder and current.expires_ns > now_ns:
                    self.valid_until = 0.0
                    self.free_at_ns = current.expires_ns
                    return False
                self._revision = await self.kv.update(self.key, value, last=entry.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            self.valid_until = 0.0
            return False
        except (nats.errors.Error, TimeoutError) as err:
            logger.warning("lease %s: cannot reach the bucket: %s", self.key, err)
            return self.held
        if not self.held:
            self.term = self._revision or 0
        # Act only for the part of the term that surely lies before the lease runs out anywhere.
        self.valid_until = started + self.ttl_ns / 1e9 * 0.8
        return True

    async def _own_write_landed(self) -> bool:
        """A renewal was refused: did an earlier one of this holder land after all (its reply
        lost, or its request cut off by a timeout)? Then the lease is still its own, until the
        expiry that write set, less the same margin."""
        try:
            entry = await self.kv.get(self.key)
        except (nats.errors.Error, TimeoutError):
            entry = None
        current = _read(entry.value if entry is not None else None)
        left_s = (current.expires_ns - time.time_ns()) / 1e9 - self.ttl_ns / 1e9 * 0.2
        if entry is None or current.holder != self.holder or left_s <= 0:
            self.valid_until = 0.0
            return False
        self._revision = entry.revision
        self.valid_until = time.monotonic() + left_s
        return True

    async def release(self) -> None:
        if self._revision is None or not self.held:
            return
        self.valid_until = 0.0
        # If someone took it already, or NATS is gone, the lease runs out by itself.
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await self.kv.update(self.key, _encode(_Holder("", 0)), last=self._revision)

    async def keep(self, stopping: asyncio.Event) -> None:
        """Renew every third of a term; return when the lease is lost or ``stopping`` is set."""
        period = self.ttl_ns / 1e9 / 3
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period):
                    await stopping.wait()
            if stopping.is_set():
                return
            try:
                async with asyncio.timeout(period):
                    renewed = await self.try_acquire()
            except TimeoutError:
                renewed = self.held
            if not renewed:
                return


class Life:
    """A broker's own lease (``alive.<broker id>``), renewed by one loop (:meth:`renew`):
    every :class:`Claim` the broker makes is good for as long as it lasts. Each time it lapses
    a generation ends: the claims made in it are lost, and :attr:`lapsed` (that generation's)
    is set."""

    def __init__(self, kv: KeyValue, broker_id: str, ttl_s: float) -> None:
        self.kv = kv
        self.broker_id = broker_id
        self.lease = Lease(kv, _life_key(broker_id), broker_id, ttl_s)
        self.generation = 0
        self.lapsed = asyncio.Event()
        self._claimed = False  # a claim was made in this generation
        self._renewing = asyncio.Lock()
        self._watchdog: asyncio.TimerHandle | None = None

    @property
    def held(self) -> bool:
        return self.lease.held

    async def renew(self) -> bool:
        """Take or renew the broker's lease; a lapse before (or a renewal refused) ends the
        generation, and with it every claim made in it."""
        async with self._renewing:  # two at once would each refuse the other's write
            if not self.lease.held:
                self._end_generation()  # before the write: it may take long
            renewed = await self.lease.try_acquire()
            if not renewed:
                self._end_generation()
            self._watch()
            return renewed

    def _watch(self) -> None:
        """End the generation the moment the lease's validity passes unrenewed (a renewal
        that hangs, a loop too busy to renew): the colonies step down then, before another
        broker may take them, not once a late renewal has failed."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        left = self.lease.valid_until - time.monotonic()
        if left > 0:
            self._watchdog = asyncio.get_running_loop().call_later(left, self._expired)

    def _expired(self) -> None:
        if not self.lease.held:
            self._end_generation()

    async def keep(self, stopping: asyncio.Event) -> None:
        """Renew every third of a term until ``stopping`` is set, then give the lease up."""
        period = self.lease.ttl_ns / 1e9 / 3
        try:
            while not stopping.is_set():
                try:
                    async with asyncio.timeout(period):
                        await self.renew()
                except TimeoutError:
                    if not self.lease.held:
                        self._end_generation()
                except Exception:  # a defect: the next renewal still comes
                    logger.exception("renewing %s failed", self.lease.key)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(period):
                        await stopping.wait()
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
            self._end_generation()
            await self.lease.release()

    async def runs_out(self, broker_id: str) -> int:
        """When the life of broker ``broker_id`` runs out (wall clock, ns; 0: it has none)."""
        try:
            entry = await self.kv.get(_life_key(broker_id))
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return 0
        return _read(entry.value).expires_ns

    def _end_generation(self) -> None:
        if self._claimed:
            self.lapsed.set()
            self.lapsed = asyncio.Event()
            self.generation += 1
            self._claimed = False


class Claim:
    """A colony's lease held under the broker's :class:`Life`: taken by a compare-and-set that
    names the broker, kept with no write at all while the life lasts."""

    def __init__(self, kv: KeyValue, key: str, life: Life) -> None:
        self.kv = kv
        self.key = key
        self.life = life
        self.holder = life.broker_id
        self._revision: int | None = None
        self._generation = -1
        self._lapsed = asyncio.Event()
        self.term = 0  # the bucket revision of the claim (as Lease.term)
        self.free_at_ns = 0  # as Lease.free_at_ns: when the claimant's life runs out

    @property
    def held(self) -> bool:
        return (
            self._revision is not None
            and self._generation == self.life.generation
            and self.life.held
        )

    async def try_acquire(self) -> bool:
        """Claim the colony if it is free, given up, or its claimant's life has run out; True
        if this broker holds it (then no write was needed while its life lasted)."""
        if self.held:
            return True
        if not self.life.held:
            return False
        generation = self.life.generation  # a lapse during the writes below voids the claim
        value = _encode(_Holder(self.holder, _CLAIMED_UNTIL_NS, claim=True))
        try:
            try:
                entry = await self.kv.get(self.key)
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                revision = await self.kv.create(self.key, value)
            else:
                current = _read(entry.value)
                if current.holder not in ("", self.holder) and await self._lives(current):
                    return False
                revision = await self.kv.update(self.key, value, last=entry.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        except (nats.errors.Error, TimeoutError) as err:
            logger.warning("lease %s: cannot reach the bucket: %s", self.key, err)
            return False
        if self.life.generation != generation or not self.life.held:
            return False  # the key names this broker: its next look claims it afresh
        self._revision, self.term = revision, revision
        self._generation, self._lapsed = generation, self.life.lapsed
        self.life._claimed = True
        return True

    async def _lives(self, current: _Holder) -> bool:
        """Does the claimant hold it still? (Then :attr:`free_at_ns` says until when.)"""
        if current.claim:
            self.free_at_ns = await self.life.runs_out(current.holder)
        else:  # a lease renewed on its own, as every colony's once was
            self.free_at_ns = current.expires_ns
        return self.free_at_ns > time.time_ns()

    async def keep(self, stopping: asyncio.Event) -> None:
        """Return when the claim is lost (the broker's life lapsed) or ``stopping`` is set."""
        if self.held:
            lapsed = asyncio.ensure_future(self._lapsed.wait())
            stopped = asyncio.ensure_future(stopping.wait())
            try:
                await asyncio.wait({lapsed, stopped}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                lapsed.cancel()
                stopped.cancel()

    async def release(self) -> None:
        """Give the colony up (to whichever broker looks next)."""
        revision, self._revision = self._revision, None
        if revision is None:
            return
        # If someone took it already, or NATS is gone, it is free once the life runs out.
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await self.kv.update(self.key, _encode(_Holder("", 0)), last=revision)


async def forget_dead_lives(js: JetStreamContext, kv: KeyValue, *, dead_for_s: float) -> int:
    """Remove the lives (``alive.<broker id>``) that ran out more than ``dead_for_s`` ago:
    every broker start makes one, and a stop or a crash would leave it for ever. (A broker
    that comes back after that long finds no key: it makes it again, its claims lost, as after
    any lapse.) How many went."""
    cut = time.time_ns() - int(dead_for_s * 1e9)
    gone = 0
    async for stored in latest_values(js, kv, f"{_LIFE}."):
        if _read(stored.value).expires_ns < cut:
            await purge_key(js, kv, stored.key)
            gone += 1
    return gone


# What a scope is led under: the server scope's lease, or a colony's claim.
Holding = Lease | Claim


_LIFE = "alive"


def _life_key(broker_id: str) -> str:
    return f"{_LIFE}.{broker_id}"


def lease_key(scope: str) -> str:
    """The key of a scope's lease: ``broker`` for the server scope, ``colony.<name>``."""
    return _SERVER_LEASE if scope == SERVER_SCOPE else f"colony.{scope}"
