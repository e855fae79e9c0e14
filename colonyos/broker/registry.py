"""Executor registrations: one live run per executor name.

An executor *name* is held by one *run* (an ``ExecutorApp`` started once, with an id of its
own). A second run registering the name is refused while the first answers on its control
subject, unless it asks to replace it; a run that no longer answers (crashed, killed) gives its
name and its running processes up at once, with no waiting out the liveness window. A run that
stops gives back what it still holds (``release``); one that was removed or replaced but still
heartbeats is told again.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
import nats.errors

from colonyos.broker import transitions
from colonyos.broker.service import Service, new_id
from colonyos.errors import (
    ExecutorNameTakenError,
    ExecutorRemovedError,
    InvalidSpecError,
    NotAuthorizedError,
)
from colonyos.messages import (
    Control,
    Instance,
    Register,
    Release,
    Replaced,
    StateChanged,
    WhoIs,
)
from colonyos.models import Executor, ExecutorState, now
from colonyos.resources import parse_bytes, parse_cpu_millis
from colonyos.subjects import check_name

__all__ = ["Registry", "removed_message"]

logger = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
_instance_decoder = msgspec.json.Decoder(Instance)
# How long the run holding an executor name has to answer "are you alive?" before a new start
# takes the name over (no answer at all is known at once: nobody listens on its subject).
_HOLDER_ANSWER_S = 2.0


class Registry:
    def __init__(self, service: Service) -> None:
        self.service = service
        # Who runs each registration (host, pid, since), as its last register said.
        self._instances: dict[tuple[str, str], Instance] = {}
        self._registering: dict[tuple[str, str], asyncio.Lock] = {}
        self._telling: set[asyncio.Task[None]] = set()
        service.heartbeat_hook = self._heard
        service.register_ops(register=(Register, self.register), release=(Release, self.release))

    async def register(self, colony: str, caller: str, req: Register) -> Executor:
        """Register an executor run. Its name stays with a live run unless ``req.replace``;
        a run that no longer answers (crashed, killed) gives its name and processes up at once.
        The same run registering again (same id) is told its current state."""
        ex = req.executor
        check_name("executorname", ex.executor_name)
        check_name("executortype", ex.executor_type)
        _check_capabilities(ex)
        if ex.executor_name != caller:
            raise NotAuthorizedError(
                f"caller {caller!r} cannot register executor {ex.executor_name!r}",
                executor_name=ex.executor_name,
            )
        key = (colony, ex.executor_name)
        async with self._registering.setdefault(key, asyncio.Lock()):
            previous = self.service.executors.get(key)
            same_run = previous is not None and previous.executor_id == ex.executor_id != ""
            if same_run and previous is not None and previous.state is ExecutorState.UNREGISTERED:
                raise ExecutorRemovedError.of(colony, ex.executor_name)
            state: ExecutorState
            if previous is not None and previous.state is not ExecutorState.UNREGISTERED:
                if not same_run:
                    await self._take_name(colony, previous, req)
                if previous.executor_type == ex.executor_type:
                    state = previous.state
                else:
                    state = await self._first_state(colony, ex.executor_name)
            else:
                state = await self._first_state(colony, ex.executor_name)
            t = now()
            registered = msgspec.structs.replace(
                ex,
                executor_id=ex.executor_id or new_id(),
                colony_name=colony,
                state=state,
                commission_time=previous.commission_time if same_run and previous else t,
                last_heard_from_time=t,
            )
            await self.service.store.put_executor(registered)
            self.service.remember_executor(registered)
            if previous is not None:
                self.service.retired.discard(previous.executor_id)  # the record says it now
            if same_run and req.instance is not None and req.instance != self._instances.get(key):
                # The run came back as another OS process (an executor that keeps its id across
                # restarts): the assign requests its earlier process left parked have no one to
                # answer, and a process handed to one would wait a liveness window for nothing.
                self.service.unpark_run(registered.executor_id)
            if req.instance is not None:
                self._instances[key] = req.instance
        self.service.heard[registered.executor_id] = time.monotonic()
        if not same_run:
            logger.info(
                "registered executor %s (%s) in %s: %s",
                registered.executor_name,
                registered.executor_type,
                colony,
                state.name,
            )
        return registered

    async def _first_state(self, colony: str, name: str) -> ExecutorState:
        if self.service.colonies[colony].auto_approve:
            return ExecutorState.APPROVED
        check = self.service.owners_executor
        if check is not None and await check(colony, name):
            return ExecutorState.APPROVED  # its owner would approve it: no need to ask
        return ExecutorState.PENDING

    async def _take_name(self, colony: str, previous: Executor, req: Register) -> None:
        """A new run registers a name an earlier run holds: refused while that run answers
        (unless ``req.replace``); its running processes are queued again at once."""
        name = previous.executor_name
        holder = await self._ask_holder(colony, previous)
        if holder is not None and not req.replace:
            since = holder.since.strftime("%Y-%m-%d %H:%M:%S UTC")
            raise ExecutorNameTakenError(
                f"executor name {name!r} is held by a running executor on host "
                f"{holder.host or '?'} (pid {holder.pid}) since {since}: stop it, choose "
                "another name, or take the name over with --replace",
                executor_name=name,
                holder_host=holder.host,
                holder_pid=holder.pid,
                holder_since=holder.since.isoformat(),
            )
        # From here the earlier run is refused whatever it asks, though the record names it
        # until the new run's is written: an assign it sends meanwhile would park, and take
        # the very processes given back below, for a run that is going.
        self.service.retired.add(previous.executor_id)
        if holder is not None:
            by = req.instance or Instance(executor_id=req.executor.executor_id)
            await self.service.tell(colony, name, Replaced(executor_id=previous.executor_id, by=by))
            reason = transitions.EXECUTOR_REPLACED
            logger.info("executor %s in %s: replaced (was on %s)", name, colony, holder.host)
        else:
            reason = transitions.EXECUTOR_RESTARTED
        self.service.unpark_run(previous.executor_id)
        await self.service.give_back(previous.executor_id, reason.format(name=name))

    async def _ask_holder(self, colony: str, executor: Executor) -> Instance | None:
        """The run holding ``executor``'s registration, if it answers on its control subject."""
        if not executor.executor_id:
            return None
        subject = self.service.subjects.control(colony, executor.executor_name)
        try:
            msg = await self.service.store.nc.request(
                subject, _encode(WhoIs(executor_id=executor.executor_id)), timeout=_HOLDER_ANSWER_S
            )
            instance = _instance_decoder.decode(msg.data)
        except (nats.errors.Error, msgspec.MsgspecError):
            return None  # nobody listens, nobody answered in time, or not an answer
        return instance if instance.executor_id == executor.executor_id else None

    async def release(self, colony: str, caller: str, req: Release) -> int:
        """An executor run that stops gives back what is still assigned to it, and its parked
        assign requests end ("no work")."""
        if self.service._names.get(req.executor_id) != (colony, caller):
            raise NotAuthorizedError(
                f"caller {caller!r} has no registration {req.executor_id!r}",
                executor_name=caller,
            )
        self.service.unpark_run(req.executor_id)
        reason = transitions.EXECUTOR_STOPPED.format(name=caller)
        return await self.service.give_back(
            req.executor_id, f"{reason} ({req.reason})" if req.reason else reason
        )

    def _heard(self, colony: str, name: str, executor_id: str) -> None:
        # The id is whatever the heartbeat says: only the run registered under the name and
        # colony it beats as is told, never another colony's executor.
        if self.service._names.get(executor_id) != (colony, name):
            return
        stale = self._stale_run(executor_id)
        if stale is not None:  # it missed being told: tell it again
            task = asyncio.create_task(self.service.tell(*stale))
            self._telling.add(task)
            task.add_done_callback(self._telling.discard)

    def _stale_run(self, executor_id: str) -> tuple[str, str, Control] | None:
        """What to tell a run that still heartbeats although it was removed or replaced."""
        key = self.service._names.get(executor_id)
        current = self.service.executors.get(key) if key is not None else None
        if key is None or current is None:
            return None
        if current.executor_id != executor_id:
            by = self._instances.get(key) or Instance(executor_id=current.executor_id)
            return (*key, Replaced(executor_id=executor_id, by=by))
        if current.state is ExecutorState.UNREGISTERED:
            return (*key, removed_message(current))
        return None


def removed_message(executor: Executor, reason: str = "") -> StateChanged:
    """What a removed executor's live run is told (and told again while it heartbeats): it
    stops, saying why (by default, that the colony's owner removed it)."""
    return StateChanged(
        executor_id=executor.executor_id,
        state=ExecutorState.UNREGISTERED,
        reason=reason or f"removed from colony {executor.colony_name!r} by its owner",
    )


def _check_capabilities(executor: Executor) -> None:
    """Every quantity an executor registers must parse, or it could never be matched."""
    for i, hw in enumerate(executor.capabilities.hardware):
        for key, value, parse in (
            ("cpu", hw.cpu, parse_cpu_millis),
            ("mem", hw.mem, parse_bytes),
            ("storage", hw.storage, parse_bytes),
            ("gpu.mem", hw.gpu.mem, parse_bytes),
        ):
            try:
                parse(value)
            except ValueError as err:
                path = f"$.executor.capabilities.hardware[{i}].{key}"
                raise InvalidSpecError(f"{path}: {err}", path=path, reason=str(err)) from None
