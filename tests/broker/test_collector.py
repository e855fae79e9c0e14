"""A broker's process runs the cyclic garbage collector less often, and hands the heap a
burst freed back to the system (colonyos.broker.collector)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from colonyos.broker import collector

from ..helpers import until

_PROBE = (
    "import gc; from colonyos.broker.collector import collect_less_often; "
    "collect_less_often(); print(*gc.get_threshold(), gc.get_freeze_count())"
)


def test_the_collector_runs_less_often_and_skips_what_was_loaded() -> None:
    # In a process of its own: the thresholds are the whole process's.
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    first, second, third, frozen = map(int, out)
    assert (first, second, third) == (10_000, 10, 100)
    assert frozen > 1000  # the modules and objects loaded so far are out of every pass


async def test_a_broker_process_hands_freed_heap_back_until_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trims: list[int] = []

    def trim(pad: int) -> int:
        trims.append(pad)
        return 1

    monkeypatch.setattr(collector, "_malloc_trim", lambda: trim)
    stopping = asyncio.Event()
    task = asyncio.create_task(collector.return_freed_memory(stopping, every_s=0.01))
    await until(lambda: len(trims) >= 2)
    stopping.set()
    async with asyncio.timeout(5):
        await task
    assert set(trims) == {0}  # everything free above the heap's start, not a padding kept


def test_the_c_library_here_can_trim() -> None:
    """Linux with glibc, as the broker's image and CI run: the trim is there."""
    assert collector._malloc_trim() is not None
