"""Messages of a durable pull consumer, taken in chunks as they arrive.

nats-py's ``PullSubscription.fetch(batch=n)`` collects a batch one message at a time, each
through ``next_msg`` with its own timeout, so a batch of 256 costs 256 turns of the event loop.
On a busy broker every turn also runs everything else that is ready, and the intake of specs
slowed to about 1,300 per second while the broker was half idle. Here the pull request is sent
by hand to the inbox of an ordinary subscription, whose callback gathers what arrives; a caller
gets, at once, everything received so far.

One pull request is out at a time (``batch`` messages, expiring after ``expires_s``); the next
is sent as soon as the caller takes the last messages the current one may bring, so the server
sends more while the caller works on what it has.

Several feeds may share one ``arrived`` event, so that one task waits on all of them and takes
from each in turn (:meth:`take`, :meth:`keep_pulling`: see :mod:`colonyos.broker.colonyfeeds`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from types import TracebackType

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from colonyos.subjects import Subjects

__all__ = ["PullFeed"]

_HEARTBEAT_STATUS = "100"
# The request ended without (more) messages: it expired, or the stream was empty.
_ENDED = ("404", "408")
_REFUSED_PAUSE_S = 0.2
# A pull request unanswered this long past its expiry is taken for lost (e.g. a reconnect).
_GRACE_S = 1.0


class PullFeed:
    def __init__(
        self,
        nc: NATS,
        stream: str,
        consumer: str,
        *,
        batch: int,
        expires_s: float = 1.0,
        arrived: asyncio.Event | None = None,
    ) -> None:
        self.nc = nc
        self.batch = batch
        self.expires_s = expires_s
        self._next_subject = Subjects.pull_next(stream, consumer)
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._buffer: list[Msg] = []
        self._arrived = arrived if arrived is not None else asyncio.Event()
        self._retry_at = 0.0  # after a refused request, no other before this time
        self._outstanding = 0  # messages the current pull request may still bring
        self._pull_deadline = 0.0
        self._refused = False  # the last request was refused (consumer gone, no JetStream...)

    async def __aenter__(self) -> PullFeed:
        self._sub = await self.nc.subscribe(self._inbox, cb=self._on_message)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()

    async def next_batch(self) -> list[Msg]:
        """What has arrived, waiting up to about ``expires_s`` for something; may be empty."""
        loop = asyncio.get_running_loop()
        if not self._buffer:
            if self._outstanding <= 0 or loop.time() > self._pull_deadline:
                if self._refused:
                    await asyncio.sleep(_REFUSED_PAUSE_S)  # not a hot loop against an error
                await self._pull()
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._pull_deadline - loop.time()):
                    await self._arrived.wait()
        taken, self._buffer = self._buffer, []
        if taken and self._outstanding <= 0:
            await self._pull()  # ask for the next batch while the caller writes this one
        return taken

    @property
    def buffered(self) -> int:
        """Messages received and not yet taken."""
        return len(self._buffer)

    def take(self, limit: int) -> list[Msg]:
        """Up to ``limit`` of the messages received, oldest first, without waiting."""
        taken, self._buffer = self._buffer[:limit], self._buffer[limit:]
        return taken

    async def keep_pulling(self, size: int) -> None:
        """Have a pull request out for up to ``size`` messages, unless one is out already or
        ``size`` are received and not yet taken (what a feed holds stays bounded: at most
        about twice ``size``, however long the caller leaves it)."""
        loop = asyncio.get_running_loop()
        if self._sub is None or (self._outstanding > 0 and loop.time() <= self._pull_deadline):
            return
        if len(self._buffer) >= size or loop.time() < self._retry_at:
            return  # enough in hand, or a refusal (consumer gone...) is not met with a hot loop
        self.batch = size
        await self._pull()

    async def _pull(self) -> None:
        request = {"batch": self.batch, "expires": int(self.expires_s * 1e9)}
        self._outstanding = self.batch
        self._refused = False
        self._pull_deadline = asyncio.get_running_loop().time() + self.expires_s + _GRACE_S
        await self.nc.publish(self._next_subject, json.dumps(request).encode(), reply=self._inbox)

    async def _on_message(self, msg: Msg) -> None:
        status = (msg.headers or {}).get("Status") if not msg.data else None
        if status is not None:
            if status != _HEARTBEAT_STATUS:
                self._outstanding = 0  # the request ended
                self._refused = status not in _ENDED
                if self._refused:
                    self._retry_at = asyncio.get_running_loop().time() + _REFUSED_PAUSE_S
        else:
            self._outstanding -= 1
            self._buffer.append(msg)
        self._arrived.set()
