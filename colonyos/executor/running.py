"""Running one process: its function in a task of its own, its log sent as it goes,
its result sent through a broker fail-over, and what the broker says on the control subject
(a process taken away, a new state, the name taken over)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec
import nats.errors

from colonyos.client import Client
from colonyos.errors import (
    BrokerUnavailableError,
    ColoniesError,
    ConflictError,
    ExecutorRemovedError,
    ExecutorReplacedError,
    NotAuthorizedError,
)
from colonyos.execution import (
    RETRY_MAX_S,
    OwnLog,
    ProcessContext,
    Raised,
    current,
    cut,
    describe,
    guarded,
    output_problem,
    pause,
)
from colonyos.executor.base import (
    ExecutorBase,
    cancelled,
)
from colonyos.executor.results import ResultSender
from colonyos.messages import (
    Close,
    Control,
    Fail,
    Replaced,
    Revoke,
    StateChanged,
    WhoIs,
)
from colonyos.models import (
    ExecutorState,
    Process,
)

__all__ = ["Running"]

_LOG_FLUSH_S = 0.25
# How long a result is retried while no broker answers.
_RESULT_PATIENCE_S = 120.0

_encode = msgspec.json.Encoder().encode
_control_decoder: msgspec.json.Decoder[Control] = msgspec.json.Decoder(Control)

logger = OwnLog("colonyos.executor")


class Running(ExecutorBase):
    async def _execute(
        self, client: Client, results: ResultSender, process: Process, *, resumed: bool = False
    ) -> None:
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
        ctx = ProcessContext(process, client, give_up=self._forced, resumed=resumed)
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
                await cancelled(flusher)
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
