"""Consumers for clients that read the events or logs stream in order (``reader_open``).

A member may not create consumers: nats-server checks the filter of a consumer create against
its creator's rights (when the filter is in the subject) but not a push consumer's deliver
subject, so a member allowed to create one could have its colony's messages delivered on any
subject of the account, another colony's control subjects or a ``$KV`` subject among them.
The broker creates the consumer instead, with a filter inside the caller's colony and a
deliver subject inside the caller's own inbox (``_INBOX.<prefix>.<colony>.<caller>.``), and
no acks.

Each consumer costs the server memory and work on every message of its stream, so they are
bounded: :data:`MAX_READERS_PER_CALLER` live at once per member, :data:`MAX_READERS` in all, and
opens per member throttled. A consumer lives while its reader listens, and the server removes
it ``inactive_s`` after: the broker counts those it made, and when a bound is reached counts
again what the server still has (a member's consumers deliver into its inbox), so a reader that
stopped does not hold a place.
"""

from __future__ import annotations

import secrets

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from colonyos.broker.service import Service
from colonyos.errors import BrokerUnavailableError, InvalidSpecError, NotAuthorizedError
from colonyos.messages import ReaderOpen
from colonyos.security.permissions import inbox_prefix
from colonyos.security.throttle import Throttle

__all__ = ["MAX_READERS", "MAX_READERS_PER_CALLER", "Readers"]

# Live readers one member may have at once (a client follows a few streams; a reader that
# reopens after a gap leaves its old consumer for up to inactive_s), and all members together.
MAX_READERS_PER_CALLER = 32
MAX_READERS = 2000
# The JetStream API lists this many consumers at a time.
_PAGE = 256


class Readers:
    def __init__(self, service: Service) -> None:
        self.service = service
        # Opens per member: 32 at once, then two a second.
        self.opens = Throttle(burst=32, per_s=2.0)
        # The consumers this broker made, by the inbox prefix they deliver into (one member).
        self._live: dict[str, set[str]] = {}
        service.register_ops(reader_open=(ReaderOpen, self.open))

    async def open(self, colony: str, caller: str, req: ReaderOpen) -> str:
        """Create the consumer; its name."""
        self.service.colony(colony)
        s = self.service.subjects
        stream = s.stream_events if req.stream == "events" else s.stream_logs
        scope = f"{s.prefix}.{colony}.{req.stream}."
        if not req.filter_subject.startswith(scope) or len(req.filter_subject) == len(scope):
            raise NotAuthorizedError(
                f"not allowed: filtersubject {req.filter_subject!r} is not within {scope}>",
                path="$.filtersubject",
            )
        inbox = inbox_prefix(s.prefix, colony, caller) + "."
        deliver = req.deliver_subject
        if not deliver.startswith(inbox) or "*" in deliver or ">" in deliver:
            raise NotAuthorizedError(
                f"not allowed: deliversubject {deliver!r} is not one subject of {inbox}>",
                path="$.deliversubject",
            )
        if req.start_sequence and req.start_time is not None:
            raise InvalidSpecError(
                "give startsequence or starttime, not both", path="$.startsequence"
            )
        await self._make_room(inbox[:-1], caller, colony)
        config = ConsumerConfig(
            name=secrets.token_hex(8),
            filter_subject=req.filter_subject,
            deliver_subject=deliver,
            ack_policy=AckPolicy.NONE,
            max_deliver=1,
            flow_control=True,
            idle_heartbeat=req.heartbeat_s,
            inactive_threshold=req.inactive_s,
            num_replicas=1,
            mem_storage=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        if req.start_sequence:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = req.start_sequence
        elif req.start_time is not None:
            config.deliver_policy = DeliverPolicy.BY_START_TIME
            config.opt_start_time = req.start_time
        info = await self.service.store.js.add_consumer(stream, config)
        self._live.setdefault(inbox[:-1], set()).add(str(info.name))
        return str(info.name)

    async def _make_room(self, member: str, caller: str, colony: str) -> None:
        """Refuse a reader over the bounds, saying which and why."""
        if not self.opens.allow(member):
            raise NotAuthorizedError(
                f"not allowed: {caller!r} in colony {colony!r} opens readers too often; try "
                f"again in {self.opens.wait_s(member):.0f} s"
            )
        if (
            len(self._live.get(member, ())) >= MAX_READERS_PER_CALLER
            or self._total() >= MAX_READERS
        ):
            await self._recount()
        if (held := len(self._live.get(member, ()))) >= MAX_READERS_PER_CALLER:
            raise NotAuthorizedError(
                f"not allowed: {caller!r} in colony {colony!r} has {held} readers open, the "
                f"most one member may; a reader's consumer goes once it has not been listened "
                "to for its inactive time"
            )
        if self._total() >= MAX_READERS:
            raise BrokerUnavailableError(
                f"the broker has {MAX_READERS} readers open, the most it keeps; try again later"
            )

    def _total(self) -> int:
        return sum(len(names) for names in self._live.values())

    async def _recount(self) -> None:
        """What the server still has of the members' consumers (it removes idle ones)."""
        s = self.service.subjects
        js = self.service.store.js
        head = f"_INBOX.{s.prefix}."
        live: dict[str, set[str]] = {}
        for stream in (s.stream_events, s.stream_logs):
            offset = 0
            while True:
                page = await js.consumers_info(stream, offset=offset)
                for info in page:
                    deliver = info.config.deliver_subject or ""
                    if deliver.startswith(head):
                        member = ".".join(deliver.split(".")[:4])  # _INBOX.P.C.N
                        live.setdefault(member, set()).add(str(info.name))
                offset += len(page)
                if len(page) < _PAGE:
                    break
        self._live = live
