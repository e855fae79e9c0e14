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
import secrets
import signal

import nats.errors

from colonyos.client import Client
from colonyos.execution import OwnLog, ProcessContext, capture_output, output_of
from colonyos.executor.base import ExecutorStage, ExecutorStatus
from colonyos.executor.dispatch import Dispatching
from colonyos.executor.results import ResultSender
from colonyos.models import now

__all__ = ["ExecutorApp", "ExecutorStage", "ExecutorStatus", "ProcessContext", "output_of"]

logger = OwnLog("colonyos.executor")

# How long a run that stops waits for a result request still out (it may bring a process that
# the release must give back).
_SETTLE_S = 3.0


class ExecutorApp(Dispatching):
    """An executor: ``run()`` connects, registers and takes work until stopped. Its parts, by
    role: what it is and says (``base``), running one process (``running``), the stages before
    it takes work (``stages``), taking work (``dispatch``).

    ``replace``: take the name over from a live executor that holds it (else starting is
    refused, naming the holder). ``on_status``: called with each :class:`ExecutorStatus`
    (instead of logging it).
    """

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
        leaders = await nc.subscribe(client.subjects.leader(client.colony), cb=self._on_leader)
        # The server has both subscriptions before this run says it is ready: a broker asking
        # "who holds this name?" right after must reach it.
        await nc.flush()
        beating = asyncio.create_task(self._heartbeat(client))
        results = ResultSender(client)
        try:
            with capture_output() if self._capture_print else contextlib.nullcontext():
                await self._dispatch(client, results, burst, adopted)
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating
            # A result request still out may bring a process: the release must come after it,
            # to give that one back too (else it waits for the liveness sweep).
            await results.settle(_SETTLE_S)
            if self._ended_by is None:
                await self._release(client)
            with contextlib.suppress(nats.errors.Error):
                await control.unsubscribe()
                await leaders.unsubscribe()
