"""The broker's state and request handlers: assigning, closing, and answering queries.

Everything the leading broker knows about live processes (the waiting queue, what is running
and on which executor, deadlines) is updated in one place, :meth:`Service.track`, after every
write, and rebuilt from KV by :meth:`Service.load` when a broker starts leading.

Handlers decode at the edge, decide through the pure :mod:`scheduler` and :mod:`transitions`,
write through :mod:`store` (KV compare-and-set, then one event), and keep the :mod:`index`
projection current. Nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import msgspec
from nats.aio.msg import Msg

from colonyos.broker import transitions
from colonyos.broker.index import ProcessIndex
from colonyos.broker.scheduler import Capacity, DeadlineHeap, ParkedAssigns, WaitingQueue
from colonyos.broker.store import ProcessStore, StaleRevisionError
from colonyos.errors import (
    ColoniesError,
    ColonyNotFoundError,
    ConflictError,
    ExecutorNotFoundError,
    InvalidSpecError,
    NotAuthorizedError,
    ProcessNotFoundError,
)
from colonyos.messages import (
    Assign,
    Close,
    Fail,
    Heartbeat,
    LogLines,
    Outcome,
    Register,
    Results,
    Revoke,
)
from colonyos.models import (
    ZERO_TIME,
    Colony,
    Executor,
    ExecutorState,
    LogEntry,
    Process,
    ProcessState,
    now,
)
from colonyos.subjects import SERVER_SCOPE, Subjects, check_name

__all__ = ["Service", "new_id"]

logger = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
_NO_WORK = b'{"result":null}'
_heartbeat_decoder = msgspec.json.Decoder(Heartbeat)
_TRANSITION_ATTEMPTS = 8
# How far before the newest event a revision may have been written and still lack its event.
_EVENT_SLACK = timedelta(seconds=30)

Picked = tuple[Process, int]
Handler = Callable[[str, str, Any], Awaitable[Any]]


def new_id() -> str:
    """A Colonies id: 64 lowercase hex characters."""
    return secrets.token_hex(32)


def _revoked(before: Process, after: Process) -> bool:
    """Did this write take a running process away from its executor?"""
    return before.state is ProcessState.RUNNING and (
        after.state is not ProcessState.RUNNING or after.retries != before.retries
    )


def _ns(t: datetime) -> int:
    return int(t.timestamp() * 1e9)


@dataclass(slots=True)
class _Report:
    """The last heartbeat of an executor: when, and what it said it was running."""

    wall_ns: int
    running: frozenset[str] = field(default_factory=frozenset)


class Service:
    def __init__(self, store: ProcessStore, index: ProcessIndex, subjects: Subjects) -> None:
        self.store = store
        self.index = index
        self.subjects = subjects
        self.queue = WaitingQueue()
        self.parked: ParkedAssigns[asyncio.Future[Picked]] = ParkedAssigns()
        self.colonies: dict[str, Colony] = {}
        self.executors: dict[tuple[str, str], Executor] = {}
        self._capacities: dict[tuple[str, str], Capacity] = {}
        self._names: dict[str, tuple[str, str]] = {}  # executor id -> (colony, name)
        # Live processes beyond the queue, and what the lifecycle sweeps need.
        self.running: dict[str, tuple[Process, int]] = {}  # with its KV revision
        self.wait_deadlines = DeadlineHeap()
        self.exec_deadlines = DeadlineHeap()
        self.heard: dict[str, float] = {}  # executor id -> monotonic time of any sign of life
        # When this broker started leading (monotonic): a heard time no later than this is the
        # grace given at load, not a sign of life.
        self.lead_start = float("-inf")
        self.reports: dict[str, _Report] = {}  # executor id -> last heartbeat
        # Revisions loaded from KV whose event may be missing (their writer may have died).
        self.unconfirmed: set[str] = set()
        # Called after every write of a process that belongs to a graph (workflows).
        self.graph_hook: Callable[[Process], Awaitable[None]] | None = None
        self._ops: dict[str, tuple[msgspec.json.Decoder[Any], Handler]] = {
            "assign": (msgspec.json.Decoder(Assign), self.assign),
            "assign_many": (msgspec.json.Decoder(Assign), self.assign_many),
            "results": (msgspec.json.Decoder(Results), self.results),
            "close": (msgspec.json.Decoder(Close), self.close),
            "fail": (msgspec.json.Decoder(Fail), self.fail),
            "log": (msgspec.json.Decoder(LogLines), self.log),
            "register": (msgspec.json.Decoder(Register), self.register),
        }

    def register_ops(self, **ops: tuple[type[Any], Handler]) -> None:
        """Add request operations (name -> (request type, handler)) served by another part."""
        for name, (request_type, handler) in ops.items():
            self._ops[name] = (msgspec.json.Decoder(request_type), handler)

    # -- start-up ---------------------------------------------------------------------
    async def load(self) -> None:
        """Rebuild colonies, executors, queue, running set and index from JetStream."""
        async for colony in self.store.all_colonies():
            self.colonies[colony.name] = colony
        async for executor in self.store.all_executors():
            self.remember_executor(executor)
        last_event = await self.store.last_event_time()
        count = 0
        async for process, revision, written in self.store.all_processes():
            count += 1
            self.track(process, revision)
            if not process.state.is_terminal:
                self.unconfirmed.add(process.process_id)
            elif last_event is None or written is None or written >= last_event - _EVENT_SLACK:
                # Written about when the last event was: its own event may never have been sent.
                await self.store.ensure_event(process, revision)
        started = self.lead_start = time.monotonic()
        for executor in self.executors.values():
            self.heard[executor.executor_id] = started  # a new leader gives everyone a grace
        await self.index.flush()
        logger.info(
            "loaded %d colonies, %d executors, %d processes (%d waiting, %d running)",
            len(self.colonies),
            len(self.executors),
            count,
            len(self.queue),
            len(self.running),
        )

    def track(self, process: Process, revision: int, data: bytes | None = None) -> None:
        """The one place where in-memory state follows a written (or loaded) process
        (``data``: its JSON, when the caller has it already)."""
        pid = process.process_id
        self.index.put(process, data)
        self.queue.remove(pid)
        self.running.pop(pid, None)
        if process.state is ProcessState.WAITING and not process.wait_for_parents:
            if process.wait_deadline != ZERO_TIME:
                self.wait_deadlines.push(_ns(process.wait_deadline), process.colony_name, pid)
            self._enqueue(process, revision)
        elif process.state is ProcessState.RUNNING:
            self.running[pid] = (process, revision)
            if process.exec_deadline != ZERO_TIME:
                self.exec_deadlines.push(_ns(process.exec_deadline), process.colony_name, pid)

    async def _confirm(self, process: Process, revision: int) -> None:
        """Before changing a loaded revision, make sure its event exists (stream order)."""
        if process.process_id in self.unconfirmed:
            self.unconfirmed.discard(process.process_id)
            await self.store.ensure_event(process, revision)

    def _enqueue(self, process: Process, revision: int) -> None:
        """Hand a waiting process to one parked executor that matches it, else queue it."""
        while (waiter := self.parked.take_for(process)) is not None:
            if not waiter.done():
                waiter.set_result((process, revision))
                return
        self.queue.push(process, revision)

    # -- request/reply ------------------------------------------------------------------
    async def handle(self, msg: Msg) -> None:
        colony, caller, op = self.subjects.parse_rpc(msg.subject)
        try:
            entry = self._ops.get(op)
            if entry is None:
                raise InvalidSpecError(f"unknown operation {op!r}", op=op)
            decoder, handler = entry
            try:
                request = decoder.decode(msg.data or b"{}")
            except msgspec.ValidationError as err:
                raise InvalidSpecError(f"bad {op} request: {err}", op=op) from err
            except msgspec.DecodeError as err:
                raise InvalidSpecError(f"malformed {op} request: {err}", op=op) from err
            if colony != SERVER_SCOPE and op not in ("colony_add", "colony_get"):
                self.colony(colony)
                known = self.executors.get((colony, caller))
                if known is not None:
                    self.heard[known.executor_id] = time.monotonic()
            result = await handler(colony, caller, request)
            body = _NO_WORK if result is None else b'{"result":' + _result_bytes(result) + b"}"
        except ColoniesError as err:
            body = _encode({"error": err.to_reply()})
        if msg.reply:
            await msg.respond(body)

    def heartbeat(self, msg: Msg) -> None:
        """An executor's heartbeat: it is alive, and running what it lists."""
        try:
            beat = _heartbeat_decoder.decode(msg.data)
        except msgspec.MsgspecError:
            logger.warning("ignored a malformed heartbeat on %s", msg.subject)
            return
        self.heard[beat.executor_id] = time.monotonic()
        self.reports[beat.executor_id] = _Report(time.time_ns(), frozenset(beat.running))

    def colony(self, colony: str) -> Colony:
        try:
            return self.colonies[colony]
        except KeyError:
            raise ColonyNotFoundError(colony) from None

    def executor(self, colony: str, name: str) -> Executor:
        try:
            return self.executors[(colony, name)]
        except KeyError:
            raise ExecutorNotFoundError(colony, name) from None

    def _approved(self, colony: str, name: str) -> Executor:
        executor = self.executor(colony, name)
        if executor.state is not ExecutorState.APPROVED:
            raise NotAuthorizedError(
                f"executor {name!r} is {executor.state.name}, not APPROVED: ask the colony owner "
                f"to run 'colonies executor approve --name {name}'",
                executor_name=name,
                state=executor.state.name,
            )
        return executor

    async def transition(
        self,
        colony: str,
        process_id: str,
        step: Callable[[Process], Process],
        *,
        notify: bool = True,
        current: Picked | None = None,
    ) -> Process:
        """Read, decide, compare-and-set, publish; retried if someone else wrote first.

        With ``notify``, an executor whose running process this takes away (cancel, re-queue)
        is told at once on its control subject. ``current``: the process and revision the
        caller has just read (the first attempt starts from it).
        """
        # A running process, or one just read: no need to read it back.
        known = current or self.running.get(process_id)
        for _ in range(_TRANSITION_ATTEMPTS):
            if known is not None and known[0].colony_name == colony:
                process, revision = known
                known = None
            else:
                process, revision = await self.store.get(colony, process_id)
            updated = step(process)
            await self._confirm(process, revision)
            try:
                new_revision, data = await self.store.update(updated, revision)
            except StaleRevisionError:
                continue
            self.track(updated, new_revision, data)
            if notify and _revoked(process, updated):
                await self._revoke(process, updated)
            await self._after(updated)
            return updated
        raise ConflictError(f"process {process_id} kept changing; try again", process_id=process_id)

    # -- executor operations ------------------------------------------------------------
    async def assign(self, colony: str, caller: str, req: Assign) -> Process | None:
        executor = self._approved(colony, caller)
        cap = self._capacities[(colony, caller)]
        etype = executor.executor_type
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, req.timeout)
        while True:
            popped = self.queue.pop_match(colony, cap, etype)
            if popped is not None:
                picked = await self._body(colony, popped)
                if picked is None:
                    continue  # removed meanwhile: take the next one
            else:
                logger.debug("assign from %s in %s parked", caller, colony)
                picked = await self._park(colony, etype, cap, deadline - loop.time())
                if picked is None:
                    return None
            updated = await self._take(executor, *picked)
            if updated is not None:
                return updated

    async def assign_many(self, colony: str, caller: str, req: Assign) -> list[Process]:
        """Up to ``req.count`` processes: the first as :meth:`assign` gets it (waiting for one
        if need be), then those assignable at once, written together."""
        first = await self.assign(colony, caller, req)
        if first is None:
            return []
        executor = self._approved(colony, caller)
        cap = self._capacities[(colony, caller)]
        popped: list[tuple[str, Process | None, int]] = []
        while len(popped) < req.count - 1:
            item = self.queue.pop_match(colony, cap, executor.executor_type)
            if item is None:
                break
            popped.append(item)
        taken = await asyncio.gather(
            *(self._take_popped(executor, item) for item in popped), return_exceptions=True
        )
        assigned = [first]
        for outcome in taken:
            if isinstance(outcome, Process):
                assigned.append(outcome)
            elif isinstance(outcome, BaseException):
                logger.warning("assigning to %s in %s failed: %s", caller, colony, outcome)
        return assigned

    async def _take_popped(
        self, executor: Executor, popped: tuple[str, Process | None, int]
    ) -> Process | None:
        picked = await self._body(executor.colony_name, popped)
        return None if picked is None else await self._take(executor, *picked)

    async def _take(self, executor: Executor, process: Process, revision: int) -> Process | None:
        """Write a process taken from the queue as running on ``executor``; None if it was no
        longer assignable. If the write fails, the process goes back to the queue."""
        try:
            updated = transitions.assign(process, executor, now=now())
        except ConflictError:
            self.track(process, revision)  # read back from KV, and no longer waiting
            return None
        try:
            await self._confirm(process, revision)
            new_revision, data = await self.store.update(updated, revision)
        except StaleRevisionError:
            await self._reload(process)  # changed meanwhile: learn what it is now
            return None
        except BaseException:
            self.track(process, revision)
            raise
        self.track(updated, new_revision, data)
        await self._after(updated)
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
            return None

    async def _park(self, colony: str, etype: str, cap: Capacity, timeout: float) -> Picked | None:
        if timeout <= 0:
            return None
        waiter: asyncio.Future[Picked] = asyncio.get_running_loop().create_future()
        self.parked.park(colony, etype, cap, waiter)
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
                return None  # released by release_parked(): answer "no work"
            raise
        finally:
            self.parked.unpark(colony, etype, waiter)

    async def _revoke(self, before: Process, after: Process) -> None:
        holder = self._names.get(before.assigned_executor_id)
        if holder is None:
            return
        colony, name = holder
        reason = after.errors[-1] if after.errors else after.state.name.lower()
        body = Revoke(process_id=after.process_id, state=after.state, reason=reason)
        await self.store.tell(self.subjects.control(colony, name), body)

    async def _after(self, process: Process) -> None:
        if process.process_graph_id and self.graph_hook is not None:
            await self.graph_hook(process)

    async def _reload(self, process: Process) -> None:
        try:
            current, revision = await self.store.get(process.colony_name, process.process_id)
        except ProcessNotFoundError:
            self.index.remove(process.process_id)
            return
        self.unconfirmed.add(process.process_id)
        self.track(current, revision)

    def release_parked(self) -> None:
        """Answer every parked assign with "no work" (the broker is stopping)."""
        for waiter in self.parked.all_waiters():
            waiter.cancel()

    async def close(self, colony: str, caller: str, req: Close) -> Process:
        step = functools.partial(_close_step, self.executor(colony, caller), req, now())
        return await self.transition(colony, req.process_id, step, notify=False)

    async def fail(self, colony: str, caller: str, req: Fail) -> Process:
        step = functools.partial(_fail_step, self.executor(colony, caller), req, now())
        return await self.transition(colony, req.process_id, step, notify=False)

    async def results(self, colony: str, caller: str, req: Results) -> list[Outcome]:
        """Close and fail several processes in one request; each is answered on its own."""
        executor = self.executor(colony, caller)
        t = now()
        steps: list[tuple[str, Callable[[Process], Process]]] = []
        for close in req.closes:
            steps.append((close.process_id, functools.partial(_close_step, executor, close, t)))
        for fail in req.fails:
            steps.append((fail.process_id, functools.partial(_fail_step, executor, fail, t)))
        done = await asyncio.gather(
            *(self.transition(colony, pid, step, notify=False) for pid, step in steps),
            return_exceptions=True,
        )
        outcomes = []
        for (pid, _), outcome in zip(steps, done, strict=True):
            if isinstance(outcome, ColoniesError):
                outcomes.append(Outcome(process_id=pid, error=outcome.to_reply()))
            elif isinstance(outcome, BaseException):
                raise outcome  # NATS trouble: the executor sends them all again
            else:
                outcomes.append(Outcome(process_id=pid))
        return outcomes

    async def log(self, colony: str, caller: str, req: LogLines) -> None:
        executor = self.executor(colony, caller)
        process, _ = await self.store.get(colony, req.process_id)
        transitions.require_lease(process, executor, "add logs to", req.attempt)
        subject = self.subjects.logs(colony, req.process_id)
        stamp = time.time_ns()
        for i, line in enumerate(req.lines):
            entry = LogEntry(
                process_id=req.process_id,
                colony_name=colony,
                executor_name=caller,
                message=line,
                timestamp=stamp + i,
            )
            await self.store.js.publish(subject, _encode(entry))
        return None

    async def register(self, colony: str, caller: str, req: Register) -> Executor:
        ex = req.executor
        check_name("executorname", ex.executor_name)
        check_name("executortype", ex.executor_type)
        if ex.executor_name != caller:
            raise NotAuthorizedError(
                f"caller {caller!r} cannot register executor {ex.executor_name!r}",
                executor_name=ex.executor_name,
            )
        previous = self.executors.get((colony, ex.executor_name))
        if previous is not None and previous.executor_id != ex.executor_id:
            # The same executor started again: what its previous run held is lost now.
            self.heard[previous.executor_id] = float("-inf")
        if previous is not None and previous.executor_type == ex.executor_type:
            state = previous.state
        elif self.colonies[colony].auto_approve:
            state = ExecutorState.APPROVED
        else:
            state = ExecutorState.PENDING
        t = now()
        registered = msgspec.structs.replace(
            ex,
            executor_id=ex.executor_id or new_id(),
            colony_name=colony,
            state=state,
            commission_time=t,
            last_heard_from_time=t,
        )
        await self.store.put_executor(registered)
        self.remember_executor(registered)
        self.heard[registered.executor_id] = time.monotonic()
        logger.info(
            "registered executor %s (%s) in %s: %s",
            registered.executor_name,
            registered.executor_type,
            colony,
            state.name,
        )
        return registered

    def forget_executor(self, executor: Executor) -> None:
        key = (executor.colony_name, executor.executor_name)
        self.executors.pop(key, None)
        self._capacities.pop(key, None)

    def remember_executor(self, executor: Executor) -> None:
        key = (executor.colony_name, executor.executor_name)
        self._names[executor.executor_id] = key
        self.executors[key] = executor
        self._capacities[key] = Capacity.of(executor)


def _close_step(executor: Executor, req: Close, t: datetime, process: Process) -> Process:
    return transitions.close(process, executor, req.output, now=t, attempt=req.attempt)


def _fail_step(executor: Executor, req: Fail, t: datetime, process: Process) -> Process:
    return transitions.fail(process, executor, req.errors, now=t, attempt=req.attempt)


def _result_bytes(result: Any) -> bytes:
    if isinstance(result, msgspec.Raw):
        return bytes(result)
    return _encode(result)
