"""The stages of a run before it takes work: connecting to NATS, registering (again,
as the same run, after a restart), waiting for approval, taking back what an earlier run left
running."""

from __future__ import annotations

import asyncio
import contextlib

import nats.errors

from colonyos.client import Client
from colonyos.connection import refusal, shown_url
from colonyos.errors import (
    BrokerUnavailableError,
    ColoniesError,
    ColonyNotFoundError,
    ExecutorNameTakenError,
    ExecutorRemovedError,
    NotAuthorizedError,
    NotFoundError,
)
from colonyos.execution import (
    RETRY_MAX_S,
    OwnLog,
    pause,
)
from colonyos.executor.base import (
    ExecutorStage,
    abandon,
)
from colonyos.executor.running import Running
from colonyos.models import (
    Executor,
    ExecutorState,
    Process,
    ProcessState,
)

__all__ = ["Stages"]

# While pending approval, how often it asks (besides being told at once on its control subject).
_APPROVAL_CHECK_S = 5.0

logger = OwnLog("colonyos.executor")


class Stages(Running):
    async def _connect(self, burst: bool) -> Client | None:
        url = shown_url(self.settings.nats_url)
        self._say(ExecutorStage.CONNECTING, f"connecting to NATS at {url}")
        delay = 1.0
        while not self._stopping.is_set():
            connecting = asyncio.ensure_future(
                Client.connect(
                    self.settings, caller=self.name, name=self.name, executor=True, keep_trying=True
                )
            )
            if not await self._until_done(connecting):
                await abandon(connecting)
                return None
            try:
                return connecting.result()
            except BrokerUnavailableError:
                if burst:
                    raise
                self._say(
                    ExecutorStage.UNREACHABLE,
                    f"cannot reach NATS at {url}; trying again until it answers",
                )
            except NotAuthorizedError as err:
                if burst:
                    raise
                # The server does not say why (the refusal names what may apply): all but the
                # name being another key's may pass, so it tries again.
                self._say(ExecutorStage.NOT_LET_IN, f"{err.message}; trying again")
            await pause(delay, self._stopping)
            delay = min(delay * 2, RETRY_MAX_S)
        return None

    async def _with_executor_rights(self, client: Client, burst: bool) -> Client | None:
        """On a secure installation a connection's rights are decided when it connects: a
        first start registers (and waits for approval) on a connection that may only do that,
        then connects again as the approved executor. None if stopped meanwhile."""
        async with client:
            control = await client.nc.subscribe(
                client.subjects.control(client.colony, self.name), cb=self._on_control
            )
            if await self._register(client, burst) is None:
                return None
            if not await self._approved(client, burst):
                return None
            with contextlib.suppress(nats.errors.Error):
                await control.unsubscribe()
        return await self._connect(burst)

    async def _register(self, client: Client, burst: bool) -> Executor | None:
        """Register this run (or, registered already, learn its state). None if stopped."""
        colony = client.colony
        delay = 0.2
        while not self._stopping.is_set():
            executor = Executor(
                executor_id=self.executor_id,
                executor_type=self.executor_type,
                executor_name=self.name,
                location_name=self.location_name,
                capabilities=self.capabilities,
            )
            registering = asyncio.ensure_future(
                client.register(executor, replace=self.replace, instance=self._instance())
            )
            if not await self._until_done(registering):
                await abandon(registering)
                return None
            try:
                self.registered = registering.result()
                return self.registered
            except ExecutorRemovedError:
                if self.identity is None or not self.identity.reused:
                    raise
                # The kept registration was removed by the colony's owner while this executor
                # was away: start afresh, as any executor started again after a removal does.
                self.executor_id = self.identity.renew()
                continue
            except BrokerUnavailableError as err:
                if burst:
                    raise
                self._no_broker(client, err)
            except ColonyNotFoundError:
                if burst:
                    raise
                self._say(
                    ExecutorStage.NO_COLONY,
                    f"colony {colony!r} does not exist (create it with "
                    f"'colonies colony add --name {colony}')",
                )
            await pause(delay, self._stopping)
            delay = min(delay * 2, RETRY_MAX_S)
        return None

    async def _approved(self, client: Client, burst: bool) -> bool:
        """Until this registration is approved (it is told at once, and asks now and then).
        False if stopped meanwhile."""
        while not self._stopping.is_set():
            assert self.registered is not None
            state = self.registered.state
            if state is ExecutorState.APPROVED:
                return True
            command = f"colonies executor approve --name {self.name}"
            if burst:
                raise NotAuthorizedError(
                    f"executor {self.name!r} is {state.name}: approve it with '{command}'",
                    executor_name=self.name,
                )
            if state is ExecutorState.REJECTED:
                self._say(
                    ExecutorStage.REJECTED,
                    f"rejected by the colony owner; waiting until approved: {command}",
                )
            else:
                self._say(ExecutorStage.PENDING, f"pending approval by the colony owner: {command}")
            self._state_changed.clear()
            await pause(_APPROVAL_CHECK_S, self._stopping, self._state_changed)
            if self._stopping.is_set():
                break
            try:
                if await self._register(client, burst) is None:
                    break
            except (ExecutorRemovedError, ExecutorNameTakenError) as err:
                self._end(err)  # removed, or replaced by another start, meanwhile
        return False

    async def _take_back(self, client: Client) -> list[Process]:
        """What an earlier run of this registration left running on the platform: the
        processes still assigned to it (to run again through their handlers, which follow the
        work rather than start it), and the rest stopped."""
        if self.resumable is None:
            return []
        adopted: list[Process] = []
        try:
            held = await self.resumable.held()
        except Exception:
            # The platform does not answer: its work goes on; a later start looks again.
            logger.exception("cannot learn what an earlier run left running")
            return []
        for pid, attempt in held:
            try:
                process = await client.get(pid)
            except ColoniesError as err:
                if not isinstance(err, NotFoundError):
                    # Not known now: leave it to the broker, which takes it back in time.
                    logger.warning("process %s: cannot tell whose it is (%s)", pid, err.message)
                    continue
                process = None
            ours = (
                process is not None
                and process.state is ProcessState.RUNNING
                and process.assigned_executor_id == self.executor_id
                and process.attempt == attempt
            )
            if ours and process is not None:
                logger.info("process %s: taken back from the earlier run", pid)
                adopted.append(process)
                self.running.add(pid)
            else:
                logger.info("process %s (attempt %d): no longer ours; stopping it", pid, attempt)
                try:
                    await self.resumable.abandon(pid, attempt)
                except Exception:
                    logger.exception("stopping the work of process %s failed", pid)
        return adopted

    def _no_broker(self, client: Client, err: ColoniesError) -> None:
        if (why := refusal(client.nc)) is not None:
            self._say(ExecutorStage.NOT_LET_IN, f"{why}; trying again, less and less often")
        elif not client.nc.is_connected:
            self._say(
                ExecutorStage.UNREACHABLE,
                f"cannot reach NATS at {shown_url(self.settings.nats_url)}; trying again until "
                "it answers",
            )
        else:
            # "...: try again" (a colony being taken over) is what this executor does anyway.
            why = err.message.removesuffix(": try again")
            self._say(ExecutorStage.NO_BROKER, f"{why}; trying again until one answers")
