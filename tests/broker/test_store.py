"""The store on a real server: the compare-and-set of every transition, the events named by
revision, and the KV snapshot a new leader loads (every key, every time, however fast the
server is). `make mutate MUTATE=store` runs these first."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import msgspec
import nats
import nats.errors
import pytest
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType

from colonyos.broker.store import ProcessStore, StaleRevisionError
from colonyos.broker.transitions import create
from colonyos.config import BrokerSettings
from colonyos.errors import (
    ColoniesError,
    GraphNotFoundError,
    InvalidSpecError,
    ProcessNotFoundError,
)
from colonyos.messages import GraphEvent, Rejection, process_event_body
from colonyos.models import (
    Colony,
    Conditions,
    Executor,
    FunctionSpec,
    Process,
    ProcessGraph,
    ProcessState,
    now,
)
from colonyos.subjects import GRAPH_TOKEN, REJECTED_TOKEN, Subjects

from ..helpers import raw_nats


async def test_snapshot_sees_every_process_every_time(nats_url: str, prefix: str) -> None:
    nc = await raw_nats(nats_url)
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


@pytest.fixture
async def store(own_brokers: BrokerSettings) -> AsyncIterator[ProcessStore]:
    """A store on its own connection, set up under the test's prefix (dropped afterwards)."""
    nc = await raw_nats(own_brokers.nats_url)
    s = ProcessStore(nc, Subjects(own_brokers.prefix), storage="memory", dedup_window_s=30.0)
    await s.setup()
    try:
        yield s
    finally:
        await s.close()
        await nc.close()


def _process(i: int = 0, colony: str = "c") -> Process:
    spec = FunctionSpec(func_name="f", conditions=Conditions(executor_type="x", colony_name=colony))
    return create(f"{i:064x}", spec, now=now(), now_ns=i)


async def _event(store: ProcessStore, process: Process) -> tuple[str, bytes]:
    """The last stored event of a process: its Nats-Msg-Id and body."""
    await store.settle()
    subject = store.subjects.events_filter(
        colony=process.colony_name, process_id=process.process_id
    )
    msg = await store.js.get_last_msg(store.subjects.stream_events, subject)
    return (msg.headers or {}).get("Nats-Msg-Id", ""), msg.data or b""


async def test_update_is_a_compare_and_set_on_the_revision(store: ProcessStore) -> None:
    """create, update at the revision read, update at a stale one: the stale write is refused
    and changes nothing; every written revision has its event, named by the revision."""
    p = _process()
    created = await store.create(p)
    assert created is not None
    r1, data = created
    assert data == msgspec.json.encode(p)
    assert await store.get("c", p.process_id) == (p, r1)
    assert await _event(store, p) == (f"{p.process_id}.{r1}", process_event_body(data))
    assert await store.create(p) is None  # the same id again: a duplicate

    running = msgspec.structs.replace(p, state=ProcessState.RUNNING, assignments=1)
    r2, data2 = await store.update(running, r1)
    assert r2 > r1 and data2 == msgspec.json.encode(running)
    assert await _event(store, running) == (f"{p.process_id}.{r2}", process_event_body(data2))

    other = msgspec.structs.replace(p, state=ProcessState.FAILED)
    with pytest.raises(StaleRevisionError):
        await store.update(other, r1)
    assert await store.get("c", p.process_id) == (running, r2)
    assert await _event(store, other) == (f"{p.process_id}.{r2}", process_event_body(data2))

    done = msgspec.structs.replace(running, state=ProcessState.SUCCESS)
    r3, _ = await store.update(done, r2)
    assert r3 > r2 and await store.get("c", p.process_id) == (done, r3)


async def test_an_id_whose_process_was_removed_can_be_created_again(store: ProcessStore) -> None:
    p = _process()
    created = await store.create(p)
    assert created is not None
    await store.processes.delete(store.subjects.process_key("c", p.process_id))
    with pytest.raises(ProcessNotFoundError):
        await store.get("c", p.process_id)
    again = await store.create(p)
    assert again is not None and again[0] > created[0]
    assert await store.get("c", p.process_id) == (p, again[0])
    assert await store.create(p) is None


async def _last_event_id(store: ProcessStore, process: Process) -> str:
    """The Nats-Msg-Id of a process's last stored event, without waiting for anything."""
    subject = store.subjects.events_filter(
        colony=process.colony_name, process_id=process.process_id
    )
    msg = await store.js.get_last_msg(store.subjects.stream_events, subject)
    return (msg.headers or {}).get("Nats-Msg-Id", "")


async def test_a_revisions_missing_event_is_published_once(store: ProcessStore) -> None:
    """A revision written by a broker that died before its event: ensure_event has stored it
    when it returns, and only if the last stored event is not that revision's (compared
    exactly, not as strings sort)."""
    for i in range(1, 9):  # revisions 1 to 8, of other processes
        assert await store.create(_process(i)) is not None
    p = _process()
    created = await store.create(p)
    assert created is not None and created[0] == 9
    await store.settle()  # its event is stored
    assert not await store.ensure_event(p, created[0])
    # Waiting again, as after a requeue: its event goes on the same subject as revision 9's.
    requeued = msgspec.structs.replace(p, retries=1)
    key = store.subjects.process_key("c", p.process_id)
    subject = store.subjects.kv_subject(store.subjects.bucket_processes, key)
    r2 = await store.publisher.write(subject, store.encoded(requeued))  # no event: it "died"
    assert r2 == 10
    assert await store.ensure_event(requeued, r2)
    assert await _last_event_id(store, requeued) == f"{p.process_id}.10"
    assert await _event(store, requeued) == (
        f"{p.process_id}.{r2}",
        process_event_body(msgspec.json.encode(requeued)),
    )
    assert not await store.ensure_event(requeued, r2)
    # And revision 11's is not revision 10's, though "10" sorts before "11".
    again = msgspec.structs.replace(p, retries=2)
    assert await store.publisher.write(subject, store.encoded(again)) == 11
    assert await store.ensure_event(again, 11)
    assert await _last_event_id(store, again) == f"{p.process_id}.11"
    # A process with no event at all (the stream has none on its subject).
    lone = _process(100)
    key = store.subjects.process_key("c", lone.process_id)
    subject = store.subjects.kv_subject(store.subjects.bucket_processes, key)
    r = await store.publisher.write(subject, store.encoded(lone))
    assert await store.ensure_event(lone, r)
    assert await _last_event_id(store, lone) == f"{lone.process_id}.{r}"


async def test_an_event_is_waited_for_only_where_asked(store: ProcessStore) -> None:
    """A transition does not wait for its event (a lost one is sent again in the background);
    ensure_event does, so its caller learns that the event could not be stored."""
    await store.js.delete_stream(store.subjects.stream_events)
    p = _process()
    created = await store.create(p)
    assert created is not None
    with pytest.raises(nats.errors.NoRespondersError):
        await store.ensure_event(p, created[0])
    await store.settle()


def _sweepers() -> int:
    """The running publishers: each has a task failing its overdue acknowledgements."""
    return sum(
        getattr(t.get_coro(), "__qualname__", "") == "JetStreamPublisher._sweep"
        for t in asyncio.all_tasks()
    )


async def test_a_store_starts_its_publisher_once_and_close_stops_it(
    own_brokers: BrokerSettings,
) -> None:
    nc = await raw_nats(own_brokers.nats_url)
    try:
        assert _sweepers() == 0
        store = ProcessStore(nc, Subjects(own_brokers.prefix), storage="memory")
        await store.setup()
        await store.setup()
        assert _sweepers() == 1
        await store.close()
        assert _sweepers() == 0
    finally:
        await nc.close()


async def test_a_store_closed_and_set_up_again_writes(store: ProcessStore) -> None:
    """A broker that steps down closes its store and sets it up again when it leads again."""
    await store.close()
    await store.setup()
    async with asyncio.timeout(10):
        assert await store.create(_process()) is not None


async def test_an_event_not_acknowledged_is_sent_again(store: ProcessStore) -> None:
    p = _process()
    created = await store.create(p)
    assert created is not None
    await store.settle()
    events = store.subjects.stream_events
    before = (await store.js.stream_info(events)).state.messages
    running = msgspec.structs.replace(p, state=ProcessState.RUNNING)
    r2 = await store.publisher.write(
        store.subjects.kv_subject(
            store.subjects.bucket_processes, store.subjects.process_key("c", p.process_id)
        ),
        store.encoded(running),
    )
    # The publisher fails an event whose acknowledgement does not come.
    lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    store._unacked.add(lost)
    lost.set_exception(TimeoutError())
    store._acked(lost, running, r2)
    assert lost not in store._unacked and store._republishing
    await store.settle()
    assert not store._republishing
    assert await _event(store, running) == (
        f"{p.process_id}.{r2}",
        process_event_body(msgspec.json.encode(running)),
    )
    assert (await store.js.stream_info(events)).state.messages == before + 1
    # An acknowledged (or cancelled) one is not.
    for outcome in ("ok", "cancelled"):
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        store._unacked.add(ack)
        if outcome == "ok":
            ack.set_result(None)
        else:
            ack.cancel()
        store._acked(ack, running, r2)
        assert ack not in store._unacked and not store._republishing, outcome


async def test_setup_makes_the_streams_and_buckets_as_configured(
    own_brokers: BrokerSettings,
) -> None:
    """What every stream and bucket keeps, for how long, and the deduplication window (never
    longer than the age limit); a second setup (another broker, other settings) updates them."""
    s = Subjects(own_brokers.prefix)
    nc = await raw_nats(own_brokers.nats_url)
    try:
        js = nc.jetstream()
        for dedup, retention in ((30.0, 3600.0), (120.0, 60.0)):
            store = ProcessStore(
                nc, s, storage="memory", dedup_window_s=dedup, retention_s=retention
            )
            await store.setup()
            await store.setup()  # again, on the same store: nothing changes
            await store.close()
            specs = (await js.stream_info(s.stream_specs)).config
            assert specs.retention == RetentionPolicy.WORK_QUEUE
            assert specs.duplicate_window == dedup and specs.storage == StorageType.MEMORY
            assert set(specs.subjects or []) == {s.specs_filter, s.workflows_filter}
            for name in (s.stream_events, s.stream_logs):
                config = (await js.stream_info(name)).config
                assert config.max_age == retention, name
                assert config.duplicate_window == min(dedup, retention), name
                assert config.storage == StorageType.MEMORY
            logs = (await js.stream_info(s.stream_logs)).config
            assert logs.max_bytes == 1 << 30 and logs.discard == DiscardPolicy.OLD
            for bucket, history in (
                (s.bucket_processes, 8),
                (s.bucket_executors, 1),
                (s.bucket_colonies, 1),
                (s.bucket_leases, 1),
                (s.bucket_graphs, 1),
            ):
                config = (await js.stream_info(s.kv_stream(bucket))).config
                assert config.max_msgs_per_subject == history, bucket
                assert config.storage == StorageType.MEMORY
    finally:
        await nc.close()


async def test_file_storage_and_a_two_minute_dedup_window_are_the_defaults(
    own_brokers: BrokerSettings,
) -> None:
    s = Subjects(own_brokers.prefix)
    nc = await raw_nats(own_brokers.nats_url)
    try:
        store = ProcessStore(nc, s)
        await store.setup()
        await store.close()
        js = nc.jetstream()
        for stream in (s.stream_specs, s.stream_events, s.kv_stream(s.bucket_processes)):
            assert (await js.stream_info(stream)).config.storage == StorageType.FILE
        # and a two-minute window for deduplicating submissions
        assert (await js.stream_info(s.stream_specs)).config.duplicate_window == 120.0
    finally:
        await nc.close()


async def test_graphs_are_created_once_and_updated_by_compare_and_set(store: ProcessStore) -> None:
    graph = ProcessGraph(process_graph_id="g" * 64, colony_name="c", process_ids=["p"])
    revision = await store.create_graph(graph)
    assert revision is not None
    assert await store.create_graph(graph) is None
    assert await store.get_graph("c", graph.process_graph_id) == (graph, revision)
    running = msgspec.structs.replace(graph, state=ProcessState.RUNNING)
    r2 = await store.update_graph(running, revision)
    assert r2 > revision
    with pytest.raises(StaleRevisionError):
        await store.update_graph(graph, revision)
    assert await store.get_graph("c", graph.process_graph_id) == (running, r2)
    assert [g async for g in store.all_graphs()] == [(running, r2)]
    for missing in ("h" * 64, "not a key"):
        with pytest.raises(GraphNotFoundError):
            await store.get_graph("c", missing)
    await store.purge_graph(running)
    with pytest.raises(GraphNotFoundError):
        await store.get_graph("c", graph.process_graph_id)


async def test_a_graph_event_carries_the_graph_on_its_state(store: ProcessStore) -> None:
    graph = ProcessGraph(
        process_graph_id="g" * 64, colony_name="c", state=ProcessState.FAILED, process_ids=["p"]
    )
    await store.publish_graph_event(graph)
    subject = store.subjects.event("c", GRAPH_TOKEN, ProcessState.FAILED.token, "g" * 64)
    msg = await store.js.get_last_msg(store.subjects.stream_events, subject)
    assert msgspec.json.decode(msg.data or b"", type=GraphEvent).graph() == graph


async def test_a_rejection_is_an_event_with_its_reason(store: ProcessStore) -> None:
    err = InvalidSpecError("no such thing", path="conditions.x")
    await store.reject("c", "x", "p" * 64, err)
    subject = store.subjects.event("c", "x", REJECTED_TOKEN, "p" * 64)
    msg = await store.js.get_last_msg(store.subjects.stream_events, subject)
    assert msgspec.json.decode(msg.data or b"", type=Rejection) == Rejection(
        process_id="p" * 64,
        colony_name="c",
        executor_type="x",
        error="no such thing",
        code=InvalidSpecError.code,
        path="conditions.x",
    )


async def test_the_last_event_time_is_that_of_the_newest_event(store: ProcessStore) -> None:
    assert await store.last_event_time() is None
    before = datetime.now(UTC)
    created = await store.create(_process())
    assert created is not None
    await store.settle()
    last = await store.last_event_time()
    assert last is not None and last >= before - timedelta(seconds=1)


async def test_executors_and_colonies_are_put_listed_and_deleted(store: ProcessStore) -> None:
    a = Executor(executor_name="a", executor_type="x", colony_name="c")
    b = Executor(executor_name="b", executor_type="x", colony_name="c")
    await store.put_executor(a)
    await store.put_executor(b)
    await store.put_colony(Colony(name="c"))
    await store.put_colony(Colony(name="d"))
    assert sorted([e async for e in store.all_executors()], key=lambda e: e.executor_name) == [
        a,
        b,
    ]
    await store.delete_executor(a)
    await store.delete_colony(Colony(name="c"))
    assert [e async for e in store.all_executors()] == [b]
    assert [c async for c in store.all_colonies()] == [Colony(name="d")]


async def test_a_record_that_does_not_decode_is_skipped_or_refused(store: ProcessStore) -> None:
    """One bad record must not keep a broker from loading the others; reading it says why."""
    good = _process(1)
    assert await store.create(good) is not None
    bad = _process(2)
    await store.processes.put(store.subjects.process_key("c", bad.process_id), b"{not json")
    await store.graphs.put(store.subjects.process_key("c", "g"), b"[]")
    await store.executors.put(store.subjects.executor_key("c", "e"), b"7")
    await store.colonies.put("d", b"{}")
    assert [p async for p, _, _ in store.all_processes()] == [good]
    assert [g async for g in store.all_graphs()] == []
    assert [e async for e in store.all_executors()] == []
    assert [c async for c in store.all_colonies()] == []
    with pytest.raises(ColoniesError, match="cannot be read") as raised:
        await store.get("c", bad.process_id)
    assert not isinstance(raised.value, ProcessNotFoundError)
    with pytest.raises(ColoniesError, match="cannot be read") as graph_raised:
        await store.get_graph("c", "g")
    assert not isinstance(graph_raised.value, GraphNotFoundError)
    for missing in ("0" * 64, "not a key"):
        with pytest.raises(ProcessNotFoundError):
            await store.get("c", missing)


async def test_purges_take_what_they_name_and_nothing_else(store: ProcessStore) -> None:
    s = store.subjects
    kept, gone = _process(1), _process(2)
    other_colony = _process(3, colony="d")
    for p in (kept, gone, other_colony):
        assert await store.create(p) is not None
        await store.js.publish(s.logs(p.colony_name, p.process_id), b"line")
    await store.settle()
    await store.purge_process(gone)
    left = {p.process_id async for p, _, _ in store.all_processes()}
    assert left == {kept.process_id, other_colony.process_id}
    history = (await store.js.stream_info(s.kv_stream(s.bucket_processes))).state.messages
    assert history == 2  # no delete marker left behind
    logs = (await store.js.stream_info(s.stream_logs)).state.messages
    assert logs == 2

    await store.put_executor(Executor(executor_name="e", executor_type="x", colony_name="c"))
    await store.create_graph(ProcessGraph(process_graph_id="g", colony_name="c"))
    await store.js.publish(s.specs("c", "x"), b"{}")
    await store.js.publish(s.workflows("c"), b"{}")
    await store.js.publish(s.specs("d", "x"), b"{}")
    await store.purge_colony("c")
    assert [p async for p, _, _ in store.all_processes()] == [other_colony]
    assert [g async for g in store.all_graphs()] == []
    assert [e async for e in store.all_executors()] == []
    for stream, left in (
        (s.stream_logs, 1),
        (s.stream_events, 1),
        (s.stream_specs, 1),
    ):
        assert (await store.js.stream_info(stream)).state.messages == left, stream
