"""Why a process waits, as the CLI shows it: under ``process get`` of a waiting process, and
once on stderr when a ``--wait`` has waited a few seconds for a process still WAITING.

The broker computes the answer (the ``explain`` request); this module only renders it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import typer

from colonyos.client import Client
from colonyos.errors import ColoniesError
from colonyos.messages import Explanation
from colonyos.models import Process, ProcessState

from ._common import connect
from ._output import console, err
from ._run import run

__all__ = ["EXPLAIN_AFTER_S", "SlowWait", "explaining", "render", "show_why_waiting"]

# How long a --wait waits for a WAITING process before it says why the process waits.
EXPLAIN_AFTER_S = 3.0


def render(explanation: Explanation) -> str:
    """``waiting because: ...`` and one indented line per executor or parent behind it."""
    head = (
        f"waiting because: {explanation.reason}"
        if explanation.state is ProcessState.WAITING
        else explanation.reason
    )
    return "\n".join([head, *(f"  {line}" for line in explanation.details)])


def show_why_waiting(ctx: typer.Context, process: Process) -> None:
    """Under ``process get``: for a WAITING process, print why it waits."""
    if process.state is not ProcessState.WAITING:
        return

    async def go() -> Explanation:
        async with await connect(ctx) as client:
            return await client.explain(process.process_id)

    console.print(render(run(go())), markup=False, highlight=False)


class SlowWait:
    """Says once, on stderr, why a process waits, if it still waits after ``after_s``."""

    def __init__(self, client: Client, after_s: float) -> None:
        self.client = client
        self.after_s = after_s
        self.task: asyncio.Task[None] | None = None

    def start(self, process_id: str) -> None:
        if self.task is None:
            self.task = asyncio.create_task(self._explain_later(process_id))

    async def _explain_later(self, process_id: str) -> None:
        await asyncio.sleep(self.after_s)  # a timer: say nothing for a process that runs soon
        try:
            explanation = await self.client.explain(process_id)
        except ColoniesError:
            return  # the answer is a courtesy: the wait goes on without it
        if explanation.state is ProcessState.WAITING:
            err.print(render(explanation), markup=False, highlight=False)


@contextlib.asynccontextmanager
async def explaining(
    client: Client, process_id: str | None = None, after_s: float | None = None
) -> AsyncIterator[SlowWait]:
    """While inside, a process that still waits after a few seconds is explained once:
    the one given, or the one passed to :meth:`SlowWait.start` (known only after submit)."""
    slow = SlowWait(client, EXPLAIN_AFTER_S if after_s is None else after_s)
    if process_id is not None:
        slow.start(process_id)
    try:
        yield slow
    finally:
        if slow.task is not None:
            slow.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await slow.task
