"""JetStream persistence: the streams, the KV buckets, and every write to them.

The KV bucket ``<prefix>-processes`` is the truth about processes. Every transition is a
compare-and-set on the key's revision followed by one event on the events stream, published
with ``Nats-Msg-Id = <processid>.<revision>`` so that re-publishing after a crash is harmless (the
revision is the bucket's stream sequence: no two writes in the installation share one, so two
colonies' processes of one id never share an event id either).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Literal, TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    RawStreamMsg,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

from colonyos.broker.metrics import BrokerMetrics
from colonyos.broker.publisher import JetStreamPublisher
from colonyos.buckets import StoredValue, latest_values, open_bucket
from colonyos.config import DEFAULT_RETENTION_S
from colonyos.crons.model import Cron
from colonyos.errors import ColoniesError, GraphNotFoundError, ProcessNotFoundError
from colonyos.generators.model import Generator
from colonyos.limits import GENERATOR_ARG_MAX_BYTES, HEADROOM_BYTES, check_record
from colonyos.messages import GraphEvent, Rejection, process_event_body
from colonyos.models import Colony, Executor, Process, ProcessGraph
from colonyos.subjects import GRAPH_TOKEN, REJECTED_TOKEN, Subjects

__all__ = ["GRAPH_RECORD", "ProcessStore", "StaleRevisionError"]

logger = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
_process_decoder = msgspec.json.Decoder(Process)
_executor_decoder = msgspec.json.Decoder(Executor)
_colony_decoder = msgspec.json.Decoder(Colony)
_graph_decoder = msgspec.json.Decoder(ProcessGraph)
_cron_decoder = msgspec.json.Decoder(Cron)
_generator_decoder = msgspec.json.Decoder(Generator)

GRAPH_RECORD = "the process graph record"

# Lifecycle events and logs are kept for the retention (as finished processes are); logs are
# also bounded in size.
LOGS_MAX_BYTES = 1 << 30
# Packed generator arguments wait until a run uses them: bounded, so that a member packing to a
# name no generator uses cannot fill JetStream; when full, a pack is refused (old arguments are
# never dropped to make room).
GENERATOR_ARGS_MAX_BYTES = 256 << 20


def _expect(revision: int) -> dict[str, str]:
    """Compare-and-set: the write is refused unless the key's last revision is this one."""
    return {"Nats-Expected-Last-Subject-Sequence": str(revision)}


T = TypeVar("T")


def _decoded(decoder: msgspec.json.Decoder[T], entry: StoredValue, what: str) -> T | None:
    """A stored value, or None (logged with its key and why) if it does not decode: one bad
    record must not keep a broker from loading the others."""
    try:
        return decoder.decode(entry.value)
    except msgspec.MsgspecError as err:
        logger.error("skipped the stored %s %s: it does not decode (%s)", what, entry.key, err)
        return None


class StaleRevisionError(Exception):
    """Someone else changed the key since it was read; read it again and retry."""


class ProcessStore:
    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        *,
        storage: Literal["file", "memory"] = "file",
        dedup_window_s: float = 120.0,
        replicas: int = 1,
        retention_s: float = DEFAULT_RETENTION_S,
        metrics: BrokerMetrics | None = None,
    ) -> None:
        self.nc = nc
        # Counts what is written (colonyos.broker.metrics), whether or not anyone scrapes.
        self.metrics = metrics if metrics is not None else BrokerMetrics()
        self.js: JetStreamContext = nc.jetstream()
        self.subjects = subjects
        self._storage_kind = storage
        self._storage = StorageType.MEMORY if storage == "memory" else StorageType.FILE
        self._dedup_window_s = dedup_window_s
        self._replicas = replicas
        self._retention_s = retention_s
        self.publisher = JetStreamPublisher(nc)
        # colony_names(): the names as read at the colonies bucket's revision.
        self._colony_names: list[str] = []
        self._names_read_at = -1
        self._unacked: set[asyncio.Future[Any]] = set()
        self._republishing: set[asyncio.Task[None]] = set()
        self._writing = False
        self.processes: KeyValue
        self.executors: KeyValue
        self.colonies: KeyValue
        self.leases: KeyValue
        self.graphs: KeyValue
        self.crons: KeyValue
        self.generators: KeyValue

    async def setup(self) -> None:
        """Create (or update) every stream and bucket. Safe to run from several brokers."""
        s = self.subjects
        await self._stream(
            StreamConfig(
                name=s.stream_specs,
                subjects=[s.specs_filter, s.workflows_filter],
                retention=RetentionPolicy.WORK_QUEUE,
                duplicate_window=self._dedup_window_s,
                storage=self._storage,
                num_replicas=self._replicas,
            )
        )
        await self._stream(
            StreamConfig(
                name=s.stream_events,
                subjects=[s.events_all],
                max_age=self._retention_s,
                # Members read a subject's last event by a direct get, which names the subject
                # (and so can be allowed per colony); an existing stream gets it on update.
                allow_direct=True,
                # JetStream refuses a dedup window longer than the age limit.
                duplicate_window=min(self._dedup_window_s, self._retention_s),
                storage=self._storage,
                num_replicas=self._replicas,
            )
        )
        await self._stream(
            StreamConfig(
                name=s.stream_logs,
                subjects=[s.logs_all],
                max_age=self._retention_s,
                duplicate_window=min(self._dedup_window_s, self._retention_s),
                max_bytes=LOGS_MAX_BYTES,
                discard=DiscardPolicy.OLD,
                allow_direct=True,
                storage=self._storage,
                num_replicas=self._replicas,
            )
        )
        # Arguments packed into generators: kept until a run has used them (the leader purges
        # them then), never for a time; one argument is one message, refused when too big.
        await self._stream(
            StreamConfig(
                name=s.stream_generators,
                subjects=[s.generators_all],
                max_msg_size=GENERATOR_ARG_MAX_BYTES + HEADROOM_BYTES,
                max_bytes=GENERATOR_ARGS_MAX_BYTES,
                discard=DiscardPolicy.NEW,
                duplicate_window=self._dedup_window_s,
                storage=self._storage,
                num_replicas=self._replicas,
            )
        )
        self.processes = await self._bucket(s.bucket_processes, history=8)
        self.executors = await self._bucket(s.bucket_executors, history=1)
        self.colonies = await self._bucket(s.bucket_colonies, history=1)
        self.leases = await self._bucket(s.bucket_leases, history=1)
        self.graphs = await self._bucket(s.bucket_graphs, history=1)
        self.crons = await self._bucket(s.bucket_crons, history=1)
        self.generators = await self._bucket(s.bucket_generators, history=1)
        if not self._writing:
            await self.publisher.start()
            self._writing = True

    async def close(self) -> None:
        if self._writing:
            await self.publisher.stop()
            self._writing = False

    async def _stream(self, config: StreamConfig) -> None:
        try:
            await self.js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await self.js.update_stream(config)

    async def _bucket(self, name: str, history: int) -> KeyValue:
        return await open_bucket(
            self.js, name, storage=self._storage_kind, replicas=self._replicas, history=history
        )

    # -- processes ----------------------------------------------------------------------
    def encoded(self, record: msgspec.Struct, what: str = "the process record") -> bytes:
        """A record's JSON, if the server can store it and send it on as one message (as an
        event, in a reply): every process and graph record written passes here.
        :class:`RecordTooLargeError` with its size and the limit if not."""
        data = _encode(record)
        check_record(len(data), self.nc.max_payload, what)
        return data

    async def create(self, process: Process) -> tuple[int, bytes] | None:
        """Write a new process and publish its event: its revision and JSON, or None if one
        with this id exists already (a duplicate)."""
        key = self.subjects.process_key(process.colony_name, process.process_id)
        subject = self.subjects.kv_subject(self.subjects.bucket_processes, key)
        data = self.encoded(process)
        try:
            revision = await self.publisher.write(subject, data, _expect(0))
        except nats.js.errors.KeyWrongLastSequenceError:
            try:  # nats-py's create also takes a key whose process was removed
                revision = int(await self.processes.create(key, data))
            except nats.js.errors.KeyWrongLastSequenceError:
                return None
        await self._publish_event(process, revision, data)
        self.metrics.created(process)
        return revision, data

    async def get(self, colony: str, process_id: str) -> tuple[Process, int]:
        key = self.subjects.process_key(colony, process_id)
        try:
            entry = await self.processes.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            raise ProcessNotFoundError(process_id) from None
        except nats.js.errors.InvalidKeyError:
            raise ProcessNotFoundError(process_id) from None
        try:
            return _process_decoder.decode(entry.value or b""), int(entry.revision or 0)
        except msgspec.MsgspecError as err:
            raise ColoniesError(
                f"the stored process {process_id} cannot be read: {err}", process_id=process_id
            ) from None

    async def update(self, process: Process, revision: int) -> tuple[int, bytes]:
        """Compare-and-set the process written at ``revision`` and publish its event: the new
        revision and the JSON written. :class:`StaleRevisionError` if it changed since."""
        key = self.subjects.process_key(process.colony_name, process.process_id)
        subject = self.subjects.kv_subject(self.subjects.bucket_processes, key)
        data = self.encoded(process)
        try:
            new_revision = await self.publisher.write(subject, data, _expect(revision))
        except nats.js.errors.KeyWrongLastSequenceError as err:
            raise StaleRevisionError(process.process_id) from err
        await self._publish_event(process, new_revision, data)
        return new_revision, data

    async def purge_process(self, process: Process) -> None:
        """Remove a process for good: its record with its whole history (no delete marker is
        left behind), and its log."""
        s = self.subjects
        key = s.process_key(process.colony_name, process.process_id)
        await self.js.purge_stream(
            s.kv_stream(s.bucket_processes), subject=s.kv_subject(s.bucket_processes, key)
        )
        await self.js.purge_stream(
            s.stream_logs, subject=s.logs(process.colony_name, process.process_id)
        )

    async def purge_graph(self, graph: ProcessGraph) -> None:
        s = self.subjects
        key = s.process_key(graph.colony_name, graph.process_graph_id)
        await self.js.purge_stream(
            s.kv_stream(s.bucket_graphs), subject=s.kv_subject(s.bucket_graphs, key)
        )

    async def purge_colony(self, colony: str) -> None:
        """Everything stored under a colony's name: processes, graphs, executors, crons,
        generators and their packed arguments, logs, events and the submissions not yet
        taken."""
        s = self.subjects
        every_key = s.process_key(colony, "*")
        buckets = (
            s.bucket_processes,
            s.bucket_graphs,
            s.bucket_executors,
            s.bucket_crons,
            s.bucket_generators,
        )
        for bucket in buckets:
            await self.js.purge_stream(s.kv_stream(bucket), subject=s.kv_subject(bucket, every_key))
        await self.js.purge_stream(s.stream_generators, subject=s.generator(colony, "*"))
        await self.js.purge_stream(s.stream_logs, subject=s.logs(colony, "*"))
        await self.js.purge_stream(s.stream_events, subject=s.events_filter(colony=colony))
        await self.js.purge_stream(s.stream_specs, subject=s.specs(colony, "*"))
        await self.js.purge_stream(s.stream_specs, subject=s.workflows(colony))

    async def all_processes(
        self, colony: str | None = None
    ) -> AsyncIterator[tuple[Process, int, datetime | None]]:
        """Every stored process (of ``colony`` if given): latest revision, and when that
        revision was written (a value that does not decode is logged and skipped)."""
        async for entry in self._snapshot(self.processes, colony):
            process = _decoded(_process_decoder, entry, "process")
            if process is not None:
                yield process, entry.revision, entry.created

    def _event_subject(self, process: Process) -> str:
        return self.subjects.event(
            process.colony_name, process.executor_type, process.state.token, process.process_id
        )

    async def _publish_event(
        self, process: Process, revision: int, data: bytes, *, wait: bool = False
    ) -> None:
        """Publish a transition's event (``data``: the process's JSON as written to KV; the
        event body is the same bytes tagged ``kind: process``).

        By default the acknowledgement is not waited for: events leave on one connection in
        order, and one that is not acknowledged is published again in the background (its id
        makes that harmless). A leader that takes over checks the last revisions it loads, so
        a crash before the acknowledgement loses no event either.
        """
        headers = {"Nats-Msg-Id": f"{process.process_id}.{revision}"}
        body = process_event_body(data)
        if wait:
            await self.publisher.write(self._event_subject(process), body, headers)
            return
        ack = await self.publisher.publish(self._event_subject(process), body, headers)
        self._unacked.add(ack)
        ack.add_done_callback(lambda f: self._acked(f, process, revision))

    def _acked(self, ack: asyncio.Future[Any], process: Process, revision: int) -> None:
        self._unacked.discard(ack)
        if ack.cancelled() or ack.exception() is None:
            return
        logger.warning(
            "event %s.%d not acknowledged; sending it again", process.process_id, revision
        )
        task = asyncio.get_running_loop().create_task(self._republish(process, revision))
        self._republishing.add(task)
        task.add_done_callback(self._republishing.discard)

    async def _republish(self, process: Process, revision: int) -> None:
        try:
            await self.ensure_event(process, revision)
        except (nats.errors.Error, TimeoutError) as err:
            logger.error("event %s.%d lost for now: %s", process.process_id, revision, err)

    async def settle(self, timeout: float = 5.0) -> None:
        """Wait for outstanding event acknowledgements (before stepping down)."""
        pending = set(self._unacked) | set(self._republishing)
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def ensure_event(self, process: Process, revision: int) -> bool:
        """Publish the event of this revision unless it is stored; True if it had to.

        Used for revisions written by a broker that may have died before publishing.
        """
        try:
            last = await self.js.get_last_msg(
                self.subjects.stream_events, self._event_subject(process)
            )
        except nats.js.errors.NotFoundError:
            last = None
        if last is not None and (last.headers or {}).get("Nats-Msg-Id") == (
            f"{process.process_id}.{revision}"
        ):
            return False
        await self._publish_event(process, revision, _encode(process), wait=True)
        return True

    async def last_event_time(self, colony: str | None = None) -> datetime | None:
        """When the last event (of ``colony`` if given) was stored; None if none is."""
        s = self.subjects
        wanted = s.events_all if colony is None else s.events_filter(colony=colony)
        try:
            last = await self.js.get_last_msg(s.stream_events, wanted)
        except nats.js.errors.NotFoundError:
            return None
        return last.time

    async def logs_dropped_before(self) -> datetime | None:
        """When the oldest line the logs stream keeps was written, if older ones were dropped
        (its size limit, its age limit, or a purge); None if none were."""
        stream = self.subjects.stream_logs
        try:
            first = (await self.js.stream_info(stream)).state.first_seq
            if first <= 1:
                return None
            return (await self.js.get_msg(stream, seq=first)).time
        except nats.js.errors.NotFoundError:
            return None

    async def tell(self, subject: str, message: msgspec.Struct) -> None:
        """A core NATS message, not stored (to executors on their control subject)."""
        with contextlib.suppress(nats.errors.Error):
            await self.nc.publish(subject, _encode(message))

    async def reject(
        self, colony: str, executor_type: str, item_id: str, err: ColoniesError
    ) -> None:
        """A submission that did not become a process (or graph): say why, as an event."""
        await self.publish_rejection(
            Rejection(
                process_id=item_id,
                colony_name=colony,
                executor_type=executor_type,
                error=err.message,
                code=err.code,
                path=str(err.detail.get("path", "")),
            )
        )

    async def publish_rejection(self, rejection: Rejection) -> None:
        subject = self.subjects.event(
            rejection.colony_name, rejection.executor_type, REJECTED_TOKEN, rejection.process_id
        )
        await self.js.publish(subject, _encode(rejection))
        self.metrics.rejected(rejection.colony_name, rejection.executor_type)

    # -- process graphs -----------------------------------------------------------------
    def _graph_key(self, graph: ProcessGraph) -> str:
        return self.subjects.process_key(graph.colony_name, graph.process_graph_id)

    async def create_graph(self, graph: ProcessGraph) -> int | None:
        data = self.encoded(graph, GRAPH_RECORD)
        try:
            return int(await self.graphs.create(self._graph_key(graph), data))
        except nats.js.errors.KeyWrongLastSequenceError:
            return None

    async def get_graph(self, colony: str, graph_id: str) -> tuple[ProcessGraph, int]:
        key = self.subjects.process_key(colony, graph_id)
        try:
            entry = await self.graphs.get(key)
        except (
            nats.js.errors.KeyNotFoundError,
            nats.js.errors.KeyDeletedError,
            nats.js.errors.InvalidKeyError,
        ):
            raise GraphNotFoundError(graph_id) from None
        try:
            return _graph_decoder.decode(entry.value or b""), int(entry.revision or 0)
        except msgspec.MsgspecError as err:
            raise ColoniesError(
                f"the stored process graph {graph_id} cannot be read: {err}",
                process_graph_id=graph_id,
            ) from None

    async def update_graph(self, graph: ProcessGraph, revision: int) -> int:
        data = self.encoded(graph, GRAPH_RECORD)
        try:
            return int(await self.graphs.update(self._graph_key(graph), data, last=revision))
        except nats.js.errors.KeyWrongLastSequenceError as err:
            raise StaleRevisionError(graph.process_graph_id) from err

    async def publish_graph_event(self, graph: ProcessGraph) -> None:
        """``<prefix>.<colony>.events._graph.<state>.<graphid>``: the graph's state changed."""
        subject = self.subjects.event(
            graph.colony_name, GRAPH_TOKEN, graph.state.token, graph.process_graph_id
        )
        await self.js.publish(subject, _encode(GraphEvent.of(graph)))

    async def all_graphs(
        self, colony: str | None = None
    ) -> AsyncIterator[tuple[ProcessGraph, int]]:
        async for entry in self._snapshot(self.graphs, colony):
            graph = _decoded(_graph_decoder, entry, "process graph")
            if graph is not None:
                yield graph, entry.revision

    # -- executors and colonies ---------------------------------------------------------
    async def put_executor(self, executor: Executor) -> None:
        key = self.subjects.executor_key(executor.colony_name, executor.executor_name)
        await self.executors.put(key, _encode(executor))

    async def delete_executor(self, executor: Executor) -> None:
        key = self.subjects.executor_key(executor.colony_name, executor.executor_name)
        await self.executors.delete(key)

    async def all_executors(self, colony: str | None = None) -> AsyncIterator[Executor]:
        async for entry in self._snapshot(self.executors, colony):
            executor = _decoded(_executor_decoder, entry, "executor")
            if executor is not None:
                yield executor

    async def put_colony(self, colony: Colony) -> None:
        await self.colonies.put(colony.name, _encode(colony))

    async def delete_colony(self, colony: Colony) -> None:
        await self.colonies.delete(colony.name)

    async def get_colony(self, name: str) -> Colony | None:
        """The colony's record; None if there is none (or it does not decode)."""
        try:
            entry = await self.colonies.get(name)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        if not entry.value:
            return None
        stored = StoredValue(name, entry.value, entry.revision or 0, None)
        return _decoded(_colony_decoder, stored, "colony")

    async def all_colonies(self) -> AsyncIterator[Colony]:
        async for entry in self._snapshot(self.colonies):
            colony = _decoded(_colony_decoder, entry, "colony")
            if colony is not None:
                yield colony

    async def colony_names(self) -> list[str]:
        """The names of every colony, read again only when the bucket has changed since the
        last read (a broker looks at them every third of a lease term)."""
        revision = (await self.colonies.status()).stream_info.state.last_seq
        if revision != self._names_read_at:
            self._colony_names = [c.name async for c in self.all_colonies()]
            self._names_read_at = revision
        return list(self._colony_names)

    async def all_crons(self, colony: str | None = None) -> AsyncIterator[tuple[Cron, int]]:
        async for entry in self._snapshot(self.crons, colony):
            cron = _decoded(_cron_decoder, entry, "cron")
            if cron is not None:
                yield cron, entry.revision

    async def all_generators(
        self, colony: str | None = None
    ) -> AsyncIterator[tuple[Generator, int]]:
        async for entry in self._snapshot(self.generators, colony):
            generator = _decoded(_generator_decoder, entry, "generator")
            if generator is not None:
                yield generator, entry.revision

    # -- packed arguments -------------------------------------------------------------------
    async def packed_after(self, colony: str, name: str, seq: int) -> RawStreamMsg | None:
        """The first argument packed into the generator after stream sequence ``seq``, or
        None if there is none yet."""
        try:
            return await self.js.get_msg(
                self.subjects.stream_generators,
                seq=seq + 1,
                subject=self.subjects.generator(colony, name),
                next=True,
            )
        except nats.js.errors.NotFoundError:
            return None

    async def packed_last_seq(self) -> int:
        """The sequence of the last argument packed into any generator (0: none yet)."""
        return int((await self.js.stream_info(self.subjects.stream_generators)).state.last_seq)

    async def purge_packed(self, colony: str, name: str, through: int | None = None) -> None:
        """Drop the arguments packed into the generator, up to sequence ``through`` (all of
        them when None)."""
        s = self.subjects
        await self.js.purge_stream(
            s.stream_generators,
            subject=s.generator(colony, name),
            seq=None if through is None else through + 1,
        )

    def _snapshot(self, kv: KeyValue, colony: str | None = None) -> AsyncIterator[StoredValue]:
        """Every key's latest value; only ``colony``'s keys (``<colony>.…``) if given."""
        return latest_values(self.js, kv, f"{colony}." if colony is not None else "")
