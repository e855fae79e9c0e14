"""A broker's memory after a burst: idle, right after 20,000 no-op processes ran end to end
(4 executor processes x 16 slots), and after 35 s at rest (a trim of the C heap runs every
30 s: colonyos/broker/collector.py).

    make bench-burst
"""

from __future__ import annotations

import argparse
import asyncio

from bench.harness import System, rss_mib
from bench.run import SLOTS, Figure, _executors_ready, report, scenario_end_to_end

REST_S = 35.0


async def main(n: int) -> list[Figure]:
    async with System() as system:
        client = await system.start()
        assert system.broker is not None
        executors = system.executors(4, concurrency=SLOTS)
        await _executors_ready(client, 4)
        idle = rss_mib(system.broker.pid)
        await scenario_end_to_end(system, client, n, 4)
        after = rss_mib(system.broker.pid)
        await asyncio.sleep(REST_S)  # sleep-ok: the rest measured
        rested = rss_mib(system.broker.pid)
        system.stop_executors(executors)
        await client.aclose()
    return [
        Figure("broker memory, idle", idle, "MiB RSS"),
        Figure(f"broker memory right after {n:,} processes", after, "MiB RSS"),
        Figure(
            f"broker memory after {REST_S:g} s at rest",
            rested,
            "MiB RSS",
            "well below right after",
            note="freed heap handed back to the system",
        ),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=20_000, help="processes in the burst")
    args = parser.parse_args()
    report(asyncio.run(main(args.n)), quick=False, name="burst")
