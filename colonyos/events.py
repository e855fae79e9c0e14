"""Listening to lifecycle events: one process's (:class:`ProcessWatch`), or a filtered stream
(:class:`EventStream`, live or replayed from a time); and reading a process's log
(:func:`read_logs`). Plain NATS subscriptions underneath, and for what the streams keep, only
the JetStream calls a member of a colony may make: named consumers whose filter is in their
subject (:class:`~colonyos.ordered.OrderedReader`) and direct gets of a subject's last message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from colonyos.connection import closed_error
from colonyos.messages import Event, GraphEvent, ProcessEvent, Rejection, UnknownEvent, decode_event
from colonyos.models import LogEntry, now
from colonyos.ordered import OrderedReader

if TYPE_CHECKING:
    from colonyos.client.reading import Reading

__all__ = ["EventStream", "ProcessWatch", "Received", "has_events", "is_end", "read_logs"]

logger = logging.getLogger(__name__)

_log_decoder = msgspec.json.Decoder(LogEntry)
# How often a log follower that has seen no line checks whether the process ended.
_FOLLOW_TICK_S = 0.2


def is_end(event: Event | UnknownEvent) -> bool:
    """Does this event end what it is about (a process or graph finished, a rejection)?"""
    if isinstance(event, ProcessEvent | GraphEvent):
        return event.state.is_terminal
    return isinstance(event, Rejection)


def _skipped(event: UnknownEvent) -> None:
    logger.warning(
        "skipped an event this version cannot read on %s (kind %r): %s",
        event.subject,
        event.kind,
        event.reason,
    )


@dataclass(frozen=True, slots=True)
class Received:
    """An event as a subscriber got it: the subject it came on, and its time (when the stream
    stored it, for a replayed event; when it arrived, for a live one)."""

    subject: str
    time: datetime
    event: Event | UnknownEvent


class ProcessWatch:
    """The events of one process or graph (or of several ids), from the moment of
    subscription (core NATS). Every body is decoded once, as it arrives."""

    def __init__(self, client: Reading, colony: str, *ids: str) -> None:
        self._client = client
        self._subjects = [client.subjects.events_filter(colony=colony, process_id=i) for i in ids]
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._subs: list[Subscription] = []
        self.ended = asyncio.Event()

    async def _on_event(self, msg: Msg) -> None:
        event = decode_event(msg.subject, msg.data)
        if isinstance(event, UnknownEvent):
            _skipped(event)
            return
        if is_end(event):
            self.ended.set()
        await self._queue.put(event)

    async def __aenter__(self) -> ProcessWatch:
        for subject in self._subjects:
            self._subs.append(await self._client.nc.subscribe(subject, cb=self._on_event))
        # Make sure the server has the interest before the caller acts.
        await self._client.nc.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for sub in self._subs:
            with contextlib.suppress(
                nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError
            ):
                await sub.unsubscribe()

    async def next(self, timeout: float | None) -> Event:
        """The next event this version can read (others are logged and skipped)."""
        async with asyncio.timeout(timeout):
            return await self._queue.get()


class EventStream:
    """Events from one subject filter: live (core NATS), or replayed from a time through the
    events stream and then live, in order. Yields every kind of :data:`Event`, and an
    :class:`UnknownEvent` for a body this version cannot read (to skip)."""

    def __init__(self, client: Reading, subject: str, since: datetime | None) -> None:
        self._client = client
        self._subject = subject
        self._since = since
        self._sub: Subscription | None = None
        self._reader: OrderedReader | None = None

    async def __aenter__(self) -> EventStream:
        nc = self._client.nc
        if self._since is None:
            self._sub = await nc.subscribe(self._subject)
            await nc.flush()
        else:
            self._reader = await OrderedReader(
                nc,
                "events",
                self._subject,
                self._client.open_reader,
                start_time=self._since,
            ).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
        if self._reader is not None:
            await self._reader.close()

    async def receive(self, timeout: float | None = None) -> Received:
        """The next event with its subject and time."""
        if self._reader is not None:
            msg = await self._reader.next(timeout)
            when = msg.metadata.timestamp  # replayed through the stream: when it was stored
        else:
            assert self._sub is not None, "use the stream inside 'async with'"
            try:
                msg = await self._sub.next_msg(timeout=timeout)
            except nats.errors.ConnectionClosedError as err:
                raise closed_error(self._client.nc) from err
            when = now()  # live: as it arrives
        return Received(msg.subject, when, decode_event(msg.subject, msg.data))

    async def next(self, timeout: float | None = None) -> Event | UnknownEvent:
        return (await self.receive(timeout)).event

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event | UnknownEvent:
        return await self.next(None)


async def has_events(client: Reading, item_id: str) -> bool:
    """Does the events stream keep any event of this process or graph id?"""
    subject = client.subjects.events_filter(colony=client.colony, process_id=item_id)
    return await _last_seq(client, client.subjects.stream_events, subject) > 0


async def read_logs(
    client: Reading, process_id: str, *, follow: bool = False
) -> AsyncIterator[LogEntry]:
    """A process's log lines in order, from the logs stream; with ``follow``, until the
    process ends (then up to the last line its executor sent, which it sends before it closes).
    """
    async with contextlib.AsyncExitStack() as stack:
        ended = asyncio.Event()
        if follow:
            watch = await stack.enter_async_context(client.watch(process_id))
            ended = watch.ended
            if (await client.get(process_id)).state.is_terminal:
                ended.set()
        else:
            ended.set()
        subject = client.subjects.logs(client.colony, process_id)
        reader = await stack.enter_async_context(
            OrderedReader(
                client.nc,
                "logs",
                subject,
                client.open_reader,
            )
        )
        seen = 0
        while not ended.is_set():
            try:
                msg = await reader.next(_FOLLOW_TICK_S)
            except TimeoutError:
                continue
            seen = msg.metadata.sequence.stream
            yield _log_decoder.decode(msg.data)
        # Ended: an executor sends its last lines before it closes, so the stream now
        # holds the whole log; read up to its last line.
        last = await _last_seq(client, client.subjects.stream_logs, subject)
        while seen < last:
            msg = await reader.next(client.settings.request_timeout_s)
            seen = msg.metadata.sequence.stream
            yield _log_decoder.decode(msg.data)


async def _last_seq(client: Reading, stream: str, subject: str) -> int:
    """The stream sequence of the last message on ``subject`` (0: none), by a direct get,
    whose subject names the subject asked for (a member may make it for its colony; the
    streams allow direct gets)."""
    try:
        return int((await client.js.get_last_msg(stream, subject, direct=True)).seq or 0)
    except nats.js.errors.NotFoundError:
        return 0
