"""The broker's state, the request dispatch, and the one path every transition takes.

Everything the leading broker knows about live processes (the waiting queue, what is running
and on which executor, deadlines) is updated in one place, :meth:`Service.track`, after every
write, and rebuilt from KV by :meth:`Service.load` when a broker starts leading.

The handlers live with their parts (:mod:`assignment`, :mod:`reports`, :mod:`registry`,
:mod:`admin`, ...) and register their operations here; :meth:`Service.handle` decodes at the
edge and dispatches. Every change of a process goes through :meth:`Service.transition`: decide
through the pure :mod:`transitions`, write through :mod:`store` (KV compare-and-set, then one
event), and follow the write in memory. Nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import msgspec
import nats.errors
from nats.aio.msg import Msg

from colonyos.broker import transitions
from colonyos.broker.index import ProcessIndex
from colonyos.broker.replies import colony_scoped, reply_body
from colonyos.broker.scheduler import (
    Capacity,
    CapacityInUse,
    DeadlineHeap,
    ParkedAssigns,
    Requirement,
    WaitingQueue,
)
from colonyos.broker.store import ProcessStore, StaleRevisionError
from colonyos.errors import (
    BrokerUnavailableError,
    ColoniesError,
    ColonyNotFoundError,
    ConflictError,
    ExecutorNotFoundError,
    ExecutorRemovedError,
    ExecutorReplacedError,
    InvalidSpecError,
    NotAuthorizedError,
    NotFoundError,
    ProcessNotFoundError,
    RecordTooLargeError,
)
from colonyos.limits import record_limit
from colonyos.messages import (
    Control,
    Heartbeat,
    Revoke,
)
from colonyos.models import (
    ZERO_TIME,
    Colony,
    Executor,
    ExecutorState,
    Process,
    ProcessState,
    now,
)
from colonyos.specs import check_function_spec, from_validation_error
from colonyos.subjects import SERVER_SCOPE, Subjects

__all__ = ["LOOK_AGAIN", "Picked", "Report", "Service", "event_may_be_missing", "new_id"]

logger = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
_heartbeat_decoder = msgspec.json.Decoder(Heartbeat)
_TRANSITION_ATTEMPTS = 8
# How far before the newest event a revision may have been written and still lack its event.
_EVENT_SLACK = timedelta(seconds=30)

Picked = tuple[Process, int]
# Handed to a parked assign instead of a process: look at the queue again (capacity came back).
LOOK_AGAIN: Picked = (Process(process_id=""), -1)
Handler = Callable[[str, str, Any], Awaitable[Any]]


def new_id() -> str:
    """A Colonies id: 64 lowercase hex characters."""
    return secrets.token_hex(32)


def _revoked(before: Process, after: Process) -> bool:
    """Did this write take a running process away from its executor?"""
    return before.state is ProcessState.RUNNING and (
        after.state is not ProcessState.RUNNING or after.assignments != before.assignments
    )


def event_may_be_missing(written: datetime | None, last_event: datetime | None) -> bool:
    """May a terminal revision loaded from KV lack its event? Yes if it was written about when
    the newest event was, or later (its writer may have died before sending it), or if either
    time is unknown."""
    return last_event is None or written is None or written >= last_event - _EVENT_SLACK


def _ns(t: datetime) -> int:
    return int(t.timestamp() * 1e9)


@dataclass(slots=True)
class Report:
    """The last heartbeat of an executor: when, and what it said it was running."""

    wall_ns: int
    running: frozenset[str] = field(default_factory=frozenset)


class Service:
    def __init__(
        self,
        store: ProcessStore,
        index: ProcessIndex,
        subjects: Subjects,
        *,
        max_executor_losses: int,
        scope: str = SERVER_SCOPE,
    ) -> None:
        # What this service leads: one colony (its processes, executors, requests), or the
        # server scope (the colonies themselves: add, list, remove; the server's status).
        self.scope = scope
        self.store = store
        self.index = index
        self.subjects = subjects
        self.queue = WaitingQueue()
        self.parked: ParkedAssigns[asyncio.Future[Picked]] = ParkedAssigns()
        self.colonies: dict[str, Colony] = {}
        self.executors: dict[tuple[str, str], Executor] = {}
        self._capacities: dict[tuple[str, str], Capacity] = {}
        self._names: dict[str, tuple[str, str]] = {}  # executor id -> (colony, name)
        # Parked assign requests by executor run (id), so that a run that goes can end them.
        self.parked_runs: dict[str, set[asyncio.Future[Picked]]] = {}
        # Runs being replaced, refused before the new run's record is written (registry.py).
        self.retired: set[str] = set()
        # Executor losses a process may have before it fails (see transitions.requeue_lost).
        self.max_executor_losses = max_executor_losses
        # Live processes beyond the queue, and what the lifecycle sweeps need.
        self.running: dict[str, tuple[Process, int]] = {}  # with its KV revision
        self.in_use = CapacityInUse()  # what each executor's running processes requested
        self.wait_deadlines = DeadlineHeap()
        self.exec_deadlines = DeadlineHeap()
        # Set on tracking what the lifecycle sweeps watch (running, or under a wait deadline).
        self.to_watch = asyncio.Event()
        self.heard: dict[str, float] = {}  # executor id -> monotonic time of any sign of life
        # When this broker started leading (monotonic): a heard time no later than this is the
        # grace given at load, not a sign of life.
        self.lead_start = float("-inf")
        self.reports: dict[str, Report] = {}  # executor id -> last heartbeat
        # Revisions loaded from KV whose event may be missing (their writer may have died).
        self.unconfirmed: set[str] = set()
        # Called after every write of a process that belongs to a graph (workflows).
        self.graph_hook: Callable[[Process], Awaitable[None]] | None = None
        # Called with the (colony, name) a heartbeat came on and the executor id it carries
        # (registrations: a run told to stop that still heartbeats is told again).
        self.heartbeat_hook: Callable[[str, str, str], None] | None = None
        # Served by the parts of the broker (assignment.py, reports.py, registry.py, ...).
        self._ops: dict[str, tuple[msgspec.json.Decoder[Any], Handler]] = {}

    @property
    def reply_limit(self) -> int:
        """The most a reply's result may hold: a reply is one NATS message."""
        return record_limit(self.store.nc.max_payload)

    # The role rules of a secure installation (broker/membership.py): raises to refuse.
    authorize: Callable[[str, str, str], Awaitable[None]] | None = None
    # Whether a request's reply subject is the caller's own inbox (secure installations).
    reply_allowed: Callable[[str, str, str], bool] | None = None
    # Whether a colony that does not auto-approve approves this executor as it registers
    # (secure installations: it runs with a colony owner's key; broker/membership.py).
    owners_executor: Callable[[str, str], Awaitable[bool]] | None = None
    # Told a colony just removed, and by whom (broker/membership.py forgets its members).
    on_colony_removed: Callable[[str, str], Awaitable[None]] | None = None
    # Cuts the live connections of a member of a colony (broker/kicker.py), when secure.
    cut: Callable[[str, str], Awaitable[int]] | None = None

    def register_ops(self, **ops: tuple[type[Any], Handler]) -> None:
        """Add request operations (name -> (request type, handler)) served by another part."""
        for name, (request_type, handler) in ops.items():
            self._ops[name] = (msgspec.json.Decoder(request_type), handler)

    # -- start-up ---------------------------------------------------------------------
    @property
    def colony_scope(self) -> str | None:
        """The colony this service leads; None for the server scope."""
        return None if self.scope == SERVER_SCOPE else self.scope

    def leads(self, colony: str) -> bool:
        """Is ``colony`` the one this service leads, and does it exist? (Submissions to any
        other colony are not this service's to accept: at the server scope, none is.)"""
        return colony == self.colony_scope and colony in self.colonies

    async def load(self) -> None:
        """Rebuild what the scope leads from JetStream: at the server scope, the colonies; in a
        colony, the colony, its executors, queue, running set and index."""
        if self.colony_scope is None:
            async for colony in self.store.all_colonies():
                self.colonies[colony.name] = colony
            logger.info("loaded %d colonies", len(self.colonies))
            return
        found = await self.store.get_colony(self.scope)
        if found is not None:
            self.colonies[found.name] = found
        async for executor in self.store.all_executors(self.scope):
            self.remember_executor(executor)
        last_event = await self.store.last_event_time(self.scope)
        count = 0
        unkept: list[tuple[Process, int, str]] = []
        async for process, revision, written in self.store.all_processes(self.scope):
            count += 1
            if not process.state.is_terminal:
                self.unconfirmed.add(process.process_id)
                reason = self._keep(process, revision)
                if reason is not None:
                    unkept.append((process, revision, reason))
                continue
            self.track(process, revision)
            if event_may_be_missing(written, last_event):
                await self.store.ensure_event(process, revision)
        # No stored value keeps a broker from starting: what it cannot run ends FAILED.
        for process, revision, reason in unkept:
            await self._refuse_loaded(process, revision, reason)
        started = self.lead_start = time.monotonic()
        for executor in self.executors.values():
            self.heard[executor.executor_id] = started  # a new leader gives everyone a grace
        await self.index.flush()
        logger.info(
            "colony %s: loaded %d executors, %d processes (%d waiting, %d running)",
            self.scope,
            len(self.executors),
            count,
            len(self.queue),
            len(self.running),
        )

    def _keep(self, process: Process, revision: int) -> str | None:
        """Track a live process loaded from KV; why it cannot be kept, if it cannot (its spec
        is out of today's bounds, or it cannot be queued)."""
        try:
            check_function_spec(process.spec)
        except InvalidSpecError as err:
            return f"its stored spec is invalid: {err.message}"
        try:
            self.track(process, revision)
        except Exception as err:  # whatever it is, it must not stop the broker
            return f"it cannot be queued: {type(err).__name__}: {err}"
        return None

    async def _refuse_loaded(self, process: Process, revision: int, reason: str) -> None:
        try:
            await self.refuse(process, revision, reason)
        except (nats.errors.Error, TimeoutError):
            raise  # NATS trouble: the broker stands by and loads again
        except Exception:
            logger.exception(
                "process %s in %s cannot be kept (%s), nor marked FAILED; left as it is",
                process.process_id,
                process.colony_name,
                reason,
            )

    async def admit(self, process: Process, revision: int, data: bytes | None = None) -> None:
        """Track a process just created: as :meth:`track`, but one that cannot be queued
        (for a reason no check at the door foresaw) ends FAILED with the reason rather than
        stay WAITING where no executor will ever see it."""
        try:
            self.track(process, revision, data)
        except Exception as err:  # whatever it is, the process says it, not the broker's log
            reason = f"it cannot be queued: {type(err).__name__}: {err}"
            await self.refuse(process, revision, reason)

    async def refuse(self, process: Process, revision: int, reason: str) -> None:
        """End a live process the broker cannot keep FAILED, with the reason, through the
        normal transition (its event, its graph, a revoke to its executor)."""
        logger.warning(
            "process %s in %s fails: %s", process.process_id, process.colony_name, reason
        )
        # ConflictError, ProcessNotFoundError: it ended (or was removed) meanwhile.
        with contextlib.suppress(ConflictError, ProcessNotFoundError):
            await self.transition(
                process.colony_name,
                process.process_id,
                lambda p: transitions.refuse(p, reason, now=now()),
                current=(process, revision),
            )

    def track(self, process: Process, revision: int, data: bytes | None = None) -> None:
        """The one place where in-memory state follows a written (or loaded) process
        (``data``: its JSON, when the caller has it already)."""
        pid = process.process_id
        self.index.put(process, data)
        self.queue.remove(pid)
        self.running.pop(pid, None)
        freed = self.in_use.release(pid)
        if process.state is ProcessState.WAITING and not process.wait_for_parents:
            if process.wait_deadline != ZERO_TIME:
                self.wait_deadlines.push(_ns(process.wait_deadline), process.colony_name, pid)
                self.to_watch.set()
            self.enqueue(process, revision)
        elif process.state is ProcessState.RUNNING:
            self.running[pid] = (process, revision)
            self.in_use.hold(process.assigned_executor_id, pid, Requirement.of(process.spec))
            if process.exec_deadline != ZERO_TIME:
                self.exec_deadlines.push(_ns(process.exec_deadline), process.colony_name, pid)
            self.to_watch.set()
        if freed is not None and process.state is not ProcessState.RUNNING:
            # Capacity came back: a parked assign of that executor may now fit a queued one.
            for waiter in self.parked.take_all_of(freed):
                if not waiter.done():
                    waiter.set_result(LOOK_AGAIN)

    async def confirm(self, process: Process, revision: int) -> None:
        """Before changing a loaded revision, make sure its event exists (stream order)."""
        if process.process_id in self.unconfirmed:
            self.unconfirmed.discard(process.process_id)
            await self.store.ensure_event(process, revision)

    def enqueue(self, process: Process, revision: int) -> None:
        """Hand a waiting process to one parked executor that matches it, else queue it."""
        while (waiter := self.parked.take_for(process)) is not None:
            if not waiter.done():
                waiter.set_result((process, revision))
                return
            self.in_use.release(process.process_id)  # held for a waiter that left meanwhile
        self.queue.push(process, revision)

    # -- request/reply ------------------------------------------------------------------
    async def handle(self, msg: Msg) -> None:
        colony, caller, op = self.subjects.parse_rpc(msg.subject)
        if self.reply_allowed is not None and not self.reply_allowed(colony, caller, msg.reply):
            # Answering would publish, with the broker's rights, wherever the caller asked.
            logger.warning(
                "ignored %s from %s in %s: its reply subject is not its inbox", op, caller, colony
            )
            return
        try:
            entry = self._ops.get(op)
            if entry is None:
                raise InvalidSpecError(f"unknown operation {op!r}", op=op)
            decoder, handler = entry
            try:
                request = decoder.decode(msg.data or b"{}")
            except msgspec.ValidationError as err:
                raise from_validation_error(err, f"bad {op} request") from err
            except msgspec.DecodeError as err:
                raise InvalidSpecError(f"malformed {op} request: {err}", op=op) from err
            if self.authorize is not None:
                await self.authorize(colony, caller, op)
            if colony_scoped(colony, op):
                self.colony(colony)
                known = self.executors.get((colony, caller))
                if known is not None:
                    self.heard[known.executor_id] = time.monotonic()
            result = await handler(colony, caller, request)
            body = reply_body(op, result, self.store.nc.max_payload, self.reply_limit)
        except ColoniesError as err:
            body = _encode({"error": err.to_reply()})
        except Exception as err:
            # A defect, or NATS trouble a handler did not expect: the asker hears it now (not
            # at its timeout), and the log has the whole story.
            logger.exception("%s from %s in %s failed", op, caller, colony)
            failed = BrokerUnavailableError(f"the broker failed on {op!r}: {err}; try again", op=op)
            body = _encode({"error": failed.to_reply()})
        if msg.reply:
            await msg.respond(body)

    def heartbeat(self, msg: Msg) -> None:
        """An executor's heartbeat: it is alive, and running what it lists."""
        try:
            beat = _heartbeat_decoder.decode(msg.data)
        except msgspec.MsgspecError:
            logger.warning("ignored a malformed heartbeat on %s", msg.subject)
            return
        colony, name = self.subjects.parse_heartbeat(msg.subject)
        current = self.executors.get((colony, name))
        # Only the run registered under the name it beats as keeps a registration alive: a
        # beat carrying another executor's id (or a replaced run's) is no sign of its life.
        if current is not None and current.executor_id == beat.executor_id:
            self.heard[beat.executor_id] = time.monotonic()
            self.reports[beat.executor_id] = Report(time.time_ns(), frozenset(beat.running))
        if self.heartbeat_hook is not None:
            self.heartbeat_hook(colony, name, beat.executor_id)

    async def tell(self, colony: str, executor_name: str, message: Control) -> None:
        """A message to a live executor on its control subject (not stored)."""
        await self.store.tell(self.subjects.control(colony, executor_name), message)

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

    def approved(self, colony: str, name: str, executor_id: str = "") -> Executor:
        """The caller's registration, if it may be given work; ``executor_id``: the run asking
        (a run replaced since is refused)."""
        executor = self.executor(colony, name)
        if executor_id and (executor.executor_id != executor_id or executor_id in self.retired):
            raise ExecutorReplacedError(
                f"executor {name!r} was replaced by another start under its name",
                executor_name=name,
            )
        if executor.state is ExecutorState.UNREGISTERED:
            raise ExecutorRemovedError.of(colony, name)
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
            await self.confirm(process, revision)
            too_large: str | None = None
            try:
                try:
                    new_revision, data = await self.store.update(updated, revision)
                except RecordTooLargeError as err:
                    # A close with a huge output, a child whose parents' outputs are too much:
                    # the process ends FAILED with why, rather than the write failing for ever.
                    too_large = f"{_what_grew(process, updated)} {err.message}"
                    updated = transitions.refuse(process, too_large, now=now())
                    new_revision, data = await self.store.update(updated, revision)
            except StaleRevisionError:
                continue
            self.track(updated, new_revision, data)
            self.store.metrics.changed(process, updated)
            if notify and _revoked(process, updated):
                await self._revoke(process, updated)
            await self.after_write(updated)
            if too_large is not None:
                raise ConflictError(
                    f"process {process_id} is FAILED: {too_large}",
                    process_id=process_id,
                    state=updated.state.name,
                )
            return updated
        raise ConflictError(f"process {process_id} kept changing; try again", process_id=process_id)

    async def _revoke(self, before: Process, after: Process) -> None:
        holder = self._names.get(before.assigned_executor_id)
        if holder is None:
            return
        colony, name = holder
        body = Revoke(
            process_id=after.process_id,
            state=after.state,
            reason=revoke_reason(after),
            attempt=before.attempt,
        )
        await self.store.tell(self.subjects.control(colony, name), body)

    async def after_write(self, process: Process) -> None:
        if process.process_graph_id and self.graph_hook is not None:
            await self.graph_hook(process)

    async def reload(self, process: Process) -> None:
        try:
            current, revision = await self.store.get(process.colony_name, process.process_id)
        except ProcessNotFoundError:
            self.forget(process.process_id)  # removed meanwhile
            return
        self.unconfirmed.add(process.process_id)
        self.track(current, revision)

    def release_parked(self) -> None:
        """Answer every parked assign with "no work" (the broker is stopping)."""
        for waiter in self.parked.all_waiters():
            waiter.cancel()

    async def give_back(self, executor_id: str, reason: str) -> int:
        """Queue again at once what a registration runs (its run is gone or going): an executor
        loss for each process, not a retry. Returns how many were running."""
        held = [p for p, _ in list(self.running.values()) if p.assigned_executor_id == executor_id]
        for seen in held:
            step = functools.partial(_lost_step, seen, reason, self.max_executor_losses, now())
            with contextlib.suppress(ConflictError, NotFoundError):
                await self.transition(seen.colony_name, seen.process_id, step)
        if held:
            logger.info("%s: %d processes queued again", reason, len(held))
        return len(held)

    def unpark_run(self, executor_id: str) -> None:
        """End the parked assign requests of one executor run (it stops, or was replaced or
        removed): each answers "no work", and no process is handed to it any more."""
        for waiter in self.parked_runs.pop(executor_id, set()):
            waiter.cancel()

    def capacity_of(self, executor: Executor) -> Capacity:
        """What ``executor`` registered that it offers (each dimension None if not stated)."""
        return self._capacities[(executor.colony_name, executor.executor_name)]

    def forget(self, process_id: str) -> None:
        """A removed process: out of the queue, the running set, the capacity it held, the
        index and the revisions loaded unconfirmed."""
        self.unconfirmed.discard(process_id)
        self.queue.remove(process_id)
        self.running.pop(process_id, None)
        self.in_use.release(process_id)
        self.index.remove(process_id)

    def drop_executor(self, executor: Executor) -> None:
        """A registration removed with its colony: its live run is not served any more."""
        self.unpark_run(executor.executor_id)
        key = (executor.colony_name, executor.executor_name)
        self.executors.pop(key, None)
        self._capacities.pop(key, None)
        self._names.pop(executor.executor_id, None)

    def remember_executor(self, executor: Executor) -> None:
        key = (executor.colony_name, executor.executor_name)
        self._names[executor.executor_id] = key
        self.executors[key] = executor
        try:
            self._capacities[key] = Capacity.of(executor)
        except ValueError as err:  # stored before registrations were checked
            logger.error(
                "executor %s: %s; it gets only processes that ask for no resources",
                executor.executor_name,
                err,
            )
            self._capacities[key] = Capacity(key[1], executor.location_name, 0, 0, 0, 0, 0)


def revoke_reason(after: Process) -> str:
    """Why a running process was taken from its executor, as the revoke tells it: the last
    error the write added, else what became of the process."""
    if after.errors:
        return after.errors[-1]
    if after.state is ProcessState.WAITING:
        return "taken back and queued again"
    return after.state.name.lower()


def _what_grew(before: Process, after: Process) -> str:
    """What a transition added that makes the record too large, to lead the store's message:
    "its output: with it, the process record would be ... bytes; ..."."""
    if after.output != before.output:
        return "its output: with it,"
    if after.input != before.input:
        return "its input (its parents' outputs): with it,"
    if after.errors != before.errors:
        return "its errors: with them,"
    return "this change:"


def _lost_step(
    seen: Process, reason: str, max_losses: int, t: datetime, process: Process
) -> Process:
    if not transitions.same_assignment(process, seen):
        raise ConflictError("no longer applies")
    return transitions.requeue_lost(process, reason, now=t, max_losses=max_losses)
