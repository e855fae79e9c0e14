"""The process state machine. Pure: each function takes a process and returns the next one.

::

    WAITING ──assign──▶ RUNNING ──close──▶ SUCCESS
     │ ▲                 │ │ └───fail───▶ FAILED
     │ ├────requeue──────┤ └─(retries exhausted)─▶ FAILED
     │ └──requeue_lost───┘ └─(executor losses exhausted)─▶ FAILED
     ├──expire_wait──────────────────────▶ FAILED
     └──────cancel───────┴──cancel──────▶ CANCELLED

A re-queue because the execution deadline passed counts a retry: a process runs out of time at
most ``maxretries + 1`` times (``maxretries = -1``: no limit). A re-queue because its executor
went away (lost, removed, replaced, restarted, stopped) is not the process's doing and spends
no retry; it counts an executor loss instead, and the broker's ``max_executor_losses`` bounds
those. Every assignment counts in ``assignments``, whose ``attempt`` token close, fail and log
carry.

A transition that is not allowed raises :class:`ConflictError` (wrong state) or
:class:`NotAuthorizedError` (a request from an executor the process is not assigned to), and
the broker writes nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import msgspec

from colonyos.broker.scheduler import priority_time
from colonyos.errors import ConflictError, NotAuthorizedError
from colonyos.models import ZERO_TIME, Executor, FunctionSpec, Process, ProcessState

__all__ = [
    "EXECUTOR_LOST",
    "EXECUTOR_REMOVED",
    "EXECUTOR_REPLACED",
    "EXECUTOR_RESTARTED",
    "EXECUTOR_STOPPED",
    "EXEC_TIMEOUT",
    "WAIT_TIMEOUT",
    "assign",
    "cancel",
    "close",
    "create",
    "expire_wait",
    "fail",
    "fail_descendant",
    "refuse",
    "release",
    "requeue",
    "requeue_lost",
    "require_lease",
    "same_assignment",
]

# The error texts Colonies uses, so that users' scripts that look for them keep working.
WAIT_TIMEOUT = "Maximum waiting time limit exceeded"
EXEC_TIMEOUT = "Maximum execution time limit exceeded"
EXECUTOR_LOST = "Executor stopped responding (no heartbeat)"
# Why a process went back to the queue without its executor finishing it (no retry spent).
EXECUTOR_REMOVED = "Executor {name} was removed by the colony owner"
EXECUTOR_REPLACED = "Executor {name} was replaced by another start under its name"
EXECUTOR_RESTARTED = "Executor {name} started again (its previous run is gone)"
EXECUTOR_STOPPED = "Executor {name} stopped before the process finished"

_replace = msgspec.structs.replace


def _wait_deadline(spec: FunctionSpec, now: datetime) -> datetime:
    if spec.max_wait_time > 0:
        return now + timedelta(seconds=spec.max_wait_time)
    return ZERO_TIME


def create(
    process_id: str,
    spec: FunctionSpec,
    *,
    now: datetime,
    now_ns: int,
    initiator_name: str = "",
) -> Process:
    return Process(
        process_id=process_id,
        initiator_name=initiator_name,
        state=ProcessState.WAITING,
        priority_time=priority_time(now_ns, spec.priority),
        submission_time=now,
        wait_deadline=_wait_deadline(spec, now),
        spec=spec,
    )


def _conflict(process: Process, action: str) -> ConflictError:
    return ConflictError(
        f"cannot {action} process {process.process_id}: it is {process.state.name}",
        process_id=process.process_id,
        state=process.state.name,
    )


def assign(process: Process, executor: Executor, *, now: datetime) -> Process:
    if process.state is not ProcessState.WAITING or process.wait_for_parents:
        raise _conflict(process, "assign")
    exec_deadline = ZERO_TIME
    if process.spec.max_exec_time > 0:
        exec_deadline = now + timedelta(seconds=process.spec.max_exec_time)
    return _replace(
        process,
        state=ProcessState.RUNNING,
        is_assigned=True,
        assigned_executor_id=executor.executor_id,
        start_time=now,
        exec_deadline=exec_deadline,
        assignments=process.assignments + 1,
    )


def require_lease(
    process: Process, executor: Executor, action: str, attempt: int | None = None
) -> None:
    """Only the executor a running process is assigned to, in this attempt, may act on it.

    ``attempt`` is the process's ``attempt`` when the executor was given it; a request from an
    earlier assignment (the process was re-queued and assigned again since) is refused.
    """
    if process.state is not ProcessState.RUNNING:
        raise _conflict(process, action)
    if process.assigned_executor_id != executor.executor_id or (
        attempt is not None and attempt != process.attempt
    ):
        raise NotAuthorizedError(
            f"cannot {action} process {process.process_id}: it is not assigned to executor "
            f"{executor.executor_name!r}",
            process_id=process.process_id,
            executor_name=executor.executor_name,
        )


def close(
    process: Process,
    executor: Executor,
    output: list[Any],
    *,
    now: datetime,
    attempt: int | None = None,
) -> Process:
    require_lease(process, executor, "close", attempt)
    return _replace(process, state=ProcessState.SUCCESS, output=output, end_time=now)


def fail(
    process: Process,
    executor: Executor,
    errors: list[str],
    *,
    now: datetime,
    attempt: int | None = None,
) -> Process:
    require_lease(process, executor, "fail", attempt)
    return _replace(process, state=ProcessState.FAILED, errors=errors, end_time=now)


def cancel(process: Process, *, now: datetime) -> Process:
    if process.state.is_terminal:
        raise _conflict(process, "cancel")
    return _replace(
        process,
        state=ProcessState.CANCELLED,
        end_time=now,
        errors=[*process.errors, "cancelled"],
    )


def expire_wait(process: Process, *, now: datetime) -> Process:
    """A waiting process whose wait deadline has passed ends FAILED."""
    if process.state is not ProcessState.WAITING or process.wait_deadline == ZERO_TIME:
        raise _conflict(process, "expire")
    if process.wait_deadline > now:
        raise ConflictError(f"process {process.process_id} may still wait")
    return _replace(process, state=ProcessState.FAILED, errors=[WAIT_TIMEOUT], end_time=now)


def requeue(process: Process, reason: str, *, now: datetime) -> Process:
    """Take a running process back after its execution deadline: WAITING with one more retry,
    or FAILED when none are left.

    It keeps its prioritytime, so it keeps its place in the queue.
    """
    if process.state is not ProcessState.RUNNING:
        raise _conflict(process, "re-queue")
    limit = process.spec.max_retries
    if limit != -1 and process.retries + 1 > limit:
        attempts = process.retries + 1
        return _replace(
            process,
            state=ProcessState.FAILED,
            errors=[*process.errors, f"{reason} (attempt {attempts} of {limit + 1})"],
            end_time=now,
        )
    return _back_in_queue(process, now, retries=process.retries + 1)


def requeue_lost(process: Process, reason: str, *, now: datetime, max_losses: int) -> Process:
    """Take a running process back whose executor went away: WAITING again without spending a
    retry, or FAILED once ``max_losses`` executors were lost running it.

    It keeps its prioritytime, so it keeps its place in the queue.
    """
    if process.state is not ProcessState.RUNNING:
        raise _conflict(process, "re-queue")
    losses = process.executor_losses + 1
    if losses > max_losses:
        return _replace(
            process,
            state=ProcessState.FAILED,
            errors=[
                *process.errors,
                f"{reason}; {losses} executors were lost while running this process, more "
                f"than the {max_losses} allowed (COLONIES_MAX_EXECUTOR_LOSSES)",
            ],
            end_time=now,
            executor_losses=losses,
        )
    return _back_in_queue(process, now, executor_losses=losses)


def same_assignment(process: Process, seen: Process) -> bool:
    """Is ``process`` still running in the assignment ``seen`` was read in?"""
    return process.state is ProcessState.RUNNING and (
        process.assigned_executor_id,
        process.assignments,
    ) == (seen.assigned_executor_id, seen.assignments)


def _back_in_queue(process: Process, now: datetime, **counts: int) -> Process:
    return _replace(
        process,
        state=ProcessState.WAITING,
        is_assigned=False,
        assigned_executor_id="",
        start_time=ZERO_TIME,
        exec_deadline=ZERO_TIME,
        wait_deadline=_wait_deadline(process.spec, now),
        **counts,
    )


def release(child: Process, parent_outputs: list[Any], *, now: datetime) -> Process:
    """All parents succeeded: the child becomes assignable, with their outputs as input."""
    if child.state is not ProcessState.WAITING or not child.wait_for_parents:
        raise _conflict(child, "release")
    return _replace(
        child,
        wait_for_parents=False,
        input=parent_outputs,
        wait_deadline=_wait_deadline(child.spec, now),
    )


def fail_descendant(process: Process, reason: str, *, now: datetime) -> Process:
    """A parent failed or was cancelled: this process will never run."""
    if process.state.is_terminal:
        raise _conflict(process, "fail")
    return _replace(process, state=ProcessState.FAILED, errors=[reason], end_time=now)


def refuse(process: Process, reason: str, *, now: datetime) -> Process:
    """The broker cannot keep this process as it is (its stored spec is out of bounds, it
    cannot be queued, or what a transition would make of it is too large to store): it ends
    FAILED with the reason."""
    if process.state.is_terminal:
        raise _conflict(process, "fail")
    return _replace(
        process, state=ProcessState.FAILED, errors=[*process.errors, reason], end_time=now
    )
