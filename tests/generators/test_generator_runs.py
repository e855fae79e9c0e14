"""The leading broker runs generators: at the trigger, at the timeout, in the order packed,
each argument once, across restarts."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats.js.errors
import pytest

from colonyos.broker import Broker
from colonyos.broker import generators as generators_module
from colonyos.broker.generators import run_graph_id
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.errors import ConflictError, GeneratorNotFoundError
from colonyos.generators.client import Generators
from colonyos.generators.model import Generator
from colonyos.limits import GENERATOR_ARG_MAX_BYTES, HEADROOM_BYTES, generator_batch_limit
from colonyos.models import ProcessState
from colonyos.specs import load_workflow_spec
from colonyos.subjects import Subjects
from tests.conftest import running_broker
from tests.generators.conftest import (
    ONE,
    args_app,
    generator_runs,
    poll_runs,
    root_args,
    stream_emptied,
)
from tests.helpers import raw_nats

pytestmark = pytest.mark.timeout(60)


async def stopped(broker: Broker) -> None:
    broker.stop()
    async with asyncio.timeout(10):
        while broker.leading.is_set():
            await asyncio.sleep(0.05)  # sleep-ok: polling state under a deadline


async def test_trigger_three_fed_seven_runs_twice_in_order_then_once_at_the_timeout(
    client: Client, broker_settings: BrokerSettings, args_executor: None
) -> None:
    generators = Generators(client)
    await generators.add("feed", ONE, trigger=3, timeout=1)
    for value in range(1, 8):
        await generators.pack("feed", value)
    runs = await poll_runs(client, "feed", 3, timeout=15)
    assert [await root_args(client, g) for g in runs] == [[1, 2, 3], [4, 5, 6], [7]]
    assert len(await generator_runs(client, "feed")) == 3
    left = await generators.get("feed")
    assert left.queue_size == 0 and left.last_process_graph_id == runs[-1].process_graph_id
    await stream_emptied(broker_settings)  # each used argument is purged


async def test_any_json_value_reaches_the_roots_after_their_own_args(
    client: Client, args_executor: None
) -> None:
    spec = [{**ONE[0], "args": ["own"]}]
    generators = Generators(client)
    await generators.add("values", spec, trigger=3)
    values = [{"file": "a.csv", "rows": [1, 2]}, None, "text"]
    for value in values:
        await generators.pack("values", value)
    (run,) = await poll_runs(client, "values", 1, timeout=10)
    assert await root_args(client, run) == ["own", *values]
    assert run.generator_name == "values"


async def test_packed_arguments_outlive_a_broker_restart_and_run_once(
    client: Client, broker: Broker, broker_settings: BrokerSettings, args_executor: None
) -> None:
    generators = Generators(client)
    await generators.add("kept", ONE, trigger=3)
    await generators.pack("kept", 1)
    await generators.pack("kept", 2)
    await stopped(broker)
    await generators.pack("kept", 3)  # no broker: the stream takes it
    async with running_broker(broker_settings):
        (first,) = await poll_runs(client, "kept", 1, timeout=15)
        assert await root_args(client, first) == [1, 2, 3]
        for value in (4, 5, 6):
            await generators.pack("kept", value)
        runs = await poll_runs(client, "kept", 2, timeout=15)
        assert [await root_args(client, g) for g in runs] == [[1, 2, 3], [4, 5, 6]]


async def test_a_backlog_runs_one_batch_after_another_without_waiting_for_a_rescan(
    client: Client,
    broker: Broker,
    broker_settings: BrokerSettings,
    args_executor: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Arguments that waited while no broker ran are read a batch at a time: once a batch is
    used, the next is read at once, not at the leader's next look at every stream (here an
    hour away, so that only reading on would get past the first batch)."""
    # Longer than the machine has been up, too: a leader that never read the streams must
    # not take that for a read at the monotonic clock's zero (the machine's boot).
    monkeypatch.setattr(generators_module, "_RESCAN_S", time.monotonic() + 3600.0)
    generators = Generators(client)
    await generators.add("backlog", ONE, trigger=1)
    await generators.pack("backlog", 0)  # run at once; and the generator is known to exist
    await poll_runs(client, "backlog", 1, timeout=10)
    await stopped(broker)
    for value in range(1, 6):
        await generators.pack("backlog", value)
    async with running_broker(broker_settings):
        runs = await poll_runs(client, "backlog", 6, timeout=20)
        assert [await root_args(client, g) for g in runs] == [[v] for v in range(6)]


async def test_a_run_a_dead_leader_recorded_is_finished_once(
    client: Client, broker: Broker, broker_settings: BrokerSettings, args_executor: None
) -> None:
    """The leader recorded a run of the first two arguments and died before its graph: the
    next leader writes that graph, with those arguments and the recorded id, and uses them in
    no other run."""
    generators = Generators(client)
    added = await generators.add("once", ONE, trigger=3)
    first = await generators.pack("once", "a")
    last = await generators.pack("once", "b")
    await stopped(broker)  # no leader writes the record meanwhile
    graph_id = run_graph_id(added, first)
    pending = msgspec.structs.replace(
        added,
        batch_first=first,
        cursor=last,
        run_pending=True,
        last_process_graph_id=graph_id,
    )
    s = Subjects(broker_settings.prefix)
    nc = await raw_nats(broker_settings.nats_url)
    try:
        kv = await nc.jetstream().key_value(s.bucket_generators)
        await kv.put(s.generator_key("dev", "once"), msgspec.json.encode(pending))
    finally:
        await nc.close()
    async with running_broker(broker_settings):
        (graph,) = await poll_runs(client, "once", 1, timeout=15)
        assert graph.process_graph_id == graph_id
        assert await root_args(client, graph) == ["a", "b"]
        assert (await client.graph_get(graph_id)).state is ProcessState.SUCCESS
        after = await generators.get("once")
        assert not after.run_pending and after.cursor == last and after.queue_size == 0
        for value in ("c", "d", "e"):
            await generators.pack("once", value)
        runs = await poll_runs(client, "once", 2, timeout=15)
        assert [await root_args(client, g) for g in runs] == [["a", "b"], ["c", "d", "e"]]


def test_a_runs_graph_id_derives_from_the_generator_and_its_first_argument() -> None:
    g = Generator(name="g", generator_id="x", colony_name="dev")
    assert run_graph_id(g, 7) == run_graph_id(
        Generator(name="g", generator_id="x", colony_name="dev"), 7
    )
    assert run_graph_id(g, 7) != run_graph_id(g, 8)
    assert len(run_graph_id(g, 7)) == 64


async def test_a_raw_argument_that_is_not_json_is_skipped_and_the_rest_run(
    client: Client,
    broker_settings: BrokerSettings,
    args_executor: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Published on the subject with plain NATS, past the SDK's checks: the runner says so
    once and goes on."""
    generators = Generators(client)
    await generators.add("raw", ONE, trigger=2)
    subject = Subjects(broker_settings.prefix).generator("dev", "raw")
    js = client.nc.jetstream()
    await js.publish(subject, b"{not json")
    await js.publish(subject, b'"x"')
    await js.publish(subject, b"[1]")
    (run,) = await poll_runs(client, "raw", 1, timeout=10)
    assert await root_args(client, run) == ["x", [1]]
    skipped = [
        r for r in caplog.records if "argument" in r.getMessage() and "skipped" in r.getMessage()
    ]
    assert len(skipped) == 1 and "raw in dev" in skipped[0].getMessage()


async def test_a_raw_argument_too_big_is_refused_by_the_stream(
    client: Client, broker_settings: BrokerSettings
) -> None:
    await Generators(client).add("big", ONE, trigger=2)
    subject = Subjects(broker_settings.prefix).generator("dev", "big")
    too_big = b'"' + b"x" * (GENERATOR_ARG_MAX_BYTES + HEADROOM_BYTES) + b'"'
    with pytest.raises(nats.js.errors.APIError, match="maximum"):
        await client.nc.jetstream().publish(subject, too_big)


async def test_a_run_takes_what_fits_in_its_record_and_the_rest_wait(
    client: Client, broker_settings: BrokerSettings
) -> None:
    """Ten arguments of 60 kB, trigger 20: one process record holds eight of them (half a
    record of a 1 MiB server), so a run starts with the first eight; two wait."""
    generators = Generators(client)
    await generators.add("fat", ONE, trigger=20)
    values = [f"{i}:" + "x" * 60_000 for i in range(10)]
    budget = generator_batch_limit(client.nc.max_payload)
    fits = budget // len(msgspec.json.encode(values[0]))
    assert fits == 8
    for value in values:
        await generators.pack("fat", value)
    (run,) = await poll_runs(client, "fat", 1, timeout=15)
    (root,) = run.root_process_ids
    assert (await client.get(root)).spec.args == values[:fits]
    async with asyncio.timeout(10):
        while (await generators.get("fat")).queue_size != len(values) - fits:
            await asyncio.sleep(0.05)  # sleep-ok: polling state under a deadline
    assert len(await generator_runs(client, "fat")) == 1


async def test_colonies_example_file_runs(client: Client, settings: Settings) -> None:
    """Colonies' docs/Generators.md: its example workflow, trigger 5, five words packed; the
    echo of its cli executor gets them in order (here an executor of type cli outputs its
    args)."""
    example = Path(__file__).parents[1] / "data" / "colonies-examples" / "generators"
    workflow, _ = load_workflow_spec((example / "generator_workflow.json").read_bytes())
    generators = Generators(client)
    await generators.add("testgenerator", workflow, trigger=5)
    words = [f"hello{i}" for i in range(1, 6)]
    for word in words:
        await generators.pack("testgenerator", word)
    async with args_app(settings, "cli"):
        (run,) = await poll_runs(client, "testgenerator", 1, timeout=15)
        assert list(run.nodes) == ["generator_example"]
        assert await root_args(client, run) == words


async def test_a_write_the_leader_did_not_see_is_never_written_over(
    client: Client, broker_settings: BrokerSettings
) -> None:
    """Another writer (a leader deposed a moment ago) used the next argument: the leader's
    run of it, decided from what it had read, loses the compare-and-set, and it goes on from
    what is stored."""
    generators = Generators(client)
    await generators.add("cas", ONE, trigger=1)
    await generators.pack("cas", "a")
    await poll_runs(client, "cas", 1, timeout=10)
    held = await generators.get("cas")
    s = Subjects(broker_settings.prefix)
    nc = await raw_nats(broker_settings.nats_url)
    try:
        js = nc.jetstream()
        used = (await js.stream_info(s.stream_generators)).state.last_seq + 1
        kv = await js.key_value(s.bucket_generators)
        stored = msgspec.structs.replace(held, cursor=used, batch_first=used)
        await kv.put(s.generator_key("dev", "cas"), msgspec.json.encode(stored))
    finally:
        await nc.close()
    assert await generators.pack("cas", "b") == used
    await generators.pack("cas", "c")
    runs = await poll_runs(client, "cas", 2, timeout=10)
    (root,) = runs[1].root_process_ids
    assert (await client.get(root)).spec.args == ["c"]
    assert len(await generator_runs(client, "cas")) == 2


@pytest.fixture
async def standby(broker_settings: BrokerSettings, broker: Broker) -> AsyncIterator[Broker]:
    async with running_broker(broker_settings, lead=False) as b:
        yield b


async def test_a_standby_that_takes_over_goes_on_from_the_cursor(
    client: Client, broker: Broker, standby: Broker, args_executor: None
) -> None:
    """The leader stops with arguments packed, some used and some not, and more come while
    nobody leads: the standby uses each once, in order."""
    generators = Generators(client)
    await generators.add("relay", ONE, trigger=2)
    for value in (1, 2, 3):
        await generators.pack("relay", value)
    await poll_runs(client, "relay", 1, timeout=10)
    broker.stop()
    for value in (4, 5):
        await generators.pack("relay", value)
    async with asyncio.timeout(15):
        await standby.leading.wait()
    await generators.pack("relay", 6)
    runs = await poll_runs(client, "relay", 3, timeout=20)
    assert [await root_args(client, g) for g in runs] == [[1, 2], [3, 4], [5, 6]]


async def test_a_stored_generator_that_cannot_run_does_not_stop_the_others(
    client: Client,
    broker: Broker,
    broker_settings: BrokerSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Values written by hand or by another release: one that does not decode is skipped, one
    that today's rules refuse (a trigger of 0) is said once and left; the others run."""
    s = Subjects(broker_settings.prefix)
    await stopped(broker)
    bad = Generator(
        name="aaa-bad", generator_id="bad", colony_name="dev", trigger=0,
        workflow_spec=json.dumps({"functionspecs": ONE}),
    )  # fmt: skip
    nc = await raw_nats(broker_settings.nats_url)
    try:
        kv = await nc.jetstream().key_value(s.bucket_generators)
        await kv.put(s.generator_key("dev", "aaa-junk"), b"{not json")
        await kv.put(s.generator_key("dev", "aaa-bad"), msgspec.json.encode(bad))
        await nc.jetstream().publish(s.generator("dev", "aaa-bad"), b"1")
    finally:
        await nc.close()
    async with running_broker(broker_settings):
        generators = Generators(client)
        await generators.add("good", ONE, trigger=1)
        for value in (1, 2):
            await generators.pack("good", value)
        await poll_runs(client, "good", 2, timeout=10)
        assert await generator_runs(client, "aaa-bad") == []
    said = [r for r in caplog.records if "generator aaa-bad in dev is not run" in r.getMessage()]
    assert len(said) == 1 and "$.trigger: 0" in said[0].getMessage()


async def test_a_remove_decided_from_a_stale_record_deletes_nothing(
    client: Client, broker_settings: BrokerSettings
) -> None:
    """The record changed behind the leader (another leader wrote it): a remove the leader
    decides from the record it holds is refused, and what is stored stays, with its
    arguments."""
    generators = Generators(client)
    held = await generators.add("kept", ONE, trigger=5)
    await generators.pack("kept", "a")
    s = Subjects(broker_settings.prefix)
    nc = await raw_nats(broker_settings.nats_url)
    try:
        js = nc.jetstream()
        kv = await js.key_value(s.bucket_generators)
        await kv.put(s.generator_key("dev", "kept"), msgspec.json.encode(held))
        with pytest.raises(ConflictError, match="changed meanwhile"):
            await generators.remove("kept")
        assert (await kv.get(s.generator_key("dev", "kept"))).value
        assert (await js.stream_info(s.stream_generators)).state.messages == 1
    finally:
        await nc.close()
    await generators.remove("kept")  # the leader read it again: now it goes
    with pytest.raises(GeneratorNotFoundError):
        await generators.get("kept")
