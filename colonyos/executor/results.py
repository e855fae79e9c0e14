"""Results on their way to the broker: those that finish while a request is out go together
in the next, and a request may ask for the process to run next (``results_next``)."""

from __future__ import annotations

import asyncio
from typing import Protocol

import msgspec

from colonyos.client import Client
from colonyos.errors import ColoniesError, InvalidSpecError
from colonyos.execution import REQUEST_ENVELOPE_BYTES
from colonyos.limits import request_limit
from colonyos.messages import Close, Fail
from colonyos.models import Process

__all__ = ["NextAsker", "ResultSender"]

_encode = msgspec.json.Encoder().encode


class ResultSender:
    """Delivers results; those that finish while a request is out go together in the next.

    One process alone is sent at once; under load, the results of every slot that finished
    meanwhile share one request (and the broker writes them concurrently), as many as fit in
    one message of the server's max_payload.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self._queue: list[tuple[Close | Fail, int, asyncio.Future[None]]] = []
        self._sending: asyncio.Task[None] | None = None
        self._budget = request_limit(client.nc.max_payload) - REQUEST_ENVELOPE_BYTES
        # Set while an executor takes work a prefetch ahead: a result request may then ask
        # for the process to run next (results_next), unless the broker does not know it.
        self.ahead: NextAsker | None = None
        self._next_known = True

    async def settle(self, timeout: float) -> None:
        """Until the request out (if any) is answered, or ``timeout``."""
        if self._sending is not None and not self._sending.done():
            await asyncio.wait({self._sending}, timeout=timeout)

    @property
    def asks_next(self) -> bool:
        """Whether a result request may ask for the next process (the broker knows how)."""
        return self._next_known

    async def send(self, item: Close | Fail) -> None:
        """Returns once the broker accepted it; raises what refused it, or
        :class:`BrokerUnavailableError` when the request went unanswered."""
        size = len(_encode(item)) + 1  # raises for an item that cannot be sent at all
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((item, size, done))
        if self._sending is None or self._sending.done():
            self._sending = asyncio.create_task(self._drain())
        await done

    def _next_batch(self) -> list[tuple[Close | Fail, int, asyncio.Future[None]]]:
        used, count = 0, 0
        for _, size, _ in self._queue:
            if count and used + size > self._budget:
                break
            used += size
            count += 1
        batch, self._queue = self._queue[:count], self._queue[count:]
        return batch

    async def _drain(self) -> None:
        while self._queue:
            batch = self._next_batch()
            closes = [i for i, _, _ in batch if isinstance(i, Close)]
            fails = [i for i, _, _ in batch if isinstance(i, Fail)]
            ahead = self.ahead if self._next_known else None
            try:
                if ahead is not None and ahead.wants_next(len(batch)):
                    refused = await _ask_next(self.client, ahead, closes, fails)
                else:
                    refused = await self.client.send_results(closes, fails)
            except _UnknownOperation:
                self._next_known = False  # an older broker: plain results from now on
                self._queue[:0] = batch
                continue
            except Exception as err:  # every waiter gets it, to retry or to report
                for _, _, done in batch:
                    if not done.done():
                        done.set_exception(err)
                continue
            for item, _, done in batch:
                if done.done():
                    continue
                error = refused.get(item.process_id)
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)


class NextAsker(Protocol):
    """The side of an executor's dispatch that a result request may ask work for."""

    @property
    def executor_id(self) -> str:
        """The run's registration, which the broker hands the next process to."""

    def wants_next(self, finishing: int) -> bool:
        """Should a request with the results of ``finishing`` processes ask for the next?"""

    def asking(self, on: bool) -> None:
        """A request that asks for the next is out (True), or answered or failed (False)."""

    def bring(self, processes: list[Process]) -> None:
        """What such a request brought (assigned to this run, to run next)."""


class _UnknownOperation(Exception):
    pass


async def _ask_next(
    client: Client, ahead: NextAsker, closes: list[Close], fails: list[Fail]
) -> dict[str, ColoniesError]:
    ahead.asking(True)
    try:
        try:
            refused, brought = await client.send_results_next(
                closes, fails, executor_id=ahead.executor_id
            )
        except InvalidSpecError as err:
            if err.detail.get("op") == "results_next":
                raise _UnknownOperation from err
            raise
        ahead.bring(brought)
        return refused
    finally:
        ahead.asking(False)
