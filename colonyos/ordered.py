"""Reading one subject filter of a stream in order, each message once, with no more rights than
a member of a colony has.

nats-py's ordered consumer cannot do that: it creates its consumer itself, unnamed, and when it
resets after a gap it creates the same name again with another start, which the server refuses
(the reader then stalls). A member may not create consumers at all (nats-server does not check a
push consumer's deliver subject: see broker/readers.py). :class:`OrderedReader` asks the broker
(``reader_open``) for an ephemeral push consumer delivering to an inbox of its own connection;
after a gap (a missed message or silence for three heartbeats) it asks for a new one from the
next stream sequence. A consumer left behind is removed by the server once nothing listens to it
(its inactive threshold).

Flow control asks the reader for a reply, sent once the caller has read what came before. A
member may answer a message only for a while (its JWT's response time); a caller that paused
longer would have its late reply refused, and the consumer would wait for it for ever: the reader
then asks for a new consumer from the next message instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from types import TracebackType
from typing import Literal

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from colonyos.connection import closed_error
from colonyos.errors import ColoniesError
from colonyos.messages import ReaderOpen
from colonyos.security import permissions

__all__ = ["OrderedReader"]

logger = logging.getLogger(__name__)

# What a status message's headers say (JetStream's protocol).
_STATUS = "Status"
_CONTROL = "100"  # an idle heartbeat or a flow control request
_LAST_CONSUMER = "Nats-Last-Consumer"
_STALLED = "Nats-Consumer-Stalled"
# Silent for this many heartbeats: the consumer is gone (server restarted, connection lost).
_MISSED_HEARTBEATS = 3
# The part of the response time a flow control reply may still be sent in (the request took
# time to arrive; the server's clock runs from when it delivered it).
_REPLY_WITHIN = 0.8


class OrderedReader:
    """The messages of ``filter_subject`` in ``stream``, from ``start_time`` (None: from the
    first), in stream order. Use as ``async with OrderedReader(...) as reader`` and call
    :meth:`next`; flow control holds the server back while the caller has not read."""

    def __init__(
        self,
        nc: NATS,
        stream: Literal["events", "logs"],
        filter_subject: str,
        open_consumer: Callable[[ReaderOpen], Awaitable[str]],
        *,
        start_time: datetime | None = None,
        heartbeat_s: float = 2.0,
        inactive_s: float = 10.0,
    ) -> None:
        self._nc = nc
        self._open_consumer = open_consumer
        self._stream = stream
        self._filter = filter_subject
        self._start_time = start_time
        self._heartbeat_s = heartbeat_s
        self._inactive_s = inactive_s
        self._queue: asyncio.Queue[Msg | None] = asyncio.Queue()
        self._sub: Subscription | None = None
        self._generation = 0
        self._consumer_seq = 0  # the last consumer sequence received in order
        self._stream_seq = 0  # the stream sequence of that message
        self._broken = False
        self._heard = time.monotonic()
        self._received = 0  # messages put on the queue, for flow control
        self._taken = 0  # messages handed to the caller
        self._flow_reply: str | None = None
        self._flow_at = 0
        self._flow_asked = ""  # the last flow control reply subject asked for, and when
        self._flow_since = 0.0
        self.consumer = ""  # the current consumer's name

    async def start(self) -> OrderedReader:
        """Create the consumer (a nats-py error if the server refuses, e.g. no such stream)."""
        try:
            await self._create()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aenter__(self) -> OrderedReader:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop listening; the server removes the consumer after its inactive threshold."""
        self._generation += 1
        await self._unsubscribe()

    async def next(self, timeout: float | None = None) -> Msg:
        """The next message; :class:`TimeoutError` if none comes within ``timeout``; once the
        connection is closed and every message received is read, why it closed."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self._nc.is_closed and self._queue.empty():
                raise closed_error(self._nc)
            if self._broken or time.monotonic() - self._heard > (
                _MISSED_HEARTBEATS * self._heartbeat_s
            ):
                await self._reset()
            wait = self._heartbeat_s
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
                if wait <= 0:
                    raise TimeoutError(f"no message on {self._filter} within {timeout} s")
            try:
                msg = await asyncio.wait_for(self._queue.get(), wait)
            except TimeoutError:
                continue
            if msg is None:  # a wake-up: a gap was seen
                continue
            self._taken += 1
            await self._answer_flow_control()
            return msg

    # -- the consumer ---------------------------------------------------------------------
    async def _create(self) -> None:
        """A new consumer under a new name, from the message after the last one received (or
        from the start asked for), delivering to a new inbox of this connection."""
        self._generation += 1
        generation = self._generation
        await self._unsubscribe()
        inbox = self._nc.new_inbox()

        async def on_msg(msg: Msg) -> None:
            if generation == self._generation:
                await self._on_msg(msg)

        self._sub = await self._nc.subscribe(inbox, cb=on_msg)
        request = ReaderOpen(
            stream=self._stream,
            filter_subject=self._filter,
            deliver_subject=inbox,
            start_sequence=self._stream_seq + 1 if self._stream_seq else 0,
            start_time=None if self._stream_seq else self._start_time,
            heartbeat_s=self._heartbeat_s,
            inactive_s=self._inactive_s,
        )
        self._consumer_seq = 0
        self._flow_reply = None
        self._broken = False
        self._heard = time.monotonic()
        self.consumer = await self._open_consumer(request)

    async def _reset(self) -> None:
        """After a gap: a new consumer from the next message. If the server cannot be asked
        now (reconnecting), the next call tries again."""
        logger.debug(
            "reading %s of %s again from stream sequence %d",
            self._filter,
            self._stream,
            self._stream_seq + 1,
        )
        try:
            await self._create()
        except (nats.errors.Error, ColoniesError) as err:
            logger.debug("could not open a reader of %s yet: %s", self._stream, err)
            self._broken = True
            self._heard = time.monotonic()

    async def _unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    def _gap(self) -> None:
        self._broken = True
        self._generation += 1  # what the old consumer still sends is dropped
        self._queue.put_nowait(None)

    async def _on_msg(self, msg: Msg) -> None:
        self._heard = time.monotonic()
        headers = msg.headers or {}
        if headers.get(_STATUS) == _CONTROL and not msg.data:
            await self._on_control(msg, headers)
            return
        try:
            sequence = msg.metadata.sequence
        except nats.errors.NotJSMessageError:
            return  # not from the consumer: someone else published to this inbox
        if sequence.consumer != self._consumer_seq + 1:
            self._gap()
            return
        self._consumer_seq = sequence.consumer
        self._stream_seq = sequence.stream
        self._received += 1
        self._queue.put_nowait(msg)

    async def _on_control(self, msg: Msg, headers: dict[str, str]) -> None:
        last = headers.get(_LAST_CONSUMER)
        if last is not None and int(last) != self._consumer_seq:
            self._gap()  # a heartbeat after a message this reader never got
            return
        reply = msg.reply or headers.get(_STALLED)
        if reply:
            if reply != self._flow_asked:  # a stalled heartbeat repeats the first request
                self._flow_asked, self._flow_since = reply, time.monotonic()
            # Answered once the caller has taken every message received before it.
            self._flow_reply, self._flow_at = reply, self._received
            await self._answer_flow_control()

    async def _answer_flow_control(self) -> None:
        if self._flow_reply is not None and self._taken >= self._flow_at:
            reply, self._flow_reply = self._flow_reply, None
            if time.monotonic() - self._flow_since > permissions.RESPONSE_TTL_S * _REPLY_WITHIN:
                # Too late: the server would refuse the reply. Start again past the last
                # message received.
                self._gap()
                return
            with contextlib.suppress(nats.errors.Error):
                await self._nc.publish(reply)
