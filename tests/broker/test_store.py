"""The KV snapshot a new leader loads: every key, every time, however fast the server is."""

from __future__ import annotations

import asyncio

import nats

from colonyos.broker.store import ProcessStore
from colonyos.broker.transitions import create
from colonyos.models import Conditions, FunctionSpec, now
from colonyos.subjects import Subjects


async def test_snapshot_sees_every_process_every_time(nats_url: str, prefix: str) -> None:
    nc = await nats.connect(nats_url)
    store = ProcessStore(nc, Subjects(prefix), storage="memory")
    await store.setup()
    spec = FunctionSpec(func_name="f", conditions=Conditions(executor_type="x", colony_name="c"))
    t = now()
    processes = [create(f"{i:064x}", spec, now=t, now_ns=i) for i in range(500)]
    await asyncio.gather(*(store.create(p) for p in processes))
    # A delete marker is the last word on its key (as removals of older versions left).
    await store.processes.delete(Subjects(prefix).process_key("c", processes[0].process_id))
    for _ in range(10):
        seen = [p.process_id async for p, _, _ in store.all_processes()]
        assert len(seen) == 499 and processes[0].process_id not in seen
    empty = [c async for c in store.all_colonies()]
    assert empty == []
    for name in (
        Subjects(prefix).stream_specs,
        Subjects(prefix).stream_events,
        Subjects(prefix).stream_logs,
    ):
        await nc.jetstream().delete_stream(name)
    for bucket in ("processes", "executors", "colonies", "leases", "graphs"):
        await nc.jetstream().delete_key_value(f"{prefix}-{bucket}")
    await nc.close()
