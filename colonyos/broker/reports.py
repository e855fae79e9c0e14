"""What executors report: results (close, fail, several at once) and log lines.

A result is a transition of the process by compare-and-set, refused unless the reporting run
holds the process in the attempt it names (:func:`transitions.close`, :func:`transitions.fail`);
a log line is accepted on the same condition, and published to the colony's log stream.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime

import msgspec

from colonyos.broker import transitions
from colonyos.broker.assignment import Assignment
from colonyos.broker.service import Service
from colonyos.errors import ColoniesError, RecordTooLargeError
from colonyos.limits import record_limit
from colonyos.messages import (
    Assign,
    Close,
    Fail,
    LogLines,
    NextReply,
    Outcome,
    Results,
    ResultsNext,
)
from colonyos.models import Executor, LogEntry, Process, now

__all__ = ["Reports", "log_entries"]

logger = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode


# What the outcomes of a results_next may take for its reply to carry the next process too
# (a process record leaves limits.HEADROOM_BYTES of a message free).
_OUTCOMES_ROOM = 1024


class Reports:
    def __init__(self, service: Service, assignment: Assignment | None = None) -> None:
        self.service = service
        self.store = service.store
        self.subjects = service.subjects
        self.assignment = assignment
        service.register_ops(
            close=(Close, self.close),
            fail=(Fail, self.fail),
            results=(Results, self.results),
            log=(LogLines, self.log),
        )
        if assignment is not None:
            service.register_ops(results_next=(ResultsNext, self.results_next))

    async def close(self, colony: str, caller: str, req: Close) -> Process:
        step = functools.partial(_close_step, self.service.executor(colony, caller), req, now())
        return await self.service.transition(colony, req.process_id, step, notify=False)

    async def fail(self, colony: str, caller: str, req: Fail) -> Process:
        step = functools.partial(_fail_step, self.service.executor(colony, caller), req, now())
        return await self.service.transition(colony, req.process_id, step, notify=False)

    async def results(self, colony: str, caller: str, req: Results) -> list[Outcome]:
        """Close and fail several processes in one request; each is answered on its own."""
        executor = self.service.executor(colony, caller)
        t = now()
        steps: list[tuple[str, Callable[[Process], Process]]] = []
        for close in req.closes:
            steps.append((close.process_id, functools.partial(_close_step, executor, close, t)))
        for fail in req.fails:
            steps.append((fail.process_id, functools.partial(_fail_step, executor, fail, t)))
        done = await asyncio.gather(
            *(self.service.transition(colony, pid, step, notify=False) for pid, step in steps),
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

    async def results_next(self, colony: str, caller: str, req: ResultsNext) -> NextReply:
        """:meth:`results`, then the process this run is to run next, if one can be taken at
        once (a prefetch: never one an idle executor waits for) and the reply holds it."""
        assert self.assignment is not None
        outcomes = await self.results(colony, caller, req)
        if len(_encode(outcomes)) > _OUTCOMES_ROOM:
            return NextReply(outcomes=outcomes)  # it asks with an assign
        ask = Assign(timeout=0.0, executor_id=req.executor_id, prefetch=True)
        try:
            processes = await self.assignment.assign_many(colony, caller, ask)
        except ColoniesError:
            processes = []  # replaced, removed, rejected: its next assign hears why
        return NextReply(outcomes=outcomes, processes=processes)

    async def log(self, colony: str, caller: str, req: LogLines) -> None:
        executor = self.service.executor(colony, caller)
        process, _ = await self.store.get(colony, req.process_id)
        transitions.require_lease(process, executor, "add logs to", req.attempt)
        subject = self.subjects.logs(colony, req.process_id)
        blank = LogEntry(
            process_id=req.process_id,
            colony_name=colony,
            executor_name=caller,
            message="",
            timestamp=time.time_ns(),
        )
        for entry in log_entries(blank, req.lines, self.store.nc.max_payload):
            await self.store.js.publish(subject, _encode(entry))
        return None


# The widest timestamp an entry carries (nanoseconds since 1970 fit in it until 2262): a blank
# entry is measured with it, so that no entry outgrows the measure by a digit.
_WIDEST_TIMESTAMP = 2**63 - 1


def log_entries(blank: LogEntry, lines: Iterable[str], max_payload: int) -> Iterator[LogEntry]:
    """``lines`` as entries like ``blank``, each a record this server can hold (at most
    :func:`record_limit` bytes of JSON): a line too long for one is split into pieces that each
    are one. The timestamps count up one nanosecond a piece from ``blank``'s, so that they keep
    the lines' order. :class:`RecordTooLargeError` if an entry has no room for one character."""
    limit = record_limit(max_payload)
    widest = msgspec.structs.replace(blank, message="", timestamp=_WIDEST_TIMESTAMP)
    budget = limit - (len(_encode(widest)) - 2)  # a piece's JSON string takes the place of ""
    if budget < _WIDEST_CHARACTER:
        raise RecordTooLargeError(
            "a log entry of one character", limit - budget + _WIDEST_CHARACTER, limit, max_payload
        )
    pieces = (piece for line in lines for piece in _log_pieces(line, budget))
    for i, piece in enumerate(pieces):
        yield msgspec.structs.replace(blank, message=piece, timestamp=blank.timestamp + i)


# The most one character takes as a JSON string ("\u0001" and the quotes).
_WIDEST_CHARACTER = 8


def _log_pieces(line: str, budget: int) -> Iterator[str]:
    """The line in pieces whose JSON strings are at most ``budget`` bytes each (most lines:
    the line itself)."""
    if len(line) * 6 + 2 <= budget:  # six bytes is the most JSON spends on a character
        yield line
        return
    start = 0
    while start < len(line):
        end = min(len(line), start + budget)
        while (size := len(_encode(line[start:end]))) > budget:
            end = start + max(1, (end - start) * budget // size - 1)
        yield line[start:end]
        start = end


def _close_step(executor: Executor, req: Close, t: datetime, process: Process) -> Process:
    return transitions.close(process, executor, req.output, now=t, attempt=req.attempt)


def _fail_step(executor: Executor, req: Fail, t: datetime, process: Process) -> Process:
    return transitions.fail(process, executor, req.errors, now=t, attempt=req.attempt)
