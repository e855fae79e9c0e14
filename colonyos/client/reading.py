"""Reading a colony: processes and graphs, their events as they happen, waiting for an end,
logs, and the requests that act on what exists (cancel, remove)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime

from colonyos.client.connected import Connected
from colonyos.errors import (
    BrokerUnavailableError,
    ConflictError,
)
from colonyos.events import EventStream, ProcessWatch, read_logs
from colonyos.ids import check_id_prefix, is_full_id
from colonyos.messages import (
    Empty,
    Explanation,
    GraphEvent,
    GraphRef,
    ListGraphs,
    ListProcesses,
    ProcessEvent,
    ProcessRef,
    ReaderOpen,
    RemoveAll,
    Removed,
    Resolve,
    Stats,
)
from colonyos.models import (
    LogEntry,
    Process,
    ProcessGraph,
    ProcessState,
)

__all__ = ["Reading"]


class Reading(Connected):
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
