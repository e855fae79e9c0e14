"""A cron and a generator under fail-over: the brokers, real OS processes, SIGKILLed again and
again while a cron ticks every second and arguments are packed into a generator. A tick runs
once and a packed argument is used once: each run is recorded before its graph is written, and
a new leader finishes a recorded run rather than deciding afresh.

The cron waits for its previous run and chains (CHAIN in conftest): run k's leaf outputs k. A
tick run twice would give two runs the same k; a run recorded but never written would restart
the count at 1 (its successor would chain from a graph that does not exist). So the runs'
outputs, sorted, are exactly 1..n, and no run started before the one before it ended.

The generator (trigger 4, timeout 1 s) gets the numbers 0..N-1 packed one by one during the
kills: its runs' arguments, in the order of their runs, must be exactly 0..N-1, each once, in
order.

COLONIES_CRON_CHAOS_S sets the seconds of kills (``make soak`` runs longer).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.crons.client import Crons
from colonyos.errors import BrokerUnavailableError, ConflictError, NotAuthorizedError
from colonyos.executor import ExecutorApp, ProcessContext
from colonyos.generators.client import Generators
from colonyos.models import ProcessGraph, ProcessState

from ..conftest import SecureServer, open_colony
from ..helpers import OWNER
from ..procs import Child, until_served
from .conftest import CHAIN, COUNT_TYPE

CHAOS_S = float(os.environ.get("COLONIES_CRON_CHAOS_S", "8"))
SEED = int(os.environ.get("COLONIES_CRON_SEED", str(random.randrange(1 << 30))))
# What a client may meet while the brokers die and come back.
TROUBLE = (BrokerUnavailableError, NotAuthorizedError, ConflictError)


@pytest.fixture
def brokers(
    own_brokers: BrokerSettings, secure_server: SecureServer, tmp_path: Path
) -> Iterator[list[Child]]:
    env = {
        "COLONIES_NATS_URL": own_brokers.nats_url,
        "COLONIES_PREFIX": own_brokers.prefix,
        "COLONIES_KEYS_DIR": str(secure_server.keys_dir),
        "COLONIES_STORAGE": "memory",
        "COLONIES_LEASE_TTL": "1",
    }
    owner = f"--owner=tester={OWNER.public_key}"
    children = [
        Child(
            ["broker", "start", "--data-dir", str(tmp_path / f"b{i}"), owner],
            tmp_path / f"b{i}.log",
            env,
        )
        for i in range(2)
    ]
    yield children
    for child in children:
        child.kill()


@pytest.fixture
async def counter(settings: Settings) -> AsyncIterator[ExecutorApp]:
    app = ExecutorApp(COUNT_TYPE, "counter-1", settings=settings, heartbeat_s=0.2)

    @app.handler()
    async def handle(ctx: ProcessContext) -> list[Any]:
        if ctx.process.spec.func_name == "collect":  # a generator's run: what was packed
            return list(ctx.process.spec.args)
        values = [v for v in ctx.process.input if isinstance(v, int)]
        return [1 + sum(values)] if ctx.process.spec.func_name == "count" else values

    task = asyncio.create_task(app.run())
    yield app
    app.stop(force=True)
    async with asyncio.timeout(15):
        await task


COLLECT = [
    {"nodename": "collect", "funcname": "collect", "conditions": {"executortype": COUNT_TYPE}}
]
PACKED = 40


async def _pack_all(generators: Generators) -> None:
    """The numbers 0..PACKED-1, one by one, spread over the kills: each stored in JetStream when
    the pack returns, whether a broker runs or not."""
    for i in range(PACKED):
        await generators.pack("feed", i)
        await asyncio.sleep(CHAOS_S / PACKED)  # sleep-ok: pacing the packs over the kills


async def _chaos(brokers: list[Child], rng: random.Random) -> int:
    kills = 0
    end = time.monotonic() + CHAOS_S
    while time.monotonic() < end:
        await asyncio.sleep(rng.uniform(0.3, 1.2))  # sleep-ok: random fault timing
        victim = rng.choice(brokers)
        victim.kill()
        kills += 1
        await asyncio.sleep(rng.uniform(0.0, 0.6))  # sleep-ok: random down time
        victim.start()
    return kills


async def _runs(client: Client) -> list[tuple[ProcessGraph, list[Any]]]:
    """The cron's runs (graphs), each with its leaf's output."""
    graphs = [g for g in await client.graph_list(limit=1000) if g.cron_name == "tick"]
    runs = []
    for graph in graphs:
        leaf = await client.get(graph.nodes["last"])
        runs.append((graph, leaf.output))
    return runs


async def _batches(client: Client) -> list[tuple[ProcessGraph, list[Any]]]:
    """The generator's runs, each with the arguments its root was given (its output)."""
    graphs = [g for g in await client.graph_list(limit=1000) if g.generator_name == "feed"]
    return [(g, (await client.get(g.nodes["collect"])).output) for g in graphs]


async def _all_used(client: Client) -> bool:
    batches = await _batches(client)
    used = sum(len(args) for _, args in batches)
    return used >= PACKED and all(g.state.is_terminal for g, _ in batches)


@pytest.mark.timeout(180)
async def test_killing_the_brokers_runs_each_tick_once_and_uses_each_argument_once(
    brokers: list[Child], settings: Settings, counter: ExecutorApp
) -> None:
    print(f"\nfail-over: seed {SEED}, {CHAOS_S:g} s of kills")
    rng = random.Random(SEED)
    for child in brokers:
        child.start()
    errors = (*TROUBLE, TimeoutError)
    await until_served(lambda: open_colony(settings), errors=errors, timeout=60)
    async with await until_served(
        lambda: Client.connect(settings, caller="tester"), errors=errors
    ) as client:
        crons = Crons(client)
        await until_served(
            lambda: crons.add("tick", CHAIN, interval=1, wait_for_previous=True), errors=errors
        )
        generators = Generators(client)
        await until_served(
            lambda: generators.add("feed", COLLECT, trigger=4, timeout=1), errors=errors
        )
        kills, _ = await asyncio.gather(_chaos(brokers, rng), _pack_all(generators))
        for child in brokers:
            if not child.alive:
                child.start()

        async def two_more_runs_ended() -> bool:
            runs = await _runs(client)
            ended = [g for g, _ in runs if g.state is ProcessState.SUCCESS]
            return len(ended) >= len(seen) + 2

        seen = await until_served(lambda: _runs(client), errors=errors)
        # Calm again: the count goes on.
        async with asyncio.timeout(60):
            while not await until_served(two_more_runs_ended, errors=errors):
                await asyncio.sleep(0.2)  # sleep-ok: polling the runs under a deadline
        await until_served(lambda: crons.remove("tick"), errors=errors)
        async with asyncio.timeout(30):  # the run under way, if any, ends
            while any(not g.state.is_terminal for g, _ in await _runs(client)):
                await asyncio.sleep(0.2)  # sleep-ok: polling the runs under a deadline
        runs = sorted(await _runs(client), key=lambda r: r[1])
        async with asyncio.timeout(60):  # every packed argument used (the last at the timeout)
            while not await until_served(lambda: _all_used(client), errors=errors):
                await asyncio.sleep(0.2)  # sleep-ok: polling the runs under a deadline
        batches = sorted(await _batches(client), key=lambda b: b[0].submission_time)
    used = [arg for _, args in batches for arg in args]
    print(f"fail-over: {kills} broker kills, {len(runs)} cron runs, {len(batches)} generator runs")
    assert used == list(range(PACKED)), used
    assert all(g.state is ProcessState.SUCCESS for g, _ in batches)
    outputs = [output for _, output in runs]
    assert outputs == [[k] for k in range(1, len(runs) + 1)], outputs
    for (before, _), (after, _) in itertools.pairwise(runs):
        assert after.submission_time >= before.end_time, (before, after)
    assert all(graph.state is ProcessState.SUCCESS for graph, _ in runs)
