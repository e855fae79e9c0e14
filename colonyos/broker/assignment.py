"""The assignment path: an executor's assign finds a queued process it can take, or parks
until one comes (a new process is handed to one parked executor at once, by
:meth:`Service.enqueue`), then takes it by compare-and-set on the process's revision.

An assign marked as a prefetch (the executor's slots are all busy) takes one process, and only
one that no idle executor's parked assign matches: it parks behind them, and a process it pops
from the queue goes to such an executor instead. What it takes is RUNNING on its executor from
then on, as any assignment: it holds its capacity, its ``maxexectime`` counts from now, and it
goes back to the queue by the executor's release or its loss.

A process popped from the queue has its capacity held for the executor until it is written as
running; a write that loses the compare-and-set learns what the process is now, and any other
failure puts it back in the queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import msgspec

from colonyos.broker import transitions
from colonyos.broker.scheduler import Offer, WaitingQueue
from colonyos.broker.service import LOOK_AGAIN, Picked, Service
from colonyos.broker.store import StaleRevisionError
from colonyos.errors import ColoniesError, ConflictError, InvalidSpecError, ProcessNotFoundError
from colonyos.messages import Assign
from colonyos.models import Executor, Process, now
from colonyos.resources import parse_bytes, parse_cpu_millis

__all__ = ["Assignment", "pop_batch", "reply_holds"]

logger = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
# What a process's JSON gains when it is assigned (its executor's id, start time, deadline):
# at most 78 bytes; the rest is margin.
_ASSIGNED_GROWTH = 128


class Assignment:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.queue = service.queue
        self.parked = service.parked
        self.in_use = service.in_use
        self.store = service.store
        service.register_ops(assign=(Assign, self.assign), assign_many=(Assign, self.assign_many))

    async def assign(self, colony: str, caller: str, req: Assign) -> Process | None:
        executor = self.service.approved(colony, caller, req.executor_id)
        cap = self.offer(executor, req)
        etype = executor.executor_type
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, req.timeout)
        while True:
            popped = self.queue.pop_match(colony, cap, etype)
            if popped is not None:
                picked = await self._body(colony, popped)
                if picked is None:
                    continue  # removed meanwhile: take the next one
                if req.prefetch and self.parked.idle_match(picked[0]):
                    self.in_use.release(picked[0].process_id)  # held for this prefetch
                    self.service.enqueue(*picked)  # to the idle executor
                    continue
            else:
                logger.debug("assign from %s in %s parked", caller, colony)
                picked = await self._park(
                    colony,
                    etype,
                    cap,
                    deadline - loop.time(),
                    run=executor.executor_id,
                )
                if picked is None:
                    return None
                if picked is LOOK_AGAIN:
                    continue
                try:  # parked a while: removed, rejected or replaced meanwhile?
                    executor = self.service.approved(colony, caller, executor.executor_id)
                except ColoniesError:
                    self.in_use.release(picked[0].process_id)  # held for this executor
                    self.service.enqueue(*picked)  # for another executor
                    raise
            updated = await self._take(executor, *picked)
            if updated is not None:
                return updated

    async def assign_many(self, colony: str, caller: str, req: Assign) -> list[Process]:
        """Up to ``req.count`` processes: the first as :meth:`assign` gets it (waiting for one
        if need be), then those assignable at once, written together."""
        first = await self.assign(colony, caller, req)
        if first is None:
            return []
        if req.prefetch:
            return [first]  # a prefetch takes one process: the next to run
        try:
            executor = self.service.approved(colony, caller, req.executor_id)
        except ColoniesError:
            return [first]  # changed in this instant: the rest waits for the next request
        cap = self.offer(executor, req)
        popped = pop_batch(self.queue, colony, cap, executor.executor_type, req.count - 1)
        picked = await self._within_reply(colony, first, popped)
        taken = await asyncio.gather(
            *(self._take(executor, *item) for item in picked), return_exceptions=True
        )
        assigned = [first]
        for outcome in taken:
            if isinstance(outcome, Process):
                assigned.append(outcome)
            elif isinstance(outcome, BaseException):
                logger.warning("assigning to %s in %s failed: %s", caller, colony, outcome)
        return assigned

    def offer(self, executor: Executor, req: Assign) -> Offer:
        """What ``executor`` can take in this assign: its capacity less what its running
        processes hold, within the request's ``availablecpu``/``availablemem`` if given."""
        return Offer(
            self.service.capacity_of(executor),
            executor.executor_id,
            self.in_use,
            _available("availablecpu", req.available_cpu, parse_cpu_millis),
            _available("availablemem", req.available_mem, parse_bytes),
            prefetch=req.prefetch,
        )

    async def _within_reply(
        self, colony: str, first: Process, popped: list[tuple[str, Process | None, int]]
    ) -> list[Picked]:
        """Those of ``popped`` that one reply still holds beside ``first``, in queue order
        (the others go back to the queue): a reply is one NATS message."""
        bodies = await asyncio.gather(
            *(self._body(colony, item) for item in popped), return_exceptions=True
        )
        read: list[Picked] = []
        for (pid, _, _), body in zip(popped, bodies, strict=True):
            if isinstance(body, BaseException):
                logger.warning("reading queued process %s in %s failed: %s", pid, colony, body)
                self.in_use.release(pid)  # not taken: the next leader queues it again
                continue
            if body is None:
                continue  # removed meanwhile
            read.append(body)
        sizes = [len(_encode(process)) for process, _ in read]
        held = reply_holds(self.service.reply_limit, len(_encode(first)), sizes)
        for body in read[held:]:
            self.service.track(*body)  # back in the queue, in its place
        return read[:held]

    async def _take(self, executor: Executor, process: Process, revision: int) -> Process | None:
        """Write a process taken from the queue as running on ``executor``; None if it was no
        longer assignable. If the write fails, the process goes back to the queue."""
        try:
            updated = transitions.assign(process, executor, now=now())
        except ConflictError:
            self.service.track(process, revision)  # read back from KV, and no longer waiting
            return None
        try:
            await self.service.confirm(process, revision)
            new_revision, data = await self.store.update(updated, revision)
        except StaleRevisionError:
            await self.service.reload(process)  # changed meanwhile: learn what it is now
            return None
        except BaseException:
            self.service.track(process, revision)
            raise
        self.service.track(updated, new_revision, data)
        self.store.metrics.assigned(updated)
        await self.service.after_write(updated)
        logger.debug("assigned %s to %s", process.process_id, executor.executor_name)
        return updated

    async def _body(self, colony: str, popped: tuple[str, Process | None, int]) -> Picked | None:
        """A queued process, read back from KV when the queue kept no body for it."""
        pid, process, revision = popped
        if process is not None:
            return process, revision
        try:
            return await self.store.get(colony, pid)
        except ProcessNotFoundError:
            self.in_use.release(pid)
            return None

    async def _park(
        self, colony: str, etype: str, cap: Offer, timeout: float, *, run: str
    ) -> Picked | None:
        if timeout <= 0:
            return None
        waiter: asyncio.Future[Picked] = asyncio.get_running_loop().create_future()
        self.parked.park(colony, etype, cap, waiter)
        runs = self.service.parked_runs.setdefault(run, set())
        runs.add(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(waiter)
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():  # handed one in the same instant
                return waiter.result()
            waiter.cancel()
            return None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if waiter.cancelled() and task is not None and not task.cancelling():
                return None  # released by release_parked() or unpark_run(): "no work"
            raise
        finally:
            self.parked.unpark(colony, etype, waiter)
            runs.discard(waiter)
            if not runs and self.service.parked_runs.get(run) is runs:
                del self.service.parked_runs[run]


def pop_batch(
    queue: WaitingQueue, colony: str, offer: Offer, executor_type: str, most: int
) -> list[tuple[str, Process | None, int]]:
    """Up to ``most`` queued processes that ``offer`` has room for, popped in priority order
    (as :meth:`WaitingQueue.pop_match` gives them: id, body or None, revision)."""
    popped: list[tuple[str, Process | None, int]] = []
    while len(popped) < most:
        item = queue.pop_match(colony, offer, executor_type)
        if item is None:
            break
        popped.append(item)
    return popped


def reply_holds(limit: int, first: int, sizes: Sequence[int]) -> int:
    """How many of the queued processes of JSON sizes ``sizes`` (in queue order) one reply
    holds beside the one assigned already, of size ``first``: the reply's result, at most
    ``limit`` bytes, is a JSON list (two brackets, a comma before each process past the
    first), and each queued process grows by up to ``_ASSIGNED_GROWTH`` when it is assigned.
    The first that does not fit ends the batch, so that none is taken out of its turn."""
    room = limit - first - 2
    for held, size in enumerate(sizes):
        room -= size + _ASSIGNED_GROWTH + 1
        if room < 0:
            return held
    return len(sizes)


def _available(key: str, text: str, parse: Callable[[str], int]) -> int | None:
    """An assign's ``availablecpu``/``availablemem``: empty is no bound, as in Colonies."""
    if not text:
        return None
    try:
        return parse(text)
    except ValueError as err:
        raise InvalidSpecError(f"$.{key}: {err}", path=f"$.{key}", reason=str(err)) from None
