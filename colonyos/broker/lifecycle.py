"""Deadlines and liveness: the sweeps the leading broker runs.

* A waiting process past its ``maxwaittime`` ends FAILED.
* A running process past its ``maxexectime`` is re-queued (one more retry) or, with no retries
  left, ends FAILED.
* A running process whose executor has been silent for longer than the liveness window, or
  whose executor's heartbeats stopped listing it (the assignment never reached it), is
  re-queued as an executor loss: no retry spent, but after the broker's ``max_executor_losses``
  it ends FAILED. An executor that keeps heartbeating keeps its processes however long they
  run: there is no visibility timeout to outlive.

Every change goes through :meth:`Service.transition`, so the state machine has the last word
(a process closed a moment ago is not re-queued) and a compare-and-set guards each write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from colonyos.broker import transitions
from colonyos.broker.service import Report, Service
from colonyos.errors import ConflictError, NotFoundError
from colonyos.models import ZERO_TIME, Process, ProcessState, now

__all__ = ["ASSIGNMENT_LOST", "Lifecycle", "requeue_if_past_exec", "silent_too_long", "unconfirmed"]

logger = logging.getLogger(__name__)

ASSIGNMENT_LOST = "Executor did not confirm the assignment"


class Lifecycle:
    def __init__(self, service: Service, *, liveness_s: float, sweep_interval_s: float) -> None:
        self.service = service
        self.liveness_s = liveness_s
        self.sweep_interval_s = sweep_interval_s

    async def run(self) -> None:
        watch = self.service.to_watch
        while True:
            watch.clear()
            try:
                await self.sweep()
            except Exception:
                logger.exception("lifecycle sweep failed; trying again")
                watch.set()  # try again whatever it watches
            if not watch.is_set() and not self._watching():
                # Nothing runs and nothing waits under a deadline: nothing can fall due until
                # a process is tracked that can (a colony at rest costs no wake-ups).
                await watch.wait()
            await asyncio.sleep(self.sweep_interval_s)

    def _watching(self) -> bool:
        s = self.service
        return bool(s.running or s.wait_deadlines or s.exec_deadlines)

    async def sweep(self) -> None:
        t_ns = time.time_ns()
        for colony, pid in self.service.wait_deadlines.pop_due(t_ns):
            await self._apply(
                colony,
                pid,
                lambda p: transitions.expire_wait(p, now=now()),
                transitions.WAIT_TIMEOUT,
            )
        for colony, pid in self.service.exec_deadlines.pop_due(t_ns):
            await self._apply(
                colony,
                pid,
                lambda p: requeue_if_past_exec(p, now=now()),
                transitions.EXEC_TIMEOUT,
            )
        for process, _ in list(self.service.running.values()):
            reason = self._lost(process, time.monotonic(), t_ns)
            if reason is not None:
                await self._apply(
                    process.colony_name,
                    process.process_id,
                    self._requeue_lost(reason, process),
                    reason,
                )

    def _lost(self, process: Process, mono_now: float, wall_ns: int) -> str | None:
        executor_id = process.assigned_executor_id
        heard = self.service.heard.get(executor_id)
        if heard is None:
            self.service.heard[executor_id] = mono_now  # first sight: start counting now
            return None
        if silent_too_long(heard, mono_now, self.liveness_s):
            return transitions.EXECUTOR_LOST
        if unconfirmed(process, self.service.reports.get(executor_id), self.liveness_s):
            return ASSIGNMENT_LOST
        return None

    def _requeue_lost(self, reason: str, seen: Process) -> Callable[[Process], Process]:
        max_losses = self.service.max_executor_losses

        def step(process: Process) -> Process:
            if not transitions.same_assignment(process, seen):
                raise ConflictError("no longer applies")
            return transitions.requeue_lost(process, reason, now=now(), max_losses=max_losses)

        return step

    async def _apply(
        self, colony: str, pid: str, step: Callable[[Process], Process], reason: str
    ) -> None:
        try:
            process = await self.service.transition(colony, pid, step)
        except (ConflictError, NotFoundError):
            return  # it moved on (closed, cancelled, removed): nothing to do
        logger.info(
            "%s: process %s in %s is %s (retries %d, executor losses %d)",
            reason,
            pid,
            colony,
            process.state.name,
            process.retries,
            process.executor_losses,
        )


def silent_too_long(heard: float, mono_now: float, liveness_s: float) -> bool:
    """Has an executor last heard from at ``heard`` (monotonic seconds) been silent for longer
    than the liveness window at ``mono_now``? A silence of exactly the window is not too long."""
    return mono_now - heard > liveness_s


def unconfirmed(process: Process, report: Report | None, liveness_s: float) -> bool:
    """Does the executor's last heartbeat, sent a whole liveness window after the process was
    assigned, leave it out (the assignment never reached the executor)? A heartbeat sent
    within the window may have left before the assignment arrived."""
    if report is None:
        return False
    started_ns = int(process.start_time.timestamp() * 1e9)
    window_ns = int(liveness_s * 1e9)
    return report.wall_ns > started_ns + window_ns and process.process_id not in report.running


def requeue_if_past_exec(process: Process, *, now: datetime) -> Process:
    """The ``maxexectime`` sweep's step at ``now``: re-queue a process still running past its
    deadline; any other (closed meanwhile, assigned again with a new deadline) is left alone.
    A deadline up to 1 ms ahead counts as passed: the sweep pops deadlines by one clock reading
    (nanoseconds, through a float) and decides by another (microseconds); the slack keeps the
    two from disagreeing."""
    past = process.exec_deadline != ZERO_TIME and process.exec_deadline <= now + timedelta(
        milliseconds=1
    )
    if process.state is not ProcessState.RUNNING or not past:
        raise ConflictError("no longer applies")
    return transitions.requeue(process, transitions.EXEC_TIMEOUT, now=now)
