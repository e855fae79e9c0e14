"""The executor's state and what every part of a run uses: its stages and status lines,
registering functions, being stopped, and waiting."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from colonyos import machine
from colonyos.client import Client
from colonyos.config import Settings
from colonyos.errors import (
    ColoniesError,
)
from colonyos.execution import (
    EarlyRevokes,
    FunctionOutcome,
    Handler,
    OwnLog,
    call_function,
    first_of,
)
from colonyos.messages import (
    Instance,
)
from colonyos.models import (
    Capabilities,
    Executor,
    now,
)
from colonyos.resume import IdentityFile, Resumable
from colonyos.subjects import check_name

__all__ = ["ExecutorBase", "ExecutorStage", "ExecutorStatus", "abandon", "cancelled", "count"]

logger = OwnLog("colonyos.executor")


class ExecutorStage(enum.StrEnum):
    """Where a run is. Only ``WAITING_FOR_WORK`` takes work."""

    CONNECTING = "connecting"
    UNREACHABLE = "unreachable"  # NATS does not answer
    NO_BROKER = "no_broker"  # NATS answers, no broker does
    NO_COLONY = "no_colony"
    NOT_LET_IN = "not_let_in"  # a secure server refuses the connection (see its message)
    PENDING = "pending"  # registered, waiting for the colony owner's approval
    REJECTED = "rejected"
    WAITING_FOR_WORK = "waiting_for_work"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class ExecutorStatus:
    """One status line: what the run is doing or waiting for, in words a user acts on."""

    stage: ExecutorStage
    message: str

    def __str__(self) -> str:
        return self.message


class ExecutorBase:
    """What an executor is and says (see :class:`colonyos.executor.ExecutorApp`)."""

    def __init__(
        self,
        executor_type: str,
        name: str | None = None,
        *,
        settings: Settings | None = None,
        location_name: str = "",
        capabilities: Capabilities | None = None,
        assign_timeout_s: float = 10.0,
        heartbeat_s: float | None = None,
        concurrency: int = 1,
        prefetch: bool = True,
        replace: bool = False,
        on_status: Callable[[ExecutorStatus], None] | None = None,
    ) -> None:
        self.executor_type = check_name("executortype", executor_type)
        self.name = check_name("executorname", name or f"{executor_type}-{socket.gethostname()}")
        self.settings = settings or Settings.from_env()
        self.location_name = location_name
        self.capabilities = capabilities or machine.capabilities()  # this machine, unless told
        self.assign_timeout_s = assign_timeout_s
        # How many processes it runs at once (each slot assigns its own).
        self.concurrency = max(1, concurrency)
        # While every slot is busy, ask for the process to run next (one), so that it starts
        # as soon as a slot is free rather than a round trip later.
        self.prefetch = prefetch
        # Keep well under the broker's liveness window (30 s by default).
        self.heartbeat_s = heartbeat_s or float(os.environ.get("COLONIES_HEARTBEAT", "5"))
        self.replace = replace
        self.on_status = on_status
        self.status: ExecutorStatus | None = None
        self.running: set[str] = set()
        # Processes assigned to this run that wait for a slot (prefetched): not started yet.
        self.prefetched: set[str] = set()
        # The functions running, and why those revoked were stopped, by (process id, attempt).
        self._work: dict[tuple[str, int], asyncio.Future[FunctionOutcome]] = {}
        self._revoked: dict[tuple[str, int], str] = {}
        # Assignments taken back before their functions started: they never start.
        self._early = EarlyRevokes()
        self._new_leader = asyncio.Event()
        self.handlers: dict[str, Handler] = {}
        self.default_handler: Handler | None = None
        # Set once registered, approved and taking work.
        self.ready = asyncio.Event()
        self.registered: Executor | None = None
        # This run's registration id (each run registers afresh).
        self.executor_id = ""
        self.processed = 0
        self._stopping = asyncio.Event()  # stop taking work
        self._forced = asyncio.Event()  # and stop what runs
        self._state_changed = asyncio.Event()
        self._ended_by: ColoniesError | None = None
        self._again = "stop() again to stop now"
        self._since = now()
        # print() inside Python functions becomes their log; only then is stdout routed.
        self._capture_print = False
        # Executors whose work outlives them (containers, batch jobs): the registration id kept
        # across restarts, and the platform asked what it still runs (see colonyos.resume).
        self.identity: IdentityFile | None = None
        self.resumable: Resumable | None = None

    # -- registering work ---------------------------------------------------------------
    def function(self, fn: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
        """Register a Python function (sync or async) for the funcname ``name or fn.__name__``."""

        def register(f: Callable[..., Any]) -> Callable[..., Any]:
            self.handlers[name or f.__name__] = call_function(f)
            self._capture_print = True
            return f

        return register(fn) if fn is not None else register

    def handler(self, func_name: str | None = None) -> Callable[[Handler], Handler]:
        """Register a raw handler ``async (ctx) -> output`` for one funcname, or for all."""

        def register(h: Handler) -> Handler:
            if func_name is None:
                self.default_handler = h
            else:
                self.handlers[func_name] = h
            return h

        return register

    # -- stopping -------------------------------------------------------------------------
    def stop(self, *, force: bool = False) -> None:
        """The first call stops taking work and lets running processes finish; a second (or
        ``force``) stops their functions and gives the processes back to the broker."""
        running = len(self.running)
        if force or self._stopping.is_set():
            if not self._forced.is_set():
                self._forced.set()
                self._stopping.set()
                self._say(
                    ExecutorStage.STOPPING,
                    f"stopping now: {count(running, 'running process')} given back to the broker"
                    if running
                    else "stopping now",
                )
            return
        self._stopping.set()
        if running:
            finish = "finishes" if running == 1 else "finish"
            message = f"stopping after {count(running, 'running process')} {finish}; {self._again}"
        else:
            message = "stopping"
        self._say(ExecutorStage.STOPPING, message)

    def _end(self, err: ColoniesError) -> None:
        """The broker ended this run (removed, replaced): stop now; what ran is queued again
        already."""
        if self._ended_by is None:
            self._ended_by = err
            self._say(ExecutorStage.STOPPING, f"stopping: {err.message}")
        self._stopping.set()
        self._forced.set()

    # -- waiting ------------------------------------------------------------------------
    async def _until_done(self, fut: asyncio.Future[Any], *events: asyncio.Event) -> bool:
        """Wait for ``fut``, or until stopped or one of ``events`` is set. True if it is done."""
        await first_of({fut}, self._stopping, *events)
        return fut.done()

    def _say(self, stage: ExecutorStage, message: str) -> None:
        """Report a status once, when it starts to apply."""
        status = ExecutorStatus(stage, message)
        if status == self.status:
            return
        if self._stopping.is_set() and stage not in (
            ExecutorStage.STOPPING,
            ExecutorStage.STOPPED,
        ):
            return  # an answer that arrived as it stopped: no longer what it waits for
        self.status = status
        if self.on_status is not None:
            try:
                self.on_status(status)
            except Exception:
                logger.exception("the status callback failed")
            return
        quiet = stage in (ExecutorStage.WAITING_FOR_WORK, ExecutorStage.STOPPED)
        level = logging.INFO if quiet or stage is ExecutorStage.CONNECTING else logging.WARNING
        if stage is ExecutorStage.STOPPING:
            level = logging.INFO
        logger.log(level, "executor %s: %s", self.name, message)

    def _instance(self) -> Instance:
        return Instance(
            executor_id=self.executor_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            since=self._since,
        )

    def _troubled(self) -> bool:
        """Was the last word that NATS or the broker does not answer (not yet taken back)?"""
        stage = self.status.stage if self.status is not None else None
        return stage in (ExecutorStage.UNREACHABLE, ExecutorStage.NO_BROKER)


async def abandon(fut: asyncio.Future[Any]) -> None:
    """Cancel a request no longer waited for; a client it produced meanwhile is closed."""
    fut.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        result = await fut
        if isinstance(result, Client):
            await result.aclose()


async def cancelled(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def count(n: int, noun: str) -> str:
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun}es" if noun.endswith("s") else f"{n} {noun}s"
