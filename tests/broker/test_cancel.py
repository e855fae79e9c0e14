"""A stepping-down leader ends its loops, even one that swallowed a cancellation (as
``asyncio.wait_for`` under nats-py's requests does on Python 3.11 when the answer comes with
it)."""

from __future__ import annotations

import asyncio

import pytest

from colonyos.broker.leadership import Leadership


async def test_a_loop_that_swallows_one_cancellation_is_still_ended() -> None:
    swallowed = asyncio.Event()

    async def loop() -> None:
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                if swallowed.is_set():
                    raise
                swallowed.set()  # what wait_for does when the answer and the cancel meet

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)  # sleep-ok: let the task start
    cancelling = asyncio.create_task(Leadership._cancel([task]))
    done, _ = await asyncio.wait({cancelling}, timeout=10)
    try:
        assert done, "the loop was cancelled once and went on"
        assert swallowed.is_set() and task.cancelled()
    finally:
        for leftover in (cancelling, task, task):
            leftover.cancel()
            await asyncio.wait({leftover})


async def test_a_loop_that_failed_says_so() -> None:
    async def broken() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(broken())
    await asyncio.sleep(0)  # sleep-ok: let the task run (and fail)
    with pytest.raises(RuntimeError, match="boom"):
        async with asyncio.timeout(5):
            await Leadership._cancel([task])
