"""What a command's event loop reports on its way out."""

from __future__ import annotations

import asyncio
import gc

import pytest

from colonyos.cli._run import run


async def _leaves_a_cancelled_gather_unread() -> None:
    """As nats-py's close can after a Ctrl-C: a gather whose child was cancelled, dropped
    without anyone reading its exception."""
    child = asyncio.ensure_future(asyncio.sleep(10))  # sleep-ok: never awaited to its end
    gathered = asyncio.gather(child)
    child.cancel()
    with pytest.raises(asyncio.CancelledError):
        await child
    await asyncio.sleep(0)  # sleep-ok: one turn of the loop, for the gather to take it in
    del gathered
    gc.collect()


def test_a_cancellation_no_one_read_is_not_reported(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("ERROR", logger="asyncio"):
        run(_leaves_a_cancelled_gather_unread())
    assert "never retrieved" not in caplog.text


async def _leaves_an_error_unread() -> None:
    failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    failed.set_exception(RuntimeError("lost"))
    del failed
    gc.collect()


def test_any_other_error_no_one_read_still_is(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("ERROR", logger="asyncio"):
        run(_leaves_an_error_unread())
    assert "never retrieved" in caplog.text and "lost" in caplog.text
