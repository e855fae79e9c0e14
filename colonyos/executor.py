"""Write an executor in a few lines.

    app = ExecutorApp("python", name="worker-1")

    @app.function
    def add(a: int, b: int) -> int:
        print("adding")            # becomes a line of the process's log
        return a + b               # becomes the process's output: [a + b]

    asyncio.run(app.run())

A raised exception fails the process with the error text. ``run(burst=True)`` returns once no
more work can be assigned. Only nats-py and msgspec are needed, so this runs on small devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import io
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

import msgspec
import nats.errors

from colonyos.client import Client
from colonyos.config import Settings
from colonyos.errors import (
    BrokerUnavailableError,
    ColonyNotFoundError,
    ConflictError,
    NotAuthorizedError,
)
from colonyos.messages import Close, Fail, Revoke
from colonyos.models import (
    Capabilities,
    Executor,
    ExecutorState,
    FunctionSpec,
    Process,
)
from colonyos.subjects import check_name

__all__ = ["ExecutorApp", "ProcessContext", "output_of"]

logger = logging.getLogger(__name__)

Handler = Callable[["ProcessContext"], Awaitable[list[Any]]]

_LOG_FLUSH_S = 0.25
_RETRY_MAX_S = 5.0
# How long an executor keeps trying to deliver a result while no broker answers.
_RESULT_PATIENCE_S = 120.0
_FINAL_FLUSH_TRIES = 8
_revoke_decoder = msgspec.json.Decoder(Revoke)
_current: contextvars.ContextVar[ProcessContext | None] = contextvars.ContextVar(
    "colonies_process", default=None
)


def output_of(value: Any) -> list[Any]:
    """A function's return value as a process output: None -> [], tuple -> list, else [v]."""
    if value is None:
        return []
    if isinstance(value, tuple):
        return list(value)
    return [value]


class ProcessContext:
    """What a handler gets: the process, and a log that streams to the colony."""

    def __init__(self, process: Process, client: Client) -> None:
        self.process = process
        self.client = client
        self._lines: list[str] = []
        self._partial = ""

    async def add_child(self, spec: FunctionSpec, *, insert: bool = False) -> Process:
        """Add a process to this process's graph: after it (a new branch) or, with ``insert``,
        between it and its children. The child gets this process's output as input."""
        return await self.client.add_child(self.process, spec, insert=insert)

    def log(self, line: str) -> None:
        """Add one line to the process's log (sent in batches while the process runs)."""
        self._lines.append(line)

    def write(self, text: str) -> None:
        """File-like: text written here is split into log lines."""
        text = self._partial + text
        *lines, self._partial = text.split("\n")
        self._lines.extend(lines)

    async def flush(self, final: bool = False) -> None:
        if final and self._partial:
            self._lines.append(self._partial)
            self._partial = ""
        delay = 0.2
        for _ in range(_FINAL_FLUSH_TRIES if final else 1):
            lines, self._lines = self._lines, []
            try:
                await self.client.add_logs(
                    self.process.process_id, lines, attempt=self.process.attempt
                )
                return
            except BrokerUnavailableError:
                self._lines[:0] = lines  # keep them for the next try
            except (ConflictError, NotAuthorizedError) as err:
                logger.warning("log of %s refused: %s", self.process.process_id, err.message)
                return
            if final:
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
        if final:
            logger.warning(
                "%d log lines of %s undelivered", len(self._lines), self.process.process_id
            )


class _RoutedStream(io.TextIOBase):
    """Stands in for sys.stdout: text written while a process runs goes to its log."""

    def __init__(self, fallback: TextIO) -> None:
        self.fallback = fallback

    def write(self, text: str) -> int:
        ctx = _current.get()
        if ctx is None:
            return self.fallback.write(text)
        ctx.write(text)
        return len(text)

    def flush(self) -> None:
        if _current.get() is None:
            self.fallback.flush()


class _LogRouter(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        ctx = _current.get()
        if ctx is not None:
            ctx.log(self.format(record))


@contextlib.contextmanager
def _capture_output() -> Any:
    original = sys.stdout
    router = _RoutedStream(original)
    sys.stdout = router
    handler = _LogRouter()
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        if sys.stdout is router:  # unless someone else has replaced it since
            sys.stdout = original
        logging.getLogger().removeHandler(handler)


class ExecutorApp:
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
    ) -> None:
        self.executor_type = check_name("executortype", executor_type)
        self.name = check_name("executorname", name or f"{executor_type}-{socket.gethostname()}")
        self.settings = settings or Settings.from_env()
        self.location_name = location_name
        self.capabilities = capabilities or Capabilities()
        self.assign_timeout_s = assign_timeout_s
        # How many processes it runs at once (each slot assigns its own).
        self.concurrency = max(1, concurrency)
        # Keep well under the broker's liveness window (30 s by default).
        self.heartbeat_s = heartbeat_s or float(os.environ.get("COLONIES_HEARTBEAT", "5"))
        self.running: set[str] = set()
        self._work: dict[str, asyncio.Task[list[Any]]] = {}
        self._new_leader = asyncio.Event()
        self._revoked: dict[str, str] = {}
        self.handlers: dict[str, Handler] = {}
        self.default_handler: Handler | None = None
        self.ready = asyncio.Event()
        self.registered: Executor | None = None
        self.processed = 0
        self._stopping = asyncio.Event()
        # print() inside Python functions becomes their log; only then is stdout routed.
        self._capture_print = False

    # -- registering work ---------------------------------------------------------------
    def function(self, fn: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
        """Register a Python function (sync or async) for the funcname ``name or fn.__name__``."""

        def register(f: Callable[..., Any]) -> Callable[..., Any]:
            self.handlers[name or f.__name__] = _call_function(f)
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

    def stop(self) -> None:
        self._stopping.set()

    async def serve(self, *, burst: bool = False) -> int:
        """:meth:`run` until SIGINT or SIGTERM, which stop it after the current process."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, self.stop)
        try:
            return await self.run(burst=burst)
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    # -- the loop -------------------------------------------------------------------------
    async def run(self, *, burst: bool = False) -> int:
        """Register, then assign and execute until stopped. Returns the processes handled."""
        async with await Client.connect(self.settings, caller=self.name, name=self.name) as client:
            await self._register(client, burst)
            control = await client.nc.subscribe(
                client.subjects.control(client.colony, self.name), cb=self._on_control
            )
            leaders = await client.nc.subscribe(client.subjects.leader, cb=self._on_leader)
            beating = asyncio.create_task(self._heartbeat(client))
            try:
                with _capture_output() if self._capture_print else contextlib.nullcontext():
                    await self._dispatch(client, _ResultSender(client), burst)
            finally:
                beating.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beating
                with contextlib.suppress(nats.errors.Error):
                    await control.unsubscribe()
                    await leaders.unsubscribe()
        logger.info("executor %s stopped after %d processes", self.name, self.processed)
        return self.processed

    async def _register(self, client: Client, burst: bool) -> None:
        executor = Executor(
            executor_type=self.executor_type,
            executor_name=self.name,
            location_name=self.location_name,
            capabilities=self.capabilities,
        )
        delay = 0.2
        while True:
            try:
                self.registered = await client.register(executor)
                break
            except (BrokerUnavailableError, ColonyNotFoundError) as err:
                if burst and isinstance(err, ColonyNotFoundError):
                    raise
                logger.warning("cannot register yet (%s); retrying in %.1fs", err.message, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
        if self.registered.state is not ExecutorState.APPROVED:
            if burst:
                raise NotAuthorizedError(
                    f"executor {self.name!r} is {self.registered.state.name}: approve it with "
                    f"'colonies executor approve --name {self.name}'",
                    executor_name=self.name,
                )
            logger.warning(
                "executor %s is %s; waiting for 'colonies executor approve --name %s'",
                self.name,
                self.registered.state.name,
                self.name,
            )
        self.ready.set()

    async def _dispatch(self, client: Client, results: _ResultSender, burst: bool) -> None:
        """Keep ``concurrency`` processes running: ask for as many as there are free slots
        (one request), run each in its own task, and send their results together."""
        running: set[asyncio.Task[None]] = set()

        def reap() -> None:
            for task in [t for t in running if t.done()]:
                running.discard(task)
                task.result()  # a failure of the executor itself stops it, as it should

        try:
            while not self._stopping.is_set():
                reap()
                free = self.concurrency - len(running)
                if free == 0:
                    await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    continue
                processes = await self._next(client, burst, free)
                if not processes:
                    if burst:
                        if not running:
                            return
                        # What is still running may release more work (workflow children).
                        await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    continue
                for process in processes:
                    running.add(asyncio.create_task(self._execute(client, results, process)))
        except asyncio.CancelledError:
            for task in running:
                task.cancel()
            raise
        finally:
            if running:
                await asyncio.wait(running)
            reap()

    async def _heartbeat(self, client: Client) -> None:
        assert self.registered is not None
        while True:
            await client.heartbeat(self.registered.executor_id, sorted(self.running))
            await asyncio.sleep(self.heartbeat_s)

    async def _next(self, client: Client, burst: bool, count: int) -> list[Process]:
        timeout = 0.0 if burst else self.assign_timeout_s
        delay = 0.5
        while not self._stopping.is_set():
            leader = self._new_leader
            assign = asyncio.ensure_future(client.assign_many(count, timeout))
            stop = asyncio.ensure_future(self._stopping.wait())
            switched = asyncio.ensure_future(leader.wait())
            try:
                await asyncio.wait({assign, stop, switched}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                switched.cancel()
            if not assign.done():
                assign.cancel()
                with contextlib.suppress(asyncio.CancelledError, BrokerUnavailableError):
                    await assign
                if self._stopping.is_set():
                    return []
                continue  # a new leader: ask it, rather than wait on the old one's long poll
            try:
                return assign.result()
            except (BrokerUnavailableError, NotAuthorizedError) as err:
                if burst:
                    raise
                logger.warning("assign failed (%s); retrying in %.1fs", err.message, delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()
                delay = min(delay * 2, _RETRY_MAX_S)
        return []

    async def _execute(self, client: Client, results: _ResultSender, process: Process) -> None:
        handler = self.handlers.get(process.spec.func_name, self.default_handler)
        pid = process.process_id
        self.processed += 1
        if handler is None:
            known = ", ".join(sorted(self.handlers)) or "none"
            error = (
                f"executor {self.name!r} has no function {process.spec.func_name!r} "
                f"(it has: {known})"
            )
            await self._finish(results.fail(pid, [error], attempt=process.attempt))
            return
        ctx = ProcessContext(process, client)
        attempt = process.attempt
        token = _current.set(ctx)
        self.running.add(pid)
        work: asyncio.Task[list[Any]] = asyncio.ensure_future(handler(ctx))
        self._work[pid] = work
        flusher = asyncio.create_task(self._flush_periodically(ctx))
        try:
            output = await work
        except asyncio.CancelledError:
            revoked = self._revoked.pop(pid, None)
            if revoked is None:
                raise  # the executor itself is being cancelled
            await self._stop_flusher(flusher, ctx, send=False)
            logger.info("process %s: %s; its function was stopped", pid, revoked)
        except Exception as err:
            logger.info("process %s failed: %s", pid, err)
            await self._stop_flusher(flusher, ctx)
            error = f"{type(err).__name__}: {err}"
            await self._finish(results.fail(pid, [error], attempt=attempt))
        else:
            await self._stop_flusher(flusher, ctx)
            await self._finish(results.close(pid, output, attempt=attempt))
        finally:
            self._work.pop(pid, None)
            self.running.discard(pid)
            _current.reset(token)

    async def _on_leader(self, msg: Any) -> None:
        """A broker started leading: wake every slot parked on the previous one."""
        woken, self._new_leader = self._new_leader, asyncio.Event()
        woken.set()

    async def _on_control(self, msg: Any) -> None:
        """The broker took a process away (cancelled, re-queued): stop its function now."""
        try:
            revoke = _revoke_decoder.decode(msg.data)
        except msgspec.MsgspecError:
            logger.warning("ignored a malformed control message")
            return
        work = self._work.get(revoke.process_id)
        if work is not None and not work.done():
            self._revoked[revoke.process_id] = f"{revoke.state.name.lower()}: {revoke.reason}"
            work.cancel()

    async def _finish(self, closing: Callable[[], Awaitable[None]]) -> None:
        """Send the result, riding out a broker fail-over; give up only if it is refused."""
        delay = 0.2
        deadline = time.monotonic() + _RESULT_PATIENCE_S
        while True:
            try:
                await closing()
                return
            except (ConflictError, NotAuthorizedError) as err:
                # Cancelled, re-queued after this executor was presumed lost, or a retried send
                # whose first try got through: not ours to close (again).
                logger.warning("result not accepted: %s", err.message)
                return
            except BrokerUnavailableError as err:
                if time.monotonic() > deadline:
                    logger.error(
                        "result dropped: no broker for %.0fs (%s)", _RESULT_PATIENCE_S, err
                    )
                    return
                logger.warning("sending the result failed (%s); retrying", err.message)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)

    @staticmethod
    async def _flush_periodically(ctx: ProcessContext) -> None:
        while True:
            await asyncio.sleep(_LOG_FLUSH_S)
            await ctx.flush()

    @staticmethod
    async def _stop_flusher(
        flusher: asyncio.Task[None], ctx: ProcessContext, *, send: bool = True
    ) -> None:
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        if send:
            await ctx.flush(final=True)


class _ResultSender:
    """Delivers results; those that finish while a request is out go together in the next.

    One process alone is sent at once; under load, the results of every slot that finished
    meanwhile share one request (and the broker writes them concurrently).
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self._queue: list[tuple[Close | Fail, asyncio.Future[None]]] = []
        self._sending: asyncio.Task[None] | None = None

    def close(self, pid: str, output: list[Any], *, attempt: int) -> Callable[[], Awaitable[None]]:
        item = Close(process_id=pid, output=output, attempt=attempt)
        return lambda: self.send(item)

    def fail(self, pid: str, errors: list[str], *, attempt: int) -> Callable[[], Awaitable[None]]:
        item = Fail(process_id=pid, errors=errors, attempt=attempt)
        return lambda: self.send(item)

    async def send(self, item: Close | Fail) -> None:
        """Returns once the broker accepted it; raises what refused it, or
        :class:`BrokerUnavailableError` when the request went unanswered."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((item, done))
        if self._sending is None or self._sending.done():
            self._sending = asyncio.create_task(self._drain())
        await done

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                refused = await self.client.send_results(
                    [i for i, _ in batch if isinstance(i, Close)],
                    [i for i, _ in batch if isinstance(i, Fail)],
                )
            except Exception as err:  # every waiter gets it, to retry or to report
                for _, done in batch:
                    if not done.done():
                        done.set_exception(err)
                continue
            for item, done in batch:
                if done.done():
                    continue
                error = refused.get(item.process_id)
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)


def _call_function(fn: Callable[..., Any]) -> Handler:
    """Adapt a function to a handler; sync functions run in a worker thread.

    It is called as ``fn(*args, *input, **kwargs)``: the spec's args, then the process's input
    (in a workflow, its parents' outputs), then the spec's kwargs.
    """

    @functools.wraps(fn)
    async def handler(ctx: ProcessContext) -> list[Any]:
        spec = ctx.process.spec
        args = [*spec.args, *ctx.process.input]
        if inspect.iscoroutinefunction(fn):
            value = await fn(*args, **spec.kwargs)
        else:
            value = await asyncio.to_thread(fn, *args, **spec.kwargs)
        return output_of(value)

    return handler
