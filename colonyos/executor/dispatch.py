"""Taking work: as many processes as there are free slots, each run in a task, and at
the end, letting them finish (or stopping them) and giving back what is still assigned."""

from __future__ import annotations

import asyncio
import contextlib
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
    first_of,
    pause,
)
from colonyos.executor.base import (
    ExecutorStage,
    abandon,
    count,
)
from colonyos.executor.results import ResultSender
from colonyos.executor.stages import Stages
from colonyos.models import (
    ExecutorState,
    Process,
)

__all__ = ["Dispatching"]

# How long a process runs before its executor asks for the next with a request of its own
# (until then, its result is expected to bring the next: one request for both).
_PREFETCH_AFTER_S = 0.01
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
        executor waits for), and it starts the moment a slot frees. The result of a process
        that frees the slot of the last one waiting asks for the next itself (one request per
        process instead of two, when the broker has one at once), so the separate prefetch
        waits until the running process has run ``_PREFETCH_AFTER_S``: a short process's
        result brings its successor, a long one has it waiting long before it ends. At most
        ``concurrency`` run and one more waits; one that waits when the run stops is given
        back with the release (it waited no longer than it would have behind the running
        ones)."""
        ahead = _Ahead(lambda: self.executor_id, self.prefetch, self.prefetched, self._stopping)
        results.ahead = ahead
        asking: asyncio.Task[list[Process]] | None = None  # for free slots
        asked = 0
        prefetch: asyncio.Task[list[Process]] | None = None
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping.is_set():
                reap()
                waiting = ahead.waiting
                while waiting and len(running) < self.concurrency:
                    process = waiting.pop(0)
                    self.prefetched.discard(process.process_id)
                    running.add(asyncio.create_task(self._execute(client, results, process)))
                    ahead.started = loop.time()
                free = self.concurrency - len(running) - len(waiting) - asked
                defer = 0.0
                if asking is None and free > 0:
                    asking, asked = asyncio.create_task(self._next(client, False, free)), free
                elif prefetch is None and asking is None and ahead.may_prefetch():
                    defer = ahead.prefetch_in(loop.time()) if results.asks_next else 0.0
                    if defer <= 0:
                        prefetch = asyncio.create_task(self._next(client, False, 1, prefetch=True))
                ahead.requests = sum(r is not None for r in (asking, prefetch))
                requests = {r for r in (asking, prefetch) if r is not None}
                ahead.arrived.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(defer if defer > 0 else None):
                        await first_of(running | requests, self._stopping, ahead.arrived)
                if asking is not None and asking.done():
                    ahead.bring(asking.result())
                    asking, asked = None, 0
                if prefetch is not None and prefetch.done():
                    ahead.bring(prefetch.result())
                    prefetch = None
        finally:
            results.ahead = None
            for request in (asking, prefetch):
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


class _Ahead:
    """What the dispatch loop shares with the result sender (:class:`NextAsker`): the
    processes assigned and waiting for a slot, and whether a request is out for more."""

    def __init__(
        self,
        executor_id: Callable[[], str],
        prefetch: bool,
        prefetched: set[str],
        stopping: asyncio.Event,
    ) -> None:
        self._executor_id = executor_id  # the run's registration (a new one after a restart)
        self._stopping = stopping  # stopping, the run asks for nothing more
        self.prefetch = prefetch
        self.prefetched = prefetched  # the executor's: its heartbeats list them
        self.waiting: list[Process] = []  # assigned, not started: every slot is busy
        self.requests = 0  # assign requests out (for free slots, or a prefetch)
        self.by_result = False  # a result request that asks for the next is out
        self.arrived = asyncio.Event()  # a result request brought some
        self.started = float("-inf")  # when the last process started (the loop's clock)

    @property
    def executor_id(self) -> str:
        return self._executor_id()

    def may_prefetch(self) -> bool:
        return self.prefetch and not self.waiting and not self.by_result

    def prefetch_in(self, now: float) -> float:
        """Seconds until a separate prefetch is worth its request (0: now)."""
        return max(0.0, self.started + _PREFETCH_AFTER_S - now)

    def wants_next(self, finishing: int) -> bool:
        """Once these ``finishing`` processes free their slots, would nothing be left
        waiting, and no request be out for more?"""
        return (
            self.prefetch
            and not self._stopping.is_set()
            and not self.by_result
            and self.requests == 0
            and len(self.waiting) <= finishing
        )

    def asking(self, on: bool) -> None:
        self.by_result = on
        if not on:
            self.arrived.set()  # the loop may send its own prefetch now

    def bring(self, processes: list[Process]) -> None:
        if processes:
            # After those waiting already: each was the next to run when it was taken.
            self.waiting += sorted(processes, key=lambda p: p.priority_time)
            self.prefetched.update(p.process_id for p in processes)
            self.arrived.set()
