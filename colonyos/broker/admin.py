"""Requests from users and operators: reading and cancelling processes, counting them, and
managing colonies and executors. Executors' own requests (assign, results, log, register) are
the service's; this part only reads and changes its state through it."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import msgspec

from colonyos.broker import transitions
from colonyos.broker.colonyfeeds import ColonyFeeds
from colonyos.broker.registry import removed_message
from colonyos.broker.service import Service, new_id
from colonyos.errors import (
    AmbiguousIdError,
    ConflictError,
    GraphNotFoundError,
    ProcessNotFoundError,
)
from colonyos.ids import check_id_prefix, distinct_length
from colonyos.messages import (
    ColonyAdd,
    Empty,
    ExecutorInfo,
    ListProcesses,
    Named,
    ProcessRef,
    Resolve,
    StateChanged,
    Stats,
)
from colonyos.models import Colony, Executor, ExecutorState, Process, ProcessState, now
from colonyos.subjects import check_name

__all__ = ["Admin", "is_online"]

logger = logging.getLogger(__name__)

UNREGISTERED = ExecutorState.UNREGISTERED

# How many candidates an ambiguous id prefix lists.
_CANDIDATES = 5


class Admin:
    def __init__(
        self, service: Service, *, liveness_s: float = 30.0, feeds: ColonyFeeds | None = None
    ) -> None:
        self.service = service
        self.liveness_s = liveness_s
        self.feeds = feeds  # the leader's: an added colony's submissions are read from then
        # Awaited with the name of a colony just added: returns once a broker leads it (so
        # that the requests its adder makes next find a leader).
        self.colony_added: Callable[[str], Awaitable[None]] | None = None
        service.register_ops(
            get=(ProcessRef, self.get),
            list=(ListProcesses, self.list_processes),
            cancel=(ProcessRef, self.cancel),
            stats=(Empty, self.stats),
            executor_list=(Empty, self.executor_list),
            executor_approve=(Named, self.executor_approve),
            executor_reject=(Named, self.executor_reject),
            executor_remove=(Named, self.executor_remove),
            colony_add=(ColonyAdd, self.colony_add),
            colony_list=(Empty, self.colony_list),
            colony_get=(Named, self.colony_get),
            resolve=(Resolve, self.resolve),
            logs_dropped_before=(Empty, self.logs_dropped_before),
        )

    async def get(self, colony: str, caller: str, req: ProcessRef) -> Process:
        process, _ = await self.service.store.get(colony, req.process_id)
        return process

    async def resolve(self, colony: str, caller: str, req: Resolve) -> str:
        """The whole id of the one process (or graph) of the colony that begins with the
        prefix; none is not found, several are ambiguous (the first few are named)."""
        kind = "process graph" if req.graph else "process"
        prefix = check_id_prefix(req.prefix, kind)
        found = await self.service.index.resolve(
            colony, prefix, graph=req.graph, limit=_CANDIDATES + 1
        )
        if not found and req.graph:
            raise GraphNotFoundError(prefix)
        if not found:
            raise ProcessNotFoundError(prefix)
        if len(found) > 1:
            shown = found[:_CANDIDATES]
            length = distinct_length(shown)
            raise AmbiguousIdError(
                kind, prefix, [c[:length] for c in shown], more=len(found) > _CANDIDATES
            )
        return found[0]

    async def list_processes(self, colony: str, caller: str, req: ListProcesses) -> msgspec.Raw:
        return msgspec.Raw(
            await self.service.index.query(colony, req, max_bytes=self.service.reply_limit)
        )

    async def cancel(self, colony: str, caller: str, req: ProcessRef) -> Process:
        return await self.service.transition(
            colony, req.process_id, lambda p: transitions.cancel(p, now=now())
        )

    async def executor_list(self, colony: str, caller: str, req: Empty) -> list[ExecutorInfo]:
        """The colony's executors, each with when the broker last heard from it, whether that
        is within the liveness window, and how many processes it runs."""
        running = Counter(p.assigned_executor_id for p, _ in self.service.running.values())
        mono, wall = time.monotonic(), datetime.now(UTC)
        infos = []
        for (c, _), e in self.service.executors.items():
            if c != colony:
                continue
            last = e.last_heard_from_time  # registered (KV), not heard since
            heard = self.service.heard.get(e.executor_id, float("-inf"))
            if heard > self.service.lead_start:  # a sign of life since this broker leads
                last = max(last, wall - timedelta(seconds=mono - heard))
            online = is_online(self.service, e, self.liveness_s, mono)
            fields = msgspec.structs.asdict(e) | {"last_heard_from_time": last}
            infos.append(ExecutorInfo(**fields, online=online, running=running[e.executor_id]))
        return sorted(infos, key=lambda e: e.executor_name)

    async def _set_executor_state(self, colony: str, name: str, state: ExecutorState) -> Executor:
        executor = msgspec.structs.replace(self.service.executor(colony, name), state=state)
        await self.service.store.put_executor(executor)
        self.service.remember_executor(executor)
        logger.info("executor %s in %s is now %s", name, colony, state.name)
        return executor

    async def executor_approve(self, colony: str, caller: str, req: Named) -> Executor:
        executor = await self._set_executor_state(colony, req.name, ExecutorState.APPROVED)
        # A run waiting for approval starts taking work at once.
        await self.service.tell(
            colony, req.name, StateChanged(executor_id=executor.executor_id, state=executor.state)
        )
        return executor

    async def executor_reject(self, colony: str, caller: str, req: Named) -> Executor:
        executor = await self._set_executor_state(colony, req.name, ExecutorState.REJECTED)
        await self.service.tell(
            colony, req.name, StateChanged(executor_id=executor.executor_id, state=executor.state)
        )
        if self.service.cut is not None:  # secure: its connection may register, no more
            await self.service.cut(colony, req.name)
        return executor

    async def executor_remove(self, colony: str, caller: str, req: Named) -> None:
        """UNREGISTERED, kept for the record: its running processes are queued again at once
        (no retry spent), and its live run is told, and stops. Starting it again registers it
        afresh."""
        if self.service.executor(colony, req.name).state is ExecutorState.UNREGISTERED:
            return None
        executor = await self._set_executor_state(colony, req.name, ExecutorState.UNREGISTERED)
        reason = transitions.EXECUTOR_REMOVED.format(name=req.name)
        self.service.unpark_run(executor.executor_id)
        await self.service.give_back(executor.executor_id, reason)
        await self.service.tell(colony, req.name, removed_message(executor))
        if self.service.cut is not None:  # secure: a run that does not stop is cut
            await self.service.cut(colony, req.name)
        return None

    async def stats(self, colony: str, caller: str, req: Empty) -> Stats:
        states, by_type = await self.service.index.stats(colony)
        return Stats(
            states={ProcessState(s).name.lower(): n for s, n in states.items()},
            executor_types={
                etype: {ProcessState(s).name.lower(): n for s, n in counts.items()}
                for etype, counts in by_type.items()
            },
        )

    async def logs_dropped_before(self, colony: str, caller: str, req: Empty) -> datetime | None:
        """The broker reads the logs stream's state for a client: members may not
        (``STREAM.INFO`` and ``STREAM.MSG.GET`` are not scoped to a colony)."""
        return await self.service.store.logs_dropped_before()

    async def colony_add(self, colony: str, caller: str, req: ColonyAdd) -> Colony:
        name = check_name("colonyname", req.colony.name)
        if name in self.service.colonies:
            raise ConflictError(f"colony {name!r} already exists", colony_name=name)
        added = msgspec.structs.replace(req.colony, colony_id=req.colony.colony_id or new_id())
        await self.service.store.put_colony(added)
        self.service.colonies[name] = added
        if self.feeds is not None:  # the colony's intake consumer, for its leader
            await self.feeds.add(name)
        logger.info("added colony %s (auto-approve %s)", name, added.auto_approve)
        if self.colony_added is not None:  # answered once a broker leads it
            await self.colony_added(name)
        return added

    async def colony_list(self, colony: str, caller: str, req: Empty) -> list[Colony]:
        return sorted(self.service.colonies.values(), key=lambda c: c.name)

    async def colony_get(self, colony: str, caller: str, req: Named) -> Colony:
        return self.service.colony(req.name)


def is_online(service: Service, executor: Executor, liveness_s: float, mono: float) -> bool:
    """Is ``executor`` online: heard from since this broker leads (``service.lead_start``), no
    longer than ``liveness_s`` before ``mono`` (monotonic), and not removed?"""
    heard = service.heard.get(executor.executor_id, float("-inf"))
    return (
        heard > service.lead_start
        and mono - heard <= liveness_s
        and executor.state is not UNREGISTERED
    )
