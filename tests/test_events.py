"""Every kind of event body, through every consumer.

The events stream holds process events, graph events and rejections, tagged with ``kind``;
events written before the tag (kept for days), told apart by their subject; and whatever else
someone publishes on the subject tree. Each consumer shows or skips each of them, and none
raises. The bodies are published raw through nats-py to the real events stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from typer.testing import CliRunner

from colonyos.cli.main import app
from colonyos.cli.status import watch_colony
from colonyos.cli.workflow import _watch as watch_graph
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.errors import ColoniesError
from colonyos.events import Received
from colonyos.messages import (
    Event,
    GraphEvent,
    ProcessEvent,
    Rejection,
    UnknownEvent,
    decode_event,
    process_event_body,
)
from colonyos.models import (
    Conditions,
    FunctionSpec,
    Process,
    ProcessGraph,
    ProcessState,
    WorkflowSpec,
    now,
)
from colonyos.subjects import GRAPH_TOKEN, REJECTED_TOKEN, Subjects

from .conftest import COLONY, _drop_streams, open_colony, running_broker
from .helpers import raw_nats

_encode = msgspec.json.encode


def _id(n: int) -> str:
    return f"{n:064x}"


def _process(pid: str, state: ProcessState, executor_type: str = "echo") -> Process:
    spec = FunctionSpec(
        func_name="f", conditions=Conditions(executor_type=executor_type, colony_name=COLONY)
    )
    return Process(process_id=pid, state=state, spec=spec)


def _graph(gid: str, state: ProcessState) -> ProcessGraph:
    return ProcessGraph(process_graph_id=gid, colony_name=COLONY, process_ids=[_id(1)], state=state)


@dataclass(frozen=True)
class Raw:
    """One body published on an event subject, and what a reader should make of it."""

    subject: str
    body: bytes
    kind: str  # process, graph, rejection, unknown
    item_id: str
    state: str = ""


def every_kind(subjects: Subjects, base: int = 1000) -> list[Raw]:
    """A process event of every state, graph events, a rejection (tagged); an untagged
    process, graph and rejection as written before the tag; an unknown kind, a tagged body of
    the wrong shape, and garbage."""
    raws = []
    for i, state in enumerate(ProcessState):
        pid = _id(base + i)
        body = process_event_body(_encode(_process(pid, state)))
        subject = subjects.event(COLONY, "echo", state.token, pid)
        raws.append(Raw(subject, body, "process", pid, state.token))
    gid = _id(base + 10)
    for state in (ProcessState.RUNNING, ProcessState.SUCCESS):
        body = _encode(GraphEvent.of(_graph(gid, state)))
        raws.append(
            Raw(
                subjects.event(COLONY, GRAPH_TOKEN, state.token, gid),
                body,
                "graph",
                gid,
                state.token,
            )
        )
    rid = _id(base + 11)
    rejection = Rejection(process_id=rid, colony_name=COLONY, executor_type="echo", error="bad")
    raws.append(
        Raw(
            subjects.event(COLONY, "echo", REJECTED_TOKEN, rid),
            _encode(rejection),
            "rejection",
            rid,
        )
    )
    # Written before the tag existed.
    lp, lg, lr = _id(base + 20), _id(base + 21), _id(base + 22)
    raws.append(
        Raw(
            subjects.event(COLONY, "echo", "success", lp),
            _encode(_process(lp, ProcessState.SUCCESS)),
            "process",
            lp,
            "success",
        )
    )
    raws.append(
        Raw(
            subjects.event(COLONY, GRAPH_TOKEN, "failed", lg),
            _encode(_graph(lg, ProcessState.FAILED)),
            "graph",
            lg,
            "failed",
        )
    )
    legacy_rejection = {
        "processid": lr,
        "colonyname": COLONY,
        "executortype": GRAPH_TOKEN,
        "error": "cycle a -> a",
        "code": "invalid",
        "path": "",
    }
    raws.append(
        Raw(
            subjects.event(COLONY, GRAPH_TOKEN, REJECTED_TOKEN, lr),
            _encode(legacy_rejection),
            "rejection",
            lr,
        )
    )
    # Nothing this version knows.
    uk, ws, gb = _id(base + 30), _id(base + 31), _id(base + 32)
    raws.append(
        Raw(
            subjects.event(COLONY, "echo", "waiting", uk),
            b'{"kind":"lease","holder":"b1"}',
            "unknown",
            uk,
        )
    )
    raws.append(
        Raw(
            subjects.event(COLONY, "echo", "running", ws),
            b'{"kind":"process","state":"sideways"}',
            "unknown",
            ws,
        )
    )
    raws.append(
        Raw(subjects.event(COLONY, "echo", "failed", gb), b"\x00\xffnot json", "unknown", gb)
    )
    # Unknown bodies amid the others, so that a reader that stops after the last readable one
    # has met them all.
    return raws[:5] + raws[-3:] + raws[5:-3]


READABLE = 11  # of the 14 above


async def publish(js: object, raws: list[Raw]) -> None:
    for raw in raws:
        await js.publish(raw.subject, raw.body)  # type: ignore[attr-defined]


def label(event: Event | UnknownEvent) -> tuple[str, str, str]:
    if isinstance(event, ProcessEvent):
        return ("process", event.process_id, event.state.token)
    if isinstance(event, GraphEvent):
        return ("graph", event.process_graph_id, event.state.token)
    if isinstance(event, Rejection):
        return ("rejection", event.process_id, "")
    return ("unknown", Subjects.event_tokens(event.subject)[2], "")


def expected(raws: list[Raw]) -> list[tuple[str, str, str]]:
    return [(r.kind, r.item_id, r.state) for r in raws]


@contextlib.asynccontextmanager
async def spy(nc: NATS, subject: str) -> AsyncIterator[asyncio.Queue[Msg]]:
    """A second subscriber on a subject: a consumer's request or publication that follows its
    subscription tells the test that the consumer listens."""
    seen: asyncio.Queue[Msg] = asyncio.Queue()

    async def put(msg: Msg) -> None:
        await seen.put(msg)

    sub = await nc.subscribe(subject, cb=put)
    await nc.flush()
    try:
        yield seen
    finally:
        await sub.unsubscribe()


async def seen(queue: asyncio.Queue[Msg]) -> Msg:
    return await asyncio.wait_for(queue.get(), 10)


@pytest.fixture
async def raw_nc(nats_url: str) -> AsyncIterator[NATS]:
    nc = await raw_nats(nats_url)
    yield nc
    await nc.close()


# -- decoding --------------------------------------------------------------------------------


def test_decode_every_kind_never_raises() -> None:
    subjects = Subjects("t")
    raws = every_kind(subjects)
    assert [label(decode_event(r.subject, r.body)) for r in raws] == expected(raws)
    unknown = decode_event(raws[5].subject, raws[5].body)
    assert isinstance(unknown, UnknownEvent) and unknown.kind == "lease"
    for body in (b"", b"[]", b"null", b'{"kind": 5}', b'"process"', b"{" * 1000):
        assert isinstance(decode_event(raws[0].subject, body), UnknownEvent)
    # A subject too short for the legacy tokens: still no exception.
    assert isinstance(decode_event("x", b"{}"), UnknownEvent)


def test_process_event_body_is_the_tagged_encoding() -> None:
    p = _process(_id(7), ProcessState.RUNNING)
    kv = _encode(p)
    body = process_event_body(kv)
    assert body == _encode(ProcessEvent(**msgspec.structs.asdict(p)))
    assert json.loads(body)["kind"] == "process" and "kind" not in json.loads(kv)
    event = decode_event("t.dev.events.echo.running.x", body)
    assert isinstance(event, ProcessEvent) and event.process() == p
    assert type(event.process()) is Process


# -- what the broker writes ------------------------------------------------------------------


async def test_the_broker_tags_every_event_and_keeps_kv_plain(
    client: Client, settings: Settings, raw_nc: NATS
) -> None:
    from colonyos.executors import echo

    subjects = Subjects(settings.prefix)
    js = raw_nc.jetstream()
    done = await client.submit(
        FunctionSpec(func_name="f", conditions=Conditions(executor_type="echo"))
    )
    graph = await client.submit_workflow(
        WorkflowSpec(
            function_specs=[
                FunctionSpec(
                    node_name="a", func_name="f", conditions=Conditions(executor_type="echo")
                )
            ]
        )
    )
    await js.publish(subjects.specs(COLONY, "echo"), b"{not json")
    assert await echo.build(settings, "echo", "echo-tags").run(burst=True) == 2
    assert isinstance(graph, ProcessGraph)
    await client.graph_wait(graph.process_graph_id, timeout=10)

    sub = await js.subscribe(subjects.events_filter(colony=COLONY), ordered_consumer=True)
    kinds = []
    last = (await js.stream_info(subjects.stream_events)).state.last_seq
    while True:
        msg = await sub.next_msg(timeout=5)
        body = json.loads(msg.data)
        executor_type, state, _ = Subjects.event_tokens(msg.subject)
        kind = (
            "rejection"
            if state == REJECTED_TOKEN
            else "graph"
            if executor_type == GRAPH_TOKEN
            else "process"
        )
        assert body["kind"] == kind, msg.subject
        kinds.append(kind)
        if msg.metadata.sequence.stream == last:
            break
    await sub.unsubscribe()
    assert set(kinds) == {"process", "graph", "rejection"}
    kv = await js.key_value(subjects.bucket_processes)
    assert isinstance(done, Process)
    entry = await kv.get(subjects.process_key(COLONY, done.process_id))
    assert "kind" not in json.loads(entry.value or b"{}")


# -- the SDK -----------------------------------------------------------------------------------


async def test_subscription_yields_every_kind_live_and_replayed(
    client: Client, settings: Settings, raw_nc: NATS
) -> None:
    raws = every_kind(Subjects(settings.prefix))
    t0 = now()
    async with client.subscribe() as live:
        await publish(raw_nc.jetstream(), raws)
        got = [label(await live.next(5)) for _ in raws]
    assert got == expected(raws)
    t1 = now()
    async with client.subscribe(since=t0) as replay:
        received = [await replay.receive(5) for _ in raws]
    assert [label(r.event) for r in received] == expected(raws)
    # Replayed: the time each was stored, not the time it is read again.
    assert all(isinstance(r, Received) and t0 <= r.time <= t1 for r in received)
    # Filters still apply: only failures, of any kind.
    async with client.subscribe(state=ProcessState.FAILED, since=t0) as failed:
        failures = [r for r in raws if r.subject.split(".")[-2] == "failed"]
        got = [label(await failed.next(5)) for _ in failures]
    assert got == expected(failures) and len(failures) == 3


def _junk(subjects: Subjects, item_id: str) -> list[tuple[str, bytes]]:
    """Bodies on one id's subjects that say nothing about it as a process: unknown kinds,
    garbage, and a graph event and a process event carrying the same id (the other shape)."""
    graph = _encode(GraphEvent.of(_graph(item_id, ProcessState.SUCCESS)))
    return [
        (subjects.event(COLONY, "echo", "success", item_id), b'{"kind":"lease"}'),
        (subjects.event(COLONY, "echo", "failed", item_id), b"\x00garbage"),
        (subjects.event(COLONY, "echo", "success", item_id), b'{"kind":"process"}'),
        (subjects.event(COLONY, GRAPH_TOKEN, "success", item_id), graph),
    ]


async def test_wait_and_wait_for_state_skip_what_is_not_their_process(
    client: Client, settings: Settings, raw_nc: NATS
) -> None:
    subjects = Subjects(settings.prefix)
    js = raw_nc.jetstream()
    p = await client.submit(
        FunctionSpec(func_name="f", conditions=Conditions(executor_type="none"))
    )
    assert isinstance(p, Process)
    pid = p.process_id
    get = subjects.rpc(COLONY, client.caller, "get")

    async with spy(raw_nc, get) as asked:
        waiting = asyncio.create_task(client.wait_for_state(pid, ProcessState.RUNNING, timeout=10))
        await seen(asked)  # it listens, and has read the process: WAITING
        for subject, body in _junk(subjects, pid):
            await js.publish(subject, body)
        running = _process(pid, ProcessState.RUNNING)
        await js.publish(subjects.event(COLONY, "none", "running", pid), _encode(running))
        got = await asyncio.wait_for(waiting, 10)
    assert type(got) is Process and got == running  # from the untagged event

    async with spy(raw_nc, get) as asked:
        ending = asyncio.create_task(client.wait(pid, timeout=10))
        await seen(asked)
        for subject, body in _junk(subjects, pid):
            await js.publish(subject, body)
        ended = _process(pid, ProcessState.CANCELLED)
        await js.publish(
            subjects.event(COLONY, "none", "cancelled", pid), process_event_body(_encode(ended))
        )
        got = await asyncio.wait_for(ending, 10)
    assert type(got) is Process and got == ended


async def test_graph_wait_reads_graph_events_and_skips_the_rest(
    client: Client, settings: Settings, raw_nc: NATS
) -> None:
    subjects = Subjects(settings.prefix)
    js = raw_nc.jetstream()
    spec = FunctionSpec(node_name="a", func_name="f", conditions=Conditions(executor_type="none"))
    graph = await client.submit_workflow(WorkflowSpec(function_specs=[spec]))
    assert isinstance(graph, ProcessGraph)
    gid = graph.process_graph_id
    async with spy(raw_nc, subjects.rpc(COLONY, client.caller, "graph_get")) as asked:
        waiting = asyncio.create_task(client.graph_wait(gid, timeout=10))
        await seen(asked)
        for subject, body in _junk(subjects, gid)[:3]:
            await js.publish(subject, body)
        # A process event that carries the graph's id is not the graph.
        await js.publish(
            subjects.event(COLONY, "none", "success", gid),
            process_event_body(_encode(_process(gid, ProcessState.SUCCESS))),
        )
        ended = msgspec.structs.replace(graph, state=ProcessState.FAILED)
        await js.publish(subjects.event(COLONY, GRAPH_TOKEN, "failed", gid), _encode(ended))
        got = await asyncio.wait_for(waiting, 10)
    assert type(got) is ProcessGraph and got == ended  # from the untagged graph event


@pytest.fixture
async def no_broker(broker_settings: BrokerSettings, settings: Settings) -> AsyncIterator[Client]:
    """Streams and colony ``dev`` exist, but no broker runs: the test answers for it."""
    async with running_broker(broker_settings, owners=True):
        await open_colony(settings)
        c = await Client.connect(settings, caller="tester")
    yield c
    await c.aclose()
    await _drop_streams(broker_settings.nats_url, broker_settings.prefix)


async def test_submit_confirmation_skips_what_is_not_its_answer(
    no_broker: Client, settings: Settings, raw_nc: NATS
) -> None:
    client = no_broker
    subjects = Subjects(settings.prefix)
    js = raw_nc.jetstream()
    spec = FunctionSpec(func_name="f", conditions=Conditions(executor_type="echo"))
    async with spy(raw_nc, subjects.specs(COLONY, "echo")) as specs:
        submitting = asyncio.create_task(client.submit(spec))
        pid = (await seen(specs)).headers["Nats-Msg-Id"]  # type: ignore[index]
        for subject, body in _junk(subjects, pid):
            await js.publish(subject, body)
        created = _process(pid, ProcessState.WAITING)
        await js.publish(subjects.event(COLONY, "echo", "waiting", pid), _encode(created))
        got = await asyncio.wait_for(submitting, 10)
    assert type(got) is Process and got == created

    async with spy(raw_nc, subjects.specs(COLONY, "echo")) as specs:
        submitting = asyncio.create_task(client.submit(spec))
        pid = (await seen(specs)).headers["Nats-Msg-Id"]  # type: ignore[index]
        for subject, body in _junk(subjects, pid):
            await js.publish(subject, body)
        refused = Rejection(
            process_id=pid, colony_name=COLONY, executor_type="echo", error="no, because"
        )
        await js.publish(subjects.event(COLONY, "echo", REJECTED_TOKEN, pid), _encode(refused))
        with pytest.raises(ColoniesError, match="no, because"):
            await asyncio.wait_for(submitting, 10)

    workflow = WorkflowSpec(
        function_specs=[
            FunctionSpec(node_name="a", func_name="f", conditions=Conditions(executor_type="echo"))
        ]
    )
    async with spy(raw_nc, subjects.workflows(COLONY)) as workflows:
        submitting = asyncio.create_task(client.submit_workflow(workflow))
        gid = (await seen(workflows)).headers["Nats-Msg-Id"]  # type: ignore[index]
        for subject, body in _junk(subjects, gid)[:3]:
            await js.publish(subject, body)
        refused = Rejection(
            process_id=gid, colony_name=COLONY, executor_type=GRAPH_TOKEN, error="cycle a -> a"
        )
        legacy = _encode({k: v for k, v in msgspec.to_builtins(refused).items() if k != "kind"})
        await js.publish(subjects.event(COLONY, GRAPH_TOKEN, REJECTED_TOKEN, gid), legacy)
        with pytest.raises(ColoniesError, match="cycle a -> a"):
            await asyncio.wait_for(submitting, 10)


# -- the CLI -----------------------------------------------------------------------------------


def _cli(settings: Settings, *args: str) -> list[str]:
    return [
        "--nats",
        settings.nats_url,
        "--prefix",
        settings.prefix,
        "--colony",
        settings.colony,
        *args,
    ]


async def test_cli_events_replays_every_kind(
    client: Client, settings: Settings, raw_nc: NATS
) -> None:
    raws = every_kind(Subjects(settings.prefix))
    await publish(raw_nc.jetstream(), raws)
    runner = CliRunner()

    def invoke(*args: str):  # type: ignore[no-untyped-def]
        return runner.invoke(app, _cli(settings, "events", "--since", "10m", *args))

    result = await asyncio.to_thread(invoke, "--count", str(READABLE), "--json")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["kind"] for e in lines] == [r.kind for r in raws if r.kind != "unknown"]
    assert "Traceback" not in result.output

    result = await asyncio.to_thread(invoke, "--count", str(READABLE))
    assert result.exit_code == 0, result.output
    assert result.stderr.count("skipped an event") == 3
    lines = result.stdout.splitlines()  # no header in a pipe
    shown = [r for r in raws if r.kind != "unknown"]
    assert len(lines) == READABLE
    for line, raw in zip(lines, shown, strict=True):
        # Aligned columns: time, state, type, short id at fixed places, whatever the kind.
        time, state, etype, short = line[:15], line[17:26], line[28:38], line[40:52]
        assert datetime.strptime(time, "%b %d %H:%M:%S")
        assert state.strip() == (raw.state or "rejected")
        assert etype.strip() == raw.subject.split(".")[-3]
        assert short == raw.item_id[:12]
        assert len(line) <= 80, line


async def test_cli_events_for_an_unknown_id_says_so(
    client: Client, settings: Settings, raw_nc: NATS
) -> None:
    subjects = Subjects(settings.prefix)
    runner = CliRunner()

    def invoke(*args: str):  # type: ignore[no-untyped-def]
        return runner.invoke(app, _cli(settings, "events", *args))

    nobody = _id(99)
    # Before, it waited silently for ever: a subprocess, so that the test stays bounded.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "colonyos.cli.main",
        *_cli(settings, "events", "--process", nobody),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode not in (0, None)
    assert f"no process or graph {nobody}".encode() in stderr and b"Traceback" not in stderr
    assert len(stderr.decode().strip().splitlines()) == 1
    result = await asyncio.to_thread(invoke, "--process", "a.b")
    assert result.exit_code != 0 and "not hexadecimal" in result.stderr
    # A refused submission has no process, but its rejection is kept: it is known.
    refused = Rejection(process_id=nobody, colony_name=COLONY, executor_type="echo", error="no")
    await raw_nc.jetstream().publish(
        subjects.event(COLONY, "echo", REJECTED_TOKEN, nobody), _encode(refused)
    )
    result = await asyncio.to_thread(invoke, "--process", nobody, "--since", "1m", "-n", "1")
    assert result.exit_code == 0, result.output
    assert "rejected" in result.stdout
    # A process and a graph are known at once.
    p = await client.submit(FunctionSpec(func_name="f", conditions=Conditions(executor_type="x")))
    g = await client.submit_workflow(
        WorkflowSpec(
            function_specs=[
                FunctionSpec(node_name="a", func_name="f", conditions=Conditions(executor_type="x"))
            ]
        )
    )
    assert isinstance(p, Process) and isinstance(g, ProcessGraph)
    await client.graph_cancel(g.process_graph_id)  # a graph has events once its state changes
    await client.graph_wait(g.process_graph_id, timeout=5)
    for known, shown in ((p.process_id, "waiting"), (g.process_graph_id, "cancelled")):
        result = await asyncio.to_thread(invoke, "--process", known, "--since", "1m", "-n", "1")
        assert result.exit_code == 0, result.output
        assert shown in result.stdout and known[:12] in result.stdout


async def test_cli_events_live_shows_every_kind(
    client: Client, settings: Settings, raw_nc: NATS
) -> None:
    subjects = Subjects(settings.prefix)
    js = raw_nc.jetstream()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "colonyos.cli.main",
        *_cli(settings, "events", "--json"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "80"},
    )
    assert proc.stdout is not None and proc.stderr is not None
    probe = _id(1)
    try:
        # Until it listens, a probe published now and then is not seen.
        async with asyncio.timeout(20):
            while True:
                await js.publish(
                    subjects.event(COLONY, "echo", "waiting", probe),
                    _encode(_process(probe, ProcessState.WAITING)),
                )
                with contextlib.suppress(TimeoutError):
                    line = await asyncio.wait_for(proc.stdout.readline(), 0.5)
                    assert json.loads(line)["processid"] == probe
                    break
        raws = every_kind(subjects)
        await publish(js, raws)
        kinds = []
        async with asyncio.timeout(10):
            while len(kinds) < READABLE:
                event = json.loads(await proc.stdout.readline())
                if event.get("processid") != probe:
                    kinds.append(event["kind"])
        assert kinds == [r.kind for r in raws if r.kind != "unknown"]
    finally:
        proc.send_signal(signal.SIGINT)
        stderr = await asyncio.wait_for(proc.stderr.read(), 10)
        await asyncio.wait_for(proc.wait(), 10)
    assert b"Traceback" not in stderr
    assert stderr.count(b"skipped an event") == 3


async def test_colony_view_applies_process_events_and_skips_the_rest(
    client: Client, settings: Settings, raw_nc: NATS
) -> None:
    raws = every_kind(Subjects(settings.prefix))
    ready = asyncio.Event()
    view_task = asyncio.create_task(watch_colony(client, count=READABLE, ready=ready))
    async with asyncio.timeout(10):
        await ready.wait()
    await publish(raw_nc.jetstream(), raws)
    view = await asyncio.wait_for(view_task, 10)
    processes = {r.item_id: r.state for r in raws if r.kind == "process"}
    assert {pid: s.token for pid, s in view.known.items()} == processes
    assert view.rejected == 2 and view.skipped == 3


async def test_workflow_watch_follows_graph_events_and_skips_the_rest(
    client: Client, settings: Settings, raw_nc: NATS
) -> None:
    subjects = Subjects(settings.prefix)
    js = raw_nc.jetstream()
    spec = FunctionSpec(node_name="a", func_name="f", conditions=Conditions(executor_type="none"))
    graph = await client.submit_workflow(WorkflowSpec(function_specs=[spec]))
    assert isinstance(graph, ProcessGraph)
    gid = graph.process_graph_id
    async with spy(raw_nc, subjects.rpc(COLONY, client.caller, "graph_get")) as asked:
        watching = asyncio.create_task(watch_graph(client, gid))
        await seen(asked)
        await publish(js, every_kind(subjects))
        # The graph ends (as written before the tag): the watch ends with it.
        ended = msgspec.structs.replace(graph, state=ProcessState.CANCELLED)
        await js.publish(subjects.event(COLONY, GRAPH_TOKEN, "cancelled", gid), _encode(ended))
        got = await asyncio.wait_for(watching, 10)
    assert got.state is ProcessState.CANCELLED and got.process_graph_id == gid


def test_event_line_names_a_rejections_path_once() -> None:
    from colonyos.cli.events import event_line

    def rejected(error: str, path: str) -> Rejection:
        return Rejection(
            process_id=_id(5), colony_name=COLONY, executor_type="echo", error=error, path=path
        )

    line = event_line(now(), rejected("$.funcname: expected `str`, got `int`", "$.funcname"))
    assert line.count("$.funcname") == 1
    line = event_line(now(), rejected("Object missing required field", "$.funcname"))
    assert line.endswith("$.funcname: Object missing required field")
