"""Submissions read colony by colony, each colony in turn, so that none waits behind another.

Every colony has its own durable pull consumer on the specs stream (its specs and its
workflows), created when the colony is added or when a broker starts leading, deleted with
the colony. The intake takes from the colonies' feeds in rounds: each colony with something
received gives up to an equal share of one batch, so a colony that floods its queue with
50,000 specs is served its share and no more, and another colony's spec is in the next round.
FIFO holds within a colony (one consumer, read in stream order); there is no order between
colonies.

Submissions to a colony that does not exist (never added, or removed) have no consumer of
their own, and a work-queue stream refuses a consumer that overlaps another, so no catch-all
can read them. Instead the stream is asked, every ``_STRAY_SWEEP_S``, which subjects hold
messages; a colony found there that has no feed gets a consumer like any other for as long as
it has submissions, and intake rejects them (the colony does not exist), as it always did.
Their rejection comes up to that long later than an accepted spec would.

A spec published before its colony was added is rejected too: a colony's consumer records the
last stream sequence at the time the colony was added (its metadata, so a new leader knows it),
and intake refuses anything of the colony at or before it.

An idle colony costs one outstanding pull request, renewed every ``_PULL_EXPIRES_S``.

Each colony is led by one broker (see broker/leadership.py), which reads that colony's feed
alone; the leader of the server scope reads no colony's feed, only the strays, skipping every
colony that exists (``existing``: another broker may be reading it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Container, Iterable

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo

from colonyos import limits
from colonyos.broker.feed import PullFeed
from colonyos.subjects import Subjects

__all__ = ["ColonyFeeds", "open_consumer"]

logger = logging.getLogger(__name__)

# How long a delivered spec may stay unacked before it is delivered again: then, after NATS
# trouble or a broker that died on it, the next waits (the last value for every later one),
# until its last delivery (limits.SPEC_DELIVERIES) is rejected. About half an hour in all.
_SPEC_REDELIVERY_S = (10.0, 30.0, 60.0, 120.0, 300.0)
# Consumer metadata: the stream sequence up to which the colony's submissions came before it.
_OPENED = "colonies_opened"
# The least a busy colony asks for at once, however many others are busy.
_MIN_PULL = 16
# How often the stream is asked for submissions to colonies that have no consumer.
_STRAY_SWEEP_S = 0.5
# How long a pull request stays out: an idle colony renews one this often.
_PULL_EXPIRES_S = 5.0
# Colonies whose consumers a new leader makes sure of at once (two JetStream requests each).
_RESUMED_AT_ONCE = 64


def _config(subjects: Subjects, colony: str, opened: int) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=subjects.consumer_intake(colony),
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=_SPEC_REDELIVERY_S[0],
        backoff=list(_SPEC_REDELIVERY_S),
        max_deliver=limits.SPEC_DELIVERIES,
        max_ack_pending=-1,
        filter_subjects=subjects.intake_filters(colony),
        metadata={_OPENED: str(opened)},
    )


async def open_consumer(
    js: JetStreamContext, subjects: Subjects, colony: str, *, opened: int = 0
) -> ConsumerInfo:
    """Create (or bring up to date) the intake consumer of one colony; its submissions at or
    before stream sequence ``opened`` are refused."""
    config = _config(subjects, colony, opened)
    try:
        return await js.add_consumer(subjects.stream_specs, config)
    except nats.js.errors.BadRequestError:
        # An older definition: replace it (the specs stay in the stream).
        await js.delete_consumer(subjects.stream_specs, subjects.consumer_intake(colony))
        return await js.add_consumer(subjects.stream_specs, config)


def _opened(info: ConsumerInfo) -> int:
    text = (info.config.metadata or {}).get(_OPENED, "0")
    return int(text) if text.isdigit() else 0


class ColonyFeeds:
    """The colonies' intake consumers, read in turn by one task (:meth:`next_batch`)."""

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        subjects: Subjects,
        *,
        batch: int,
        existing: Callable[[], Container[str]] | None = None,
    ) -> None:
        """``existing``: read only the submissions to colonies that do not exist (the server
        scope's part), the colonies that do being those it names; without it, read the
        colonies started or added, and nothing else."""
        self.nc = nc
        self.existing = existing
        self.js = js
        self.subjects = subjects
        self.batch = batch
        # Colony -> stream sequence at or before which its submissions are refused.
        self.opened: dict[str, int] = {}
        self._known: set[str] = set()
        self._feeds: dict[str, PullFeed] = {}
        self._arrived = asyncio.Event()
        self._busy = 1  # colonies with something received, at the last round
        self._sweep_at = 0.0

    @property
    def colonies(self) -> set[str]:
        """The colonies read, those that do not exist included (see the module's note)."""
        return set(self._feeds)

    def buffered(self) -> dict[str, int]:
        """Colony -> its submissions received and not yet taken."""
        return {colony: feed.buffered for colony, feed in self._feeds.items()}

    async def start(self, colonies: Iterable[str]) -> None:
        """Read every colony: the consumer of an older version over all colonies goes first
        (a work-queue stream refuses overlapping consumers; what it had not acked stays in
        the stream, for the colonies' consumers)."""
        s = self.subjects
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self.js.delete_consumer(s.stream_specs, s.consumer_specs)
            logger.info("deleted the all-colony intake consumer of an older version")
        names = list(colonies)
        for at in range(0, len(names), _RESUMED_AT_ONCE):
            await asyncio.gather(*(self._resume(c) for c in names[at : at + _RESUMED_AT_ONCE]))

    async def _resume(self, colony: str) -> None:
        s = self.subjects
        try:
            opened = _opened(await self.js.consumer_info(s.stream_specs, s.consumer_intake(colony)))
        except nats.js.errors.NotFoundError:
            opened = 0  # a colony of an older version: everything pending is its own
        await open_consumer(self.js, s, colony, opened=opened)
        self.opened[colony] = opened
        self._known.add(colony)
        await self._open_feed(colony)

    async def add(self, colony: str) -> None:
        """A colony just added: read it, refusing what was published for it before. (At the
        server scope: make its consumer, for the colony's leader, and stop reading it as a
        stray.)"""
        s = self.subjects
        await self._close_feed(colony, delete=False)
        opened = (await self.js.stream_info(s.stream_specs)).state.last_seq
        await open_consumer(self.js, s, colony, opened=opened)
        self.opened[colony] = opened
        if self.existing is None:  # the server scope makes the consumer; the colony reads it
            self._known.add(colony)
            await self._open_feed(colony)

    async def remove(self, colony: str) -> None:
        """A colony removed: its feed and its consumer go (what it had pending stays in the
        stream until purged, or is read as a colony that does not exist)."""
        self._known.discard(colony)
        self.opened.pop(colony, None)
        await self._close_feed(colony)

    async def close(self) -> None:
        """Stop reading (the consumers stay, for the next leader)."""
        feeds, self._feeds = self._feeds, {}
        for feed in feeds.values():
            await feed.__aexit__(None, None, None)

    async def next_batch(self) -> list[Msg]:
        """One round: from every colony with something received, up to an equal share of a
        batch, waiting up to ``_STRAY_SWEEP_S`` for something; may be empty."""
        loop = asyncio.get_running_loop()
        if loop.time() >= self._sweep_at:
            # A colony's leader wakes only to renew its pull (an idle colony costs little);
            # the server scope's sweeps for strays.
            every = _STRAY_SWEEP_S if self.existing is not None else _PULL_EXPIRES_S / 2
            self._sweep_at = loop.time() + every
            if self.existing is not None:  # the server scope's part
                await self._sweep()
        self._arrived.clear()
        taken = self._round()
        if not taken:
            await self._keep_pulling()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, self._sweep_at - loop.time())):
                    await self._arrived.wait()
            taken = self._round()
        await self._keep_pulling()
        return taken

    def _round(self) -> list[Msg]:
        ready = [feed for feed in self._feeds.values() if feed.buffered]
        if not ready:
            return []
        self._busy = len(ready)
        share = max(1, self.batch // len(ready))
        return [msg for feed in ready for msg in feed.take(share)]

    async def _keep_pulling(self) -> None:
        # The busier the colonies, the less each asks for: what is received and not yet
        # accepted stays about a batch or two, well inside the consumers' ack wait.
        size = max(_MIN_PULL, self.batch // self._busy)
        for feed in list(self._feeds.values()):
            await feed.keep_pulling(size)

    async def _sweep(self) -> None:
        """Read the colonies that have submissions and no feed (they do not exist), and stop
        reading those that do not exist and have nothing left."""
        s = self.subjects
        try:
            info = await self.js.stream_info(s.stream_specs, subjects_filter=">")
        except (nats.errors.Error, TimeoutError) as err:
            logger.warning("cannot list the submissions' subjects: %s", err)
            return
        present = {s.submission_colony(subject) for subject in info.state.subjects or {}}
        existing = self.existing() if self.existing is not None else ()
        for colony in present - self._feeds.keys():
            if colony in existing:
                continue
            logger.info("submissions for colony %r, which does not exist: rejecting them", colony)
            try:
                await open_consumer(self.js, s, colony)
            except (nats.errors.Error, TimeoutError) as err:  # tried again at the next sweep
                logger.warning("cannot read the submissions for colony %r: %s", colony, err)
                continue
            await self._open_feed(colony)
        for colony in [c for c in self._feeds if c not in self._known and c in existing]:
            await self._close_feed(colony, delete=False)  # added meanwhile: its leader reads it
        for colony in [c for c in self._feeds if c not in self._known and c not in present]:
            if not self._feeds[colony].buffered:
                with contextlib.suppress(nats.errors.Error, TimeoutError):  # gone next time
                    await self._close_feed(colony)

    async def _open_feed(self, colony: str) -> None:
        if colony in self._feeds:
            return
        s = self.subjects
        feed = PullFeed(
            self.nc,
            s.stream_specs,
            s.consumer_intake(colony),
            batch=self.batch,
            expires_s=_PULL_EXPIRES_S,
            arrived=self._arrived,
        )
        self._feeds[colony] = feed  # first, so that no one else opens another meanwhile
        await feed.__aenter__()
        # Pulling at once: a round may be waiting already, and a colony just added must not
        # wait for the next round (up to _STRAY_SWEEP_S) to have its first spec read.
        await feed.keep_pulling(max(_MIN_PULL, self.batch // self._busy))

    async def _close_feed(self, colony: str, *, delete: bool = True) -> None:
        feed = self._feeds.pop(colony, None)
        if feed is not None:
            await feed.__aexit__(None, None, None)
        if not delete:
            return
        s = self.subjects
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self.js.delete_consumer(s.stream_specs, s.consumer_intake(colony))
