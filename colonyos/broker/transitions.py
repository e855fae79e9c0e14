"""The process state machine. Pure: each function takes a process and returns the next one.

::

    WAITING ──assign──▶ RUNNING ──close──▶ SUCCESS
       │                   │ └───fail───▶ FAILED
       └──────cancel───────┴──cancel────▶ CANCELLED

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

__all__ = ["assign", "cancel", "close", "create", "fail", "require_lease"]

_replace = msgspec.structs.replace


def create(
    process_id: str,
    spec: FunctionSpec,
    *,
    now: datetime,
    now_ns: int,
    initiator_name: str = "",
) -> Process:
    wait_deadline = ZERO_TIME
    if spec.max_wait_time > 0:
        wait_deadline = now + timedelta(seconds=spec.max_wait_time)
    return Process(
        process_id=process_id,
        initiator_name=initiator_name,
        state=ProcessState.WAITING,
        priority_time=priority_time(now_ns, spec.priority),
        submission_time=now,
        wait_deadline=wait_deadline,
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
    )


def require_lease(process: Process, executor: Executor, action: str) -> None:
    """Only the executor a running process is assigned to may act on it."""
    if process.state is not ProcessState.RUNNING:
        raise _conflict(process, action)
    if process.assigned_executor_id != executor.executor_id:
        raise NotAuthorizedError(
            f"cannot {action} process {process.process_id}: it is not assigned to executor "
            f"{executor.executor_name!r}",
            process_id=process.process_id,
            executor_name=executor.executor_name,
        )


def close(process: Process, executor: Executor, output: list[Any], *, now: datetime) -> Process:
    require_lease(process, executor, "close")
    return _replace(process, state=ProcessState.SUCCESS, output=output, end_time=now)


def fail(process: Process, executor: Executor, errors: list[str], *, now: datetime) -> Process:
    require_lease(process, executor, "fail")
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
