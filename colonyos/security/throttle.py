"""Bounds on what strangers can make the brokers do: token buckets by key, with an injectable
clock so that they are tested without waiting."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Throttle"]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class Throttle:
    """At most ``burst`` at once per key, then ``per_s`` a second; the ``keys`` most recently
    used are remembered (an attacker inventing keys only evicts the oldest)."""

    def __init__(
        self,
        burst: int,
        per_s: float,
        *,
        keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.per_s = per_s
        self.keys = keys
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def allow(self, key: str) -> bool:
        """Take one token for ``key`` if there is one."""
        now = self.clock()
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.per_s)
        bucket.at = now
        self._buckets[key] = bucket
        if len(self._buckets) > self.keys:
            self._buckets.popitem(last=False)
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True

    def wait_s(self, key: str) -> float:
        """How long until ``key`` has a token again (0 if it has one)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        tokens = min(self.burst, bucket.tokens + (self.clock() - bucket.at) * self.per_s)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.per_s
