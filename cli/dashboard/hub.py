"""One subscription to the colony's events and heartbeats, shared by every open page.

The hub follows the colony as ``colonies process watch`` does (the same :class:`ColonyView`
counts, seeded from the broker once it listens), and hands each page what it needs: the counts
when it opens, then every event and heartbeat as it comes, and the counts again after changes
(at most ten times a second) and once a second (so that a silent executor goes offline).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

import msgspec
import nats.errors
from nats.aio.msg import Msg

from colonyos.client import Client
from colonyos.errors import BrokerUnavailableError
from colonyos.messages import GraphEvent, ProcessEvent, Rejection, UnknownEvent

from ..status import ONLINE_S, ColonyView

__all__ = ["COUNTS_EVERY_S", "QUEUE_LIMIT", "RETRY_FIRST_S", "Hub", "Page"]

COUNTS_EVERY_S = 1.0  # counts sent at least this often, events or not
_COUNTS_AFTER_S = 0.1  # and at most this often, however fast events come
# Messages a page may have waiting before it is dropped (its browser reconnects and starts
# again from the counts): a page that stopped reading must not hold the hub's memory.
QUEUE_LIMIT = 2000
# While no broker answers, the follower tries again after this long, twice as long each time.
RETRY_FIRST_S = 0.5
_RETRY_MAX_S = 10.0

_encode = msgspec.json.encode
log = logging.getLogger(__name__)
T = TypeVar("T")


def frame(kind: str, data: bytes) -> bytes:
    """One server-sent event: its name and its JSON (one line: JSON has no raw newline)."""
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


class Page:
    """One open page's stream: what the hub sends it, until it is dropped."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_LIMIT)

    def send(self, message: bytes) -> bool:
        """False if the page is too far behind (it is then told to stop)."""
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            return False
        return True


class Hub:
    def __init__(self, client: Client) -> None:
        self.client = client
        self.view = ColonyView(client.colony)
        self.pages: set[Page] = set()
        self.ready = asyncio.Event()
        # Set to stop: every wait of the follower (the next event, a retry) wakes on it. Not a
        # cancellation of the follower, which a wait for the next event can swallow on Python
        # 3.11 (see cli/_run.py).
        self.stopping = asyncio.Event()
        self._changed = asyncio.Event()

    def counts(self) -> bytes:
        view = self.view
        body: dict[str, Any] = {
            "colony": view.colony,
            "states": view.states,
            "executortypes": view.by_type,
            "online": view.online(),
            "offline": view.offline(),
            "onlinewindow": ONLINE_S,
            "rate": round(view.rate(), 2),
            "rejected": view.rejected,
        }
        return frame("counts", _encode(body))

    def join(self) -> Page:
        """A new page: it starts from the counts as they are now."""
        page = Page()
        page.send(self.counts())
        self.pages.add(page)
        return page

    def leave(self, page: Page) -> None:
        self.pages.discard(page)

    def broadcast(self, message: bytes) -> None:
        for page in list(self.pages):
            if not page.send(message):
                self.pages.discard(page)
                page.queue.get_nowait()  # room for the end mark: its browser reconnects
                page.queue.put_nowait(None)

    def close(self) -> None:
        """End every page's stream (the server stops)."""
        for page in list(self.pages):
            self.pages.discard(page)
            with contextlib.suppress(asyncio.QueueEmpty):
                page.queue.get_nowait()
            page.queue.put_nowait(None)

    async def run(self) -> None:
        """Follow the colony until :attr:`stopping` is set; while no broker answers, try
        again, slower and slower (the pages wait, and get the counts once it answers)."""
        delay = RETRY_FIRST_S
        while not self.stopping.is_set():
            try:
                await self._follow()
            except BrokerUnavailableError as e:
                self.ready.clear()
                log.warning("dashboard: %s; trying again in %g s", e.message, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                delay = min(delay * 2, _RETRY_MAX_S)

    async def _follow(self) -> None:
        client = self.client

        async def on_beat(msg: Msg) -> None:
            name = msg.subject.rsplit(".", 1)[-1]
            self.view.heard_from(name)
            self.broadcast(frame("beat", _encode({"executorname": name})))

        beats = await client.nc.subscribe(client.subjects.heartbeat(client.colony, "*"), cb=on_beat)
        sender = asyncio.create_task(self._send_counts())
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            async with client.subscribe() as events:
                self.view.seed(await client.stats(), await client.executor_list())
                self.ready.set()
                while (event := await _unless_stopped(events.next(None), stop)) is not None:
                    if not self.view.apply(event) or isinstance(event, UnknownEvent):
                        continue
                    self.broadcast(frame(_kind(event), _encode(event)))
                    self._changed.set()
        finally:
            stop.cancel()
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            with contextlib.suppress(nats.errors.Error):
                await beats.unsubscribe()

    async def _send_counts(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), COUNTS_EVERY_S)
            self._changed.clear()
            self.broadcast(self.counts())
            # A throttle, not a wait for something: a burst of events is one message.
            await asyncio.sleep(_COUNTS_AFTER_S)


async def _unless_stopped(waiting: Awaitable[T], stop: asyncio.Future[Any]) -> T | None:
    """What ``waiting`` gives, or None as soon as ``stop`` is done (``waiting`` is then
    cancelled): a stop does not wait for the next event, which may be long in coming."""
    task = asyncio.ensure_future(waiting)
    await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    if not stop.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return None


def _kind(event: ProcessEvent | GraphEvent | Rejection) -> str:
    if isinstance(event, ProcessEvent):
        return "process"
    return "graph" if isinstance(event, GraphEvent) else "rejection"
