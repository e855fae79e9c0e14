"""Why a process has not run: the ``explain`` request (HTCondor's ``condor_q -better-analyze``).

:func:`explain` is pure: the process, the facts about each executor of its type, its parents
and its place in the queue in; an :class:`Explanation` out. The answer is the first of:

* it is not waiting (running, or ended);
* it waits for its parents (which, in what state);
* no executor of its type is registered, or none is online and approved (naming each, and when
  it was last heard from);
* no executor can take it now: for each, the conditions it fails ("mem 8Gi < 10Gi requested",
  "not in executornames", "location lab != cloud requested") or, when only the capacity its
  running processes hold is missing, "busy: 3.5 of 4 cpu in use by 2 running processes";
* it could run now and waits its turn (how many processes of its type are ahead of it).

:class:`Explainer` serves the request: it gathers those facts from the broker's state, so the
answer is the matchmaker's own, and any client (the CLI, the SDK, raw NATS) can ask for it.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from colonyos.broker.scheduler import Capacity, Requirement, Usage
from colonyos.broker.service import Service
from colonyos.errors import ProcessNotFoundError
from colonyos.messages import ExecutorFit, Explanation, ParentState, ProcessRef
from colonyos.models import Executor, ExecutorState, Process, ProcessState, now
from colonyos.resources import human_bytes, human_cpu

__all__ = ["ExecutorFacts", "Explainer", "explain"]


@dataclass(frozen=True, slots=True)
class ExecutorFacts:
    """What the broker knows of one executor when it explains."""

    executor: Executor
    capacity: Capacity  # what it registered
    used: Usage  # what its running processes hold
    silent_s: float  # since the broker last heard from it (inf: never)
    running: int  # processes it runs


def explain(
    process: Process,
    *,
    executors: Sequence[ExecutorFacts],
    parents: Sequence[Process] = (),
    ahead_of: Callable[[Sequence[Capacity]], int | None] = lambda _: None,
    liveness_s: float,
    at: datetime,
) -> Explanation:
    """Why ``process`` has not run, from the facts given (``executors``: those of its colony and
    type; ``ahead_of(capacities)``: how many queued processes before it executors with those
    free capacities would take first, None if it is not queued)."""
    fits = sorted(
        (_fit(process, facts, liveness_s, at) for facts in executors),
        key=lambda f: f.executor_name,
    )
    parent_states = [
        ParentState(process_id=p.process_id, node_name=p.spec.node_name, state=p.state)
        for p in parents
    ]

    def answer(reason: str, details: list[str] | None = None, ahead: int = 0) -> Explanation:
        return Explanation(
            process_id=process.process_id,
            state=process.state,
            reason=reason,
            details=details or [],
            parents=parent_states,
            executors=fits,
            ahead=ahead,
        )

    def each(listed: list[ExecutorFit]) -> list[str]:
        return [f"{f.executor_name}: {', '.join(f.reasons)}" for f in listed]

    if process.state is not ProcessState.WAITING:
        return answer(_not_waiting(process, executors))
    if process.wait_for_parents:
        unfinished = [p for p in parent_states if p.state is not ProcessState.SUCCESS]
        if not unfinished:
            return answer("its parents have all succeeded: it is about to become assignable")
        return answer(
            f"waiting for {len(unfinished)} of its {len(parent_states)} parents to succeed",
            [f"{_parent_name(p)}: {p.state.name}" for p in unfinished],
        )
    etype, colony = repr(process.executor_type), repr(process.colony_name)
    if not fits:
        return answer(f"no executor of type {etype} is registered in colony {colony}")
    live = [f for f in fits if f.online and f.state is ExecutorState.APPROVED]
    if not live:
        return answer(f"no executor of type {etype} is online and approved", each(fits))
    ready = [f for f in live if not f.reasons]
    if not ready:
        online = "online " if len(live) < len(fits) else ""
        if any(r.startswith(_BUSY) for f in live for r in f.reasons):
            reason = f"every {online}executor of type {etype} that meets its conditions is busy"
        else:
            reason = f"no {online}executor of type {etype} meets its conditions"
        return answer(reason, each(fits))  # the offline ones too: one of them may be meant
    can = [f"{f.executor_name}: can take it (running {f.running})" for f in ready]
    names = {f.executor_name for f in ready}
    ahead = ahead_of(
        [f.capacity.minus(f.used) for f in executors if f.executor.executor_name in names]
    )
    if ahead:
        queued = f"{ahead} process{'es' if ahead > 1 else ''}"
        return answer(f"it waits its turn: {queued} of type {etype} ahead of it", can, ahead)
    return answer("it is next: an executor that can take it has not asked for work yet", can)


_BUSY = "busy: "


def _fit(process: Process, facts: ExecutorFacts, liveness_s: float, at: datetime) -> ExecutorFit:
    ex = facts.executor
    gone = ex.state is ExecutorState.UNREGISTERED
    online = facts.silent_s <= liveness_s and not gone
    heard = (
        at - timedelta(seconds=facts.silent_s)
        if math.isfinite(facts.silent_s)
        else ex.last_heard_from_time
    )
    reasons: list[str] = []
    if ex.state is ExecutorState.PENDING:
        reasons.append(f"not approved yet (colonies executor approve --name {ex.executor_name})")
    elif ex.state is ExecutorState.REJECTED:
        reasons.append("rejected by the colony owner")
    elif gone:
        reasons.append("removed (UNREGISTERED): starting it again registers it afresh")
    if not online and not gone:
        reasons.append(
            f"offline: last heard {_ago(facts.silent_s)} ago"
            if math.isfinite(facts.silent_s)
            else "offline: not heard from"
        )
    if process.state is ProcessState.WAITING:
        reasons.extend(_unmet(process, facts))
    return ExecutorFit(
        executor_name=ex.executor_name,
        state=ex.state,
        online=online,
        last_heard_from_time=heard,
        running=facts.running,
        reasons=reasons,
    )


def _unmet(process: Process, facts: ExecutorFacts) -> list[str]:
    """The conditions the executor fails: those it never meets, else what its running
    processes hold that the process would need."""
    try:
        req = Requirement.of(process.spec)
    except ValueError as err:  # not stored by this broker's checks
        return [f"conditions cannot be read: {err}"]
    cap = facts.capacity
    never = []
    if req.executor_names and cap.name not in req.executor_names:
        never.append("not in executornames")
    if req.location and req.location != cap.location:
        never.append(f"location {cap.location or '(none)'} != {req.location} requested")
    for word, need, have, show in (
        ("cpu", req.cpu_millis, cap.cpu_millis, human_cpu),
        ("mem", req.mem_bytes, cap.mem_bytes, human_bytes),
        ("storage", req.storage_bytes, cap.storage_bytes, human_bytes),
        ("gpus", req.gpu_count, cap.gpu_count, str),
        ("gpu mem", req.gpu_mem_bytes, cap.gpu_mem_bytes, human_bytes),
        ("nodes", req.nodes, cap.nodes, str),
    ):
        if need and have is not None and need > have:
            never.append(f"{word} {show(have)} < {show(need)} requested")
    if req.gpu_name and cap.gpu_name and req.gpu_name != cap.gpu_name:
        never.append(f"gpu {cap.gpu_name} != {req.gpu_name} requested")
    if never:
        return never
    used = facts.used
    busy = []
    for word, need, have, held, show in (
        ("cpu", req.cpu_millis, cap.cpu_millis, used.cpu_millis, human_cpu),
        ("mem", req.mem_bytes, cap.mem_bytes, used.mem_bytes, human_bytes),
        ("storage", req.storage_bytes, cap.storage_bytes, used.storage_bytes, human_bytes),
        ("gpus", req.gpu_count, cap.gpu_count, used.gpu_count, str),
    ):
        if need and have is not None and need > have - held:
            busy.append(f"{show(held)} of {show(have)} {word}")
    if not busy:
        return []
    n = used.processes
    return [f"{_BUSY}{' and '.join(busy)} in use by {n} running process{'es' if n != 1 else ''}"]


def _not_waiting(process: Process, executors: Sequence[ExecutorFacts]) -> str:
    if process.state is ProcessState.RUNNING:
        holder = next(
            (
                f.executor.executor_name
                for f in executors
                if f.executor.executor_id == process.assigned_executor_id
            ),
            "an executor no longer registered",
        )
        return f"it is not waiting: it runs on {holder}"
    return f"it is not waiting: it ended {process.state.name}"


def _parent_name(parent: ParentState) -> str:
    return parent.node_name or parent.process_id[:12]


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86_400:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86_400:.0f} days"


class Explainer:
    """The ``explain`` operation: ``{"processid": ...}`` -> :class:`Explanation`."""

    def __init__(self, service: Service, *, liveness_s: float) -> None:
        self.service = service
        self.liveness_s = liveness_s
        service.register_ops(explain=(ProcessRef, self.explain))

    async def explain(self, colony: str, caller: str, req: ProcessRef) -> Explanation:
        service = self.service
        process, _ = await service.store.get(colony, req.process_id)
        parents: list[Process] = []
        if process.state is ProcessState.WAITING and process.wait_for_parents:
            found = await asyncio.gather(*(self._parent(colony, pid) for pid in process.parents))
            parents = [p for p in found if p is not None]
        running = collections.Counter(p.assigned_executor_id for p, _ in service.running.values())
        mono = time.monotonic()
        facts = [
            ExecutorFacts(
                executor=ex,
                capacity=service.capacity_of(ex),
                used=service.in_use.used(ex.executor_id),
                silent_s=mono - service.heard.get(ex.executor_id, -math.inf),
                running=running[ex.executor_id],
            )
            for (c, _), ex in service.executors.items()
            if c == colony and ex.executor_type == process.executor_type
        ]
        return explain(
            process,
            executors=facts,
            parents=parents,
            ahead_of=functools.partial(service.queue.ahead_of, process.process_id),
            liveness_s=self.liveness_s,
            at=now(),
        )

    async def _parent(self, colony: str, process_id: str) -> Process | None:
        try:
            process, _ = await self.service.store.get(colony, process_id)
        except ProcessNotFoundError:
            return None
        return process
