"""Taking work: as many processes as there are free slots, each run in a task, and at
the end, letting them finish (or stopping them) and giving back what is still assigned."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec

from colonyos.client import Client
from colonyos.errors import (
    BrokerUnavailableError,
    ColoniesError,
    ColonyNotFoundError,
    ExecutorNotFoundError,
    ExecutorRemovedError,
    ExecutorReplacedError,
    NotAuthorizedError,
)
from colonyos.execution import (
    RETRY_MAX_S,
    OwnLog,
    ResultSender,
    first_of,
    pause,
)
from colonyos.executor.base import (
    ExecutorStage,
    abandon,
    count,
)
from colonyos.executor.stages import Stages
from colonyos.models import (
    ExecutorState,
    Process,
)

__all__ = ["Dispatching"]

# How long a stopping run waits for the broker to take back what is still assigned to it.
_RELEASE_TIMEOUT_S = 3.0

logger = OwnLog("colonyos.executor")


class Dispatching(Stages):
    async def _dispatch(
        self, client: Client, results: ResultSender, burst: bool, adopted: list[Process]
    ) -> None:
        """Keep ``concurrency`` processes running: ask for as many as there are free slots
        (one request), run each in its own task, and send their results together. Processes
        taken back from an earlier run take their slots first. While every slot is busy, ask
        for the next process too (a prefetch, :meth:`_ahead`), started when a slot frees."""
        running: set[asyncio.Task[None]] = {
            asyncio.create_task(self._execute(client, results, p, resumed=True)) for p in adopted
        }

        def reap() -> None:
            for task in [t for t in running if t.done()]:
                running.discard(task)
                if not task.cancelled() and task.exception() is not None:
                    # A failure of the executor's own code around one process: say so, and
                    # go on with the others (its process is taken back by the broker).
                    logger.error("running a process failed", exc_info=task.exception())

        if not burst:
            try:
                await self._ahead(client, results, running, reap)
            finally:
                await self._wind_down(running)
                reap()
                self.prefetched.clear()  # not started: given back by the release
            return
        try:
            while not self._stopping.is_set():
                reap()
                free = self.concurrency - len(running)
                if free <= 0:  # full (taken-back processes may fill more than its slots)
                    await first_of(running, self._stopping)
                    continue
                processes = await self._next(client, burst, free)
                if not processes:
                    if not self._stopping.is_set():
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

    async def _ahead(
        self,
        client: Client,
        results: ResultSender,
        running: set[asyncio.Task[None]],
        reap: Callable[[], None],
    ) -> None:
        """Take work until stopped, a prefetch ahead: while every slot is busy, one request
        asks for the process to run next (``prefetch``: the broker hands it only what no idle
        executor waits for), and it starts the moment a slot frees. At most ``concurrency``
        run and one more waits; one that waits when the run stops is given back with the
        release (it waited no longer than it would have behind the running ones)."""
        waiting: list[Process] = []  # assigned, not started: every slot is busy
        asking: asyncio.Task[list[Process]] | None = None  # for free slots
        asked = 0
        ahead: asyncio.Task[list[Process]] | None = None  # a prefetch
        try:
            while not self._stopping.is_set():
                reap()
                while waiting and len(running) < self.concurrency:
                    process = waiting.pop(0)
                    self.prefetched.discard(process.process_id)
                    running.add(asyncio.create_task(self._execute(client, results, process)))
                free = self.concurrency - len(running) - len(waiting) - asked
                if asking is None and free > 0:
                    asking, asked = asyncio.create_task(self._next(client, False, free)), free
                elif ahead is None and asking is None and not waiting and self.prefetch:
                    ahead = asyncio.create_task(self._next(client, False, 1, prefetch=True))
                requests = {r for r in (asking, ahead) if r is not None}
                await first_of(running | requests, self._stopping)
                got: list[Process] = []
                if asking is not None and asking.done():
                    got += asking.result()
                    asking, asked = None, 0
                if ahead is not None and ahead.done():
                    got += ahead.result()
                    ahead = None
                if got:
                    waiting = sorted([*waiting, *got], key=lambda p: p.priority_time)
                    self.prefetched.update(p.process_id for p in got)
        finally:
            for request in (asking, ahead):
                if request is not None:
                    await abandon(request)

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
            logger.info("gave %s back to the broker", count(given, "process"))

    async def _heartbeat(self, client: Client) -> None:
        while True:
            # What waits for a slot too: else the broker takes it for an assignment that
            # never arrived.
            await client.heartbeat(self.executor_id, sorted(self.running | self.prefetched))
            await asyncio.sleep(self.heartbeat_s)

    async def _next(
        self, client: Client, burst: bool, count: int, *, prefetch: bool = False
    ) -> list[Process]:
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
                client.assign_many(count, timeout, executor_id=self.executor_id, prefetch=prefetch)
            )
            try:
                if not await self._until_done(assign, leader):
                    await abandon(assign)  # stopped, or a new leader: ask it rather than wait
                    continue
            except asyncio.CancelledError:
                await abandon(assign)
                raise
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

    async def _on_leader(self, msg: Any) -> None:
        """A broker started leading: wake every slot parked on the previous one."""
        woken, self._new_leader = self._new_leader, asyncio.Event()
        woken.set()
