"""A lease in a KV bucket: which broker leads, with failover when the leader goes silent.

The value names the holder and when the lease runs out (wall clock, nanoseconds). Taking,
renewing and handing over are compare-and-set writes on the key's revision, so two brokers
can never both believe they took the same revision. A leader that cannot renew in time stops
leading before its lease runs out, so a new leader only starts after the old one has stopped.
"""

from __future__ import annotations

import contextlib
import logging
import time

import msgspec
import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from colonyos.subjects import SERVER_SCOPE

__all__ = ["Lease", "lease_key"]

_SERVER_LEASE = "broker"


logger = logging.getLogger(__name__)


class _Holder(msgspec.Struct, frozen=True):
    holder: str
    expires_ns: int


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(_Holder).decode


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
                self._revision = await self.kv.update(self.key, value, last=self._revision)
                self.valid_until = started + self.ttl_ns / 1e9 * 0.8
                return True
            try:
                entry = await self.kv.get(self.key)
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                self._revision = await self.kv.create(self.key, value)
            else:
                current = _decode(entry.value or b"")
                if current.holder != self.holder and current.expires_ns > now_ns:
                    self.valid_until = 0.0
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

    async def release(self) -> None:
        if self._revision is None or not self.held:
            return
        self.valid_until = 0.0
        # If someone took it already, or NATS is gone, the lease runs out by itself.
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await self.kv.update(self.key, _encode(_Holder("", 0)), last=self._revision)


def lease_key(scope: str) -> str:
    """The key of a scope's lease: ``broker`` for the server scope, ``colony.<name>``."""
    return _SERVER_LEASE if scope == SERVER_SCOPE else f"colony.{scope}"
