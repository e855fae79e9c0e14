"""Which waiting process goes to which executor. Pure: no I/O, no clock, no asyncio.

* Order: the lowest ``prioritytime`` that matches goes first; ties are first-in-first-out.
* Matching: same colony and executor type; ``executornames`` empty or naming the executor;
  ``locationname`` empty or equal; requested cpu/mem/storage/gpu/nodes within what the executor
  has free. A dimension the executor does not state is not a limit (an executor that registers
  no hardware takes every spec of its type, as in Colonies); a stated one is.
* Capacity in use: what an executor's running processes requested (cpu, mem, storage, GPUs) is
  held from the moment a process is taken from the queue for it until it leaves RUNNING, and
  matching sees the capacity less that, so running several processes at once never overcommits.
* Parked assigns (the long poll) are woken one at a time: a new process goes to the first
  parked executor it matches, never to all of them; an idle executor's before a prefetch (the
  assign of an executor whose slots are all busy).
"""

from __future__ import annotations

import heapq
import itertools
import sys
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

import msgspec

from colonyos.models import Executor, FunctionSpec, Process
from colonyos.resources import parse_bytes, parse_cpu_millis

__all__ = [
    "DAY_NS",
    "Capacity",
    "CapacityInUse",
    "DeadlineHeap",
    "Offer",
    "ParkedAssigns",
    "Requirement",
    "Usage",
    "WaitingQueue",
    "priority_time",
]

DAY_NS = 86_400 * 10**9

QueueKey = tuple[str, str]  # (colony, executor type)


def priority_time(submission_ns: int, priority: int) -> int:
    """One priority point is one day of queue age, as in Colonies."""
    return submission_ns - priority * DAY_NS


@dataclass(frozen=True, slots=True)
class Capacity:
    """What an executor registered that it can offer: the largest of its hardware entries.

    ``None`` is a dimension it does not state, which is no limit. An executor with no hardware
    entry states nothing. A hardware entry states each quantity it gives (cpu, mem, storage,
    gpu mem, gpu name) and always its GPU count (0: no GPU); nodes 0 is not stated.
    """

    name: str
    location: str
    cpu_millis: int | None = None
    mem_bytes: int | None = None
    storage_bytes: int | None = None
    gpu_count: int | None = None
    gpu_mem_bytes: int | None = None
    gpu_name: str = ""
    nodes: int | None = None
    # Offered by a prefetch: what it takes waits behind a running process before it starts.
    behind: bool = False

    @classmethod
    def of(cls, executor: Executor) -> Capacity:
        """Raises ValueError for a quantity that cannot be parsed (checked at registration)."""
        hw = executor.capabilities.hardware
        return cls(
            name=executor.executor_name,
            location=executor.location_name,
            cpu_millis=_largest(parse_cpu_millis(h.cpu) for h in hw if h.cpu),
            mem_bytes=_largest(parse_bytes(h.mem) for h in hw if h.mem),
            storage_bytes=_largest(parse_bytes(h.storage) for h in hw if h.storage),
            gpu_count=_largest(h.gpu.count for h in hw),
            gpu_mem_bytes=_largest(parse_bytes(h.gpu.mem) for h in hw if h.gpu.mem),
            gpu_name=next((h.gpu.name for h in hw if h.gpu.name), ""),
            nodes=_largest(h.nodes for h in hw if h.nodes),
        )

    def minus(self, used: Usage) -> Capacity:
        """What is left once ``used`` is taken (a dimension not stated stays unlimited)."""
        return Capacity(  # not dataclasses.replace: this is on the assign path
            self.name,
            self.location,
            _less(self.cpu_millis, used.cpu_millis),
            _less(self.mem_bytes, used.mem_bytes),
            _less(self.storage_bytes, used.storage_bytes),
            _less(self.gpu_count, used.gpu_count),
            self.gpu_mem_bytes,
            self.gpu_name,
            self.nodes,
        )

    def within(self, cpu_millis: int | None, mem_bytes: int | None) -> Capacity:
        """No more cpu and mem than given (None: no bound), as an assign's ``availablecpu``
        and ``availablemem`` ask."""
        return replace(
            self,
            cpu_millis=_smaller(self.cpu_millis, cpu_millis),
            mem_bytes=_smaller(self.mem_bytes, mem_bytes),
        )


def _largest(values: Iterable[int]) -> int | None:
    return max(values, default=None)


def _less(have: int | None, used: int) -> int | None:
    return None if have is None else have - used


def _smaller(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


@dataclass(frozen=True, slots=True)
class Requirement:
    """A spec's matching conditions, parsed once when the process is queued."""

    executor_names: frozenset[str] = frozenset()
    location: str = ""
    cpu_millis: int = 0
    mem_bytes: int = 0
    storage_bytes: int = 0
    gpu_count: int = 0
    gpu_mem_bytes: int = 0
    gpu_name: str = ""
    nodes: int = 0
    # Has a maxexectime, which counts from the assignment: never for a prefetch, since the
    # process would wait behind another with its clock running.
    timed: bool = False

    @classmethod
    def of(cls, spec: FunctionSpec) -> Requirement:
        c = spec.conditions
        if _is_plain(spec):
            # Shared: most specs ask for nothing beyond the executor type (and a maxexectime).
            return _PLAIN_TIMED if spec.max_exec_time > 0 else _PLAIN
        return cls(
            executor_names=frozenset(c.executor_names),
            location=c.location_name,
            cpu_millis=parse_cpu_millis(c.cpu),
            mem_bytes=parse_bytes(c.mem),
            storage_bytes=parse_bytes(c.storage),
            gpu_count=c.gpu.count,
            gpu_mem_bytes=parse_bytes(c.gpu.mem),
            gpu_name=c.gpu.name,
            nodes=c.nodes,
            timed=spec.max_exec_time > 0,
        )

    @property
    def consumes(self) -> bool:
        """Does a process with this requirement use up capacity while it runs?"""
        return bool(self.cpu_millis or self.mem_bytes or self.storage_bytes or self.gpu_count)

    def accepts(self, cap: Capacity) -> bool:
        """Can an executor with ``cap`` free take it? Unstated (None) dimensions never refuse."""
        if self is _PLAIN:
            return True
        return (
            not (self.timed and cap.behind)
            and (not self.executor_names or cap.name in self.executor_names)
            and (not self.location or self.location == cap.location)
            and _fits(self.cpu_millis, cap.cpu_millis)
            and _fits(self.mem_bytes, cap.mem_bytes)
            and _fits(self.storage_bytes, cap.storage_bytes)
            and _fits(self.gpu_count, cap.gpu_count)
            and _fits(self.gpu_mem_bytes, cap.gpu_mem_bytes)
            and (not self.gpu_name or not cap.gpu_name or self.gpu_name == cap.gpu_name)
            and _fits(self.nodes, cap.nodes)
        )


def _fits(need: int, have: int | None) -> bool:
    return need == 0 or have is None or need <= have


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Process).decode


_PLAIN = Requirement()
_PLAIN_TIMED = Requirement(timed=True)


def _body(process: Process) -> bytes | None:
    """The process as msgpack, or None where msgpack cannot hold it (an integer beyond 64 bits
    in its args or input, which JSON carries): it is then read back from KV when assigned."""
    try:
        return _encode(process)
    except OverflowError:
        return None


def _is_plain(spec: FunctionSpec) -> bool:
    c = spec.conditions
    return not (
        c.executor_names
        or c.location_name
        or c.cpu
        or c.mem
        or c.storage
        or c.gpu.count
        or c.gpu.mem
        or c.gpu.name
        or c.nodes
    )


@dataclass(slots=True)
class Usage:
    """What the processes one executor runs requested, added up."""

    cpu_millis: int = 0
    mem_bytes: int = 0
    storage_bytes: int = 0
    gpu_count: int = 0
    processes: int = 0  # how many of them requested anything

    def add(self, req: Requirement, sign: int = 1) -> None:
        self.cpu_millis += sign * req.cpu_millis
        self.mem_bytes += sign * req.mem_bytes
        self.storage_bytes += sign * req.storage_bytes
        self.gpu_count += sign * req.gpu_count
        self.processes += sign


class CapacityInUse:
    """Per executor (by id), what its running processes requested. A process is held from the
    moment it is taken from the queue for an executor until it leaves RUNNING; holding is
    idempotent per process id and releasing an unknown id does nothing, so the broker can
    release on every write and hold on every RUNNING one."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[str, Requirement]] = {}
        self._used: dict[str, Usage] = {}

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, executor_id: str, process_id: str, req: Requirement) -> None:
        if req is _PLAIN or not req.consumes:
            return
        self.release(process_id)
        self._held[process_id] = (executor_id, req)
        self._used.setdefault(executor_id, Usage()).add(req)

    def release(self, process_id: str) -> str | None:
        """Returns the executor whose capacity this gave back, if any."""
        held = self._held.pop(process_id, None)
        if held is None:
            return None
        executor_id, req = held
        used = self._used[executor_id]
        used.add(req, -1)
        if used.processes == 0:
            del self._used[executor_id]
        return executor_id

    def used(self, executor_id: str) -> Usage:
        """A copy of what the executor's processes hold (zero if nothing)."""
        return replace(self._used.get(executor_id) or Usage())

    def free(self, cap: Capacity, executor_id: str) -> Capacity:
        used = self._used.get(executor_id)
        return cap if used is None else cap.minus(used)


@dataclass(slots=True)
class Offer:
    """What one assign request can take: the executor's capacity, less what its processes
    hold, within the request's own bounds (``availablecpu``/``availablemem``; None: none)."""

    capacity: Capacity
    executor_id: str = ""
    in_use: CapacityInUse | None = None
    cpu_millis: int | None = None
    mem_bytes: int | None = None
    # A prefetch: what it takes waits behind a running process (Capacity.behind).
    prefetch: bool = False

    def free(self) -> Capacity:
        cap = self.capacity
        if self.in_use is not None:
            cap = self.in_use.free(cap, self.executor_id)
        if self.cpu_millis is not None or self.mem_bytes is not None:
            cap = cap.within(self.cpu_millis, self.mem_bytes)
        if self.prefetch:
            cap = replace(cap, behind=True)
        return cap

    def hold(self, process_id: str, req: Requirement) -> None:
        """The process is being handed to this executor: its request now counts as in use."""
        if self.in_use is not None:
            self.in_use.hold(self.executor_id, process_id, req)


@dataclass(slots=True)
class _Entry:
    # The process as msgpack, a third of the memory of the decoded Struct, decoded once when
    # assigned; None past `max_bodies` entries, when the caller reads it back from KV.
    data: bytes | None
    revision: int
    requirement: Requirement
    seq: int
    colony: str
    executor_type: str


class WaitingQueue:
    """Assignable processes per (colony, executor type), in priority order.

    Removal is lazy: a removed id stays in its heap until it reaches the top, so push, remove
    and the common unconstrained pop are all O(log n) whatever the queue length.
    """

    def __init__(self, max_bodies: int = 20_000) -> None:
        self.max_bodies = max_bodies
        self._bodies = 0
        self._heaps: dict[QueueKey, list[tuple[int, int, str]]] = {}
        self._entries: dict[str, _Entry] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, process_id: object) -> bool:
        return process_id in self._entries

    def push(self, process: Process, revision: int) -> None:
        seq = next(self._seq)
        pid = process.process_id
        # Interned: otherwise each of 100,000 queued processes keeps its own copy of both names.
        key = (sys.intern(process.colony_name), sys.intern(process.executor_type))
        self.remove(pid)
        data = _body(process) if self._bodies < self.max_bodies else None
        self._bodies += data is not None
        self._entries[pid] = _Entry(data, revision, Requirement.of(process.spec), seq, *key)
        heapq.heappush(self._heaps.setdefault(key, []), (process.priority_time, seq, pid))

    def depths(self) -> dict[QueueKey, int]:
        """How many processes are queued per (colony, executor type)."""
        found: dict[QueueKey, int] = {}
        for entry in self._entries.values():
            key = (entry.colony, entry.executor_type)
            found[key] = found.get(key, 0) + 1
        return found

    def remove(self, process_id: str) -> bool:
        entry = self._entries.pop(process_id, None)
        if entry is None:
            return False
        self._bodies -= entry.data is not None
        return True

    def pop_match(
        self, colony: str, offer: Offer, executor_type: str
    ) -> tuple[str, Process | None, int] | None:
        """Take the first process in priority order that ``offer`` has room for: its id, the
        process (None if its body was not kept: read it from KV) and its revision. What it
        requested is held in the offer's :class:`CapacityInUse` from now on."""
        heap = self._heaps.get((colony, executor_type))
        if not heap:
            return None
        cap = offer.free()
        skipped: list[tuple[int, int, str]] = []
        found: _Entry | None = None
        while heap:
            item = heapq.heappop(heap)
            entry = self._entries.get(item[2])
            if entry is None or entry.seq != item[1]:
                continue  # removed, or re-queued under a newer sequence
            if entry.requirement.accepts(cap):
                found = entry
                self.remove(item[2])
                pid = item[2]
                break
            skipped.append(item)
        for item in skipped:
            heapq.heappush(heap, item)
        if found is None:
            return None
        offer.hold(pid, found.requirement)
        body = _decode(found.data) if found.data is not None else None
        return pid, body, found.revision

    def ahead_of(self, process_id: str, caps: Sequence[Capacity] | None = None) -> int | None:
        """How many queued processes of its colony and type come before it (None: not queued);
        with ``caps``, only those that one of them would take (they are served first). A scan
        of its queue: for explaining, not for the hot path."""
        entry = self._entries.get(process_id)
        if entry is None:
            return None
        heap = self._heaps.get((entry.colony, entry.executor_type), [])
        mine = next(item for item in heap if item[2] == process_id and item[1] == entry.seq)
        ahead = 0
        for item in heap:
            other = self._entries.get(item[2])
            if item >= mine or other is None or other.seq != item[1]:
                continue
            if caps is None or any(other.requirement.accepts(c) for c in caps):
                ahead += 1
        return ahead


W = TypeVar("W")


@dataclass(slots=True)
class _Parked(Generic[W]):
    offer: Offer
    waiter: W


class ParkedAssigns(Generic[W]):
    """Executors waiting in a long-poll assign, first come first served per queue.

    An assign marked as a prefetch (its executor's slots are all busy: the process would wait
    behind them) parks apart, and is handed a process only when no idle executor's parked
    assign matches it: an executor never holds work that another could start now.
    """

    def __init__(self) -> None:
        self._parked: dict[QueueKey, deque[_Parked[W]]] = {}
        self._ahead: dict[QueueKey, deque[_Parked[W]]] = {}  # prefetches

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues())

    def _queues(self) -> list[deque[_Parked[W]]]:
        return [*self._parked.values(), *self._ahead.values()]

    def park(self, colony: str, executor_type: str, offer: Offer, waiter: W) -> None:
        park = self._ahead if offer.prefetch else self._parked
        park.setdefault((colony, executor_type), deque()).append(_Parked(offer, waiter))

    def unpark(self, colony: str, executor_type: str, waiter: W) -> bool:
        for park in (self._parked, self._ahead):
            queue = park.get((colony, executor_type)) or deque()
            for parked in queue:
                if parked.waiter is waiter:
                    queue.remove(parked)
                    return True
        return False

    def take_all_of(self, executor_id: str) -> list[W]:
        """Every parked assign of one executor, removed from the park: capacity it lacked may
        have come back, so it should look at the queue again."""
        taken = []
        for queue in self._queues():
            mine = [p for p in queue if p.offer.executor_id == executor_id]
            for parked in mine:
                queue.remove(parked)
                taken.append(parked.waiter)
        return taken

    def all_waiters(self) -> list[W]:
        return [p.waiter for queue in self._queues() for p in queue]

    def take_for(self, process: Process) -> W | None:
        """The first parked executor that ``process`` matches (with what it has free now),
        removed from the park; the process's request is held for it. Idle executors first,
        then prefetches."""
        key = (process.colony_name, process.executor_type)
        requirement = Requirement.of(process.spec)
        for park in (self._parked, self._ahead):
            queue = park.get(key)
            parked = _first_match(queue, requirement)
            if queue is not None and parked is not None:
                queue.remove(parked)
                parked.offer.hold(process.process_id, requirement)
                return parked.waiter
        return None

    def idle_match(self, process: Process) -> bool:
        """Does an idle executor's parked assign (not a prefetch) match ``process``?"""
        queue = self._parked.get((process.colony_name, process.executor_type))
        return _first_match(queue, Requirement.of(process.spec)) is not None


def _first_match(queue: deque[_Parked[W]] | None, requirement: Requirement) -> _Parked[W] | None:
    for parked in queue or ():
        if requirement.accepts(parked.offer.free()):
            return parked
    return None


class DeadlineHeap:
    """Processes by deadline; lazy, like the queue: the caller re-checks what it pops.

    Pop returns every (colony, process id) whose deadline has passed; the caller re-reads the
    process and lets the state machine decide whether the deadline still applies.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, str, str]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, deadline_ns: int, colony: str, process_id: str) -> None:
        heapq.heappush(self._heap, (deadline_ns, colony, process_id))

    def pop_due(self, now_ns: int) -> list[tuple[str, str]]:
        due = []
        while self._heap and self._heap[0][0] <= now_ns:
            _, colony, pid = heapq.heappop(self._heap)
            due.append((colony, pid))
        return due
