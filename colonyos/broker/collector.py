"""How often Python's cyclic garbage collector runs in a broker's process.

By default it runs every 700 new container objects and passes over the oldest generation
whenever the younger ones have run ten times. A busy broker makes many short-lived objects
(messages, futures, records) and keeps many long-lived ones (every waiting process's queue
entry), so each pass over the oldest generation walks the whole queue: in the benchmarks the
collector took about a tenth of the broker's CPU end to end, and a third while 100,000
processes were submitted and left waiting. Plain reference counting frees almost everything a
request makes; the collector is there for cycles, which are few here.

So a broker's process freezes what it has loaded at start (modules, settings: never garbage)
out of every pass, and runs the collector every 10,000 allocations, its oldest generation ten
times less often than by default. Measured in the same conditions (docs/performance.md,
"The garbage collector"): the collector's time 7.9-19.1 s -> 3.8-4.3 s of the 100,000-waiting
run, 0.35-0.90 s -> 0.08-0.22 s of an end-to-end run of 5,000 processes, with the broker's
memory unchanged within the noise.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
from collections.abc import Callable

__all__ = ["THRESHOLDS", "TRIM_EVERY_S", "collect_less_often", "return_freed_memory"]

THRESHOLDS = (10_000, 10, 100)
# How often a broker's process hands back to the system what the C heap keeps freed.
TRIM_EVERY_S = 30.0


def collect_less_often() -> None:
    """For the process a broker runs in, once, before the broker starts."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
        return trim
    except (OSError, AttributeError):
        return None


async def return_freed_memory(stopping: asyncio.Event, every_s: float = TRIM_EVERY_S) -> None:
    """Every ``every_s``, hand the memory the C heap keeps after a burst back to the system.

    glibc keeps what a burst freed for the next one: a broker that ran 20,000 processes at
    once stayed at 125 MiB after they all ended, and a ``malloc_trim`` brought it to 85 MiB
    (a fresh broker: 50). A trim walks the heap's free chunks, a few milliseconds."""
    trim = _malloc_trim()
    if trim is None:
        return
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(every_s):
                await stopping.wait()
        trim(0)
