"""Removing processes, process graphs and colonies, with everything that belongs to them.

A removed process takes its KV record (with its history) and its log with it, so that neither
outlives the other; its events stay in the events stream, the audit trail, until they age out
with the retention (:mod:`colonyos.broker.retention`). A graph goes with all its processes, and
a process that belongs to a graph goes only with its graph: alone, it would leave its graph
pointing at nothing. Nothing running is removed: cancel it first. A removed colony first stops
taking submissions and cancels what is live (so that executors learn it at once), then loses
every record, log, event and pending submission under its name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

import msgspec
import nats.errors

from colonyos.broker import transitions
from colonyos.broker.colonyfeeds import ColonyFeeds
from colonyos.broker.crons import CronRunner
from colonyos.broker.generators import GeneratorRunner
from colonyos.broker.registry import removed_message
from colonyos.broker.service import Service
from colonyos.broker.workflows import Workflows
from colonyos.errors import (
    BrokerUnavailableError,
    ColoniesError,
    ConflictError,
    InvalidSpecError,
    NotFoundError,
)
from colonyos.messages import GraphRef, Handover, Named, ProcessRef, RemoveAll, Removed, Reply
from colonyos.models import (
    ZERO_TIME,
    Process,
    ProcessGraph,
    ProcessState,
    now,
)

__all__ = ["Removal"]

logger = logging.getLogger(__name__)

# Processes removed per round of a removeall (each is a few JetStream requests).
_BATCH = 200
# How long the colony's leader is given to clear it (cancel what is live, purge everything).
_HANDOVER_TIMEOUT_S = 60.0

_encode = msgspec.json.Encoder().encode
_reply_decoder = msgspec.json.Decoder(Reply)


class Removal:
    def __init__(
        self,
        service: Service,
        workflows: Workflows,
        crons: CronRunner | None = None,
        generators: GeneratorRunner | None = None,
        feeds: ColonyFeeds | None = None,
    ) -> None:
        self.service = service
        self.workflows = workflows
        self.crons = crons
        self.generators = generators
        self.feeds = feeds
        self.store = service.store
        self.index = service.index
        service.register_ops(
            remove=(ProcessRef, self.remove),
            remove_all=(RemoveAll, self.remove_all),
            graph_remove=(GraphRef, self.graph_remove),
            colony_remove=(Named, self.colony_remove),
        )

    # -- requests -----------------------------------------------------------------------
    async def remove(self, colony: str, caller: str, req: ProcessRef) -> None:
        process, _ = await self.store.get(colony, req.process_id)
        if process.process_graph_id:
            raise ConflictError(
                f"process {process.process_id} belongs to process graph "
                f"{process.process_graph_id}: remove the workflow instead "
                f"('colonies workflow remove --graph {process.process_graph_id[:12]}')",
                process_id=process.process_id,
                process_graph_id=process.process_graph_id,
            )
        _removable(process)
        await self.process(process)

    async def remove_all(self, colony: str, caller: str, req: RemoveAll) -> Removed:
        """Every process of the colony in one state (never RUNNING), not part of a graph."""
        if req.state is ProcessState.RUNNING:
            raise InvalidSpecError(
                "$.state: running processes are never removed: cancel them first",
                path="$.state",
                reason="running processes are never removed",
            )
        self.service.colony(colony)
        removed = 0
        while True:
            ids = await self.index.standalone_in_state(
                colony, int(req.state), req.executor_type, limit=_BATCH
            )
            if not ids:
                return Removed(count=removed)
            outcomes = await asyncio.gather(
                *(self._remove_if(colony, pid, req.state) for pid in ids)
            )
            removed += sum(outcomes)
            if not any(outcomes):  # none of those could go (they changed state meanwhile)
                return Removed(count=removed)

    async def graph_remove(self, colony: str, caller: str, req: GraphRef) -> Removed:
        graph, _ = await self.store.get_graph(colony, req.process_graph_id)
        processes = await self._members(graph)
        running = [p.process_id for p in processes if p.state is ProcessState.RUNNING]
        if running:
            raise ConflictError(
                f"process graph {graph.process_graph_id} has {len(running)} running "
                f"process(es): cancel it first ('colonies workflow cancel --graph "
                f"{graph.process_graph_id[:12]}')",
                process_graph_id=graph.process_graph_id,
                running=running,
            )
        return Removed(count=await self.graph(graph, processes))

    async def colony_remove(self, colony: str, caller: str, req: Named) -> Removed:
        """The colony and everything in it: processes, graphs, executors, logs, events and the
        submissions not yet taken. Asked of the server scope, carried out by the colony's
        leader (which may be another broker: it is asked on subjects.handover)."""
        self.service.colony(req.name)
        try:
            reply = await self.store.nc.request(
                self.service.subjects.handover(req.name),
                _encode(Handover(caller=caller)),
                timeout=_HANDOVER_TIMEOUT_S,
            )
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as err:
            raise BrokerUnavailableError(
                f"colony {req.name!r} has no leading broker right now (one is taking it over): "
                "try again in a few seconds",
                colony_name=req.name,
            ) from err
        answer = _reply_decoder.decode(reply.data)
        if answer.error is not None:
            raise ColoniesError.from_reply(answer.error)
        self.service.colonies.pop(req.name, None)
        if self.feeds is not None:  # a stray feed of it, if any, goes with its consumer
            await self.feeds.remove(req.name)
        return msgspec.json.decode(answer.result, type=Removed)

    async def clear_colony(self, name: str, caller: str) -> Removed:
        """Remove the colony this scope leads, with everything in it (see colony_remove)."""
        removed = self.service.colony(name)
        # No new submission becomes a process from now on (intake refuses an unknown colony).
        del self.service.colonies[name]
        if self.feeds is not None:  # its consumer goes (what comes later is rejected)
            await self.feeds.remove(name)
        process_ids, graph_ids = await self.index.colony_ids(name)
        await asyncio.gather(*(self._cancel(name, pid) for pid in process_ids))
        await self.store.purge_colony(name)
        if self.crons is not None:
            self.crons.forget_colony(name)
        if self.generators is not None:
            self.generators.forget_colony(name)
        for pid in process_ids:
            self.service.forget(pid)
        for graph_id in graph_ids:
            self.workflows.forget(graph_id)
            self.index.remove_graph(graph_id)
        for executor in [e for (c, _), e in self.service.executors.items() if c == name]:
            gone = removed_message(executor, f"removed with its colony {name!r}")
            await self.service.tell(name, executor.executor_name, gone)
            self.service.drop_executor(executor)
        await self.store.delete_colony(removed)
        if self.service.on_colony_removed is not None:  # its members go too
            await self.service.on_colony_removed(name, caller)
        logger.info("removed colony %s: %d processes", name, len(process_ids))
        return Removed(count=len(process_ids))

    # -- the removals themselves, also used by the retention sweep -------------------------
    async def process(self, process: Process) -> None:
        """Remove one process (not running, not in a live graph): record, history and log."""
        await self.store.purge_process(process)
        self.service.forget(process.process_id)

    async def graph(self, graph: ProcessGraph, processes: list[Process] | None = None) -> int:
        """Remove a graph and all its processes; returns how many processes went."""
        members = processes if processes is not None else await self._members(graph)
        await asyncio.gather(*(self.process(p) for p in members))
        await self.store.purge_graph(graph)
        self.workflows.forget(graph.process_graph_id)
        self.index.remove_graph(graph.process_graph_id)
        return len(members)

    async def expired_process(self, colony: str, process_id: str) -> bool:
        """Remove a finished process the index found expired (an ended process stays ended);
        False if it was gone already."""
        try:
            process, _ = await self.store.get(colony, process_id)
        except NotFoundError:
            self.service.forget(process_id)
            return False
        await self.process(process)
        return True

    async def expired_graph(self, colony: str, graph_id: str, cutoff: datetime) -> bool:
        """Remove a graph whose processes all ended, the last before ``cutoff`` (a graph ends
        FAILED at its first failure, while other branches may still run)."""
        try:
            graph, _ = await self.store.get_graph(colony, graph_id)
        except NotFoundError:
            self.index.remove_graph(graph_id)
            return False
        processes = await self._members(graph)
        if not graph.state.is_terminal or not all(_ended_before(p, cutoff) for p in processes):
            return False
        await self.graph(graph, processes)
        return True

    async def _members(self, graph: ProcessGraph) -> list[Process]:
        found = await asyncio.gather(
            *(self._get(graph.colony_name, pid) for pid in graph.process_ids)
        )
        return [p for p in found if p is not None]

    async def _get(self, colony: str, process_id: str) -> Process | None:
        try:
            return (await self.store.get(colony, process_id))[0]
        except NotFoundError:
            return None

    async def _remove_if(self, colony: str, process_id: str, state: ProcessState) -> bool:
        process = await self._get(colony, process_id)
        if process is None:
            self.service.forget(process_id)
            return True
        if process.state is not state or process.process_graph_id:
            return False
        await self.process(process)
        return True

    async def _cancel(self, colony: str, process_id: str) -> None:
        with contextlib.suppress(ConflictError, NotFoundError):  # ended already, or gone
            await self.service.transition(
                colony, process_id, lambda p: transitions.cancel(p, now=now())
            )


def _removable(process: Process) -> None:
    if process.state is ProcessState.RUNNING:
        raise ConflictError(
            f"process {process.process_id} is running: cancel it first "
            f"('colonies process cancel --process {process.process_id[:12]}')",
            process_id=process.process_id,
            state=process.state.name,
        )


def _ended_before(process: Process, cutoff: datetime) -> bool:
    return process.state.is_terminal and ZERO_TIME < process.end_time < cutoff
