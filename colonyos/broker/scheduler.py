"""Which waiting process goes to which executor. Pure: no I/O, no clock, no asyncio.

* Order: the lowest ``prioritytime`` that matches goes first; ties are first-in-first-out.
* Matching: same colony and executor type; ``executornames`` empty or naming the executor;
  ``locationname`` empty or equal; requested cpu/mem/storage/gpu/nodes within the executor's
  registered capabilities.
* Parked assigns (the long poll) are woken one at a time: a new process goes to the first
  parked executor it matches, never to all of them.
"""

from __future__ import annotations

import heapq
import itertools
import sys
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

import msgspec

from colonyos.models import Executor, FunctionSpec, Process
from colonyos.resources import parse_bytes, parse_cpu_millis

__all__ = [
    "DAY_NS",
    "Capacity",
    "DeadlineHeap",
    "ParkedAssigns",
    "Requirement",
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
    """What an executor registered that it can offer; the largest of its hardware entries."""

    name: str
    location: str
    cpu_millis: int = 0
    mem_bytes: int = 0
    storage_bytes: int = 0
    gpu_count: int = 0
    gpu_mem_bytes: int = 0
    gpu_name: str = ""
    nodes: int = 0

    @classmethod
    def of(cls, executor: Executor) -> Capacity:
        hw = executor.capabilities.hardware
        return cls(
            name=executor.executor_name,
            location=executor.location_name,
            cpu_millis=max((parse_cpu_millis(h.cpu) for h in hw), default=0),
            mem_bytes=max((parse_bytes(h.mem) for h in hw), default=0),
            storage_bytes=max((parse_bytes(h.storage) for h in hw), default=0),
            gpu_count=max((h.gpu.count for h in hw), default=0),
            gpu_mem_bytes=max((parse_bytes(h.gpu.mem) for h in hw), default=0),
            gpu_name=next((h.gpu.name for h in hw if h.gpu.name), ""),
            nodes=max((h.nodes for h in hw), default=0),
        )


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

    @classmethod
    def of(cls, spec: FunctionSpec) -> Requirement:
        c = spec.conditions
        if _is_plain(spec):
            return _PLAIN  # shared: most specs ask for nothing beyond the executor type
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
        )

    def accepts(self, cap: Capacity) -> bool:
        return (
            (not self.executor_names or cap.name in self.executor_names)
            and (not self.location or self.location == cap.location)
            and self.cpu_millis <= cap.cpu_millis
            and self.mem_bytes <= cap.mem_bytes
            and self.storage_bytes <= cap.storage_bytes
            and self.gpu_count <= cap.gpu_count
            and self.gpu_mem_bytes <= cap.gpu_mem_bytes
            and (not self.gpu_name or self.gpu_name == cap.gpu_name)
            and self.nodes <= cap.nodes
        )


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Process).decode


_PLAIN = Requirement()


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

    def remove(self, process_id: str) -> bool:
        entry = self._entries.pop(process_id, None)
        if entry is None:
            return False
        self._bodies -= entry.data is not None
        return True

    def pop_match(
        self, colony: str, cap: Capacity, executor_type: str
    ) -> tuple[str, Process | None, int] | None:
        """Take the first process in priority order that ``cap`` satisfies: its id, the
        process (None if its body was not kept: read it from KV) and its revision."""
        heap = self._heaps.get((colony, executor_type))
        if not heap:
            return None
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
        body = _decode(found.data) if found.data is not None else None
        return pid, body, found.revision


W = TypeVar("W")


@dataclass(slots=True)
class _Parked(Generic[W]):
    capacity: Capacity
    waiter: W


class ParkedAssigns(Generic[W]):
    """Executors waiting in a long-poll assign, first come first served per queue."""

    def __init__(self) -> None:
        self._parked: dict[QueueKey, deque[_Parked[W]]] = {}

    def __len__(self) -> int:
        return sum(len(q) for q in self._parked.values())

    def park(self, colony: str, executor_type: str, cap: Capacity, waiter: W) -> None:
        self._parked.setdefault((colony, executor_type), deque()).append(_Parked(cap, waiter))

    def unpark(self, colony: str, executor_type: str, waiter: W) -> bool:
        queue = self._parked.get((colony, executor_type))
        if not queue:
            return False
        for parked in queue:
            if parked.waiter is waiter:
                queue.remove(parked)
                return True
        return False

    def all_waiters(self) -> list[W]:
        return [p.waiter for queue in self._parked.values() for p in queue]

    def take_for(self, process: Process) -> W | None:
        """The first parked executor that ``process`` matches, removed from the park."""
        queue = self._parked.get((process.colony_name, process.executor_type))
        if not queue:
            return None
        requirement = Requirement.of(process.spec)
        for parked in queue:
            if requirement.accepts(parked.capacity):
                queue.remove(parked)
                return parked.waiter
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
