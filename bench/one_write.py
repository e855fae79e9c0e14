"""One JetStream write per transition (issue 14), measured against today's two.

    make bench-one-write         (or: python -m bench.one_write --lifecycles 4000 --snapshot 100000)

Bare nats-py against one nats-server (file storage, the packaged nats.conf), all in one run:

- today: a transition is a KV compare-and-set on the process's key, awaited, then its event
  published without waiting (``publish_async``; every acknowledgement is awaited before the clock
  stops), as colonyos/broker/store.py does;
- one write: the event alone is the record, published with ``Nats-Expected-Last-Subject-Sequence``
  and ``Nats-Expected-Last-Subject-Sequence-Subject`` over ``<prefix>.<colony>.events.*.*.<pid>``
  (the process's subjects whatever its state), awaited;
- a state read: KV get against a direct get of the last message of that wildcard.

Each lifecycle is three transitions (create WAITING, RUNNING, SUCCESS) with a process record of
the size a no-op process has. Throughput: 64 lifecycles in flight (as bench/run.py
raw_lifecycle_rate). Latency: one transition at a time. CPU: the nats-server's and this client's,
per 1,000 transitions. The two patterns alternate for ``--rounds`` rounds; the median is shown.

Then the leader's start: ``--snapshot`` processes with three events each, loaded once as the latest
record per process, from KV (colonyos.buckets.latest_values, what a broker does today) and from
the events stream (an ordered consumer, DeliverLastPerSubject over the wildcard).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, KeyValueConfig, StorageType, StreamConfig
from nats.js.kv import KeyValue

from bench.harness import cpu_seconds
from colonyos.buckets import latest_values
from colonyos.models import Conditions, FunctionSpec, Process
from colonyos.natsserver import NatsServer, packaged_config

RESULTS = Path(__file__).parent / "results"
COLONY = "bench"
IN_FLIGHT = 64
STATES = ("waiting", "running", "success")
EXPECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
EXPECT_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"

# A lifecycle: one (transition -> its duration) per state, appended to ``lat`` when given.
Lifecycle = Callable[[int, list[float] | None], Awaitable[None]]


def record() -> bytes:
    """A no-op process's JSON, as the broker writes it."""
    spec = FunctionSpec(func_name="noop", conditions=Conditions(executor_type="noop"))
    spec.conditions.colony_name = COLONY
    return msgspec.json.encode(Process(process_id="0" * 64, initiator_name="bench", spec=spec))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


class Today:
    """KV compare-and-set awaited + event not awaited (its acks awaited at the end)."""

    name = "today: KV CAS + event"

    def __init__(self, js: JetStreamContext, kv: KeyValue, body: bytes, tag: str) -> None:
        self.js, self.kv, self.body, self.tag = js, kv, body, tag
        self.acks: list[asyncio.Future[Any]] = []

    def key(self, i: int) -> str:
        return f"{COLONY}.{self.tag}{i:010d}"

    async def lifecycle(self, i: int, lat: list[float] | None) -> None:
        pid = f"{self.tag}{i:010d}"
        key = f"{COLONY}.{pid}"
        revision = 0
        for state in STATES:
            t = time.perf_counter()
            if revision == 0:
                revision = await self.kv.create(key, self.body)
            else:
                revision = await self.kv.update(key, self.body, last=revision)
            subject = f"today.{COLONY}.events.noop.{state}.{pid}"
            headers = {"Nats-Msg-Id": f"{pid}.{revision}"}
            self.acks.append(await self.js.publish_async(subject, self.body, headers=headers))
            if lat is not None:
                lat.append(time.perf_counter() - t)

    async def settle(self) -> None:
        await asyncio.gather(*self.acks)
        self.acks.clear()

    async def read(self, i: int) -> None:
        await self.kv.get(self.key(i))


class OneWrite:
    """One publish per transition, compare-and-set over the process's wildcard, awaited."""

    name = "one write: event CAS"

    def __init__(self, js: JetStreamContext, stream: str, body: bytes, tag: str) -> None:
        self.js, self.stream, self.body, self.tag = js, stream, body, tag

    def wildcard(self, i: int) -> str:
        return f"one.{COLONY}.events.*.*.{self.tag}{i:010d}"

    async def lifecycle(self, i: int, lat: list[float] | None) -> None:
        pid = f"{self.tag}{i:010d}"
        wildcard = self.wildcard(i)
        seq = 0
        for n, state in enumerate(STATES):
            t = time.perf_counter()
            headers = {EXPECT_SEQ: str(seq), EXPECT_SUBJECT: wildcard, "Nats-Msg-Id": f"{pid}.{n}"}
            subject = f"one.{COLONY}.events.noop.{state}.{pid}"
            seq = (await self.js.publish(subject, self.body, headers=headers)).seq
            if lat is not None:
                lat.append(time.perf_counter() - t)

    async def settle(self) -> None:
        return None

    async def read(self, i: int) -> None:
        await self.js.get_last_msg(self.stream, self.wildcard(i), direct=True)


Pattern = Today | OneWrite


async def _in_flight(work: Callable[[int], Awaitable[None]], indices: range) -> float:
    """``work`` over ``indices``, IN_FLIGHT at once: seconds taken."""
    todo = iter(indices)

    async def worker() -> None:
        for i in todo:
            await work(i)

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return time.perf_counter() - t


async def measure_writes(pattern: Pattern, server_pid: int, n: int, seq_n: int) -> dict[str, float]:
    cpu0, own0 = cpu_seconds(server_pid), time.process_time()
    t = time.perf_counter()
    await _in_flight(lambda i: pattern.lifecycle(i, None), range(n))
    await pattern.settle()
    took = time.perf_counter() - t
    cpu1, own1 = cpu_seconds(server_pid), time.process_time()
    lat: list[float] = []
    for i in range(n, n + seq_n):
        await pattern.lifecycle(i, lat)
    await pattern.settle()
    per_k = 1000 / (3 * n)
    return {
        "transitions_per_s": 3 * n / took,
        "p50_ms": statistics.median(lat) * 1e3,
        "p99_ms": pct(lat, 0.99) * 1e3,
        "server_cpu_s_per_1k": (cpu1 - cpu0) * per_k,
        "client_cpu_s_per_1k": (own1 - own0) * per_k,
    }


async def measure_reads(pattern: Pattern, server_pid: int, n: int) -> dict[str, float]:
    lat = []
    for i in range(n):
        t = time.perf_counter()
        await pattern.read(i)
        lat.append(time.perf_counter() - t)
    cpu0 = cpu_seconds(server_pid)
    took = await _in_flight(pattern.read, range(n))
    cpu1 = cpu_seconds(server_pid)
    return {
        "reads_per_s": n / took,
        "p50_ms": statistics.median(lat) * 1e3,
        "p99_ms": pct(lat, 0.99) * 1e3,
        "server_cpu_s_per_1k": (cpu1 - cpu0) * 1000 / n,
    }


async def _stream(js: JetStreamContext, name: str, subjects: list[str]) -> None:
    await js.add_stream(
        StreamConfig(
            name=name,
            subjects=subjects,
            allow_direct=True,
            duplicate_window=120,
            max_age=7 * 86400,
            storage=StorageType.FILE,
        )
    )


async def writes_and_reads(nc: NATS, server_pid: int, args: argparse.Namespace) -> dict[str, Any]:
    js = nc.jetstream()
    body = record()
    await _stream(js, "TODAY_EVENTS", ["today.*.events.>"])
    await _stream(js, "ONE_EVENTS", ["one.*.events.>"])
    kv = await js.create_key_value(
        KeyValueConfig(bucket="today-processes", history=8, storage=StorageType.FILE)
    )
    runs: dict[str, list[dict[str, float]]] = {}
    reads: dict[str, dict[str, float]] = {}
    for r in range(args.rounds):
        patterns: list[Pattern] = [
            Today(js, kv, body, f"r{r}"),
            OneWrite(js, "ONE_EVENTS", body, f"r{r}"),
        ]
        for pattern in patterns if r % 2 == 0 else reversed(patterns):
            figures = await measure_writes(pattern, server_pid, args.lifecycles, args.sequential)
            runs.setdefault(pattern.name, []).append(figures)
            if r == args.rounds - 1:
                reads[pattern.name] = await measure_reads(pattern, server_pid, args.lifecycles)
    median = {
        name: {k: statistics.median(f[k] for f in figures) for k in figures[0]}
        for name, figures in runs.items()
    }
    return {"writes": median, "reads": reads, "record_bytes": len(body)}


async def snapshot(nc: NATS, server_pid: int, n: int) -> dict[str, float]:
    """n processes x 3 transitions, loaded once as the latest record per process."""
    js = nc.jetstream()
    body = record()
    await js.add_stream(
        StreamConfig(name="SNAP_EVENTS", subjects=["snap.*.events.>"], storage=StorageType.FILE)
    )
    kv = await js.create_key_value(
        KeyValueConfig(bucket="snap-processes", history=8, storage=StorageType.FILE)
    )
    for i in range(n):
        pid = f"{i:064x}"
        for state in STATES:
            await js.publish_async(f"$KV.snap-processes.{COLONY}.{pid}", body)
            await js.publish_async(f"snap.{COLONY}.events.noop.{state}.{pid}", body)
    await js.publish_async_completed()

    t, cpu, own = time.perf_counter(), cpu_seconds(server_pid), time.process_time()
    kv_count = sum([1 async for _ in latest_values(js, kv)])
    kv_s, kv_cpu = time.perf_counter() - t, cpu_seconds(server_pid) - cpu
    kv_own = time.process_time() - own

    t, cpu, own = time.perf_counter(), cpu_seconds(server_pid), time.process_time()
    latest: dict[str, tuple[int, bytes]] = {}
    delivered = 0
    sub = await js.subscribe(
        f"snap.{COLONY}.events.*.*.*",
        stream="SNAP_EVENTS",
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
    )
    while True:
        msg = await sub.next_msg(timeout=30)
        delivered += 1
        meta = msg.metadata
        pid = msg.subject.rsplit(".", 1)[1]
        seq = int(meta.sequence.stream)
        if pid not in latest or latest[pid][0] < seq:
            latest[pid] = (seq, msg.data)
        if meta.num_pending == 0:
            break
    await sub.unsubscribe()
    events_s, events_cpu = time.perf_counter() - t, cpu_seconds(server_pid) - cpu
    events_own = time.process_time() - own
    assert kv_count == n and len(latest) == n, (kv_count, len(latest), n)
    return {
        "processes": n,
        "kv_s": kv_s,
        "kv_server_cpu_s": kv_cpu,
        "kv_own_cpu_s": kv_own,
        "kv_delivered": kv_count,
        "events_s": events_s,
        "events_server_cpu_s": events_cpu,
        "events_own_cpu_s": events_own,
        "events_delivered": delivered,
    }


def show(result: dict[str, Any]) -> None:
    """The figures, in 80 columns."""
    print(f"process record: {result['record_bytes']} bytes; 3 transitions per lifecycle")
    print("CPU: seconds per 1,000 transitions (reads: per 1,000 reads)")
    head = f"{'p50 ms':>7} {'p99 ms':>7} {'nats CPU':>8}"
    print(f"{'writes':<22} {'transitions/s':>13} {head} {'own CPU':>8}")
    for name, f in result["writes"].items():
        print(
            f"{name:<22} {f['transitions_per_s']:>13,.0f} {f['p50_ms']:>7.3f} {f['p99_ms']:>7.3f}"
            f" {f['server_cpu_s_per_1k']:>8.3f} {f['client_cpu_s_per_1k']:>8.3f}"
        )
    print(f"{'reads':<22} {'reads/s':>13} {head}")
    for name, f in result["reads"].items():
        label = "KV get" if name.startswith("today") else "direct get, wildcard"
        print(
            f"{label:<22} {f['reads_per_s']:>13,.0f} {f['p50_ms']:>7.3f} {f['p99_ms']:>7.3f}"
            f" {f['server_cpu_s_per_1k']:>8.3f}"
        )
    snap = result.get("snapshot")
    if snap:
        print(f"leader start, {snap['processes']:,} processes x 3 events, latest per process:")
        for label, k in (("KV, latest_values", "kv"), ("events, last per subject", "events")):
            print(
                f"  {label:<24} {snap[k + '_s']:>6.1f} s {snap[k + '_delivered']:>8,} msgs;"
                f" CPU: nats {snap[k + '_server_cpu_s']:.1f} s, own {snap[k + '_own_cpu_s']:.1f} s"
            )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="colonies-onewrite-") as d,
        packaged_config() as conf,
        NatsServer(Path(d) / "js", port=0, config=conf) as server,
    ):
        assert server.proc is not None
        nc = await nats.connect(server.url, max_reconnect_attempts=0)
        try:
            result = await writes_and_reads(nc, server.proc.pid, args)
            if args.snapshot:
                result["snapshot"] = await snapshot(nc, server.proc.pid, args.snapshot)
        finally:
            await nc.close()
    return result


def _count(least: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, not {value}")
        return value

    parse.__name__ = "count"  # argparse names the type so in its error: "invalid count value"
    return parse


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.one_write",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--lifecycles", type=_count(1), default=4000, help="per round, 64 in flight"
    )
    parser.add_argument("--sequential", type=_count(1), default=1000, help="lifecycles one by one")
    parser.add_argument("--rounds", type=_count(1), default=3, help="rounds of both patterns")
    parser.add_argument("--snapshot", type=_count(0), default=100_000, help="processes; 0: skip")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    show(result)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "one_write.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
