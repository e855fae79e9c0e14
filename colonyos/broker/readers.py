"""Consumers for clients that read the events or logs stream in order (``reader_open``).

A member may not create consumers: nats-server checks the filter of a consumer create against
its creator's rights (when the filter is in the subject) but not a push consumer's deliver
subject, so a member allowed to create one could have its colony's messages delivered on any
subject of the account, another colony's control subjects or a ``$KV`` subject among them.
The broker creates the consumer instead, with a filter inside the caller's colony and a
deliver subject inside the caller's own inbox (``_INBOX.<prefix>.<colony>.<caller>.``), and
no acks.
"""

from __future__ import annotations

import secrets

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from colonyos.broker.service import Service
from colonyos.errors import InvalidSpecError, NotAuthorizedError
from colonyos.messages import ReaderOpen
from colonyos.security.permissions import inbox_prefix

__all__ = ["Readers"]


class Readers:
    def __init__(self, service: Service) -> None:
        self.service = service
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
        return str(info.name)
