"""What the container executor adds to a container: the executor against podman's own run.

    make bench-platforms        (or: python -m bench.platforms --count 20)

Starts its own nats-server and broker (as bench.run does) and one container executor (podman,
``--network none``), then measures, for a container that runs ``true``:

* podman alone: ``podman run --rm --init --network none IMAGE /bin/sh -c true``, one after
  another (p50), and as many at once as the machine has cores (runs/s);
* through the executor: submit → closed, one after another (p50, p99), and a burst with the
  executor running as many at once as the machine has cores (processes/s).

The difference is what the executor's own steps cost (inspect, env file, logs, wait, rm, the
broker's round trips). Needs podman and busybox-static (the test image is made as the tests
make it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.harness import System
from colonyos.client import Client
from colonyos.models import Conditions, FunctionSpec, Process, ProcessState
from tests.images import containers_conf, local_image, podman_missing

_ARGV = ["--rm", "--init", "--network", "none"]


async def _podman_run(image: str) -> float:
    t = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        "podman", "run", *_ARGV, image, "/bin/sh", "-c", "true"
    )
    if await proc.wait() != 0:
        raise RuntimeError("podman run failed: see its output above")
    return time.perf_counter() - t


async def _raw(image: str, count: int, at_once: int) -> tuple[float, float]:
    one_by_one = [await _podman_run(image) for _ in range(count)]
    sem = asyncio.Semaphore(at_once)

    async def limited() -> float:
        async with sem:
            return await _podman_run(image)

    t = time.perf_counter()
    await asyncio.gather(*(limited() for _ in range(count)))
    return statistics.median(one_by_one), count / (time.perf_counter() - t)


def _spec(image: str) -> FunctionSpec:
    return FunctionSpec(
        func_name="execute",
        kwargs={"docker-image": image, "cmd": "true"},
        conditions=Conditions(executor_type="container"),
    )


async def _through_executor(client: Client, image: str, count: int) -> tuple[list[float], float]:
    latencies = []
    for _ in range(count):
        t = time.perf_counter()
        p = await client.submit(_spec(image))
        assert isinstance(p, Process)
        done = await client.wait(p.process_id, timeout=60)
        assert done.state is ProcessState.SUCCESS, done.errors
        latencies.append(time.perf_counter() - t)
    t = time.perf_counter()
    ps = [await client.submit(_spec(image)) for _ in range(count)]
    for p in ps:
        assert isinstance(p, Process)
        assert (await client.wait(p.process_id, timeout=120)).state is ProcessState.SUCCESS
    return latencies, count / (time.perf_counter() - t)


async def main(count: int) -> None:
    missing = podman_missing()
    if missing:
        raise SystemExit(f"bench-platforms: {missing}")
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="colonies-bench-podman-") as d:
        os.environ["CONTAINERS_CONF"] = str(containers_conf(Path(d)))
        image = local_image(Path(d))
        await _podman_run(image)  # warm: the image's layers in the page cache
        raw_p50, raw_rate = await _raw(image, count, cores)
        async with System(prefix="benchpodman") as system:
            client = await system.start()
            executor = system.spawn(
                [
                    "-m",
                    "colonyos.cli.main",
                    "executor",
                    "start",
                    "container",
                    "--network",
                    "none",
                    "-c",
                    str(cores),
                    "--state-dir",
                    str(Path(d) / "state"),
                ],
                "container",
            )
            assert executor is not None
            latencies, rate = await _through_executor(client, image, count)
            await client.aclose()
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"{count} containers running `true`, {cores} cores, podman --network none")
    print(f"{'':<34} {'p50 ms':>8} {'p99 ms':>8} {f'{cores} at once /s':>14}")
    print(f"{'podman run alone':<34} {raw_p50 * 1e3:>8.0f} {'':>8} {raw_rate:>14.1f}")
    print(
        f"{'container executor, submit→closed':<34} {statistics.median(latencies) * 1e3:>8.0f} "
        f"{p99 * 1e3:>8.0f} {rate:>14.1f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=20)
    asyncio.run(main(parser.parse_args().count))
