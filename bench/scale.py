"""Scale-out: two busy colonies led by one broker, against the same two led by two brokers.

    make bench-scale

With ``COLONIES_SHARDED`` the brokers share the colonies out (docs/architecture.md, "Scaling
out"): each colony has one leader, its intake, its queue and its requests in whichever broker
holds its lease; the brokers share only the NATS server. The first case runs one sharded broker
(it leads both colonies); the second starts a second broker and picks, for the second colony, a
name that rendezvous hashing gives to the other broker.

Both cases run on the same nats-server, with the same executors (2 executor processes x 16 slots
per colony) and the same load (``n`` no-op processes submitted to each colony at once); the
figure is processes per second for both colonies together. The "one" prefix's events stream
counts both colonies' events.

Then the cost of colonies at rest: one broker leading ``--idle`` colonies (200 by default)
with nothing to do, its CPU and nats-server's over 20 seconds (``--idle-only``: only that).
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench.harness import SERVER_INSTALL, Child, System, cpu_seconds
from bench.run import SLOTS, Figure, _executors_ready, _submit_many, report
from colonyos.broker.shards import owner
from colonyos.client import Client
from colonyos.config import Settings
from colonyos.errors import BrokerUnavailableError, ConflictError
from colonyos.models import Conditions, FunctionSpec
from colonyos.subjects import Subjects

EXECUTORS_PER_COLONY = 2


def _spec(colony: str) -> FunctionSpec:
    return FunctionSpec(
        func_name="noop", conditions=Conditions(executor_type="noop", colony_name=colony)
    )


async def _add_colony(client: Client, name: str) -> None:
    async with asyncio.timeout(30):
        while True:
            try:
                await client.colony_add(name, auto_approve=True)
                return
            except ConflictError:
                return
            except BrokerUnavailableError:
                await asyncio.sleep(0.1)  # sleep-ok: waiting for a broker that is starting


async def _stored(system: System, prefix: str) -> int:
    nc = await system.raw_connect()
    try:
        info = await nc.jetstream().stream_info(Subjects(prefix).stream_events)
        return int(info.state.messages)
    finally:
        await nc.close()


async def _until_stored(system: System, targets: dict[str, int]) -> float:
    """Wait until each prefix's events stream holds its target count; when it did."""
    async with asyncio.timeout(600):
        while True:
            counts = [await _stored(system, p) for p in targets]
            if all(c >= t for c, t in zip(counts, targets.values(), strict=True)):
                return time.monotonic()
            await asyncio.sleep(0.02)  # sleep-ok: polling a count under a deadline


def _executors(system: System, prefix: str, colony: str) -> list[Child]:
    return [
        system.spawn(
            ["-m", "bench.noop_executor", f"{colony}-{i}", str(SLOTS)],
            f"{prefix}-{colony}-{i}",
            {"COLONIES_PREFIX": prefix, "COLONIES_COLONY_NAME": colony},
        )
        for i in range(EXECUTORS_PER_COLONY)
    ]


async def _run_load(
    system: System, loads: list[tuple[Client, str, str]], n: int, brokers: list[Child]
) -> tuple[float, float]:
    """Submit ``n`` to each (client, prefix, colony) at once; rate for all, broker CPU/1,000."""
    targets: dict[str, int] = {}
    for _, prefix, _ in loads:
        targets[prefix] = targets.get(prefix, await _stored(system, prefix)) + 3 * n
    cpu0 = sum(cpu_seconds(b.pid) for b in brokers)
    t0 = time.monotonic()
    await asyncio.gather(
        *(_submit_many(client, [_spec(colony) for _ in range(n)]) for client, _, colony in loads)
    )
    finished = await _until_stored(system, targets)
    cpu1 = sum(cpu_seconds(b.pid) for b in brokers)
    total = n * len(loads)
    return total / (finished - t0), (cpu1 - cpu0) * 1000 / total


async def _split_pair(client: Client, first: str) -> tuple[str, str]:
    """Once both brokers are in the server's status: ``first`` and a colony the other broker
    leads (rendezvous hashing over their ids decides; a few names are tried)."""
    async with asyncio.timeout(30):
        while True:
            status = await client.server_status()
            ids = [b.broker_id for b in ([status.leader] if status.leader else [])]
            ids += [b.broker_id for b in status.standbys]
            if len(ids) == 2:
                break
            await asyncio.sleep(0.1)  # sleep-ok: waiting for the second broker's announcement
    mine = owner(first, ids)
    return first, next(f"c{i}" for i in range(1000) if owner(f"c{i}", ids) != mine)


async def _until_shared(client: Client, colonies: int) -> None:
    """Until both brokers lead colonies, ``colonies`` in all (one may have to hand its colony
    over to the other first: the load starts after that)."""
    async with asyncio.timeout(30):
        while True:
            status = await client.server_status()
            led = [b.colonies for b in ([status.leader] if status.leader else [])]
            led += [b.colonies for b in status.standbys]
            if len(led) == 2 and min(led) > 0 and sum(led) == colonies:
                return
            await asyncio.sleep(0.1)  # sleep-ok: waiting for the hand-over to be announced


async def idle(colonies: int, window_s: float) -> list[Figure]:
    """One broker leading ``colonies`` colonies at rest (nothing submitted, no executors): the
    CPU it and nats-server use, as a share of one core, over ``window_s``."""
    async with System(prefix="idle", secure=False) as system:
        client = await system.start()
        for i in range(colonies - 1):  # "bench" is the first
            await _add_colony(client, f"idle{i}")
        await client.aclose()
        assert system.broker is not None and system.server.proc is not None
        pids = {"broker": system.broker.pid, "nats-server": system.server.proc.pid}
        await asyncio.sleep(5)  # sleep-ok: let the colonies' first sweeps and pulls pass
        before = {who: cpu_seconds(pid) for who, pid in pids.items()}
        t0 = time.monotonic()
        await asyncio.sleep(window_s)  # sleep-ok: the window measured
        elapsed = time.monotonic() - t0
        use = {who: (cpu_seconds(pid) - before[who]) / elapsed * 100 for who, pid in pids.items()}
    return [
        Figure(f"{colonies} idle colonies: {who} CPU", share, "% of a core", note="at rest")
        for who, share in use.items()
    ]


async def main(n: int) -> list[Figure]:
    figures: list[Figure] = []
    sharded = {"COLONIES_SHARDED": "1"}
    async with System(prefix="one", secure=False, broker_env=sharded) as system:
        first = await system.start()
        await _add_colony(first, "second")
        assert system.broker is not None
        children = _executors(system, "one", "bench") + _executors(system, "one", "second")
        await _executors_ready(first, EXECUTORS_PER_COLONY)
        second_view = await Client.connect(
            Settings(nats_url=system.server.url, colony="second", prefix="one"), caller="bench"
        )
        await _executors_ready(second_view, EXECUTORS_PER_COLONY)
        one_rate, one_cpu = await _run_load(
            system, [(first, "one", "bench"), (second_view, "one", "second")], n, [system.broker]
        )
        system.stop_executors(children)
        await second_view.aclose()

        other = system.spawn(
            ["-c", SERVER_INSTALL, "broker", "start", "--data-dir", str(system.dir / "b2")],
            "broker-two",
            sharded,
        )
        _, theirs = await _split_pair(first, "bench")
        await _add_colony(first, theirs)
        await _until_shared(first, 3)
        two = await Client.connect(
            Settings(nats_url=system.server.url, colony=theirs, prefix="one"), caller="bench"
        )
        children = _executors(system, "one", "bench") + _executors(system, "one", theirs)
        await _executors_ready(first, EXECUTORS_PER_COLONY)
        await _executors_ready(two, EXECUTORS_PER_COLONY)
        two_rate, two_cpu = await _run_load(
            system, [(first, "one", "bench"), (two, "one", theirs)], n, [system.broker, other]
        )
        for client in (first, two):
            await client.aclose()
    figures += [
        Figure(
            "two busy colonies, one broker",
            one_rate,
            "processes/s",
            note=f"{n} each; {EXECUTORS_PER_COLONY} executors x {SLOTS} slots per colony",
        ),
        Figure("two busy colonies, one broker: broker CPU per 1,000", one_cpu, "CPU s"),
        Figure(
            "two busy colonies, two sharded brokers",
            two_rate,
            "processes/s",
            "> one broker",
            one_rate,
            "one broker, same run",
            "COLONIES_SHARDED: each colony led by one of the two brokers",
        ),
        Figure("two busy colonies, two sharded brokers: CPU per 1,000", two_cpu, "CPU s"),
    ]
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=5000, help="processes per colony")
    parser.add_argument("--idle", type=int, default=200, help="colonies in the idle scenario")
    parser.add_argument("--idle-only", action="store_true", help="only the idle scenario")
    args = parser.parse_args()
    figures = [] if args.idle_only else asyncio.run(main(args.n))
    figures += asyncio.run(idle(args.idle, window_s=20.0))
    report(figures, quick=False, name="scale")
