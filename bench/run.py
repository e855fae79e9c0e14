"""Benchmarks: throughput, latency, workflows, memory and the edge executor.

    make bench-quick      (under a minute)
    make bench            (the full sizes)

Every run starts its own nats-server and a broker as separate processes, secure as `colonies
server start` runs them (the auth callout; each party with its own key), runs executors as
separate processes, prints a table, and writes bench/results/latest.json. Connect time and end
to end throughput are measured again on an insecure installation in the same run. Each figure comes
with a raw nats-py baseline measured in the same run where one makes sense, so that ratios
rather than absolute times are compared on a noisy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgspec
from prometheus_client.parser import text_string_to_metric_families

from bench.harness import System, cpu_seconds, rss_mib
from colonyos.client import Client
from colonyos.client.connected import new_id
from colonyos.errors import BrokerUnavailableError
from colonyos.models import Conditions, FunctionSpec, Process, ProcessState, WorkflowSpec
from colonyos.subjects import Subjects

RESULTS = Path(__file__).parent / "results"
SLOTS = 16  # processes each executor runs at once (ExecutorApp concurrency)
# What a process of the single-slot scenario with work waits in its executor: where the round
# trips between two processes are idle time that prefetching saves, whatever the CPU.
WORK_S = 0.005


@dataclass
class Figure:
    scenario: str
    value: float
    unit: str
    target: str = ""
    baseline: float | None = None
    baseline_unit: str = ""
    note: str = ""


def noop(executor_type: str = "noop", **kw: Any) -> FunctionSpec:
    return FunctionSpec(func_name="noop", conditions=Conditions(executor_type=executor_type), **kw)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def _events_stored(system: System, more: int, ready: asyncio.Event) -> float:
    """Wait until the events stream holds ``more`` events than when called; returns the
    monotonic time it saw them.

    It reads the stream's message count every 20 ms rather than receiving the events: on two
    shared cores, a load generator decoding every event costs more CPU than the executors and
    slows what it measures (and reading late only lowers the figure). The counts per state are
    then checked with :func:`_check_counts`.
    """
    nc = await system.raw_connect()  # stream state: a broker's right, not a member's
    try:
        js = nc.jetstream()
        stream = Subjects(system.prefix).stream_events
        base = (await js.stream_info(stream)).state.messages
        ready.set()
        async with asyncio.timeout(300):
            while (await js.stream_info(stream)).state.messages < base + more:
                await asyncio.sleep(0.02)  # sleep-ok: polling a count under a deadline
        return time.monotonic()
    finally:
        await nc.close()


async def _check_counts(client: Client, executor_type: str, expected: dict[str, int]) -> None:
    """Every process ended as expected, each transition once (ARCHITECTURE.md section 6)."""
    async with asyncio.timeout(30):
        while True:
            counts = (await client.stats()).executor_types.get(executor_type, {})
            if counts == expected:
                return
            if sum(counts.values()) > sum(expected.values()):
                raise AssertionError(f"{executor_type}: {counts}, expected {expected}")
            await asyncio.sleep(0.05)  # sleep-ok: the index may still be applying the last


async def _submit_many(client: Client, specs: list[FunctionSpec], chunk: int = 1000) -> float:
    t = time.monotonic()
    for i in range(0, len(specs), chunk):
        await client.submit_many(specs[i : i + chunk])
    return time.monotonic() - t


# -- raw nats-py baselines ---------------------------------------------------------------
async def raw_publish_rate(system: System, n: int, chunk: int = 1000) -> float:
    """js.publish_async in chunks, acknowledgements awaited per chunk: as submit_many does."""
    nc = await system.raw_connect()
    js = nc.jetstream()
    await js.add_stream(name="RAWBENCH", subjects=["rawbench.>"])
    body = b'{"conditions":{"executortype":"noop"},"funcname":"noop"}'
    t = time.monotonic()
    for start in range(0, n, chunk):
        acks = [
            await js.publish_async("rawbench.specs", body, headers={"Nats-Msg-Id": str(i)})
            for i in range(start, min(n, start + chunk))
        ]
        await asyncio.gather(*acks)
    rate = n / (time.monotonic() - t)
    await js.delete_stream("RAWBENCH")
    await nc.close()
    return rate


async def raw_request_latency(system: System, n: int) -> list[float]:
    nc = await system.raw_connect()

    async def echo(msg: Any) -> None:
        await msg.respond(msg.data)

    await nc.subscribe("rawbench.rpc", cb=echo)
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        await nc.request("rawbench.rpc", b"x", timeout=5)
        samples.append((time.perf_counter() - t) * 1e3)
    await nc.close()
    return samples


@contextlib.asynccontextmanager
async def _bare(system: System, name: str) -> AsyncIterator[tuple[Any, Any, Any]]:
    """A bare nats-py connection with a stream over ``<name>.>``, a KV bucket ``<name>`` and
    an answer to every request on ``<name>.rpc.*``: (connection, JetStream, bucket)."""
    nc = await system.raw_connect()
    js = nc.jetstream()
    await js.add_stream(name=name.upper(), subjects=[f"{name}.>"])
    kv = await js.create_key_value(bucket=name)

    async def reply(msg: Any) -> None:
        await msg.respond(b"{}")

    await nc.subscribe(f"{name}.rpc.*", cb=reply)
    try:
        yield nc, js, kv
    finally:
        await js.delete_stream(name.upper())
        await js.delete_key_value(name)
        await nc.close()


async def raw_lifecycle_rate(system: System, n: int, workers: int = 4) -> float:
    """The messages of one process lifecycle, bare: 1 spec publish, 3 KV writes, 3 event
    publishes and 2 request/replies, with `workers` executors pulling concurrently."""
    async with _bare(system, "rawlife") as (nc, js, kv):
        counter = iter(range(n))

        async def worker() -> None:
            for i in counter:
                await js.publish("rawlife.specs", b"{}")
                await kv.create(f"p{i}", b"{}")
                await js.publish(f"rawlife.events.waiting.{i}", b"{}")
                await nc.request("rawlife.rpc.assign", b"{}", timeout=5)
                await kv.put(f"p{i}", b"{}")
                await js.publish(f"rawlife.events.running.{i}", b"{}")
                await nc.request("rawlife.rpc.close", b"{}", timeout=5)
                await kv.put(f"p{i}", b"{}")
                await js.publish(f"rawlife.events.success.{i}", b"{}")

        t = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(workers * 16)))
        return n / (time.monotonic() - t)


async def raw_lifecycle_latency(system: System, n: int) -> list[float]:
    """One lifecycle's NATS work done in sequence by one bare nats-py process, as the real
    one must be (each step waits for the one before): a spec published, three KV writes
    (the two events before the last not waited for), two request/replies, and the last
    event received by a subscriber. Milliseconds for each of ``n``."""
    async with _bare(system, "rawlat") as (nc, js, kv):
        done = await nc.subscribe("rawlat.events.success.*")
        samples = []
        for i in range(n):
            t = time.perf_counter()
            await js.publish("rawlat.specs", b"{}")
            await kv.create(f"p{i}", b"{}")
            await nc.publish(f"rawlat.events.waiting.{i}", b"{}")
            await nc.request("rawlat.rpc.assign", b"{}", timeout=5)
            await kv.put(f"p{i}", b"{}")
            await nc.publish(f"rawlat.events.running.{i}", b"{}")
            await nc.request("rawlat.rpc.close", b"{}", timeout=5)
            await kv.put(f"p{i}", b"{}")
            await js.publish(f"rawlat.events.success.{i}", b"{}")
            await done.next_msg(timeout=5)
            samples.append((time.perf_counter() - t) * 1e3)
        return samples


# -- scenarios --------------------------------------------------------------------------
async def scenario_submit(system: System, client: Client, n: int) -> list[Figure]:
    ready = asyncio.Event()
    done = asyncio.create_task(_events_stored(system, n, ready))  # one waiting event each
    await ready.wait()
    t0 = time.monotonic()
    took = await _submit_many(client, [noop("idle-submit") for _ in range(n)])
    accepted_at = await done
    await _check_counts(client, "idle-submit", {"waiting": n})
    baseline = await raw_publish_rate(system, n)
    return [
        Figure(
            "submit: specs acknowledged by JetStream",
            n / took,
            "specs/s",
            ">= 0.8 x raw",
            baseline,
            "raw js.publish_async/s",
            f"{n} specs, submit_many in chunks of 1,000",
        ),
        Figure(
            "submit: specs made processes by the broker",
            n / (accepted_at - t0),
            "processes/s",
            "",
            note="KV create + waiting event + index, per spec",
        ),
    ]


async def _publish_raw(client: Client, executor_type: str, n: int, chunk: int = 1000) -> None:
    """Specs published by nats-py itself on the client's connection (publish_async in chunks,
    acknowledgements awaited per chunk), without the client's checks: the load generator then
    costs the two shared cores less, and the broker and executors get more of them."""
    subject = client.subjects.specs(client.colony, executor_type)
    body = msgspec.json.encode(noop(executor_type))
    caller = client.caller
    for start in range(0, n, chunk):
        acks = [
            await client.js.publish_async(
                subject, body, headers={"Nats-Msg-Id": new_id(), "Colonies-Initiator": caller}
            )
            for _ in range(start, min(n, start + chunk))
        ]
        await asyncio.gather(*acks)


async def scenario_end_to_end(
    system: System,
    client: Client,
    n: int,
    executors: int,
    *,
    done_before: int = 0,
    slots: int = SLOTS,
    executor_type: str = "noop",
    raw: bool = False,
    work_s: float = 0.0,
) -> list[Figure]:
    """``done_before``: no-op processes of ``executor_type`` this colony already ran (the
    counts add up). ``raw``: the specs are published by nats-py (:func:`_publish_raw`).
    ``work_s``: each process waits that long in its executor (work that costs no CPU)."""
    assert system.broker is not None
    nats_pid = system.server.proc.pid if system.server.proc else 0
    cpu0 = cpu_seconds(system.broker.pid), cpu_seconds(nats_pid)
    ready = asyncio.Event()
    # Waiting, running, success: three events each.
    done = asyncio.create_task(_events_stored(system, 3 * n, ready))
    await ready.wait()
    t0 = time.monotonic()
    if raw:
        await _publish_raw(client, executor_type, n)
    else:
        work = {"args": [work_s]} if work_s else {}
        await _submit_many(client, [noop(executor_type, **work) for _ in range(n)])
    finished = await done
    cpu1 = cpu_seconds(system.broker.pid), cpu_seconds(nats_pid)
    await _check_counts(client, executor_type, {"success": done_before + n})
    rate = n / (finished - t0)
    baseline = await raw_lifecycle_rate(system, max(1000, n // 4), executors)
    per_k = 1000 / n
    name = f"end to end, {executors} executor processes x {slots} slot{'s' if slots > 1 else ''}"
    if raw:
        name += ", specs published raw"
    if work_s:
        name += f", {work_s * 1000:g} ms of work each"
    return [
        Figure(
            name,
            rate,
            "processes/s",
            ">= 3,000" if slots > 1 else ">= 1,500",
            baseline,
            "raw lifecycle messages/s",
            f"{n} no-op processes; every transition in KV + events + index",
        ),
        Figure("broker CPU per 1,000 processes", (cpu1[0] - cpu0[0]) * per_k, "CPU s"),
        Figure("nats-server CPU per 1,000 processes", (cpu1[1] - cpu0[1]) * per_k, "CPU s"),
    ]


async def scenario_latency(system: System, client: Client, n: int) -> list[Figure]:
    has_it, closed = [], []
    async with client.subscribe(executor_type="noop", state=ProcessState.SUCCESS) as events:
        for _ in range(n):
            t0 = time.time_ns()
            await client.submit(noop(), confirm=False)
            event = await events.next(30)
            t1 = time.time_ns()
            assert isinstance(event, Process)
            has_it.append((event.output[0] - t0) / 1e6)
            closed.append((t1 - t0) / 1e6)
    raw = await raw_request_latency(system, n)
    raw_lifecycle = await raw_lifecycle_latency(system, n)
    return [
        Figure(
            "submit -> executor has it, p50",
            statistics.median(has_it),
            "ms",
            "< 1",
            statistics.median(raw),
            "raw request/reply ms",
        ),
        Figure("submit -> executor has it, p99", pct(has_it, 0.99), "ms", "< 5"),
        Figure(
            "submit -> closed, p50",
            statistics.median(closed),
            "ms",
            "< 1.5 (Celery solo: 1.97)",
            statistics.median(raw_lifecycle),
            "raw lifecycle in sequence ms",
        ),
        Figure("submit -> closed, p99", pct(closed, 0.99), "ms", "< 5"),
    ]


def _scrape_totals(url: str) -> dict[str, float]:
    """Each family's samples of a /metrics scrape summed over their labels, by sample name
    (``colonies_processes{state=...}`` kept apart per state)."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if name == "colonies_processes":
                name = f"{name}{{state={sample.labels['state']}}}"
            totals[name] = totals.get(name, 0.0) + sample.value
    return totals


async def scenario_metrics(system: System, submitted: int, closed: int) -> list[Figure]:
    """The broker's /metrics beside what this run counted itself: the same totals. Read
    once, here (the counters are kept during the run anyway); scraped again until they agree
    under a deadline (the last close's counter may follow its event by a moment)."""
    expected = {
        "colonies_submissions_total": submitted,
        "colonies_assignments_total": closed,
        "colonies_process_execution_seconds_count": closed,
        "colonies_process_waiting_seconds_count": closed,
        "colonies_processes{state=success}": closed,
    }
    totals: dict[str, float] = {}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10):
            while any(totals.get(k) != v for k, v in expected.items()):
                totals = await asyncio.to_thread(_scrape_totals, system.metrics_url)
                await asyncio.sleep(0.1)  # sleep-ok: polling a scrape under a deadline
    return [
        Figure(
            f"/metrics: {name}",
            totals.get(name, float("nan")),
            "processes",
            f"= {want:,} (this run's count)",
            note="same" if totals.get(name) == want else "DIFFERENT",
        )
        for name, want in expected.items()
    ]


def _fanout(width: int) -> WorkflowSpec:
    specs = [
        FunctionSpec(
            node_name="root", func_name="noop", conditions=Conditions(executor_type="noop")
        )
    ]
    specs += [
        FunctionSpec(
            node_name=f"n{i}",
            func_name="noop",
            conditions=Conditions(executor_type="noop", dependencies=["root"]),
        )
        for i in range(width)
    ]
    specs.append(
        FunctionSpec(
            node_name="sink",
            func_name="noop",
            conditions=Conditions(
                executor_type="noop", dependencies=[f"n{i}" for i in range(width)]
            ),
        )
    )
    return WorkflowSpec(function_specs=specs)


def _chain(length: int) -> WorkflowSpec:
    return WorkflowSpec(
        function_specs=[
            FunctionSpec(
                node_name=f"n{i}",
                func_name="noop",
                conditions=Conditions(
                    executor_type="noop", dependencies=[f"n{i - 1}"] if i else []
                ),
            )
            for i in range(length)
        ]
    )


async def scenario_workflows(client: Client) -> list[Figure]:
    figures = []
    for name, workflow, target in (
        ("100-node fan-out workflow (1 -> 98 -> 1)", _fanout(98), "< 0.5"),
        ("100-node chain workflow", _chain(100), "< 1"),
    ):
        t0 = time.monotonic()
        graph = await client.submit_workflow(workflow)
        assert not isinstance(graph, str)
        done = await client.graph_wait(graph.process_graph_id, timeout=120)
        assert done.state is ProcessState.SUCCESS, done.state
        figures.append(Figure(name, time.monotonic() - t0, "s", target, note="4 executors"))
    return figures


async def _assign_p50(client: Client, settings: Any, rounds: int) -> float:
    from colonyos.models import Executor

    ex = await Client.connect(settings, caller="idle-probe", executor=True)
    await ex.register(Executor(executor_name="idle-probe", executor_type="idle"))
    if ex.secure:  # registered (auto-approved) on a connection that may only register
        await ex.aclose()
        ex = await Client.connect(settings, caller="idle-probe", executor=True)
    samples = []
    for _ in range(rounds):
        t = time.perf_counter()
        got = await ex.assign(timeout=5)
        samples.append((time.perf_counter() - t) * 1e3)
        assert got is not None
        await ex.close(got.process_id, [])
    await ex.aclose()
    return statistics.median(samples)


async def scenario_memory(system: System, client: Client, waiting: int) -> list[Figure]:
    assert system.broker is not None
    rss0 = rss_mib(system.broker.pid)
    small = 1000
    await _submit_many(client, [noop("idle") for _ in range(small)])
    await _wait_waiting(client, small)
    few = await _assign_p50(client, system.settings, 200)
    await _submit_many(client, [noop("idle") for _ in range(waiting - small + 200)])
    await _wait_waiting(client, waiting)
    rss = rss_mib(system.broker.pid)
    many = await _assign_p50(client, system.settings, 200)
    return [
        Figure(
            f"broker memory with {waiting:,} waiting",
            rss,
            "MiB RSS",
            "< 150 (100,000 waiting)",
            note=f"{rss0:.0f} MiB before",
        ),
        Figure(f"assign + close, p50, {small:,} waiting", few, "ms"),
        Figure(
            f"assign + close, p50, {waiting:,} waiting",
            many,
            "ms",
            "no growth with the queue",
        ),
    ]


async def _wait_waiting(client: Client, n: int) -> None:
    """Until the broker has made n idle processes (it may be too busy to answer at first)."""
    async with asyncio.timeout(300):
        while True:
            try:
                stats = await client.stats()
            except BrokerUnavailableError:
                continue
            if stats.executor_types.get("idle", {}).get("waiting", 0) >= n:
                return
            await asyncio.sleep(0.2)


_EDGE_INSTALL = (
    "import runpy, sys; sys.modules['aiohttp'] = None; "
    "runpy.run_module('colonyos.executors.echo', run_name='__main__')"
)


async def scenario_edge(system: System, client: Client) -> list[Figure]:
    t0 = time.monotonic()
    # As installed on a device: nats-py, msgspec and nkeys. nats-py imports aiohttp (10 MiB) for
    # websockets whenever it can, and the development install has it (cosmic-ray needs it).
    child = system.spawn(["-c", _EDGE_INSTALL], "edge", {"COLONIES_EXECUTOR_NAME": "edge-1"})
    async with asyncio.timeout(30):
        while not any(e.executor_name == "edge-1" for e in await client.executor_list()):
            await asyncio.sleep(0.01)
    started = time.monotonic() - t0
    await asyncio.sleep(1.0)  # idle a moment before reading its memory
    rss = rss_mib(child.pid)
    return [
        Figure("edge executor (echo) start to registered", started, "s", "< 0.5"),
        Figure("edge executor (echo) idle memory", rss, "MiB RSS", "< 40"),
    ]


async def scenario_flood(system: System, client: Client, n: int) -> list[Figure]:
    """End to end while a stranger floods the server with connections it must refuse (the
    callout answers each: signature, book, refusal). On a 2-core machine the flood's own CPU
    is part of what slows the rest."""
    flood = system.spawn(["-m", "bench.flood", system.server.url, system.prefix], "flood")
    t0 = time.monotonic()
    try:
        [e2e, *_] = await scenario_end_to_end(system, client, n, 4, done_before=n)
        connect = await connect_p50(system, 20)
    finally:
        flood.stop()
        took = time.monotonic() - t0
        system.children.remove(flood)
    tried = int((system.dir / "flood.log").read_text().split()[-1] or 0)
    return [
        Figure(
            "end to end during a flood of refused connections",
            e2e.value,
            "processes/s",
            "near the same without",
            tried / took,
            "refused connections/s",
            "a stranger's key, correctly signed, invented names; 4 at once",
        ),
        Figure(
            "member connect during a flood of refused connections",
            connect,
            "ms (p50)",
            "near the same without",
        ),
    ]


async def connect_p50(system: System, rounds: int) -> float:
    """Median time for a client to connect (through the auth callout when secure) and close."""
    took = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        client = await Client.connect(system.settings, caller="bench")
        took.append(time.perf_counter() - t0)
        await client.aclose()
    return statistics.median(took) * 1000


async def scenario_secure_against_insecure(
    secure: System, secure_rate: float, n: int, rounds: int
) -> list[Figure]:
    """Connect time and end-to-end throughput of an insecure installation, in the same run."""
    secure_connect = await connect_p50(secure, rounds)
    async with System(prefix="open", secure=False) as insecure:
        client = await insecure.start()
        insecure_connect = await connect_p50(insecure, rounds)
        insecure.executors(4, concurrency=SLOTS)
        await _executors_ready(client, 4)
        [e2e, *_] = await scenario_end_to_end(insecure, client, n, 4)
        edge = await scenario_edge(insecure, client)
        await client.aclose()
    return [
        Figure(
            "connect and close, secure (auth callout)",
            secure_connect,
            "ms p50",
            "near insecure",
            insecure_connect,
            "ms p50 insecure",
            f"{rounds} connections",
        ),
        Figure(
            "end to end, secure against insecure",
            secure_rate,
            "processes/s",
            "near insecure",
            e2e.value,
            "processes/s insecure",
            "the same scenario on an insecure installation, right after",
        ),
        *(
            Figure(f"{f.scenario}, insecure", f.value, f.unit, f.target, note="for comparison")
            for f in edge
        ),
    ]


async def main(quick: bool) -> list[Figure]:
    sizes = (
        {"submit": 5000, "e2e": 3000, "latency": 200, "waiting": 10_000}
        if quick
        else {"submit": 20_000, "e2e": 20_000, "latency": 1000, "waiting": 100_000}
    )
    figures: list[Figure] = []
    async with System() as system:
        client = await system.start()
        figures += await scenario_submit(system, client, sizes["submit"])
        executors = system.executors(4, concurrency=SLOTS)
        await _executors_ready(client, 4)
        end_to_end = await scenario_end_to_end(system, client, sizes["e2e"], 4)
        figures += end_to_end
        figures += await scenario_flood(system, client, sizes["e2e"])
        figures += await scenario_latency(system, client, sizes["latency"])
        # Every process this run submitted so far, and those that ended closed (no-ops).
        closed = 2 * sizes["e2e"] + sizes["latency"]
        figures += await scenario_metrics(system, sizes["submit"] + closed, closed)
        figures += await scenario_workflows(client)
        system.stop_executors(executors)
        figures += await scenario_single_slot(system, client, sizes["e2e"])
        figures += await scenario_edge(system, client)
        figures += await scenario_memory(system, client, sizes["waiting"])
        figures += await scenario_secure_against_insecure(
            system, end_to_end[0].value, sizes["e2e"], 20 if quick else 100
        )
        await client.aclose()
    return figures


async def scenario_single_slot(system: System, client: Client, n: int) -> list[Figure]:
    """End to end with executors that run one process at a time (as most edge and container
    executors do), the specs submitted as above, then published raw; and, for comparison in
    the same run, executors that do not prefetch (each asks for work only when its slot is
    free)."""
    figures = []
    for prefetch in (False, True):
        etype = "single" if prefetch else "single-no-prefetch"
        single = system.executors(4, etype, 1, executor_type=etype, prefetch=prefetch)
        await _executors_ready(client, 4, etype)
        runs = [(False, 0.0), (True, 0.0)] if prefetch else [(False, 0.0)]
        done = 0
        for raw, work_s in [*runs, (False, WORK_S)]:
            size = n // 3 if work_s else n
            [e2e, *_] = await scenario_end_to_end(
                system,
                client,
                size,
                4,
                done_before=done,
                slots=1,
                executor_type=etype,
                raw=raw,
                work_s=work_s,
            )
            done += size
            if not prefetch:
                e2e.scenario += ", no prefetch"
                e2e.target = "for comparison"
            elif work_s:
                e2e.target = "above it without prefetch"
            figures.append(e2e)
        system.stop_executors(single)
    return figures


async def _executors_ready(client: Client, n: int, executor_type: str = "noop") -> None:
    async with asyncio.timeout(30):
        while (
            sum(e.executor_type == executor_type and e.online for e in await client.executor_list())
            < n
        ):
            await asyncio.sleep(0.05)  # sleep-ok: polling the executor list under a deadline


def report(figures: list[Figure], quick: bool, name: str = "latest") -> None:
    print(f"\n{'scenario':<52} {'value':>10} {'unit':<12} {'target':<26} {'raw baseline':>14}")
    for f in figures:
        base = f"{f.baseline:,.2f}" if f.baseline is not None else ""
        print(f"{f.scenario:<52} {f.value:>10,.2f} {f.unit:<12} {f.target:<26} {base:>14}")
    RESULTS.mkdir(exist_ok=True)
    doc = {
        "mode": "quick" if quick else "full",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "system": platform.platform(),
        },
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "figures": [asdict(f) for f in figures],
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=2))
    print(f"\nwritten to {RESULTS / f'{name}.json'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    args = parser.parse_args()
    report(asyncio.run(main(args.quick)), args.quick)
