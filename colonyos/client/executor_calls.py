"""An executor's requests: register, take work (long polls), report results and logs, add a
child to its process's graph, give work back, and heartbeats."""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors

from colonyos import limits
from colonyos.client.connected import Connected
from colonyos.errors import (
    AssignTimeoutError,
    ColoniesError,
)
from colonyos.messages import (
    AddChild,
    Assign,
    Close,
    Fail,
    Heartbeat,
    Instance,
    LogLines,
    NextReply,
    Outcome,
    Register,
    Release,
    Results,
    ResultsNext,
)
from colonyos.models import (
    Executor,
    FunctionSpec,
    Process,
)

__all__ = ["ExecutorCalls"]

_encode = msgspec.json.Encoder().encode
# Seconds an assign reply may lag behind the assign timeout before it counts as lost.
_ASSIGN_MARGIN_S = 5.0


class ExecutorCalls(Connected):
    async def register(
        self, executor: Executor, *, replace: bool = False, instance: Instance | None = None
    ) -> Executor:
        """Register (or, with the same ``executorid``, check) an executor. A name a live
        executor holds is refused unless ``replace``; ``instance`` says who registers."""
        body = Register(executor=executor, replace=replace, instance=instance)
        return await self._must("register", body, Executor)

    async def assign(self, timeout: float = 10.0) -> Process | None:
        """Long-poll for work: a process, or None when nothing came within ``timeout``
        (at most an hour: a long poll may end early with "no work")."""
        timeout = min(timeout, limits.MAX_ASSIGN_TIMEOUT_S)
        try:
            return await self._request(
                "assign", Assign(timeout=timeout), Process, timeout=timeout + _ASSIGN_MARGIN_S
            )
        except AssignTimeoutError:
            return None

    async def assign_many(
        self, count: int, timeout: float = 10.0, *, executor_id: str = "", prefetch: bool = False
    ) -> list[Process]:
        """Long-poll for up to ``count`` processes: waits (up to ``timeout``) for the first,
        and gets with it those that are assignable at that moment. Empty when none came.
        ``executor_id``: this run's registration (refused if it was replaced or removed).
        ``prefetch``: the process to run after those running now (one at most), handed only
        when no idle executor waits for it."""
        timeout = min(timeout, limits.MAX_ASSIGN_TIMEOUT_S)
        count = min(count, limits.MAX_ASSIGN_COUNT)
        result = await self._request(
            "assign_many",
            Assign(timeout=timeout, count=count, executor_id=executor_id, prefetch=prefetch),
            list[Process],
            timeout=timeout + _ASSIGN_MARGIN_S,
        )
        return result or []

    async def send_results(
        self, closes: list[Close] | None = None, fails: list[Fail] | None = None
    ) -> dict[str, ColoniesError]:
        """Close and fail several processes in one request. Returns the refused ones (process
        id -> why); the others are done."""
        outcomes = await self._must(
            "results", Results(closes=closes or [], fails=fails or []), list[Outcome]
        )
        return {
            o.process_id: ColoniesError.from_reply(o.error) for o in outcomes if o.error is not None
        }

    async def send_results_next(
        self, closes: list[Close], fails: list[Fail], *, executor_id: str
    ) -> tuple[dict[str, ColoniesError], list[Process]]:
        """As :meth:`send_results`, and the process this run is to run next if the broker has
        one for it at once (a prefetch: none that an idle executor waits for). Refused as an
        unknown operation by a broker older than this request."""
        body = ResultsNext(closes=closes, fails=fails, executor_id=executor_id)
        reply = await self._must("results_next", body, NextReply)
        refused = {
            o.process_id: ColoniesError.from_reply(o.error)
            for o in reply.outcomes
            if o.error is not None
        }
        return refused, reply.processes

    async def close(
        self, process_id: str, output: list[Any] | None = None, *, attempt: int | None = None
    ) -> Process:
        """Close a process this executor runs with its output (SUCCESS).

        ``attempt`` (the process's ``attempt`` when it was assigned) makes the broker refuse
        the close if the process was re-queued and assigned again since.
        """
        body = Close(process_id=process_id, output=output or [], attempt=attempt)
        return await self._must("close", body, Process)

    async def fail(
        self, process_id: str, errors: list[str] | None = None, *, attempt: int | None = None
    ) -> Process:
        body = Fail(process_id=process_id, errors=errors or [], attempt=attempt)
        return await self._must("fail", body, Process)

    async def add_logs(
        self, process_id: str, lines: list[str], *, attempt: int | None = None
    ) -> None:
        if lines:
            body = LogLines(process_id=process_id, lines=lines, attempt=attempt)
            await self._request("log", body, type(None))

    async def release(
        self, executor_id: str, *, reason: str = "", timeout: float | None = None
    ) -> int:
        """From an executor run that stops: whatever is still assigned to registration
        ``executor_id`` is queued again at once, without spending a retry, and its parked
        assign requests end. Returns how many processes went back."""
        body = Release(executor_id=executor_id, reason=reason)
        return await self._must("release", body, int, timeout=timeout)

    async def heartbeat(self, executor_id: str, running: list[str]) -> None:
        """Tell the broker this executor is alive, and what it is running (fire and forget)."""
        beat = Heartbeat(executor_id=executor_id, running=running)
        subject = self.subjects.heartbeat(self.colony, self.caller)
        with contextlib.suppress(nats.errors.Error):
            await self.nc.publish(subject, _encode(beat))

    async def add_child(
        self,
        parent: Process,
        spec: FunctionSpec,
        *,
        insert: bool = False,
    ) -> Process:
        """From the executor running ``parent``: add a process to its graph, after it (a new
        branch) or, with ``insert``, between it and its current children."""
        body = AddChild(
            process_graph_id=parent.process_graph_id,
            parent_process_id=parent.process_id,
            spec=spec,
            insert=insert,
            attempt=parent.attempt,
        )
        return await self._must("add_child", body, Process)
