"""Workflows: creating process graphs, releasing children, failing what can no longer run.

A workflow becomes a graph document (bucket ``<prefix>-graphs``) and all its processes at once;
children wait (``waitforparents``) until every parent succeeded, then get the parents'
outputs, in dependency order, as input. A failed or cancelled process fails its unfinished
descendants. Everything is idempotent, so a broker that dies half-way through accepting a
workflow or releasing children leaves work that the next leader simply finishes
(:meth:`Workflows.load`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import datetime
from typing import Any

import msgspec
import nats.errors
from nats.aio.msg import Msg

from colonyos.broker import transitions
from colonyos.broker.service import Service, new_id
from colonyos.broker.store import GRAPH_RECORD, StaleRevisionError
from colonyos.errors import (
    ColoniesError,
    ColonyNotFoundError,
    ConflictError,
    InvalidSpecError,
    NotFoundError,
    RecordTooLargeError,
)
from colonyos.graphs import check_workflow, graph_state, node_process_id
from colonyos.messages import AddChild, GraphRef, ListGraphs
from colonyos.models import ZERO_TIME, Process, ProcessGraph, ProcessState, WorkflowSpec, now
from colonyos.specs import check_function_spec, load_workflow_spec
from colonyos.subjects import GRAPH_TOKEN

__all__ = ["Workflows"]

logger = logging.getLogger(__name__)

_replace = msgspec.structs.replace
_encode = msgspec.json.Encoder().encode
_GRAPH_ATTEMPTS = 16


class Workflows:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.store = service.store
        # Live graphs: graph id -> process id -> state (what the graph's state is derived from).
        self.members: dict[str, dict[str, ProcessState]] = {}
        self._states: dict[str, ProcessState] = {}  # graph id -> state last written
        self._graph_of: dict[str, str] = {}  # process id -> graph id, for live graphs
        # Graphs being cancelled as a whole: every process ends CANCELLED, none FAILED.
        self._cancelling: set[str] = set()
        # Children whose parents are being read -> a parent that ended meanwhile (or None):
        # its end found the child taken, so the try under way looks again for it.
        self._releasing: dict[str, Process | None] = {}
        service.graph_hook = self.after_transition
        service.register_ops(
            add_child=(AddChild, self.add_child),
            graph_get=(GraphRef, self.graph_get),
            graph_list=(ListGraphs, self.graph_list),
            graph_cancel=(GraphRef, self.graph_cancel),
        )

    # -- submission -----------------------------------------------------------------------
    async def accept(self, msg: Msg, t: datetime, ns: int) -> None:
        colony = msg.subject.split(".")[-2]
        graph_id = self.graph_id(msg)
        try:
            graph, processes = self._plan(msg, colony, graph_id, t, ns)
        except ColoniesError as err:
            logger.info("rejected workflow %s in %s: %s", graph_id, colony, err.message)
            await self.store.reject(colony, GRAPH_TOKEN, graph_id, err)
            await msg.ack()
            return
        await self.start(graph, processes)
        await msg.ack()

    async def start(self, graph: ProcessGraph, processes: list[Process]) -> None:
        """Write a planned graph and its processes and queue its roots. Idempotent: what exists
        already (a redelivery, a tick a previous leader began) is kept, and what is missing is
        finished."""
        colony, graph_id = graph.colony_name, graph.process_graph_id
        # None: a redelivery (then indexed already); finish what is missing
        if await self.store.create_graph(graph) is not None:
            self.service.index.put_graph(graph)
            if graph.cron_name or graph.generator_name:  # a run starts, as an event
                await self.store.publish_graph_event(graph)
        # Every process is written before any is assignable: a root that finished before its
        # children existed would find nobody to release.
        written = await asyncio.gather(*(self.store.create(p) for p in processes))
        stored: list[tuple[Process, int, bytes | None]] = []
        for process, result in zip(processes, written, strict=True):
            if result is None:  # a redelivery: as it is now
                process, revision = await self.store.get(colony, process.process_id)
                await self.store.ensure_event(process, revision)
                stored.append((process, revision, None))
            else:
                stored.append((process, *result))
        for process, _, _ in stored:
            self._join(graph_id, process)
        self._states[graph_id] = graph.state
        for process, revision, data in stored:
            await self.service.admit(process, revision, data)
        for process, _, _ in stored:
            if process.state.is_terminal:  # a redelivery: finish what its end started
                await self.after_transition(process)
        logger.info("workflow %s in %s: %d processes", graph_id, colony, len(processes))

    def graph_id(self, msg: Msg) -> str:
        """The id of the graph a workflow message becomes: its ``Nats-Msg-Id``, else one
        derived from its stream position (the same on every delivery)."""
        msg_id = (msg.headers or {}).get("Nats-Msg-Id", "")
        if len(msg_id) == 64 and all(c in "0123456789abcdef" for c in msg_id):
            return msg_id
        basis = f"graph:{msg.metadata.sequence.stream}:{msg_id}".encode()
        return hashlib.sha256(basis).hexdigest()

    def _plan(
        self, msg: Msg, colony: str, graph_id: str, t: datetime, ns: int
    ) -> tuple[ProcessGraph, list[Process]]:
        if not self.service.leads(colony):
            raise ColonyNotFoundError(colony)
        workflow, _ = load_workflow_spec(msg.data)
        if workflow.colony_name and workflow.colony_name != colony:
            raise InvalidSpecError(
                f"$.colonyname: {workflow.colony_name!r} does not match the subject's colony "
                f"{colony!r}",
                path="$.colonyname",
            )
        graph, processes = plan(workflow, colony, graph_id, t, ns, initiator=_initiator(msg))
        self.check_sizes(graph, processes)
        return graph, processes

    def check_sizes(self, graph: ProcessGraph, processes: list[Process]) -> None:
        """Every record of the workflow can be stored, or nothing is written."""
        for i, process in enumerate(processes):
            try:
                self.store.encoded(process)
            except RecordTooLargeError as err:
                raise RecordTooLargeError(
                    f"$[{i}]: the process record of node {process.spec.node_name!r}",
                    err.size,
                    err.limit,
                    err.max_payload,
                    path=f"$[{i}]",
                ) from None
        self.store.encoded(graph, GRAPH_RECORD)

    # -- progress ---------------------------------------------------------------------------
    async def after_transition(self, process: Process) -> None:
        """Called by the service after every write of a process that belongs to a graph."""
        graph_id = process.process_graph_id
        members = self.members.get(graph_id)
        if members is not None:
            members[process.process_id] = process.state
            if graph_state(members.values()) is not self._states.get(graph_id):
                await self._update_graph(process.colony_name, graph_id)
        if process.state is ProcessState.SUCCESS:
            # Side by side: a fan-out's children are released in one round of writes.
            await asyncio.gather(
                *(
                    self._maybe_release(process.colony_name, child, process)
                    for child in process.children
                )
            )
        elif process.state.is_terminal and graph_id not in self._cancelling:
            await self._fail_descendants(process)

    async def _maybe_release(self, colony: str, child_id: str, finished: Process) -> None:
        """``finished`` (one of the child's parents) has just succeeded: release the child if
        all its parents have."""
        if child_id in self._releasing:
            # Another parent's end is releasing it right now, and may have read this parent
            # before it ended: that try looks again when it is done.
            self._releasing[child_id] = finished
            return
        self._releasing[child_id] = None
        try:
            while True:
                await self._release_if_ready(colony, child_id, finished)
                again = self._releasing[child_id]
                if again is None:
                    return
                self._releasing[child_id] = None
                finished = again
        finally:
            del self._releasing[child_id]

    async def _release_if_ready(self, colony: str, child_id: str, finished: Process) -> None:
        members = self.members.get(self._graph_of.get(child_id, ""), {})
        try:
            child, revision = await self.store.get(colony, child_id)
            if child.state is not ProcessState.WAITING or not child.wait_for_parents:
                return
            # Known not all done yet: no need to read every parent (a fan-in of n parents
            # would cost n reads per parent, n squared in all).
            if any(
                members.get(pid, ProcessState.SUCCESS) is not ProcessState.SUCCESS
                for pid in child.parents
            ):
                return
            # All read at once (a fan-in of 98 parents read one after another took a second);
            # the one that has just finished is in hand.
            parents = await asyncio.gather(
                *(self._parent(colony, pid, finished) for pid in child.parents)
            )
        except NotFoundError:
            return
        if not all(p.state is ProcessState.SUCCESS for p in parents):
            return
        outputs: list[Any] = [value for p in parents for value in p.output]
        try:
            await self.service.transition(
                colony,
                child_id,
                lambda c: transitions.release(c, outputs, now=now()),
                current=(child, revision),
            )
        except (ConflictError, NotFoundError):
            return  # released already (by an earlier try), or gone

    async def _parent(self, colony: str, process_id: str, finished: Process) -> Process:
        if process_id == finished.process_id:
            return finished
        return (await self.store.get(colony, process_id))[0]

    async def _fail_descendants(self, process: Process) -> None:
        reason = (
            f"parent {process.spec.node_name or process.process_id} {process.state.name.lower()}"
        )
        pending = list(process.children)
        seen: set[str] = set()
        while pending:
            pid = pending.pop()
            if pid in seen:
                continue
            seen.add(pid)
            try:
                child = await self.service.transition(
                    process.colony_name,
                    pid,
                    lambda c: transitions.fail_descendant(c, reason, now=now()),
                )
            except (ConflictError, NotFoundError):
                continue  # ended already: it keeps its result
            pending.extend(child.children)

    def _join(self, graph_id: str, process: Process) -> None:
        self.members.setdefault(graph_id, {})[process.process_id] = process.state
        self._graph_of[process.process_id] = graph_id

    async def _update_graph(self, colony: str, graph_id: str) -> None:
        state = graph_state(self.members[graph_id].values())
        self._states[graph_id] = state
        for _ in range(_GRAPH_ATTEMPTS):
            try:
                graph, revision = await self.store.get_graph(colony, graph_id)
            except ColoniesError:  # removed, or a value that does not decode: nothing to keep
                return
            if graph.state is state and set(graph.process_ids) >= set(self.members[graph_id]):
                break
            t = now()
            updated = _replace(
                graph,
                state=state,
                process_ids=sorted(set(graph.process_ids) | set(self.members[graph_id])),
                start_time=t
                if graph.start_time == ZERO_TIME and state is not ProcessState.WAITING
                else graph.start_time,
                end_time=t if state.is_terminal else ZERO_TIME,
            )
            try:
                await self.store.update_graph(updated, revision)
            except StaleRevisionError:
                continue
            self.service.index.put_graph(updated)
            if updated.state is not graph.state:
                await self.store.publish_graph_event(updated)
            break
        if state.is_terminal:
            self.forget(graph_id)

    def forget(self, graph_id: str) -> None:
        """A removed graph: nothing of it is followed any more."""
        for pid in self.members.pop(graph_id, {}):
            self._graph_of.pop(pid, None)
        self._states.pop(graph_id, None)

    async def load(self) -> None:
        """A new leader finishes what a previous one may have left half-done. A graph it cannot
        finish is logged and left as it is: no stored value keeps a broker from starting."""
        colony = self.service.colony_scope
        if colony is None:
            return  # the server scope leads no workflows
        async for graph, _ in self.store.all_graphs(colony):
            self.service.index.put_graph(graph)
            if graph.state.is_terminal:
                continue
            try:
                await self._load_graph(graph)
            except (nats.errors.Error, TimeoutError):
                raise  # NATS trouble: the broker stands by and loads again
            except Exception:
                logger.exception(
                    "process graph %s in %s could not be resumed; left as it is",
                    graph.process_graph_id,
                    graph.colony_name,
                )

    async def _load_graph(self, graph: ProcessGraph) -> None:
        members: dict[str, ProcessState] = {}
        ended: list[Process] = []
        for pid in graph.process_ids:
            try:
                process, _ = await self.store.get(graph.colony_name, pid)
            except ColoniesError:  # removed, or a value that does not decode: not a member
                continue
            members[pid] = process.state
            self._graph_of[pid] = graph.process_graph_id
            if process.state.is_terminal:
                ended.append(process)
        self.members[graph.process_graph_id] = members
        self._states[graph.process_graph_id] = graph.state
        for process in ended:
            await self.after_transition(process)

    # -- requests -------------------------------------------------------------------------
    async def add_child(self, colony: str, caller: str, req: AddChild) -> Process:
        executor = self.service.executor(colony, caller)
        parent, _ = await self.store.get(colony, req.parent_process_id)
        transitions.require_lease(parent, executor, "add a child to", req.attempt)
        if parent.process_graph_id != req.process_graph_id:
            raise InvalidSpecError(
                f"process {parent.process_id} is not in graph {req.process_graph_id}",
                path="$.processgraphid",
            )
        spec = check_function_spec(req.spec)
        cond = spec.conditions
        spec = _replace(spec, conditions=_replace(cond, colony_name=colony))
        downstream = await self._downstream(colony, parent) if req.insert else []
        t = now()
        child_id = new_id()
        # The graph must still fit with one more process, or nothing is added.
        graph, _ = await self.store.get_graph(colony, parent.process_graph_id)
        self.store.encoded(
            _replace(graph, process_ids=[*graph.process_ids, child_id]), GRAPH_RECORD
        )
        child = _replace(
            transitions.create(child_id, spec, now=t, now_ns=int(t.timestamp() * 1e9)),
            process_graph_id=parent.process_graph_id,
            wait_for_parents=True,
            wait_deadline=ZERO_TIME,
            parents=[parent.process_id],
            children=downstream,
            initiator_name=caller,
        )
        written = await self.store.create(child)
        assert written is not None
        self._join(parent.process_graph_id, child)
        self.service.track(child, *written)
        for pid in downstream:
            await self.service.transition(
                colony, pid, lambda d: _replace(d, parents=_relink(d.parents, parent, child))
            )
        await self.service.transition(
            colony,
            parent.process_id,
            lambda p: _replace(
                p, children=[*(c for c in p.children if c not in downstream), child.process_id]
            ),
        )
        await self._update_graph(colony, parent.process_graph_id)
        return child

    async def _downstream(self, colony: str, parent: Process) -> list[str]:
        """What an inserted child goes in front of: the parent's children from before it
        started running, also when earlier inserts of this run stand in between."""
        found: list[str] = []
        for pid in parent.children:
            child, _ = await self.store.get(colony, pid)
            if child.submission_time < parent.start_time:
                found.append(pid)
            else:  # added during this run: an earlier insert (or a branch, with no children)
                found.extend(c for c in child.children if c not in found)
        return found

    async def graph_get(self, colony: str, caller: str, req: GraphRef) -> ProcessGraph:
        graph, _ = await self.store.get_graph(colony, req.process_graph_id)
        return graph

    async def graph_list(self, colony: str, caller: str, req: ListGraphs) -> msgspec.Raw:
        """The colony's graphs, newest first: at most ``req.limit``, and only as many as one
        reply holds."""
        graphs = await self.service.index.graphs(colony, req.limit, self.service.reply_limit)
        return msgspec.Raw(graphs)

    async def graph_cancel(self, colony: str, caller: str, req: GraphRef) -> ProcessGraph:
        graph, _ = await self.store.get_graph(colony, req.process_graph_id)
        self._cancelling.add(graph.process_graph_id)
        try:
            for pid in graph.process_ids:
                try:
                    await self.service.transition(
                        colony, pid, lambda p: transitions.cancel(p, now=now())
                    )
                except (ConflictError, NotFoundError):
                    continue  # ended already: it keeps its result
        finally:
            self._cancelling.discard(graph.process_graph_id)
        graph, _ = await self.store.get_graph(colony, req.process_graph_id)
        return graph


def _relink(parents: list[str], parent: Process, child: Process) -> list[str]:
    """The inserted child takes the parent's place in a downstream process's parents (first
    insert), or joins them (later inserts)."""
    if parent.process_id in parents:
        return [child.process_id if p == parent.process_id else p for p in parents]
    return [*parents, child.process_id]


def _initiator(msg: Msg) -> str:
    return str((msg.headers or {}).get("Colonies-Initiator", ""))


def plan(
    workflow: WorkflowSpec,
    colony: str,
    graph_id: str,
    t: datetime,
    ns: int,
    *,
    initiator: str = "",
    root_input: list[Any] | None = None,
    root_args: list[Any] | None = None,
    cron_name: str = "",
    generator_name: str = "",
) -> tuple[ProcessGraph, list[Process]]:
    """The graph and its processes, with parents and children linked by process id; the roots
    get ``root_input`` as their input (``in``), as a cron's run gets its previous run's
    outputs, and ``root_args`` after their own ``args``, as a generator's run gets the
    arguments packed into it."""
    check_workflow(workflow)
    specs = workflow.function_specs
    ids = {spec.node_name: node_process_id(graph_id, i) for i, spec in enumerate(specs)}
    children: dict[str, list[str]] = {pid: [] for pid in ids.values()}
    for spec in specs:
        for dep in spec.conditions.dependencies:
            children[ids[dep]].append(ids[spec.node_name])
    processes = []
    for i, spec in enumerate(specs):
        pid = ids[spec.node_name]
        spec = _replace(spec, conditions=_replace(spec.conditions, colony_name=colony))
        parents = [ids[d] for d in spec.conditions.dependencies]
        if root_args and not parents:
            spec = _replace(spec, args=[*spec.args, *root_args])
        process = transitions.create(pid, spec, now=t, now_ns=ns + i, initiator_name=initiator)
        processes.append(
            _replace(
                process,
                process_graph_id=graph_id,
                wait_for_parents=bool(parents),
                wait_deadline=ZERO_TIME if parents else process.wait_deadline,
                parents=parents,
                children=children[pid],
                input=list(root_input or []) if not parents else [],
            )
        )
    graph = ProcessGraph(
        process_graph_id=graph_id,
        colony_name=colony,
        root_process_ids=[p.process_id for p in processes if not p.parents],
        process_ids=[p.process_id for p in processes],
        nodes=ids,
        submission_time=t,
        cron_name=cron_name,
        generator_name=generator_name,
    )
    return graph, processes
