"""The async client used by the CLI, by executors and by user code.

    async with await Client.connect(Settings.from_env()) as client:
        process = await client.submit(spec)
        done = await client.wait(process.process_id, timeout=30)

Submitting publishes the spec to JetStream (the broker need not be up to accept it); every
other operation is a request to the broker. nats-py errors never leak out of this module: they
become :mod:`colonyos.errors` classes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, TypeVar

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from colonyos import limits
from colonyos.config import Settings, default_caller
from colonyos.connection import (
    closed_error,
    connect_nats,
    denied,
    not_allowed,
    refusal,
    refused_at_once,
)
from colonyos.errors import (
    AssignTimeoutError,
    BrokerUnavailableError,
    ColoniesError,
    ConflictError,
    ErrorReply,
    InvalidSpecError,
    NotAuthorizedError,
    ProcessExistsError,
)
from colonyos.events import EventStream, ProcessWatch, read_logs
from colonyos.graphs import check_workflow, node_process_id
from colonyos.ids import check_id_prefix, is_full_id
from colonyos.messages import (
    AddChild,
    Assign,
    Close,
    ColonyAdd,
    Empty,
    ExecutorInfo,
    Explanation,
    Fail,
    GraphEvent,
    GraphRef,
    Heartbeat,
    Instance,
    ListGraphs,
    ListProcesses,
    LogLines,
    MemberAdd,
    Named,
    Outcome,
    ProcessEvent,
    ProcessRef,
    ReaderOpen,
    Register,
    Rejection,
    Release,
    RemoveAll,
    Removed,
    Reply,
    Resolve,
    Results,
    Stats,
)
from colonyos.models import (
    Colony,
    Executor,
    FunctionSpec,
    LogEntry,
    Process,
    ProcessGraph,
    ProcessState,
    WorkflowSpec,
)
from colonyos.security.claim import ConnectClaim
from colonyos.security.keys import Identity, default_identity_path, load_identity
from colonyos.security.members import Member
from colonyos.security.permissions import inbox_prefix, server_inbox_prefix
from colonyos.specs import check_function_spec
from colonyos.subjects import SERVER_SCOPE, Subjects, check_name

__all__ = ["Client"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_encode = msgspec.json.Encoder().encode
_reply_decoder = msgspec.json.Decoder(Reply)

# Seconds an assign reply may lag behind the assign timeout before it counts as lost.
_ASSIGN_MARGIN_S = 5.0
# A prioritytime as wide as JSON writes one, for the largest a process record can be.
_WIDEST_INT64 = -(2**63)


def _identity(settings: Settings) -> Identity | None:
    """The seed named by the settings (which must exist), else the default identity file if
    there is one (and the URL names no user of its own); None: connect without an identity."""
    if settings.identity is not None:
        return load_identity(settings.identity)
    if "@" in settings.nats_url:  # credentials in the URL: the server's own users, not keys
        return None
    default = default_identity_path()
    return load_identity(default) if default.exists() else None


def _new_id() -> str:
    return secrets.token_hex(32)


def _checked(settings: Settings, caller: str) -> tuple[str, str, Subjects]:
    """The colony, the caller and the subjects, each a valid subject token (else
    :class:`InvalidNameError` naming which)."""
    return (
        check_name("colony", settings.colony),
        check_name("caller", caller),
        Subjects(settings.prefix),
    )


class Client:
    """One NATS connection, speaking for one caller (a user or an executor) in one colony."""

    def __init__(
        self,
        nc: NATS,
        settings: Settings,
        caller: str,
        identity: Identity | None = None,
        *,
        keep_trying: bool = False,
    ) -> None:
        self.nc = nc
        # Refused by the server, the connection keeps trying (else it is closed).
        self.keep_trying = keep_trying
        self.js = nc.jetstream()
        self.settings = settings
        self.colony, self.caller, self.subjects = _checked(settings, caller)
        # The key this connection proved it holds; its rights were decided when it connected.
        self.identity = identity

    @property
    def secure(self) -> bool:
        """Did the server ask this connection to prove its key (a secure installation)?"""
        info: dict[str, Any] = getattr(self.nc, "_server_info", {}) or {}
        return self.identity is not None and bool(info.get("auth_required"))

    @classmethod
    async def connect(
        cls,
        settings: Settings | None = None,
        *,
        caller: str | None = None,
        name: str = "colonies",
        executor: bool = False,
        keep_trying: bool = False,
    ) -> Client:
        """Connect as ``caller`` (default: the settings' caller, else the login name) in the
        settings' colony. ``executor``: an executor's connection, which on a secure
        installation may take a free name to register under. Should the server later refuse
        the identity (removed, rejected), the connection closes and what is asked next says
        why; ``keep_trying``: it keeps trying instead, slower and slower (an executor)."""
        settings = settings or Settings.from_env()
        caller = caller or settings.caller or default_caller()
        colony, caller, _ = _checked(settings, caller)  # not a subject token: say so first
        identity = _identity(settings)
        claim = ConnectClaim(prefix=settings.prefix, colony=colony, name=caller, executor=executor)
        nc = await connect_nats(
            settings.nats_url,
            name=name,
            seed=identity.seed if identity is not None else None,
            token=claim.token() if identity is not None else None,
            inbox_prefix=inbox_prefix(settings.prefix, colony, caller),
            tls_ca=settings.tls_ca,
            who=f"{caller!r} in colony {colony!r}"
            + (f" (key {identity.public_key})" if identity is not None else ""),
            executor=executor,
            on_refused="back_off" if keep_trying else "stop",
        )
        return cls(nc, settings, caller, identity, keep_trying=keep_trying)

    async def aclose(self) -> None:
        try:
            await self.nc.drain()
        except nats.errors.ConnectionClosedError:
            pass
        except nats.errors.ConnectionReconnectingError:
            # NATS is away: nothing can be drained; stop reconnecting (what was still to be
            # written is lost with the connection).
            with contextlib.suppress(OSError, nats.errors.Error):
                await self.nc.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- plumbing -----------------------------------------------------------------------
    async def _refusal(self, what: str, subject: str, colony: str) -> ColoniesError:
        """Why the server refused: no such colony (a server owner may connect), else the role."""
        if colony != SERVER_SCOPE:
            with contextlib.suppress(NotAuthorizedError, BrokerUnavailableError):
                await self.colony_get(colony)  # ColonyNotFoundError says what is wrong
        return not_allowed(what, self.caller, colony, subject)

    def _unless_refused(self) -> None:
        """Raise why the server refuses this connection, if it does (a removed member) and
        the connection does not keep trying."""
        if not self.keep_trying and refusal(self.nc) is not None:
            raise closed_error(self.nc)

    async def _request(
        self,
        op: str,
        body: msgspec.Struct,
        result_type: type[T],
        *,
        colony: str | None = None,
        timeout: float | None = None,
    ) -> T | None:
        scope = colony or self.colony
        subject = self.subjects.rpc(scope, self.caller, op)
        timeout = timeout or self.settings.request_timeout_s
        try:
            asking = self._ask(scope, subject, _encode(body), timeout)
            msg = await refused_at_once(self.nc, subject, asking)
        except nats.errors.NoRespondersError as err:
            raise BrokerUnavailableError(
                "no broker is answering: start one with 'colonies server start' or "
                "'colonies broker start'"
            ) from err
        except nats.errors.TimeoutError as err:
            if denied(self.nc, subject):
                raise await self._refusal(op, subject, scope) from err
            self._unless_refused()
            raise BrokerUnavailableError(f"the broker did not answer {op!r} in time") from err
        except nats.errors.MaxPayloadError as err:
            raise InvalidSpecError(f"{op} request is too large for the server: {err}") from err
        except nats.errors.ConnectionClosedError as err:
            self._unless_refused()
            raise BrokerUnavailableError("the connection to NATS is closed") from err
        reply = _reply_decoder.decode(msg.data)
        if reply.error is not None:
            raise ColoniesError.from_reply(reply.error)
        if reply.is_empty:
            return None
        return msgspec.json.decode(reply.result, type=result_type)

    async def _ask(self, scope: str, subject: str, data: bytes, timeout: float) -> Msg:
        """One request. A server operation's answer comes in the server owner's inbox on the
        server scope, not in this connection's colony inbox (permissions.server_inbox_prefix)."""
        if scope != SERVER_SCOPE:
            return await self.nc.request(subject, data, timeout=timeout)
        inbox = f"{server_inbox_prefix(self.settings.prefix, self.caller)}.{secrets.token_hex(11)}"
        sub = await self.nc.subscribe(inbox, max_msgs=1)
        try:
            await self.nc.publish(subject, data, reply=inbox)
            msg = await sub.next_msg(timeout=timeout)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        if msg.headers and msg.headers.get("Status") == "503":
            raise nats.errors.NoRespondersError
        return msg

    async def _must(self, op: str, body: msgspec.Struct, result_type: type[T], **kw: Any) -> T:
        result = await self._request(op, body, result_type, **kw)
        if result is None:
            raise ColoniesError(f"the broker sent an empty answer to {op!r}")
        return result

    # -- submitting ---------------------------------------------------------------------
    async def submit(
        self,
        spec: FunctionSpec,
        *,
        process_id: str | None = None,
        confirm: bool = True,
        timeout: float | None = None,
    ) -> Process | str:
        """Submit a function spec; returns the created process (or its id without confirm).

        The target colony is ``spec.conditions.colonyname`` if set, else the client's colony.
        With ``confirm`` the call waits until the broker has created the process, and raises
        the broker's reason if it rejected the spec.
        """
        spec = check_function_spec(spec)
        colony = spec.conditions.colony_name or self.colony
        pid = process_id or _new_id()
        self._check_record(self._process_of(spec, pid, colony))
        subject = self.subjects.specs(colony, spec.conditions.executor_type)
        data = _encode(spec)
        if not confirm:
            await self._publish_spec(subject, data, pid, colony)
            return pid
        async with self.watch(pid, colony=colony) as watch:
            ack = await self._publish_spec(subject, data, pid, colony)
            if ack.duplicate:
                return await self.get(pid, colony=colony)
            try:
                async with asyncio.timeout(timeout or self.settings.request_timeout_s * 2):
                    first = await watch.next(None)
                    while not isinstance(first, ProcessEvent | Rejection):
                        first = await watch.next(None)  # not about this submission: skip
            except TimeoutError:
                raise BrokerUnavailableError(
                    f"process {pid} is submitted (JetStream has the spec) but no broker has "
                    "made it a process yet; it will be, once one runs",
                    process_id=pid,
                ) from None
            if isinstance(first, Rejection):
                if first.code == ProcessExistsError.code:
                    return await self.get(pid, colony=colony)  # idempotent: the same process
                raise ColoniesError.from_reply(_rejection_reply(first))
            return first.process()

    async def submit_many(self, specs: list[FunctionSpec]) -> list[str]:
        """Submit many specs at once, pipelined; returns their process ids once JetStream has
        acknowledged every one (the broker makes them processes shortly after)."""
        acks = []
        pids = []
        # Every spec is checked before any is sent: one bad spec refuses them all.
        specs = [check_function_spec(spec, f"$[{i}]") for i, spec in enumerate(specs)]
        planned = [(spec, _new_id()) for spec in specs]
        for i, (spec, pid) in enumerate(planned):
            colony = spec.conditions.colony_name or self.colony
            self._check_record(self._process_of(spec, pid, colony), f"$[{i}]: the process record")
        for spec, pid in planned:
            colony = spec.conditions.colony_name or self.colony
            headers = self._submit_headers(pid)
            subject = self.subjects.specs(colony, spec.conditions.executor_type)
            try:
                acks.append(await self.js.publish_async(subject, _encode(spec), headers=headers))
            except nats.errors.MaxPayloadError as err:
                raise InvalidSpecError(f"a spec is too large for the server: {err}") from err
            pids.append(pid)
        try:
            async with asyncio.timeout(self.settings.request_timeout_s * 2):
                await asyncio.gather(*acks)
        except (TimeoutError, nats.errors.Error) as err:
            raise BrokerUnavailableError(
                f"JetStream did not acknowledge every spec: {err}"
            ) from err
        return pids

    def _process_of(self, spec: FunctionSpec, pid: str, colony: str, **graph: Any) -> Process:
        """The process the broker would make of ``spec``, at its largest (the widest priority
        time), to know before sending whether the server could store it."""
        t = datetime.now(UTC)
        cond = msgspec.structs.replace(spec.conditions, colony_name=colony)
        return Process(
            process_id=pid,
            initiator_name=self.caller,
            priority_time=_WIDEST_INT64,
            submission_time=t,
            wait_deadline=t,
            spec=msgspec.structs.replace(spec, conditions=cond),
            **graph,
        )

    def _check_record(self, record: msgspec.Struct, what: str = "the process record") -> None:
        """:class:`RecordTooLargeError`, naming the size and the server's limit, for a record
        the server could not store: refused here rather than rejected by the broker."""
        limits.check_record(len(_encode(record)), self.nc.max_payload, what)

    def _submit_headers(self, item_id: str) -> dict[str, str]:
        """The id makes a re-publication harmless; the initiator is recorded on the process."""
        return {"Nats-Msg-Id": item_id, "Colonies-Initiator": self.caller}

    async def _publish_spec(self, subject: str, data: bytes, pid: str, colony: str) -> Any:
        headers = self._submit_headers(pid)
        try:
            publishing = self.js.publish(subject, data, headers=headers)
            return await refused_at_once(self.nc, subject, publishing)
        except nats.errors.MaxPayloadError as err:
            raise InvalidSpecError(
                f"the spec is {len(data)} bytes, more than the server accepts "
                f"({self.nc.max_payload} bytes)",
                size=len(data),
                max_payload=self.nc.max_payload,
            ) from err
        except nats.js.errors.NoStreamResponseError as err:
            raise BrokerUnavailableError(
                "no JetStream stream takes specs yet: has a broker ever started on this server?"
            ) from err
        except nats.errors.TimeoutError as err:
            if denied(self.nc, subject):
                raise await self._refusal("submit", subject, colony) from err
            raise BrokerUnavailableError("JetStream did not acknowledge the spec in time") from err

    def watch(self, process_id: str, *, colony: str | None = None) -> ProcessWatch:
        """Subscribe to one process's (or graph's) events; use before acting, so nothing is
        missed. Bodies this version cannot read are logged and skipped."""
        return ProcessWatch(self, colony or self.colony, process_id)

    async def wait(
        self,
        process_id: str,
        state: ProcessState | None = None,
        *,
        timeout: float = 60.0,
        colony: str | None = None,
    ) -> Process:
        """Wait until the process ends (SUCCESS, FAILED or CANCELLED), or reaches ``state``.

        It subscribes before it looks, so a transition just before the call is not missed, and
        it rides out a broker fail-over: while no broker answers, it keeps listening.
        """
        if state is not None:
            return await self.wait_for_state(process_id, state, timeout=timeout)
        async with self.watch(process_id, colony=colony) as watch, asyncio.timeout(timeout):
            process = await self._get_patiently(process_id, colony)
            while not process.state.is_terminal:
                event = await watch.next(None)
                if isinstance(event, ProcessEvent):
                    process = event.process()
            return process

    async def _get_patiently(self, process_id: str, colony: str | None) -> Process:
        delay = 0.1
        while True:
            try:
                return await self.get(process_id, colony=colony)
            except BrokerUnavailableError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    # -- workflows ------------------------------------------------------------------------
    async def submit_workflow(
        self,
        workflow: WorkflowSpec,
        *,
        graph_id: str | None = None,
        confirm: bool = True,
        timeout: float | None = None,
    ) -> ProcessGraph | str:
        """Submit a workflow; returns its process graph (or the graph id without confirm).

        The workflow is checked here first (each spec as :meth:`submit` checks it, names,
        dependencies, cycles, sizes), so mistakes are reported before anything is sent; the
        broker checks again.
        """
        checked = [check_function_spec(s, f"$[{i}]") for i, s in enumerate(workflow.function_specs)]
        workflow = msgspec.structs.replace(workflow, function_specs=checked)
        check_workflow(workflow)
        colony = workflow.colony_name or self.colony
        gid = graph_id or _new_id()
        self._check_workflow_records(workflow, gid, colony)
        subject = self.subjects.workflows(colony)
        data = _encode(msgspec.structs.replace(workflow, colony_name=colony))
        limits.check_record(len(data), self.nc.max_payload, "the workflow")
        if not confirm:
            await self._publish_spec(subject, data, gid, colony)
            return gid
        # Created: the first node's process (or the graph) has an event; refused: the graph
        # id has a rejection.
        async with ProcessWatch(self, colony, node_process_id(gid, 0), gid) as watch:
            ack = await self._publish_spec(subject, data, gid, colony)
            if not ack.duplicate:
                try:
                    async with asyncio.timeout(timeout or self.settings.request_timeout_s * 2):
                        event = await watch.next(None)
                except TimeoutError:
                    raise BrokerUnavailableError(
                        "no broker took the workflow in time", process_graph_id=gid
                    ) from None
                if isinstance(event, Rejection):
                    raise ColoniesError.from_reply(_rejection_reply(event))
        return await self.graph_get(gid, colony=colony)

    def _check_workflow_records(self, workflow: WorkflowSpec, gid: str, colony: str) -> None:
        """Every process record the workflow would become, and its graph, can be stored."""
        specs = workflow.function_specs
        ids = {spec.node_name: node_process_id(gid, i) for i, spec in enumerate(specs)}
        children: dict[str, list[str]] = {pid: [] for pid in ids.values()}
        for spec in specs:
            for dep in spec.conditions.dependencies:
                children[ids[dep]].append(ids[spec.node_name])
        for i, spec in enumerate(specs):
            pid = ids[spec.node_name]
            parents = [ids[d] for d in spec.conditions.dependencies]
            process = self._process_of(
                spec,
                pid,
                colony,
                process_graph_id=gid,
                wait_for_parents=bool(parents),
                parents=parents,
                children=children[pid],
            )
            self._check_record(process, f"$[{i}]: the process record of node {spec.node_name!r}")
        graph = ProcessGraph(
            process_graph_id=gid,
            colony_name=colony,
            root_process_ids=[ids[s.node_name] for s in specs if not s.conditions.dependencies],
            process_ids=list(ids.values()),
            nodes=ids,
            submission_time=datetime.now(UTC),
        )
        self._check_record(graph, "the process graph record")

    async def graph_get(self, graph_id: str, *, colony: str | None = None) -> ProcessGraph:
        return await self._must(
            "graph_get", GraphRef(process_graph_id=graph_id), ProcessGraph, colony=colony
        )

    async def graph_list(self, *, limit: int = 20) -> list[ProcessGraph]:
        return await self._request("graph_list", ListGraphs(limit=limit), list[ProcessGraph]) or []

    async def graph_cancel(self, graph_id: str) -> ProcessGraph:
        return await self._must("graph_cancel", GraphRef(process_graph_id=graph_id), ProcessGraph)

    async def graph_processes(self, graph: ProcessGraph) -> list[Process]:
        return [await self.get(pid, colony=graph.colony_name) for pid in graph.process_ids]

    async def graph_wait(self, graph_id: str, *, timeout: float = 60.0) -> ProcessGraph:
        """Wait until the graph is SUCCESS, FAILED or CANCELLED (from its ``graph`` events;
        it listens before it looks)."""
        async with self.watch(graph_id) as watch, asyncio.timeout(timeout):
            graph = await self.graph_get(graph_id)
            while not graph.state.is_terminal:
                event = await watch.next(None)
                if isinstance(event, GraphEvent):
                    graph = event.graph()
            return graph

    async def add_child(
        self,
        parent: Process,
        spec: FunctionSpec,
        *,
        insert: bool = False,
    ) -> Process:
        """From the executor running ``parent``: add a process to its graph, after it (a new
        branch) or, with ``insert``, between it and its current children."""
        body = AddChild(
            process_graph_id=parent.process_graph_id,
            parent_process_id=parent.process_id,
            spec=spec,
            insert=insert,
            attempt=parent.attempt,
        )
        return await self._must("add_child", body, Process)

    # -- events ---------------------------------------------------------------------------
    def subscribe(
        self,
        *,
        process_id: str = "*",
        executor_type: str = "*",
        state: ProcessState | str = "*",
        colony: str | None = None,
        since: datetime | None = None,
    ) -> EventStream:
        """Events as they happen (or replayed from ``since``), filtered by process, executor
        type or state. Use as ``async with client.subscribe(...) as events``; each is a
        :class:`ProcessEvent`, :class:`GraphEvent` or :class:`Rejection` (test with
        ``isinstance(event, Process)`` and so on), or an :class:`UnknownEvent` to skip."""
        token = state.token if isinstance(state, ProcessState) else state
        subject = self.subjects.events_filter(
            colony=colony or self.colony,
            executor_type=executor_type,
            state=token,
            process_id=process_id,
        )
        return EventStream(self, subject, since)

    async def wait_for_state(
        self, process_id: str, state: ProcessState, *, timeout: float = 60.0
    ) -> Process:
        """Wait until the process is in ``state`` (now or later); a terminal state other than
        the one asked for raises :class:`ConflictError`. Cannot miss a transition: it listens
        before it looks."""
        async with self.watch(process_id) as watch, asyncio.timeout(timeout):
            process = await self._get_patiently(process_id, None)
            while process.state is not state:
                if process.state.is_terminal:
                    raise ConflictError(
                        f"process {process_id} ended {process.state.name}, not {state.name}",
                        process_id=process_id,
                        state=process.state.name,
                    )
                event = await watch.next(None)
                if isinstance(event, ProcessEvent):
                    process = event.process()
            return process

    async def stats(self) -> Stats:
        return await self._must("stats", Empty(), Stats)

    # -- queries and control ------------------------------------------------------------
    async def resolve(self, id_or_prefix: str, *, graph: bool = False) -> str:
        """The whole id of the process (or, with ``graph``, the process graph) of this colony
        whose id begins with ``id_or_prefix``: :class:`NotFoundError` if none does,
        :class:`AmbiguousIdError` (naming candidates) if several do. A whole id is returned
        as it is, without asking the broker (it may name a process not created yet)."""
        prefix = check_id_prefix(id_or_prefix, "process graph" if graph else "process")
        if is_full_id(prefix):
            return prefix
        return await self._must("resolve", Resolve(prefix=prefix, graph=graph), str)

    async def get(self, process_id: str, *, colony: str | None = None) -> Process:
        return await self._must("get", ProcessRef(process_id=process_id), Process, colony=colony)

    async def explain(self, process_id: str, *, colony: str | None = None) -> Explanation:
        """Why a process has not run: the broker's own answer (see :class:`Explanation`)."""
        ref = ProcessRef(process_id=process_id)
        return await self._must("explain", ref, Explanation, colony=colony)

    async def list_processes(
        self,
        *,
        state: ProcessState | None = None,
        executor_type: str = "",
        label: str = "",
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        colony: str | None = None,
    ) -> list[Process]:
        """Processes from the broker's index, newest first, filtered as asked."""
        query = ListProcesses(
            state=state,
            executor_type=executor_type,
            label=label,
            since=since,
            until=until,
            limit=limit,
        )
        return await self._request("list", query, list[Process], colony=colony) or []

    async def cancel(self, process_id: str) -> Process:
        return await self._must("cancel", ProcessRef(process_id=process_id), Process)

    async def remove(self, process_id: str) -> None:
        """Remove a process (not running, not part of a workflow) with its log."""
        await self._request("remove", ProcessRef(process_id=process_id), type(None))

    async def remove_all(self, state: ProcessState, *, executor_type: str = "") -> int:
        """Remove every process of the colony in ``state`` (never RUNNING) that is not part
        of a workflow, with their logs; returns how many."""
        body = RemoveAll(state=state, executor_type=executor_type)
        return (await self._must("remove_all", body, Removed)).count

    async def graph_remove(self, graph_id: str) -> int:
        """Remove a process graph (none of its processes running) with all its processes;
        returns how many processes went."""
        body = GraphRef(process_graph_id=graph_id)
        return (await self._must("graph_remove", body, Removed)).count

    async def logs_dropped_before(self) -> datetime | None:
        """When the oldest line still kept in the logs stream was written, if older lines have
        been dropped (by its size limit or age); None if none were. A process that started
        before that time may have lost lines."""
        return await self._request("logs_dropped_before", Empty(), datetime)

    async def open_reader(self, request: ReaderOpen) -> str:
        """A consumer of the events or logs stream delivering to this connection's inbox,
        made by the broker (members may not make consumers); its name."""
        return await self._must("reader_open", request, str)

    def logs(self, process_id: str, *, follow: bool = False) -> AsyncIterator[LogEntry]:
        """The process's log lines in order; with ``follow``, until the process ends."""
        return read_logs(self, process_id, follow=follow)

    # -- colonies and executors (owner operations) --------------------------------------
    async def colony_add(
        self, name: str, *, auto_approve: bool = False, owner_key: str = "", owner_name: str = ""
    ) -> Colony:
        """Create a colony (a server owner's request). Its owner is ``owner_key`` under
        ``owner_name``; by default, on a secure installation, the server owner who asks."""
        colony = Colony(name=check_name("colony", name), auto_approve=auto_approve)
        body = ColonyAdd(colony=colony, owner_key=owner_key, owner_name=owner_name)
        return await self._must("colony_add", body, Colony, colony=SERVER_SCOPE)

    # -- members (a colony owner's requests) ---------------------------------------------
    async def member_add(
        self,
        name: str,
        public_key: str,
        *,
        role: Literal["user", "colony-owner", "executor"] = "user",
        executor_type: str = "",
    ) -> Member:
        """Let the holder of ``public_key`` in as ``name``: a ``user``, a ``colony-owner``,
        or an ``executor`` of ``executor_type`` approved ahead of its first start."""
        body = MemberAdd(name=name, public_key=public_key, role=role, executor_type=executor_type)
        return await self._must("member_add", body, Member)

    async def member_list(self) -> list[Member]:
        return await self._request("member_list", Empty(), list[Member]) or []

    async def member_remove(self, name: str) -> None:
        await self._request("member_remove", Named(name=name), type(None))

    async def colony_list(self) -> list[Colony]:
        return await self._request("colony_list", Empty(), list[Colony], colony=SERVER_SCOPE) or []

    async def colony_remove(self, name: str) -> int:
        """Remove a colony and everything in it (its running processes are cancelled first);
        returns how many processes it had."""
        body = Named(name=name)
        return (await self._must("colony_remove", body, Removed, colony=SERVER_SCOPE)).count

    async def colony_get(self, name: str) -> Colony:
        return await self._must("colony_get", Named(name=name), Colony, colony=SERVER_SCOPE)

    async def executor_list(self) -> list[ExecutorInfo]:
        """The colony's executors: registrations, last heard, online, running count."""
        return await self._request("executor_list", Empty(), list[ExecutorInfo]) or []

    async def executor_approve(self, name: str) -> Executor:
        return await self._must("executor_approve", Named(name=name), Executor)

    async def executor_reject(self, name: str) -> Executor:
        return await self._must("executor_reject", Named(name=name), Executor)

    async def executor_remove(self, name: str) -> None:
        await self._request("executor_remove", Named(name=name), type(None))

    # -- executor side ------------------------------------------------------------------
    async def register(
        self, executor: Executor, *, replace: bool = False, instance: Instance | None = None
    ) -> Executor:
        """Register (or, with the same ``executorid``, check) an executor. A name a live
        executor holds is refused unless ``replace``; ``instance`` says who registers."""
        body = Register(executor=executor, replace=replace, instance=instance)
        return await self._must("register", body, Executor)

    async def assign(self, timeout: float = 10.0) -> Process | None:
        """Long-poll for work: a process, or None when nothing came within ``timeout``
        (at most an hour: a long poll may end early with "no work")."""
        timeout = min(timeout, limits.MAX_ASSIGN_TIMEOUT_S)
        try:
            return await self._request(
                "assign", Assign(timeout=timeout), Process, timeout=timeout + _ASSIGN_MARGIN_S
            )
        except AssignTimeoutError:
            return None

    async def assign_many(
        self, count: int, timeout: float = 10.0, *, executor_id: str = ""
    ) -> list[Process]:
        """Long-poll for up to ``count`` processes: waits (up to ``timeout``) for the first,
        and gets with it those that are assignable at that moment. Empty when none came.
        ``executor_id``: this run's registration (refused if it was replaced or removed)."""
        timeout = min(timeout, limits.MAX_ASSIGN_TIMEOUT_S)
        count = min(count, limits.MAX_ASSIGN_COUNT)
        result = await self._request(
            "assign_many",
            Assign(timeout=timeout, count=count, executor_id=executor_id),
            list[Process],
            timeout=timeout + _ASSIGN_MARGIN_S,
        )
        return result or []

    async def send_results(
        self, closes: list[Close] | None = None, fails: list[Fail] | None = None
    ) -> dict[str, ColoniesError]:
        """Close and fail several processes in one request. Returns the refused ones (process
        id -> why); the others are done."""
        outcomes = await self._must(
            "results", Results(closes=closes or [], fails=fails or []), list[Outcome]
        )
        return {
            o.process_id: ColoniesError.from_reply(o.error) for o in outcomes if o.error is not None
        }

    async def close(
        self, process_id: str, output: list[Any] | None = None, *, attempt: int | None = None
    ) -> Process:
        """Close a process this executor runs with its output (SUCCESS).

        ``attempt`` (the process's ``attempt`` when it was assigned) makes the broker refuse
        the close if the process was re-queued and assigned again since.
        """
        body = Close(process_id=process_id, output=output or [], attempt=attempt)
        return await self._must("close", body, Process)

    async def fail(
        self, process_id: str, errors: list[str] | None = None, *, attempt: int | None = None
    ) -> Process:
        body = Fail(process_id=process_id, errors=errors or [], attempt=attempt)
        return await self._must("fail", body, Process)

    async def add_logs(
        self, process_id: str, lines: list[str], *, attempt: int | None = None
    ) -> None:
        if lines:
            body = LogLines(process_id=process_id, lines=lines, attempt=attempt)
            await self._request("log", body, type(None))

    async def release(
        self, executor_id: str, *, reason: str = "", timeout: float | None = None
    ) -> int:
        """From an executor run that stops: whatever is still assigned to registration
        ``executor_id`` is queued again at once, without spending a retry, and its parked
        assign requests end. Returns how many processes went back."""
        body = Release(executor_id=executor_id, reason=reason)
        return await self._must("release", body, int, timeout=timeout)

    async def heartbeat(self, executor_id: str, running: list[str]) -> None:
        """Tell the broker this executor is alive, and what it is running (fire and forget)."""
        beat = Heartbeat(executor_id=executor_id, running=running)
        subject = self.subjects.heartbeat(self.colony, self.caller)
        with contextlib.suppress(nats.errors.Error):
            await self.nc.publish(subject, _encode(beat))


def _rejection_reply(rejection: Rejection) -> ErrorReply:
    return ErrorReply(
        code=rejection.code,
        message=rejection.error,
        detail={"process_id": rejection.process_id, "path": rejection.path},
    )
