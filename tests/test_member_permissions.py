"""Every client path that reads what the streams keep works with a member's narrow rights.

A second nats-server (``member_nats_url``) enforces, in plain config mode, exactly what a
member of colony dev may do (``helpers.member_permissions``): named consumers and direct gets
whose subject holds a filter of its colony, replies to what it received, its own inbox, its
colony's events, and requests under its own name. The broker and the executor ("worker") run
as the broker user; the SDK client and the CLI as members. nats-py reports a refused publish
or subscription only to the connection's error callback, which logs it: each test checks that
nothing was refused as well as that the path works.

It stays beside the suite's secure server: there the session's identity owns the server and
colony dev, so only here does every reading path of the SDK and the CLI run with exactly a
user's rights and show that none was refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgspec
import nats
import nats.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, StorageType
from typer.testing import CliRunner

from colonyos.broker.store import ProcessStore
from colonyos.cli.main import app
from colonyos.cli.status import watch_colony
from colonyos.cli.workflow import _watch as watch_graph
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.errors import NotAuthorizedError
from colonyos.events import has_events
from colonyos.messages import ReaderOpen
from colonyos.models import (
    Executor,
    LogEntry,
    Process,
    ProcessGraph,
    ProcessState,
    WorkflowSpec,
    now,
)
from colonyos.ordered import OrderedReader
from colonyos.security.permissions import inbox_prefix
from colonyos.subjects import Subjects

from .conftest import CLI_USER, COLONY, MEMBER_NAME, MEMBER_USER, running_broker
from .helpers import BROKER_USER, as_user, spec, submitted, until

REFUSED = "permissions violation"


@dataclass
class Members:
    """The system of one test: the member SDK client, the broker user's clients (a user
    "feeder" and an executor "worker"), and the URL for more connections."""

    member: Client
    feeder: Client
    worker: Client
    url: str
    settings: Settings
    caplog: pytest.LogCaptureFixture

    def refused(self) -> list[str]:
        """What the server refused a connection of this process (logged by its error callback)."""
        return [r.getMessage() for r in self.caplog.records if REFUSED in r.getMessage().lower()]

    async def run_one(self, *lines: str, executor_type: str = "echo") -> Process:
        """Assign the next process to the worker, write its log lines, close it."""
        process = await self.worker.assign(timeout=10)
        assert process is not None
        await self.worker.add_logs(process.process_id, list(lines))
        return await self.worker.close(process.process_id, ["done"])


@pytest.fixture
async def members(
    member_nats_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Members]:
    caplog.set_level(logging.DEBUG, logger="colonyos.connection")
    broker_url = as_user(member_nats_url, BROKER_USER)
    settings = Settings(
        nats_url=as_user(member_nats_url, MEMBER_USER),
        colony=COLONY,
        prefix=prefix,
        request_timeout_s=5.0,
    )
    as_broker = msgspec.structs.replace(settings, nats_url=broker_url)
    broker_settings = BrokerSettings(nats_url=broker_url, prefix=prefix, storage="memory")
    async with running_broker(broker_settings):
        feeder = await Client.connect(as_broker, caller="feeder")
        await feeder.colony_add(COLONY, auto_approve=True)
        worker = await Client.connect(as_broker, caller="worker")
        await worker.register(Executor(executor_name="worker", executor_type="echo"))
        member = await Client.connect(settings, caller=MEMBER_NAME)
        try:
            yield Members(member, feeder, worker, member_nats_url, settings, caplog)
        finally:
            for c in (member, worker, feeder):
                await c.aclose()


# -- the SDK -------------------------------------------------------------------------------------


async def test_a_member_replays_its_colonys_events_since_a_time(members: Members) -> None:
    start = now()
    p = await submitted(members.feeder)
    await members.run_one()
    async with members.member.subscribe(process_id=p.process_id, since=start) as events:
        states = [(await events.next(10)).state for _ in range(3)]  # type: ignore[union-attr]
    assert states == [ProcessState.WAITING, ProcessState.RUNNING, ProcessState.SUCCESS]
    assert members.refused() == []


async def test_a_member_watches_waits_and_subscribes_live(members: Members) -> None:
    member = members.member
    async with member.subscribe() as live:
        p = await submitted(members.feeder)
        async with member.watch(p.process_id) as watch:
            await members.run_one()
            states = [(await watch.next(10)).state for _ in range(2)]  # type: ignore[union-attr]
        assert states == [ProcessState.RUNNING, ProcessState.SUCCESS]
        assert (await member.wait(p.process_id, timeout=10)).state is ProcessState.SUCCESS
        done = await member.wait_for_state(p.process_id, ProcessState.SUCCESS, timeout=10)
        assert done.state is ProcessState.SUCCESS
        assert (await live.next(10)).state is ProcessState.WAITING  # type: ignore[union-attr]
    assert members.refused() == []


async def test_a_member_reads_a_log_whole_and_follows_one(members: Members) -> None:
    member = members.member
    p = await submitted(members.feeder)
    await members.run_one("one", "two", "three")
    assert [line.message async for line in member.logs(p.process_id)] == ["one", "two", "three"]

    q = await submitted(members.feeder)
    running = await members.worker.assign(timeout=10)
    assert running is not None and running.process_id == q.process_id
    await members.worker.add_logs(q.process_id, ["first"])
    lines = member.logs(q.process_id, follow=True)
    assert (await anext(lines)).message == "first"
    await members.worker.add_logs(q.process_id, ["second", "last"])
    await members.worker.close(q.process_id)
    assert [line.message async for line in lines] == ["second", "last"]
    assert members.refused() == []


async def test_a_member_reads_a_long_log_whole(members: Members) -> None:
    """Long enough (3 MB) that the server asks for flow control on the way: the reader answers
    once it has taken what came before, or the server stops sending."""
    p = await submitted(members.feeder)
    subject = Subjects(members.settings.prefix).logs(COLONY, p.process_id)
    padding = "x" * 1000
    for i in range(3000):
        entry = LogEntry(
            process_id=p.process_id,
            colony_name=COLONY,
            executor_name="worker",
            message=f"{i} {padding}",
            sequence=i,
        )
        await members.feeder.js.publish(subject, msgspec.json.encode(entry))
    got = [line.message.split()[0] async for line in members.member.logs(p.process_id)]
    assert got == [str(i) for i in range(3000)]
    assert members.refused() == []


async def test_a_member_asks_whether_events_are_kept(members: Members) -> None:
    p = await submitted(members.feeder)
    assert await has_events(members.member, p.process_id)
    assert not await has_events(members.member, "0" * 64)
    assert members.refused() == []


async def test_a_member_learns_when_the_logs_stream_dropped_lines(members: Members) -> None:
    member = members.member
    assert await member.logs_dropped_before() is None
    await submitted(members.feeder)
    await members.run_one("old", "kept")
    stream = Subjects(members.settings.prefix).stream_logs
    js = members.feeder.js
    await js.purge_stream(stream, keep=1)  # as a size or age limit would
    kept = await js.get_last_msg(stream, Subjects(members.settings.prefix).logs_all)
    assert await member.logs_dropped_before() == kept.time
    assert members.refused() == []


async def test_a_reader_goes_on_from_where_it_was_after_its_consumer_is_lost(
    members: Members,
) -> None:
    """Reset under a member's rights: the consumer disappears (as after a server restart); the
    reader notices the missing heartbeats and creates another, under a new name, from the next
    message; nothing is read twice or missed."""
    subjects = Subjects(members.settings.prefix)
    first = await submitted(members.feeder)
    reader = OrderedReader(
        members.member.nc,
        "events",
        subjects.events_filter(colony=COLONY, state="waiting"),
        members.member.open_reader,
        heartbeat_s=0.2,
    )
    async with reader:
        assert (await reader.next(10)).subject.endswith(first.process_id)
        lost = reader.consumer
        await members.feeder.js.delete_consumer(subjects.stream_events, lost)
        later = [await submitted(members.feeder) for _ in range(3)]
        got = [(await reader.next(10)).subject.rsplit(".", 1)[1] for _ in later]
        assert got == [p.process_id for p in later]
        assert reader.consumer != lost
        with pytest.raises(TimeoutError):
            await reader.next(1)
    assert members.refused() == []


async def test_a_reader_starts_again_after_a_heartbeat_shows_a_gap(members: Members) -> None:
    """A heartbeat that counts a delivery this reader never got (as when a message is lost on
    the way): a new consumer (a new name, as a member must) starts from the message after the
    last one read, and nothing is read twice or missed. The broker user forges the heartbeat
    on the reader's inbox (a forged delivery cannot be: the server refuses a publish whose
    reply is a JetStream ack subject)."""
    subjects = Subjects(members.settings.prefix)
    first = await submitted(members.feeder)
    reader = OrderedReader(
        members.member.nc,
        "events",
        subjects.events_filter(colony=COLONY, state="waiting"),
        members.member.open_reader,
    )
    async with reader:
        assert (await reader.next(10)).subject.endswith(first.process_id)
        before = reader.consumer
        assert reader._sub is not None
        forger = members.worker.nc
        gap = {"Status": "100", "Nats-Last-Consumer": "2"}  # one delivered, two counted
        await forger.publish(reader._sub.subject, b"", headers=gap)
        await forger.flush()
        later = [await submitted(members.feeder) for _ in range(3)]
        got = [(await reader.next(10)).subject.rsplit(".", 1)[1] for _ in later]
        assert got == [p.process_id for p in later]
        assert reader.consumer != before
    assert members.refused() == []


async def test_a_broker_lets_streams_made_before_answer_direct_gets(
    member_nats_url: str, prefix: str
) -> None:
    """Streams created before direct gets were used get them when a broker starts."""
    subjects = Subjects(prefix)
    nc = await nats.connect(as_user(member_nats_url, BROKER_USER))
    try:
        js = nc.jetstream()
        for name, subject in (
            (subjects.stream_events, subjects.events_all),
            (subjects.stream_logs, subjects.logs_all),
        ):
            await js.add_stream(name=name, subjects=[subject], storage=StorageType.MEMORY)
        store = ProcessStore(nc, subjects, storage="memory")
        await store.setup()
        await store.close()
        for name in (subjects.stream_events, subjects.stream_logs):
            assert (await js.stream_info(name)).config.allow_direct
    finally:
        await nc.close()


# -- the CLI -------------------------------------------------------------------------------------


def _cli(members: Members, *args: str) -> list[str]:
    url = as_user(members.url, CLI_USER)
    return ["--nats", url, "--prefix", members.settings.prefix, "--colony", COLONY, *args]


async def test_the_cli_replays_events_and_reads_logs_as_a_member(
    members: Members, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The member signs in with the user and password in the URL, not with the session's key.
    monkeypatch.delenv("COLONIES_IDENTITY", raising=False)
    p = await submitted(members.feeder)
    await members.run_one("hello", "world")
    runner = CliRunner()

    def invoke(*args: str):  # type: ignore[no-untyped-def]
        return runner.invoke(app, _cli(members, *args))

    events = await asyncio.to_thread(invoke, "events", "--since", "10m", "-n", "3", "--json")
    assert events.exit_code == 0, events.output
    assert len(events.stdout.splitlines()) == 3
    for follow in ([], ["--follow"]):
        log = await asyncio.to_thread(invoke, "log", "get", "-p", p.process_id, *follow)
        assert log.exit_code == 0, log.output
        assert log.stdout.splitlines() == ["hello", "world"]
    assert members.refused() == []


async def test_process_watch_and_workflow_watch_work_for_a_member(members: Members) -> None:
    member = members.member
    ready = asyncio.Event()
    watching = asyncio.create_task(watch_colony(member, 3, ready))
    await asyncio.wait_for(ready.wait(), 10)
    p = await submitted(members.feeder)
    await members.run_one()
    view = await asyncio.wait_for(watching, 10)
    assert view.known == {p.process_id: ProcessState.SUCCESS}

    graph = await members.feeder.submit_workflow(WorkflowSpec(function_specs=[spec(node_name="a")]))
    assert isinstance(graph, ProcessGraph)
    watched = asyncio.create_task(watch_graph(member, graph.process_graph_id))
    await members.run_one()
    assert (await asyncio.wait_for(watched, 10)).state is ProcessState.SUCCESS
    assert members.refused() == []


# -- what a member may not do --------------------------------------------------------------------


async def test_a_member_cannot_read_another_colonys_events(
    members: Members, member_nats_url: str
) -> None:
    """The broker makes a member's readers only within its colony and inbox; the server
    refuses a direct get of another colony's events."""
    subjects = Subjects(members.settings.prefix)
    member = members.member
    inbox = inbox_prefix(subjects.prefix, COLONY, MEMBER_NAME) + ".reader"
    for colony in ("other", "*"):
        with pytest.raises(NotAuthorizedError, match="filtersubject"):
            await member.open_reader(
                ReaderOpen(
                    stream="events",
                    filter_subject=subjects.events_filter(colony=colony),
                    deliver_subject=inbox,
                )
            )
    for deliver in (
        subjects.control("other", "someone"),
        f"_INBOX.{subjects.prefix}.{COLONY}.someone.x",
        "_INBOX.>",
    ):
        with pytest.raises(NotAuthorizedError, match="deliversubject"):
            await member.open_reader(
                ReaderOpen(
                    stream="events",
                    filter_subject=subjects.events_filter(colony=COLONY),
                    deliver_subject=deliver,
                )
            )
    with pytest.raises(nats.errors.TimeoutError):
        await member.nc.jetstream(timeout=1).get_last_msg(
            subjects.stream_events, subjects.events_filter(colony="other"), direct=True
        )
    await until(lambda: len(members.refused()) == 1)
    assert "$js.api.direct.get." in members.refused()[0].lower()


async def test_a_member_cannot_make_consumers_delivered_anywhere(
    members: Members, member_nats_url: str
) -> None:
    """nats-server does not check a push consumer's deliver subject against its creator's
    rights (a member could have its events delivered on another colony's subjects, or on a
    $KV subject of the account): a member may create no consumer at all."""
    subjects = Subjects(members.settings.prefix)
    await submitted(members.feeder)
    elsewhere = subjects.control("other", "someone")
    overheard = await members.feeder.nc.subscribe(elsewhere)
    await members.feeder.nc.flush()
    config = ConsumerConfig(
        name="elsewhere",
        filter_subject=subjects.events_filter(colony=COLONY),
        deliver_subject=elsewhere,
        ack_policy=AckPolicy.NONE,
    )
    with pytest.raises(nats.errors.Error):
        await members.member.nc.jetstream(timeout=1).add_consumer(subjects.stream_events, config)
    await until(lambda: len(members.refused()) == 1)
    assert "$js.api.consumer.create." in members.refused()[0].lower()
    with pytest.raises(nats.errors.TimeoutError):
        await overheard.next_msg(0.5)
