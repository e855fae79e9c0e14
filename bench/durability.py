"""What JetStream's fsync policy costs: acknowledged publishes with sync_interval 2m vs always.

    make bench-durability        (or: python -m bench.durability --count 5000)

Each run starts its own nats-server (file storage, loopback) with the given policy, then
measures sequential acknowledged publishes (latency) and 64 in flight (throughput).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import nats

from colonyos.natsserver import NatsServer

POLICIES = {"2m (shipped)": '"2m"', "always": "always"}


async def _measure(url: str, count: int) -> dict[str, float]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="DUR", subjects=["dur.>"])
    payload = b"x" * 512
    lat = []
    for i in range(count):
        t = time.perf_counter()
        await js.publish(f"dur.{i % 16}", payload)
        lat.append(time.perf_counter() - t)
    t = time.perf_counter()
    sem = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        async with sem:
            await js.publish(f"dur.{i % 16}", payload)

    await asyncio.gather(*(one(i) for i in range(count)))
    rate = count / (time.perf_counter() - t)
    await nc.close()
    lat.sort()
    return {
        "p50_ms": statistics.median(lat) * 1e3,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1e3,
        "pipelined_per_s": rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=5000)
    args = parser.parse_args()
    print(f"{'sync_interval':<14} {'ack p50 ms':>11} {'ack p99 ms':>11} {'64 in flight /s':>16}")
    for name, value in POLICIES.items():
        with tempfile.TemporaryDirectory() as d:
            conf = Path(d) / "nats.conf"
            conf.write_text(f"jetstream {{\n  sync_interval: {value}\n}}\n")
            with NatsServer(Path(d) / "js", port=0, config=conf) as server:
                r = asyncio.run(_measure(server.url, args.count))
        print(
            f"{name:<14} {r['p50_ms']:>11.3f} {r['p99_ms']:>11.3f} {r['pipelined_per_s']:>16,.0f}"
        )


if __name__ == "__main__":
    main()
