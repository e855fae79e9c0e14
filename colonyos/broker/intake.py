"""Turning submitted specs into processes.

A spec is acked only after its process is in KV and its ``waiting`` event is stored, so a
broker that dies half-way gets the spec again; KV *create* makes the second attempt find the
process instead of making another, and the event's ``Nats-Msg-Id`` makes its re-publication
harmless.

Each message is accepted on its own: whatever a spec or a workflow does to the code that
turns it into processes, that one message is answered with a ``rejected`` event naming the
reason and acked. Only trouble with NATS itself leaves it unacked, to be delivered again
(after the consumer's backoff); its last delivery (``limits.SPEC_DELIVERIES``) is rejected with
the reason rather than tried again or dropped in silence.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from datetime import datetime

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

from colonyos import limits
from colonyos.broker import transitions
from colonyos.broker.service import Service
from colonyos.broker.workflows import Workflows
from colonyos.errors import (
    ColoniesError,
    ColonyNotFoundError,
    InvalidSpecError,
    ProcessExistsError,
)
from colonyos.models import Process, ProcessState, now
from colonyos.specs import decode_function_spec
from colonyos.subjects import GRAPH_TOKEN

__all__ = ["Intake"]

logger = logging.getLogger(__name__)


_TROUBLES_KEPT = 10_000
# NATS errors that a message causes itself: answered at once, never worth another delivery.
_MESSAGE_FAULTS = (nats.errors.MaxPayloadError, nats.js.errors.BadRequestError)


def _is_process_id(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _is_nats_trouble(err: BaseException) -> bool:
    """Did NATS fail (gone, slow, busy), rather than the message?"""
    if isinstance(err, _MESSAGE_FAULTS):
        return False
    return isinstance(err, TimeoutError | nats.errors.Error)


def _describe(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class Intake:
    def __init__(
        self, service: Service, workflows: Workflows, opened: dict[str, int] | None = None
    ) -> None:
        self.service = service
        self.workflows = workflows
        self.store = service.store
        # Colony -> the stream sequence at or before which its submissions came before it
        # was added (see colonyos.broker.colonyfeeds): refused as for a colony not there.
        self.opened = opened if opened is not None else {}
        self._last_ns = 0
        # Stream sequence -> what went wrong with NATS on the message's last delivery, told
        # in the rejection should its last delivery come.
        self._troubles: dict[int, str] = {}

    def _clock(self) -> tuple[datetime, int]:
        """Wall time, with nanoseconds strictly increasing so that FIFO order is total."""
        t = now()
        ns = max(time.time_ns(), self._last_ns + 1)
        self._last_ns = ns
        return t, ns

    async def accept_batch(self, msgs: Sequence[Msg]) -> None:
        # Stamp in stream order first, so that equal priorities stay first-in-first-out.
        stamped = [(msg, *self._clock()) for msg in msgs]
        await asyncio.gather(*(self._accept_one(msg, t, ns) for msg, t, ns in stamped))

    async def _accept_one(self, msg: Msg, t: datetime, ns: int) -> None:
        """One message, isolated from the others and from the broker: only NATS trouble
        leaves it to be delivered again (and is raised, to be logged once per batch)."""
        seq = msg.metadata.sequence.stream
        delivered = msg.metadata.num_delivered
        if delivered >= limits.SPEC_DELIVERIES:
            last = self._troubles.pop(seq, "the broker stopped or failed on it each time")
            reason = f"not accepted in {delivered} deliveries; the last attempt: {last}"
            await self._give_up(msg, ColoniesError(reason), last_delivery=True)
            return
        colony = self.service.subjects.submission_colony(msg.subject)
        if seq <= self.opened.get(colony, 0):
            await self._give_up(msg, ColonyNotFoundError(colony))
            return
        try:
            if msg.subject.endswith(".workflows"):
                await self.workflows.accept(msg, t, ns)
            else:
                await self.accept(msg, t, ns)
        except Exception as err:
            if _is_nats_trouble(err):
                if len(self._troubles) < _TROUBLES_KEPT:
                    self._troubles[seq] = _describe(err)
                raise  # unacked: delivered again after the consumer's backoff
            logger.exception("accepting %s (stream sequence %d) failed", msg.subject, seq)
            await self._give_up(msg, ColoniesError(f"the broker failed on it: {_describe(err)}"))
        else:
            self._troubles.pop(seq, None)

    async def _give_up(self, msg: Msg, err: ColoniesError, *, last_delivery: bool = False) -> None:
        """Reject a message with the reason, and never deliver it again."""
        self._troubles.pop(msg.metadata.sequence.stream, None)
        parts = msg.subject.split(".")
        if msg.subject.endswith(".workflows"):
            colony, kind, item_id = parts[-2], GRAPH_TOKEN, self.workflows.graph_id(msg)
        else:
            colony, kind, item_id = parts[-3], parts[-1], self._process_id(msg)
        logger.warning("rejected %s in colony %s: %s", item_id, colony, err.message)
        try:
            await self.store.reject(colony, kind, item_id, err)
        except (nats.errors.Error, TimeoutError) as trouble:
            if not last_delivery:
                raise  # delivered again: the rejection is sent then
            logger.error("the rejection of %s could not be sent either: %s", item_id, trouble)
        await (msg.term() if last_delivery else msg.ack())

    async def accept(self, msg: Msg, t: datetime, ns: int) -> None:
        parts = msg.subject.split(".")
        colony, executor_type = parts[-3], parts[-1]
        process_id = self._process_id(msg)
        try:
            process = self._new_process(msg, colony, executor_type, process_id, t, ns)
            written = await self.store.create(process)
        except ColoniesError as err:
            logger.info("rejected spec %s in colony %s: %s", process_id, colony, err.message)
            await self.store.reject(colony, executor_type, process_id, err)
            await msg.ack()
            return
        if written is None:
            await self._accept_duplicate(colony, executor_type, process_id)
        else:
            await self.service.admit(process, *written)
        await msg.ack()

    def _process_id(self, msg: Msg) -> str:
        msg_id = (msg.headers or {}).get("Nats-Msg-Id", "")
        if _is_process_id(msg_id):
            return msg_id
        # No usable id from the publisher: derive one from the stream position, so that a
        # redelivery after a broker crash gives the same process, never a second one.
        seq = msg.metadata.sequence.stream
        basis = f"{self.service.subjects.stream_specs}:{seq}:{msg_id}".encode()
        return hashlib.sha256(basis).hexdigest()

    def _new_process(
        self, msg: Msg, colony: str, executor_type: str, process_id: str, t: datetime, ns: int
    ) -> Process:
        if not self.service.leads(colony):
            raise ColonyNotFoundError(colony)
        spec = decode_function_spec(msg.data)
        cond = spec.conditions
        if cond.executor_type != executor_type:
            raise InvalidSpecError(
                f"$.conditions.executortype: {cond.executor_type!r} does not match the subject's "
                f"executor type {executor_type!r}",
                path="$.conditions.executortype",
            )
        if cond.colony_name and cond.colony_name != colony:
            raise InvalidSpecError(
                f"$.conditions.colonyname: {cond.colony_name!r} does not match the subject's "
                f"colony {colony!r}",
                path="$.conditions.colonyname",
            )
        spec = msgspec.structs.replace(
            spec, conditions=msgspec.structs.replace(cond, colony_name=colony)
        )
        initiator = (msg.headers or {}).get("Colonies-Initiator", "")
        return transitions.create(process_id, spec, now=t, now_ns=ns, initiator_name=initiator)

    async def _accept_duplicate(self, colony: str, executor_type: str, process_id: str) -> None:
        """A spec whose process exists: a redelivery after a crash, or a re-submission."""
        process, revision = await self.store.get(colony, process_id)
        if process.state is ProcessState.WAITING and process.retries == 0:
            # Maybe the broker died between create and event: the event id makes this idempotent.
            await self.store.ensure_event(process, revision)
        else:
            # Submitted again after JetStream's dedup window: the process stays as it is, and
            # the submitter is told so (the client then returns the existing process).
            await self.store.reject(
                colony, executor_type, process_id, ProcessExistsError(process_id, process.state)
            )
        await self.service.admit(process, revision)
