"""Write an executor in a few lines.

    app = ExecutorApp("python", name="worker-1")

    @app.function
    def add(a: int, b: int) -> int:
        print("adding")            # becomes a line of the process's log
        return a + b               # becomes the process's output: [a + b]

    asyncio.run(app.serve())       # until Ctrl-C

A run goes through stages, each said once when it starts to apply (to ``on_status``, else to
the log): connecting to NATS, registering, pending approval, waiting for work, stopping. Every
wait ends when it is stopped: a first :meth:`ExecutorApp.stop` (Ctrl-C, SIGTERM) stops taking
work and lets running processes finish, a second stops their functions and gives the processes
back to the broker, which queues them again at once.

Whatever a function returns or raises fails that process with a clear error, never the
executor. Only nats-py and msgspec are needed, so this runs on small devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import nats.errors

from colonyos import machine
from colonyos.client import Client
from colonyos.config import Settings
from colonyos.connection import refusal, shown_url
from colonyos.errors import (
    BrokerUnavailableError,
    ColoniesError,
    ColonyNotFoundError,
    ConflictError,
    ExecutorNameTakenError,
    ExecutorNotFoundError,
    ExecutorRemovedError,
    ExecutorReplacedError,
    NotAuthorizedError,
    NotFoundError,
)
from colonyos.execution import (
    RETRY_MAX_S,
    EarlyRevokes,
    FunctionOutcome,
    Handler,
    OwnLog,
    ProcessContext,
    Raised,
    ResultSender,
    call_function,
    capture_output,
    current,
    cut,
    describe,
    first_of,
    guarded,
    output_of,
    output_problem,
    pause,
)
from colonyos.messages import (
    Close,
    Control,
    Fail,
    Instance,
    Replaced,
    Revoke,
    StateChanged,
    WhoIs,
)
from colonyos.models import (
    Capabilities,
    Executor,
    ExecutorState,
    Process,
    ProcessState,
    now,
)
from colonyos.resume import IdentityFile, Resumable
from colonyos.subjects import check_name

__all__ = ["ExecutorApp", "ExecutorStage", "ExecutorStatus", "ProcessContext", "output_of"]

logger = OwnLog(__name__)

_LOG_FLUSH_S = 0.25
# How long a result is retried while no broker answers.
_RESULT_PATIENCE_S = 120.0
# While pending approval, how often it asks (besides being told at once on its control subject).
_APPROVAL_CHECK_S = 5.0
# How long a stopping run waits for the broker to take back what is still assigned to it.
_RELEASE_TIMEOUT_S = 3.0

_encode = msgspec.json.Encoder().encode
_control_decoder: msgspec.json.Decoder[Control] = msgspec.json.Decoder(Control)


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


class ExecutorApp:
    """An executor: ``run()`` connects, registers and takes work until stopped.

    ``replace``: take the name over from a live executor that holds it (else starting is
    refused, naming the holder). ``on_status``: called with each :class:`ExecutorStatus`
    (instead of logging it).
    """

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
        # Keep well under the broker's liveness window (30 s by default).
        self.heartbeat_s = heartbeat_s or float(os.environ.get("COLONIES_HEARTBEAT", "5"))
        self.replace = replace
        self.on_status = on_status
        self.status: ExecutorStatus | None = None
        self.running: set[str] = set()
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
                    f"stopping now: {_count(running, 'running process')} given back to the broker"
                    if running
                    else "stopping now",
                )
            return
        self._stopping.set()
        if running:
            finish = "finishes" if running == 1 else "finish"
            message = f"stopping after {_count(running, 'running process')} {finish}; {self._again}"
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

    async def serve(self, *, burst: bool = False) -> int:
        """:meth:`run` until SIGINT or SIGTERM: the first lets running processes finish, the
        second stops them now."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        self._again = "Ctrl-C again to stop now"
        for sig in signals:
            loop.add_signal_handler(sig, self.stop)
        try:
            return await self.run(burst=burst)
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    # -- the run ------------------------------------------------------------------------
    async def run(self, *, burst: bool = False) -> int:
        """Connect, register, then assign and execute until stopped (or, with ``burst``, until
        no more work can be assigned). Returns the processes handled. Raises what ended it:
        removed or replaced by the broker, its name held by another, or (``burst``) what keeps
        it from taking work."""
        self._since = now()
        self._ended_by = None
        if self.identity is None:
            self.executor_id = secrets.token_hex(32)
        else:
            self.executor_id = self.identity.acquire()
        try:
            client = await self._connect(burst)
            if client is not None and client.secure:
                client = await self._with_executor_rights(client, burst)
            if client is not None:
                async with client:
                    await self._run_connected(client, burst)
        finally:
            self.ready.clear()
            if self.identity is not None:
                self.identity.release()
            self._say(ExecutorStage.STOPPED, "stopped")
        logger.debug("executor %s stopped after %d processes", self.name, self.processed)
        if self._ended_by is not None:
            raise self._ended_by
        return self.processed

    async def _connect(self, burst: bool) -> Client | None:
        url = shown_url(self.settings.nats_url)
        self._say(ExecutorStage.CONNECTING, f"connecting to NATS at {url}")
        delay = 1.0
        while not self._stopping.is_set():
            connecting = asyncio.ensure_future(
                Client.connect(
                    self.settings, caller=self.name, name=self.name, executor=True, keep_trying=True
                )
            )
            if not await self._until_done(connecting):
                await _abandon(connecting)
                return None
            try:
                return connecting.result()
            except BrokerUnavailableError:
                if burst:
                    raise
                self._say(
                    ExecutorStage.UNREACHABLE,
                    f"cannot reach NATS at {url}; trying again until it answers",
                )
            except NotAuthorizedError as err:
                if burst:
                    raise
                # The server does not say why (the refusal names what may apply): all but the
                # name being another key's may pass, so it tries again.
                self._say(ExecutorStage.NOT_LET_IN, f"{err.message}; trying again")
            await pause(delay, self._stopping)
            delay = min(delay * 2, RETRY_MAX_S)
        return None

    async def _with_executor_rights(self, client: Client, burst: bool) -> Client | None:
        """On a secure installation a connection's rights are decided when it connects: a
        first start registers (and waits for approval) on a connection that may only do that,
        then connects again as the approved executor. None if stopped meanwhile."""
        async with client:
            control = await client.nc.subscribe(
                client.subjects.control(client.colony, self.name), cb=self._on_control
            )
            if await self._register(client, burst) is None:
                return None
            if not await self._approved(client, burst):
                return None
            with contextlib.suppress(nats.errors.Error):
                await control.unsubscribe()
        return await self._connect(burst)

    async def _run_connected(self, client: Client, burst: bool) -> None:
        if await self._register(client, burst) is None:
            return
        # Before the first heartbeat: it must name the processes taken back, or the broker
        # takes them as assignments that never arrived.
        adopted = await self._take_back(client)
        nc = client.nc
        control = await nc.subscribe(
            client.subjects.control(client.colony, self.name), cb=self._on_control
        )
        leaders = await nc.subscribe(client.subjects.leader, cb=self._on_leader)
        # The server has both subscriptions before this run says it is ready: a broker asking
        # "who holds this name?" right after must reach it.
        await nc.flush()
        beating = asyncio.create_task(self._heartbeat(client))
        try:
            with capture_output() if self._capture_print else contextlib.nullcontext():
                await self._dispatch(client, ResultSender(client), burst, adopted)
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating
            if self._ended_by is None:
                await self._release(client)
            with contextlib.suppress(nats.errors.Error):
                await control.unsubscribe()
                await leaders.unsubscribe()

    async def _register(self, client: Client, burst: bool) -> Executor | None:
        """Register this run (or, registered already, learn its state). None if stopped."""
        executor = Executor(
            executor_id=self.executor_id,
            executor_type=self.executor_type,
            executor_name=self.name,
            location_name=self.location_name,
            capabilities=self.capabilities,
        )
        colony = client.colony
        delay = 0.2
        while not self._stopping.is_set():
            registering = asyncio.ensure_future(
                client.register(executor, replace=self.replace, instance=self._instance())
            )
            if not await self._until_done(registering):
                await _abandon(registering)
                return None
            try:
                self.registered = registering.result()
                return self.registered
            except ExecutorRemovedError:
                if self.identity is None or not self.identity.reused:
                    raise
                # The kept registration was removed by the colony's owner while this executor
                # was away: start afresh, as any executor started again after a removal does.
                self.executor_id = self.identity.renew()
                continue
            except BrokerUnavailableError as err:
                if burst:
                    raise
                self._no_broker(client, err)
            except ColonyNotFoundError:
                if burst:
                    raise
                self._say(
                    ExecutorStage.NO_COLONY,
                    f"colony {colony!r} does not exist (create it with "
                    f"'colonies colony add --name {colony}')",
                )
            await pause(delay, self._stopping)
            delay = min(delay * 2, RETRY_MAX_S)
        return None

    async def _approved(self, client: Client, burst: bool) -> bool:
        """Until this registration is approved (it is told at once, and asks now and then).
        False if stopped meanwhile."""
        while not self._stopping.is_set():
            assert self.registered is not None
            state = self.registered.state
            if state is ExecutorState.APPROVED:
                return True
            command = f"colonies executor approve --name {self.name}"
            if burst:
                raise NotAuthorizedError(
                    f"executor {self.name!r} is {state.name}: approve it with '{command}'",
                    executor_name=self.name,
                )
            if state is ExecutorState.REJECTED:
                self._say(
                    ExecutorStage.REJECTED,
                    f"rejected by the colony owner; waiting until approved: {command}",
                )
            else:
                self._say(ExecutorStage.PENDING, f"pending approval by the colony owner: {command}")
            self._state_changed.clear()
            await pause(_APPROVAL_CHECK_S, self._stopping, self._state_changed)
            if self._stopping.is_set():
                break
            try:
                if await self._register(client, burst) is None:
                    break
            except (ExecutorRemovedError, ExecutorNameTakenError) as err:
                self._end(err)  # removed, or replaced by another start, meanwhile
        return False

    async def _take_back(self, client: Client) -> list[Process]:
        """What an earlier run of this registration left running on the platform: the
        processes still assigned to it (to run again through their handlers, which follow the
        work rather than start it), and the rest stopped."""
        if self.resumable is None:
            return []
        adopted: list[Process] = []
        for pid, attempt in await self.resumable.held():
            try:
                process = await client.get(pid)
            except ColoniesError as err:
                if not isinstance(err, NotFoundError):
                    # Not known now: leave it to the broker, which takes it back in time.
                    logger.warning("process %s: cannot tell whose it is (%s)", pid, err.message)
                    continue
                process = None
            ours = (
                process is not None
                and process.state is ProcessState.RUNNING
                and process.assigned_executor_id == self.executor_id
                and process.attempt == attempt
            )
            if ours and process is not None:
                logger.info("process %s: taken back from the earlier run", pid)
                adopted.append(process)
                self.running.add(pid)
            else:
                logger.info("process %s (attempt %d): no longer ours; stopping it", pid, attempt)
                try:
                    await self.resumable.abandon(pid, attempt)
                except Exception:
                    logger.exception("stopping the work of process %s failed", pid)
        return adopted

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

    def _no_broker(self, client: Client, err: ColoniesError) -> None:
        if (why := refusal(client.nc)) is not None:
            self._say(ExecutorStage.NOT_LET_IN, f"{why}; trying again, less and less often")
        elif not client.nc.is_connected:
            self._say(
                ExecutorStage.UNREACHABLE,
                f"cannot reach NATS at {shown_url(self.settings.nats_url)}; trying again until "
                "it answers",
            )
        else:
            self._say(ExecutorStage.NO_BROKER, f"{err.message}; trying again until one answers")

    # -- taking work ----------------------------------------------------------------------
    async def _dispatch(
        self, client: Client, results: ResultSender, burst: bool, adopted: list[Process]
    ) -> None:
        """Keep ``concurrency`` processes running: ask for as many as there are free slots
        (one request), run each in its own task, and send their results together. Processes
        taken back from an earlier run take their slots first."""
        running: set[asyncio.Task[None]] = {
            asyncio.create_task(self._execute(client, results, p)) for p in adopted
        }

        def reap() -> None:
            for task in [t for t in running if t.done()]:
                running.discard(task)
                if not task.cancelled() and task.exception() is not None:
                    # A failure of the executor's own code around one process: say so, and
                    # go on with the others (its process is taken back by the broker).
                    logger.error("running a process failed", exc_info=task.exception())

        try:
            while not self._stopping.is_set():
                reap()
                free = self.concurrency - len(running)
                if free <= 0:  # full (taken-back processes may fill more than its slots)
                    await first_of(running, self._stopping)
                    continue
                processes = await self._next(client, burst, free)
                if not processes:
                    if burst and not self._stopping.is_set():
                        if not running:
                            return
                        # What is still running may release more work (workflow children).
                        await first_of(running, self._stopping)
                    continue
                for process in processes:
                    running.add(asyncio.create_task(self._execute(client, results, process)))
        finally:
            await self._wind_down(running)
            reap()

    async def _wind_down(self, running: set[asyncio.Task[None]]) -> None:
        """Let running processes finish, unless stopped now: then stop their functions."""
        try:
            while running and not all(t.done() for t in running):
                if self._forced.is_set():
                    for task in running:
                        task.cancel()
                    await asyncio.wait(running)
                    break
                await first_of(running, self._forced)
        except asyncio.CancelledError:
            for task in running:
                task.cancel()
            raise

    async def _release(self, client: Client) -> None:
        """Give back what is still assigned to this run (processes stopped now, or whose
        assignment never reached it), and end its parked assign requests."""
        if self.registered is None:
            return
        if not client.nc.is_connected:
            logger.warning("NATS is away: the broker takes this run's processes back by itself")
            return
        reason = "stopped now" if self._forced.is_set() else "stopped"
        try:
            async with asyncio.timeout(_RELEASE_TIMEOUT_S):
                given = await client.release(
                    self.executor_id, reason=reason, timeout=_RELEASE_TIMEOUT_S
                )
        except (ColoniesError, TimeoutError) as err:
            why = err.message if isinstance(err, ColoniesError) else "no answer in time"
            logger.warning("could not give processes back (%s): the broker takes them back", why)
            return
        if given:
            logger.info("gave %s back to the broker", _count(given, "process"))

    async def _heartbeat(self, client: Client) -> None:
        while True:
            await client.heartbeat(self.executor_id, sorted(self.running))
            await asyncio.sleep(self.heartbeat_s)

    async def _next(self, client: Client, burst: bool, count: int) -> list[Process]:
        timeout = 0.0 if burst else self.assign_timeout_s
        delay = 0.5
        while not self._stopping.is_set():
            if not await self._approved(client, burst):
                return []
            if not self._troubled():
                self._say(ExecutorStage.WAITING_FOR_WORK, "waiting for work")
                self.ready.set()
            leader = self._new_leader
            assign = asyncio.ensure_future(
                client.assign_many(count, timeout, executor_id=self.executor_id)
            )
            if not await self._until_done(assign, leader):
                await _abandon(assign)  # stopped, or a new leader: ask it rather than wait
                continue
            try:
                processes = assign.result()
            except ColoniesError as err:
                if await self._assign_failed(client, burst, err):
                    continue
                await pause(delay, self._stopping)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            self._say(ExecutorStage.WAITING_FOR_WORK, "waiting for work")
            self.ready.set()
            return processes
        return []

    async def _assign_failed(self, client: Client, burst: bool, err: ColoniesError) -> bool:
        """After a refused or unanswered assign: True to ask again at once, False to pause
        first. Raises what ends the run (in burst mode, anything)."""
        if isinstance(err, ExecutorRemovedError | ExecutorReplacedError):
            self._end(err)
            return True
        if burst:
            raise err
        if isinstance(err, NotAuthorizedError):  # rejected (or pending) meanwhile
            assert self.registered is not None
            state = ExecutorState.__members__.get(str(err.detail.get("state")))
            self.registered = msgspec.structs.replace(
                self.registered, state=state or ExecutorState.PENDING
            )
            return True
        if isinstance(err, ExecutorNotFoundError | ColonyNotFoundError):
            await self._register(client, burst)  # forgotten by the broker: register again
            return True
        if isinstance(err, BrokerUnavailableError):
            self._no_broker(client, err)
            return False
        raise err

    # -- running one process -------------------------------------------------------------
    async def _execute(self, client: Client, results: ResultSender, process: Process) -> None:
        handler = self.handlers.get(process.spec.func_name, self.default_handler)
        pid = process.process_id
        attempt = process.attempt
        key = (pid, attempt)
        revoked = self._early.take(pid, attempt)
        if revoked is not None:
            # Cancelled or queued again while its assignment was on its way: no longer this
            # executor's, so its function does not start and nothing is reported.
            logger.info("process %s: %s before its function started; not started", pid, revoked)
            return
        self.processed += 1
        if handler is None:
            known = ", ".join(sorted(self.handlers)) or "none"
            error = (
                f"executor {self.name!r} has no function {process.spec.func_name!r} "
                f"(it has: {known})"
            )
            await self._finish(results, Fail(process_id=pid, errors=[error], attempt=attempt))
            return
        ctx = ProcessContext(process, client, give_up=self._forced)
        token = current.set(ctx)
        self.running.add(pid)
        work = asyncio.ensure_future(guarded(handler, ctx))
        self._work[key] = work
        flusher = asyncio.create_task(self._flush_periodically(ctx))
        try:
            try:
                outcome = await work
            except asyncio.CancelledError:
                stopped = self._revoked.pop(key, None)
                if stopped is None:
                    raise  # the executor stops now: the broker gets the process back
                logger.info("process %s: %s; its function was stopped", pid, stopped)
                return
            finally:
                self._work.pop(key, None)
                await _cancelled(flusher)
            if isinstance(outcome, Raised):
                logger.info("process %s failed: %s", pid, outcome.error)
                for line in outcome.traceback:
                    ctx.log(line)
                item: Close | Fail = Fail(process_id=pid, errors=[outcome.error], attempt=attempt)
            else:
                problem = output_problem(process, outcome.output, client.nc.max_payload)
                if problem is None:
                    item = Close(process_id=pid, output=outcome.output, attempt=attempt)
                else:
                    logger.info("process %s failed: %s", pid, problem)
                    item = Fail(process_id=pid, errors=[problem], attempt=attempt)
            await ctx.flush(final=True)
            await self._finish(results, item)
        finally:
            self.running.discard(pid)
            current.reset(token)

    async def _on_leader(self, msg: Any) -> None:
        """A broker started leading: wake every slot parked on the previous one."""
        woken, self._new_leader = self._new_leader, asyncio.Event()
        woken.set()

    async def _on_control(self, msg: Any) -> None:
        """What the broker tells this executor: a process taken away (stop its function now),
        "who holds your registration?", a new state (approved, rejected, removed), or that
        another start took the name over."""
        try:
            message = _control_decoder.decode(msg.data)
        except msgspec.MsgspecError:
            logger.warning("ignored a malformed control message")
            return
        if isinstance(message, Revoke):
            self._revoke(message)
        elif message.executor_id != self.executor_id:
            return  # for another run under this name
        elif isinstance(message, WhoIs):
            if msg.reply:
                with contextlib.suppress(nats.errors.Error):
                    await msg.respond(_encode(self._instance()))
        elif isinstance(message, Replaced):
            by = message.by
            self._end(
                ExecutorReplacedError(
                    f"executor {self.name!r} was replaced by another start on host "
                    f"{by.host or '?'} (pid {by.pid})",
                    executor_name=self.name,
                    by_host=by.host,
                    by_pid=by.pid,
                )
            )
        elif isinstance(message, StateChanged):
            if message.state is ExecutorState.UNREGISTERED:
                self._end(
                    ExecutorRemovedError(
                        f"executor {self.name!r} was {message.reason or 'removed'}; starting it "
                        "again registers it afresh",
                        executor_name=self.name,
                    )
                )
            elif self.registered is not None:
                self.registered = msgspec.structs.replace(self.registered, state=message.state)
                self._state_changed.set()

    def _revoke(self, revoke: Revoke) -> None:
        """Stop the function of the assignment taken away; one that has not started yet (its
        assignment is still on its way) never starts. A revoke that does not name its attempt
        (from an older broker) stops whatever runs under the process id."""
        pid = revoke.process_id
        reason = f"{revoke.state.name.lower()}: {revoke.reason}"
        if revoke.attempt is None:
            keys = [key for key in self._work if key[0] == pid]
        else:
            keys = [(pid, revoke.attempt)]
            if keys[0] not in self._work:
                self._early.remember(pid, revoke.attempt, reason)
                return
        for key in keys:
            work = self._work[key]
            if not work.done():
                self._revoked[key] = reason
                work.cancel()

    async def _finish(self, results: ResultSender, item: Close | Fail) -> None:
        """Send the result, riding out a broker fail-over (until stopped now); a result
        refused for a reason is never sent again as it is."""
        pid = item.process_id
        delay = 0.2
        deadline = time.monotonic() + _RESULT_PATIENCE_S
        while True:
            try:
                await results.send(item)
                return
            except (ConflictError, NotAuthorizedError) as err:
                # Cancelled, re-queued after this executor was presumed lost, or a retried send
                # whose first try got through: not ours to close (again).
                logger.warning("result of %s not accepted: %s", pid, err.message)
                return
            except BrokerUnavailableError as err:
                if time.monotonic() > deadline or self._forced.is_set():
                    logger.error("result of %s dropped: no broker answered (%s)", pid, err)
                    return
                logger.warning("sending the result of %s failed (%s); retrying", pid, err.message)
                await pause(delay, self._forced)
                delay = min(delay * 2, RETRY_MAX_S)
            except Exception as err:  # refused, or cannot be sent at all
                if isinstance(err, ColoniesError):
                    reason = f"the broker refused the output: {err.message}"
                else:
                    reason = f"the output could not be sent: {describe(err)}"
                if isinstance(item, Fail):
                    logger.error("result of %s not delivered: %s", pid, reason)
                    return
                item = Fail(process_id=pid, errors=[cut(reason)], attempt=item.attempt)

    async def _flush_periodically(self, ctx: ProcessContext) -> None:
        while True:
            await asyncio.sleep(_LOG_FLUSH_S)
            try:
                await ctx.flush()
            except Exception:
                logger.exception("sending the log of %s failed", ctx.process.process_id)

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


async def _abandon(fut: asyncio.Future[Any]) -> None:
    """Cancel a request no longer waited for; a client it produced meanwhile is closed."""
    fut.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        result = await fut
        if isinstance(result, Client):
            await result.aclose()


async def _cancelled(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _count(n: int, noun: str) -> str:
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun}es" if noun.endswith("s") else f"{n} {noun}s"
