"""The broker's behaviour: accepting specs, assigning, closing, and answering queries.

Handlers decode at the edge, decide through the pure :mod:`scheduler` and :mod:`transitions`,
write through :mod:`store` (KV compare-and-set, then one event), and keep the :mod:`index`
projection current. Nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import msgspec
from nats.aio.msg import Msg

from colonyos.broker import transitions
from colonyos.broker.index import ProcessIndex
from colonyos.broker.scheduler import Capacity, ParkedAssigns, WaitingQueue
from colonyos.broker.store import ProcessStore, StaleRevisionError
from colonyos.errors import (
    ColoniesError,
    ColonyNotFoundError,
    ConflictError,
    ExecutorNotFoundError,
    InvalidSpecError,
    NotAuthorizedError,
)
from colonyos.messages import (
    Assign,
    Close,
    ColonyAdd,
    Empty,
    Fail,
    ListProcesses,
    LogLines,
    Named,
    ProcessRef,
    Register,
    Rejection,
)
from colonyos.models import (
    Colony,
    Executor,
    ExecutorState,
    LogEntry,
    Process,
    ProcessState,
    now,
)
from colonyos.specs import decode_function_spec
from colonyos.subjects import SERVER_SCOPE, Subjects, check_name

__all__ = ["Service", "new_id"]

logger = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
_NO_WORK = b'{"result":null}'
_TRANSITION_ATTEMPTS = 8

Picked = tuple[Process, int]
Handler = Callable[[str, str, Any], Awaitable[Any]]


def new_id() -> str:
    """A Colonies id: 64 lowercase hex characters."""
    return secrets.token_hex(32)


def _is_process_id(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


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
        self._last_ns = 0
        self._ops: dict[str, tuple[msgspec.json.Decoder[Any], Handler]] = {
            "assign": (msgspec.json.Decoder(Assign), self.assign),
            "close": (msgspec.json.Decoder(Close), self.close),
            "fail": (msgspec.json.Decoder(Fail), self.fail),
            "log": (msgspec.json.Decoder(LogLines), self.log),
            "get": (msgspec.json.Decoder(ProcessRef), self.get),
            "list": (msgspec.json.Decoder(ListProcesses), self.list_processes),
            "cancel": (msgspec.json.Decoder(ProcessRef), self.cancel),
            "remove": (msgspec.json.Decoder(ProcessRef), self.remove),
            "register": (msgspec.json.Decoder(Register), self.register),
            "executor_list": (msgspec.json.Decoder(Empty), self.executor_list),
            "executor_approve": (msgspec.json.Decoder(Named), self.executor_approve),
            "executor_reject": (msgspec.json.Decoder(Named), self.executor_reject),
            "executor_remove": (msgspec.json.Decoder(Named), self.executor_remove),
            "colony_add": (msgspec.json.Decoder(ColonyAdd), self.colony_add),
            "colony_list": (msgspec.json.Decoder(Empty), self.colony_list),
            "colony_get": (msgspec.json.Decoder(Named), self.colony_get),
            "colony_remove": (msgspec.json.Decoder(Named), self.colony_remove),
        }

    # -- start-up ---------------------------------------------------------------------
    async def load(self) -> None:
        """Rebuild colonies, executors, the waiting queue and the index from JetStream."""
        async for colony in self.store.all_colonies():
            self.colonies[colony.name] = colony
        async for executor in self.store.all_executors():
            self._remember_executor(executor)
        count = 0
        async for process, revision in self.store.all_processes():
            count += 1
            self.index.put(process)
            if process.state is ProcessState.WAITING and not process.wait_for_parents:
                self.queue.push(process, revision)
        await self.index.flush()
        logger.info(
            "loaded %d colonies, %d executors, %d processes (%d waiting)",
            len(self.colonies),
            len(self.executors),
            count,
            len(self.queue),
        )

    # -- submissions --------------------------------------------------------------------
    def _clock(self) -> tuple[datetime, int]:
        """Wall time, with nanoseconds strictly increasing so that FIFO order is total."""
        t = now()
        ns = max(time.time_ns(), self._last_ns + 1)
        self._last_ns = ns
        return t, ns

    async def accept_batch(self, msgs: Sequence[Msg]) -> None:
        # Stamp in stream order first, so that equal priorities stay first-in-first-out.
        stamped = [(msg, *self._clock()) for msg in msgs]
        await asyncio.gather(*(self.accept(msg, t, ns) for msg, t, ns in stamped))

    async def accept(self, msg: Msg, t: datetime, ns: int) -> None:
        parts = msg.subject.split(".")
        colony, executor_type = parts[-3], parts[-1]
        process_id = self._process_id(msg)
        try:
            process = self._new_process(msg, colony, executor_type, process_id, t, ns)
        except ColoniesError as err:
            logger.info("rejected spec %s in colony %s: %s", process_id, colony, err.message)
            await self.store.publish_rejection(
                Rejection(
                    process_id=process_id,
                    colony_name=colony,
                    executor_type=executor_type,
                    error=err.message,
                    code=err.code,
                    path=str(err.detail.get("path", "")),
                )
            )
            await msg.ack()
            return
        revision = await self.store.create(process)
        if revision is None:
            await self._accept_duplicate(colony, process_id)
        else:
            await self.store.publish_event(process, revision)
            self.index.put(process)
            self._enqueue(process, revision)
        await msg.ack()

    def _process_id(self, msg: Msg) -> str:
        msg_id = (msg.headers or {}).get("Nats-Msg-Id", "")
        if _is_process_id(msg_id):
            return msg_id
        # No usable id from the publisher: derive one from the stream position, so that a
        # redelivery after a broker crash gives the same process, never a second one.
        seq = msg.metadata.sequence.stream
        basis = f"{self.subjects.stream_specs}:{seq}:{msg_id}".encode()
        return hashlib.sha256(basis).hexdigest()

    def _new_process(
        self, msg: Msg, colony: str, executor_type: str, process_id: str, t: datetime, ns: int
    ) -> Process:
        if colony not in self.colonies:
            raise ColonyNotFoundError(colony)
        spec = decode_function_spec(msg.data)
        cond = spec.conditions
        if cond.executor_type != executor_type:
            raise InvalidSpecError(
                f"$.conditions.executortype: {cond.executor_type!r} does not match the subject's "
                f"executor type {executor_type!r}",
                path="$.conditions.executortype",
            )
        if cond.colony_name and cond.colony_name != colony:
            raise InvalidSpecError(
                f"$.conditions.colonyname: {cond.colony_name!r} does not match the subject's "
                f"colony {colony!r}",
                path="$.conditions.colonyname",
            )
        spec = msgspec.structs.replace(
            spec, conditions=msgspec.structs.replace(cond, colony_name=colony)
        )
        initiator = (msg.headers or {}).get("Colonies-Initiator", "")
        return transitions.create(process_id, spec, now=t, now_ns=ns, initiator_name=initiator)

    async def _accept_duplicate(self, colony: str, process_id: str) -> None:
        """A spec whose process exists: a redelivery after a crash, or a re-submission."""
        process, revision = await self.store.get(colony, process_id)
        if process.state is ProcessState.WAITING and process.retries == 0:
            # Maybe the broker died between create and event: the event id makes this idempotent.
            await self.store.publish_event(process, revision)
            if process.process_id not in self.queue and not process.wait_for_parents:
                self._enqueue(process, revision)
        self.index.put(process)

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
                self._colony(colony)
            result = await handler(colony, caller, request)
            body = _NO_WORK if result is None else b'{"result":' + _result_bytes(result) + b"}"
        except ColoniesError as err:
            body = _encode({"error": err.to_reply()})
        if msg.reply:
            await msg.respond(body)

    def _colony(self, colony: str) -> Colony:
        try:
            return self.colonies[colony]
        except KeyError:
            raise ColonyNotFoundError(colony) from None

    def _executor(self, colony: str, name: str) -> Executor:
        try:
            return self.executors[(colony, name)]
        except KeyError:
            raise ExecutorNotFoundError(colony, name) from None

    def _approved(self, colony: str, name: str) -> Executor:
        executor = self._executor(colony, name)
        if executor.state is not ExecutorState.APPROVED:
            raise NotAuthorizedError(
                f"executor {name!r} is {executor.state.name}, not APPROVED: ask the colony owner "
                f"to run 'colonies executor approve --name {name}'",
                executor_name=name,
                state=executor.state.name,
            )
        return executor

    async def _transition(
        self, colony: str, process_id: str, step: Callable[[Process], Process]
    ) -> Process:
        """Read, decide, compare-and-set, publish; retried if someone else wrote first."""
        for _ in range(_TRANSITION_ATTEMPTS):
            process, revision = await self.store.get(colony, process_id)
            updated = step(process)
            try:
                new_revision = await self.store.update(updated, revision)
            except StaleRevisionError:
                continue
            await self.store.publish_event(updated, new_revision)
            self.index.put(updated)
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
            picked = self.queue.pop_match(colony, cap, etype)
            if picked is None:
                picked = await self._park(colony, etype, cap, deadline - loop.time())
                if picked is None:
                    return None
            process, revision = picked
            updated = transitions.assign(process, executor, now=now())
            try:
                new_revision = await self.store.update(updated, revision)
            except StaleRevisionError:
                continue  # changed meanwhile (cancelled, removed): take the next one
            await self.store.publish_event(updated, new_revision)
            self.index.put(updated)
            logger.debug("assigned %s to %s in %s", process.process_id, caller, colony)
            return updated

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

    def release_parked(self) -> None:
        """Answer every parked assign with "no work" (the broker is stopping)."""
        for waiter in self.parked.all_waiters():
            waiter.cancel()

    async def close(self, colony: str, caller: str, req: Close) -> Process:
        executor = self._executor(colony, caller)
        return await self._transition(
            colony,
            req.process_id,
            lambda p: transitions.close(p, executor, req.output, now=now()),
        )

    async def fail(self, colony: str, caller: str, req: Fail) -> Process:
        executor = self._executor(colony, caller)
        return await self._transition(
            colony,
            req.process_id,
            lambda p: transitions.fail(p, executor, req.errors, now=now()),
        )

    async def log(self, colony: str, caller: str, req: LogLines) -> None:
        executor = self._executor(colony, caller)
        process, _ = await self.store.get(colony, req.process_id)
        transitions.require_lease(process, executor, "add logs to")
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
        self._remember_executor(registered)
        logger.info(
            "registered executor %s (%s) in %s: %s",
            registered.executor_name,
            registered.executor_type,
            colony,
            state.name,
        )
        return registered

    def _remember_executor(self, executor: Executor) -> None:
        key = (executor.colony_name, executor.executor_name)
        self.executors[key] = executor
        self._capacities[key] = Capacity.of(executor)

    # -- user operations ------------------------------------------------------------------
    async def get(self, colony: str, caller: str, req: ProcessRef) -> Process:
        process, _ = await self.store.get(colony, req.process_id)
        return process

    async def list_processes(self, colony: str, caller: str, req: ListProcesses) -> msgspec.Raw:
        return msgspec.Raw(await self.index.query(colony, req))

    async def cancel(self, colony: str, caller: str, req: ProcessRef) -> Process:
        process = await self._transition(
            colony, req.process_id, lambda p: transitions.cancel(p, now=now())
        )
        self.queue.remove(req.process_id)
        return process

    async def remove(self, colony: str, caller: str, req: ProcessRef) -> None:
        process, _ = await self.store.get(colony, req.process_id)
        await self.store.delete(process)
        self.queue.remove(req.process_id)
        self.index.remove(req.process_id)
        return None

    async def executor_list(self, colony: str, caller: str, req: Empty) -> list[Executor]:
        return sorted(
            (e for (c, _), e in self.executors.items() if c == colony),
            key=lambda e: e.executor_name,
        )

    async def _set_executor_state(self, colony: str, name: str, state: ExecutorState) -> Executor:
        executor = msgspec.structs.replace(self._executor(colony, name), state=state)
        await self.store.put_executor(executor)
        self._remember_executor(executor)
        logger.info("executor %s in %s is now %s", name, colony, state.name)
        return executor

    async def executor_approve(self, colony: str, caller: str, req: Named) -> Executor:
        return await self._set_executor_state(colony, req.name, ExecutorState.APPROVED)

    async def executor_reject(self, colony: str, caller: str, req: Named) -> Executor:
        return await self._set_executor_state(colony, req.name, ExecutorState.REJECTED)

    async def executor_remove(self, colony: str, caller: str, req: Named) -> None:
        executor = self._executor(colony, req.name)
        await self.store.delete_executor(executor)
        del self.executors[(colony, req.name)]
        del self._capacities[(colony, req.name)]
        return None

    async def colony_add(self, colony: str, caller: str, req: ColonyAdd) -> Colony:
        name = check_name("colonyname", req.colony.name)
        if name in self.colonies:
            raise ConflictError(f"colony {name!r} already exists", colony_name=name)
        added = msgspec.structs.replace(req.colony, colony_id=req.colony.colony_id or new_id())
        await self.store.put_colony(added)
        self.colonies[name] = added
        logger.info("added colony %s (auto-approve %s)", name, added.auto_approve)
        return added

    async def colony_list(self, colony: str, caller: str, req: Empty) -> list[Colony]:
        return sorted(self.colonies.values(), key=lambda c: c.name)

    async def colony_get(self, colony: str, caller: str, req: Named) -> Colony:
        return self._colony(req.name)

    async def colony_remove(self, colony: str, caller: str, req: Named) -> None:
        removed = self._colony(req.name)
        await self.store.delete_colony(removed)
        del self.colonies[req.name]
        return None


def _result_bytes(result: Any) -> bytes:
    if isinstance(result, msgspec.Raw):
        return bytes(result)
    return _encode(result)
