"""Running one process: its context and log, calling its function so that nothing the function
does escapes, and delivering results in requests that fit.

* :class:`ProcessContext` is what a handler gets: the process, and a log that streams to the
  colony. While processes run, ``print`` and ``logging`` inside a function become lines of its
  process's log (:func:`capture_output`); a line too long for one message is sent as several,
  and lines go in as many requests as it takes for each to fit the server's ``max_payload``.
* :func:`guarded` turns whatever a handler returns or raises into a :class:`Returned` or a
  :class:`Raised` (with the type, the message and the function's traceback): a SystemExit or a
  KeyboardInterrupt raised by a function fails its process, never the executor.
* :func:`output_problem` says why an output cannot be a process's result (not JSON, or a
  process record too large to store).
* :class:`ResultSender` sends the results of processes that finish together in shared requests,
  each no larger than ``max_payload``.
* :class:`EarlyRevokes` remembers, for a while, the assignments the broker took back before
  their functions started, so that they never start.

Like :mod:`colonyos.executor`, it needs only nats-py and msgspec.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import io
import logging
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TextIO, TypeVar

import msgspec

from colonyos.client import Client
from colonyos.errors import (
    BrokerUnavailableError,
    ColoniesError,
    ConflictError,
    NotAuthorizedError,
)
from colonyos.limits import (
    ERROR_TEXT_MAX_CHARS,
    LOG_LINE_MAX_CHARS,
    record_limit,
    request_limit,
)
from colonyos.models import FunctionSpec, Process, ProcessState, now

__all__ = [
    "REQUEST_ENVELOPE_BYTES",
    "RETRY_MAX_S",
    "EarlyRevokes",
    "FunctionOutcome",
    "Handler",
    "OwnLog",
    "ProcessContext",
    "ProcessFailure",
    "Raised",
    "Returned",
    "call_function",
    "capture_output",
    "current",
    "cut",
    "describe",
    "first_of",
    "guarded",
    "output_of",
    "output_problem",
    "pause",
]

T = TypeVar("T")
Handler = Callable[["ProcessContext"], Awaitable[list[Any]]]

# The longest pause between two tries of a request that no broker answered.
RETRY_MAX_S = 5.0
# How long a process's last log lines are retried while no broker answers.
_FINAL_FLUSH_PATIENCE_S = 30.0
# JSON escapes a character in at most six bytes (\u0000): a line of n characters fits in 6n.
_JSON_BYTES_PER_CHAR = 6
# Bytes of a results or log request beyond its items (keys, process id, attempt).
REQUEST_ENVELOPE_BYTES = 256
# How long, and how many, revokes of assignments not started yet are remembered: far longer
# than an assign reply is in flight, and more than an executor has assignments in hand.
_EARLY_REVOKE_KEEP_S = 300.0
_EARLY_REVOKES_MAX = 1024


class OwnLog:
    """The executor's own log lines, written outside any process's context: they never become
    a line of a process's log (only what a function prints or logs does)."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def log(self, level: int, msg: str, *args: Any, **kwargs: Any) -> None:
        contextvars.Context().run(self._logger.log, level, msg, *args, **kwargs)

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log(logging.DEBUG, msg, *args, **kwargs)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log(logging.INFO, msg, *args, **kwargs)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log(logging.WARNING, msg, *args, **kwargs)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log(logging.ERROR, msg, *args, **kwargs)

    def exception(self, msg: str, *args: Any) -> None:
        self.log(logging.ERROR, msg, *args, exc_info=True)


logger = OwnLog(__name__)
# Loggers whose records are the executor's or its libraries', never a function's log lines.
LIBRARIES = ("colonyos", "nats", "asyncio")

_encode = msgspec.json.Encoder().encode
# The process whose function runs in this context (its task, and the thread of a sync one).
current: contextvars.ContextVar[ProcessContext | None] = contextvars.ContextVar(
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

    def __init__(
        self,
        process: Process,
        client: Client,
        *,
        give_up: asyncio.Event | None = None,
        resumed: bool = False,
    ) -> None:
        self.process = process
        self.client = client
        # Taken back after a restart (colonyos.resume): its work may be running already, on
        # the platform an earlier run of this executor handed it to.
        self.resumed = resumed
        self._lines: list[str] = []
        self._partial = ""
        # Set when the executor stops now: the last log lines are not waited for any more.
        self._give_up = give_up or asyncio.Event()
        budget = request_limit(client.nc.max_payload) - REQUEST_ENVELOPE_BYTES
        self._budget = max(1, budget)
        self._line_chars = max(1, min(LOG_LINE_MAX_CHARS, budget // _JSON_BYTES_PER_CHAR))

    async def add_child(self, spec: FunctionSpec, *, insert: bool = False) -> Process:
        """Add a process to this process's graph: after it (a new branch) or, with ``insert``,
        between it and its children. The child gets this process's output as input."""
        return await self.client.add_child(self.process, spec, insert=insert)

    def log(self, line: str) -> None:
        """Add one line to the process's log (sent in batches while the process runs); a line
        too long for one message is sent as several."""
        text = line if isinstance(line, str) else str(line)
        self._lines.extend(_chunks(text, self._line_chars))

    def write(self, text: str) -> None:
        """File-like: text written here is split into log lines."""
        text = self._partial + text
        *lines, self._partial = text.split("\n")
        for line in lines:
            self._lines.extend(_chunks(line, self._line_chars))
        while len(self._partial) > self._line_chars:  # a long line without its end yet
            self._lines.append(self._partial[: self._line_chars])
            self._partial = self._partial[self._line_chars :]

    async def flush(self, final: bool = False) -> None:
        """Send the lines written so far, in requests that each fit the server's max_payload.
        ``final`` also sends an unfinished last line, and rides out a broker fail-over for a
        while (not once the executor stops now)."""
        if final and self._partial:
            self._lines.append(self._partial)
            self._partial = ""
        delay = 0.2
        deadline = time.monotonic() + _FINAL_FLUSH_PATIENCE_S
        pid = self.process.process_id
        while self._lines:
            batch = self._take_batch()
            try:
                await self.client.add_logs(pid, batch, attempt=self.process.attempt)
            except BrokerUnavailableError:
                self._lines[:0] = batch  # keep them for the next try
                if not final or self._give_up.is_set() or time.monotonic() > deadline:
                    break
                await pause(delay, self._give_up)
                delay = min(delay * 2, RETRY_MAX_S)
            except (ConflictError, NotAuthorizedError) as err:
                # Taken away (cancelled, re-queued): its log is not this run's to write.
                logger.warning("log of %s refused: %s", pid, err.message)
                self._lines.clear()
                return
            except ColoniesError as err:  # refused for a reason: never sent again
                logger.warning("%d log lines of %s refused: %s", len(batch), pid, err.message)
        if final and self._lines:
            logger.warning("%d log lines of %s undelivered", len(self._lines), pid)

    def _take_batch(self) -> list[str]:
        size, count = 0, 0
        for line in self._lines:
            line_size = len(_encode(line)) + 1
            if count and size + line_size > self._budget:
                break
            size += line_size
            count += 1
        batch, self._lines = self._lines[:count], self._lines[count:]
        return batch


def _chunks(text: str, size: int) -> list[str]:
    if len(text) <= size:
        return [text]
    return [text[i : i + size] for i in range(0, len(text), size)]


class _RoutedStream(io.TextIOBase):
    """Stands in for sys.stdout: text written while a process runs goes to its log."""

    def __init__(self, fallback: TextIO) -> None:
        self.fallback = fallback

    def write(self, text: str) -> int:
        ctx = current.get()
        if ctx is None:
            return self.fallback.write(text)
        ctx.write(text)
        return len(text)

    def flush(self) -> None:
        if current.get() is None:
            self.fallback.flush()


def _a_functions(record: logging.LogRecord) -> bool:
    """Was this record logged by a running function (not by the executor or a library)?"""
    return current.get() is not None and record.name.split(".")[0] not in LIBRARIES


class _LogRouter(logging.Handler):
    """A function's log records become lines of its process's log."""

    def emit(self, record: logging.LogRecord) -> None:
        ctx = current.get()
        if ctx is not None and _a_functions(record):
            ctx.log(self.format(record))


def _not_a_functions(record: logging.LogRecord) -> bool:
    return not _a_functions(record)


@contextlib.contextmanager
def capture_output() -> Any:
    """While processes run: their prints and log records go to their logs (and not to the
    executor's own console or handlers)."""
    original = sys.stdout
    router = _RoutedStream(original)
    sys.stdout = router
    root = logging.getLogger()
    others = list(root.handlers)
    for other in others:
        other.addFilter(_not_a_functions)
    handler = _LogRouter()
    root.addHandler(handler)
    try:
        yield
    finally:
        if sys.stdout is router:  # unless someone else has replaced it since
            sys.stdout = original
        root.removeHandler(handler)
        for other in others:
            other.removeFilter(_not_a_functions)


# -- waiting ------------------------------------------------------------------------------
async def first_of(tasks: set[Any], *events: asyncio.Event) -> None:
    """Until one of ``tasks`` is done or one of ``events`` is set."""
    if any(e.is_set() for e in events):
        return
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    if not tasks and not waiters:
        await asyncio.Event().wait()  # nothing can end it: only a timeout or a cancel
    try:
        await asyncio.wait({*tasks, *waiters}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def pause(seconds: float, *events: asyncio.Event) -> None:
    """Sleep, but no longer than until one of ``events`` is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await first_of(set(), *events)


# -- what a function did ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Returned:
    output: list[Any]


@dataclass(frozen=True, slots=True)
class Raised:
    error: str  # "Type: message", cut to fit a process record
    traceback: list[str]  # for the process log


FunctionOutcome = Returned | Raised


async def guarded(handler: Handler, ctx: ProcessContext) -> FunctionOutcome:
    """Run a handler; whatever it returns or raises becomes an outcome, never an exception
    of the executor (a SystemExit or KeyboardInterrupt would otherwise stop the event loop)."""
    try:
        output = await handler(ctx)
    except asyncio.CancelledError as err:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # cancelled by the executor (revoked, or stopping now)
        return _raised(err)  # raised by the function itself
    except BaseException as err:  # the function's: it fails its process, not the executor
        return _raised(err)
    if not isinstance(output, list):
        output = output_of(output)
    return Returned(output)


class ProcessFailure(Exception):
    """Raised by a handler to fail its process with exactly this message, without a traceback:
    for failures a handler explains itself (a command's exit code, a spec's missing field)."""


def _raised(err: BaseException) -> Raised:
    if isinstance(err, ProcessFailure):
        return Raised(error=cut(describe_text(err)), traceback=[])
    try:
        summary = traceback.TracebackException.from_exception(err)
        # The function's frames, without the executor's own around them.
        summary.stack = traceback.StackSummary.from_list(
            [frame for frame in summary.stack if frame.filename != __file__]
        )
        lines = "".join(summary.format()).splitlines()
    except Exception:
        lines = [f"(the traceback of {_type_name(err)} could not be formatted)"]
    return Raised(error=cut(describe(err)), traceback=lines)


def _type_name(err: BaseException) -> str:
    try:
        return str(type(err).__name__)
    except Exception:
        return "exception"


def describe(err: BaseException) -> str:
    """``Type: message`` for any exception, even one whose ``__str__`` raises."""
    name = _type_name(err)
    text = describe_text(err)
    return f"{name}: {text}" if text else name


def describe_text(err: BaseException) -> str:
    """The message of any exception, even one whose ``__str__`` raises."""
    try:
        return str(err)
    except BaseException as inner:  # a broken __str__ is the function's, not the executor's
        return f"<str() of the exception failed: {_type_name(inner)}>"


def cut(text: str) -> str:
    if len(text) <= ERROR_TEXT_MAX_CHARS:
        return text
    rest = len(text) - ERROR_TEXT_MAX_CHARS
    return f"{text[:ERROR_TEXT_MAX_CHARS]}… ({rest} more characters in the process log)"


def output_problem(process: Process, output: list[Any], max_payload: int) -> str | None:
    """Why this output cannot be the process's result (not JSON, or too large to store with
    the rest of the process record), or None."""
    finished = msgspec.structs.replace(
        process, state=ProcessState.SUCCESS, output=output, end_time=now()
    )
    what = f"the output of {process.spec.func_name or 'the function'}"
    try:
        size = len(_encode(finished))
    except Exception as err:
        return cut(f"{what} cannot be stored as JSON: {describe(err)}")
    limit = record_limit(max_payload)
    if size > limit:
        return (
            f"{what} is too large: the process record with it would be {size} bytes, more "
            f"than the {limit} bytes a process record may have (the NATS server's max_payload "
            f"of {max_payload} bytes, less room for headers)"
        )
    return None


class EarlyRevokes:
    """Revokes of assignments whose functions have not started: the assign reply was still
    in flight, or the process not yet handed to its slot. Each names one assignment, a process
    id and its attempt, so a later assignment of the same process is not held back by it.
    Kept for ``keep_s`` at most (by ``clock``), the ``limit`` newest only."""

    def __init__(
        self,
        *,
        keep_s: float = _EARLY_REVOKE_KEEP_S,
        limit: int = _EARLY_REVOKES_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keep_s = keep_s
        self.limit = limit
        self._clock = clock
        self._reasons: OrderedDict[tuple[str, int], tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._reasons)

    def remember(self, process_id: str, attempt: int, reason: str) -> None:
        now_s = self._clock()
        self._reasons[(process_id, attempt)] = (reason, now_s)
        self._reasons.move_to_end((process_id, attempt))
        while self._reasons:
            _, since = next(iter(self._reasons.values()))
            if len(self._reasons) <= self.limit and now_s - since <= self.keep_s:
                break
            self._reasons.popitem(last=False)

    def take(self, process_id: str, attempt: int) -> str | None:
        """Why this assignment was taken back before it started (forgotten once told), or
        None if it was not."""
        found = self._reasons.pop((process_id, attempt), None)
        if found is None or self._clock() - found[1] > self.keep_s:
            return None
        return found[0]


def call_function(fn: Callable[..., Any]) -> Handler:
    """Adapt a function to a handler; a sync function runs in a thread of its own.

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
            value = await _in_thread(fn, *args, **spec.kwargs)
        return output_of(value)

    return handler


async def _in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` in a daemon thread, with the caller's context (so ``print`` reaches the
    process's log). Unlike ``asyncio.to_thread``, a function that never returns does not keep
    the executor's process from exiting once it stops."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[bool, Any]] = loop.create_future()
    context = contextvars.copy_context()

    def settle(outcome: tuple[bool, Any]) -> None:
        if not done.done():
            done.set_result(outcome)

    def target() -> None:
        try:
            outcome: tuple[bool, Any] = (True, context.run(fn, *args, **kwargs))
        except BaseException as err:  # the function's, handed to the loop to report
            outcome = (False, err)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, outcome)

    name = f"colonies-{getattr(fn, '__name__', 'function')}"
    threading.Thread(target=target, name=name, daemon=True).start()
    ok, value = await done
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]
