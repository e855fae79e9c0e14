"""Sizes are checked where they enter, against the server's real max_payload.

The test server runs with NATS' default max_payload (1 MiB); every limit is read from the
connection, so the same tests hold on a server with any other.
"""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from colonyos import limits
from colonyos.client import Client
from colonyos.errors import ConflictError, InvalidSpecError, RecordTooLargeError
from colonyos.messages import Rejection
from colonyos.models import (
    Conditions,
    FunctionSpec,
    Process,
    ProcessGraph,
    ProcessState,
    WorkflowSpec,
)
from colonyos.subjects import GRAPH_TOKEN, Subjects

from .conftest import COLONY
from .helpers import connect_executor, raw_nats, spec


def _limit(client: Client) -> int:
    return limits.record_limit(client.nc.max_payload)


async def test_the_sdk_refuses_a_spec_whose_record_could_not_be_stored(client: Client) -> None:
    limit, max_payload = _limit(client), client.nc.max_payload
    async with client.subscribe() as events:
        with pytest.raises(RecordTooLargeError) as caught:
            await client.submit(spec(args=["x" * limit]))
        err = caught.value
        assert isinstance(err, InvalidSpecError)
        assert err.message.startswith("the process record would be ")
        assert err.message.endswith(
            f" bytes; this server stores at most {limit:,} (max_payload {max_payload:,})"
        )
        assert err.size > limit and err.limit == limit and err.max_payload == max_payload
        with pytest.raises(RecordTooLargeError, match=r"^\$\[1\]: the process record would be"):
            await client.submit_many([spec(), spec(args=["x" * limit])])
        ok = await client.submit(spec(args=["small"]))
        assert isinstance(ok, Process)
        first = await events.next()  # nothing of the refused ones reached the broker
        assert isinstance(first, Process) and first.process_id == ok.process_id


async def test_a_spec_just_within_the_limit_is_stored(client: Client) -> None:
    """The SDK's estimate is the broker's record at its largest: what it lets through, the
    broker stores."""
    base = len(msgspec.json.encode(await client.submit(spec(args=[""]))))
    filler = "x" * (_limit(client) - base - 64)
    stored = await client.submit(spec(args=[filler]))
    assert isinstance(stored, Process) and stored.spec.args == [filler]
    assert len(msgspec.json.encode(stored)) <= _limit(client)


def _fat_workflow(name_bytes: int, count: int) -> WorkflowSpec:
    return WorkflowSpec(
        function_specs=[
            FunctionSpec(
                node_name=f"{i}-" + "n" * name_bytes,
                func_name="f",
                conditions=Conditions(executor_type="wf"),
            )
            for i in range(count)
        ]
    )


async def test_the_sdk_refuses_a_workflow_that_could_not_be_stored(client: Client) -> None:
    limit = _limit(client)
    node = FunctionSpec(
        node_name="big",
        func_name="f",
        args=["x" * limit],
        conditions=Conditions(executor_type="wf"),
    )
    small = FunctionSpec(node_name="a", func_name="f", conditions=Conditions(executor_type="wf"))
    with pytest.raises(RecordTooLargeError, match=r"^\$\[1\]: the process record of node 'big'"):
        await client.submit_workflow(WorkflowSpec(function_specs=[small, node]))
    # Three nodes that fit one by one, whose graph (it names every node) does not.
    with pytest.raises(RecordTooLargeError, match=r"^the process graph record would be"):
        await client.submit_workflow(_fat_workflow(limit // 3, 3))
    assert await client.graph_list() == []


async def test_a_raw_workflow_whose_graph_could_not_be_stored_is_rejected_and_leaves_nothing(
    client: Client, settings
) -> None:
    subjects = Subjects(settings.prefix)
    nodes = [
        {"nodename": f"n{i}", "funcname": "f", "conditions": {"executortype": "wf"}}
        for i in range(6000)
    ]
    body = msgspec.json.encode(nodes)
    assert len(body) < client.nc.max_payload  # the message fits; the graph it makes does not
    gid = "e" * 64
    async with client.subscribe(executor_type=GRAPH_TOKEN, state="rejected") as rejections:
        await client.js.publish(subjects.workflows(COLONY), body, headers={"Nats-Msg-Id": gid})
        event = await rejections.next()
    assert isinstance(event, Rejection) and event.process_id == gid
    assert event.error.startswith("the process graph record would be ")
    assert event.code == "too_large"
    assert await client.graph_list() == [] and await client.list_processes() == []


async def test_a_close_too_large_to_store_fails_the_process_and_answers(
    client: Client, settings
) -> None:
    """Before: the broker's write raised MaxPayloadError, the close went unanswered, the
    executor sent it again for ever and the process stayed RUNNING."""
    first = await client.submit(spec())
    second = await client.submit(spec())
    assert isinstance(first, Process) and isinstance(second, Process)
    ex = await connect_executor(settings, "raw")
    try:
        got = await ex.assign(timeout=2)
        assert got is not None and got.process_id == first.process_id
        huge = ["y" * (client.nc.max_payload - 1000)]
        with pytest.raises(ConflictError, match=f"process {got.process_id} is FAILED: ") as caught:
            await ex.close(got.process_id, huge, attempt=got.retries)
        assert "its output: with it, the process record would be" in caught.value.message
        failed = await client.get(got.process_id)
        assert failed.state is ProcessState.FAILED and failed.output == []
        assert failed.errors == [caught.value.message.split(" is FAILED: ", 1)[1]]
        # The executor goes on: the next process, and a results batch with one too large.
        nxt = await ex.assign(timeout=2)
        assert nxt is not None and nxt.process_id == second.process_id
        third = await client.submit(spec())
        assert isinstance(third, Process)
        more = await ex.assign(timeout=2)
        assert more is not None
        from colonyos.messages import Close

        refused = await ex.send_results(
            [
                Close(process_id=nxt.process_id, output=huge, attempt=0),
                Close(process_id=more.process_id, output=["fine"], attempt=0),
            ]
        )
        assert set(refused) == {nxt.process_id}
        assert (await client.get(nxt.process_id)).state is ProcessState.FAILED
        assert (await client.get(more.process_id)).output == ["fine"]
    finally:
        await ex.aclose()


async def test_a_child_whose_input_is_too_large_fails_when_released(
    client: Client, settings
) -> None:
    half = ["z" * (_limit(client) * 6 // 10)]
    graph = await client.submit_workflow(
        WorkflowSpec(
            function_specs=[
                FunctionSpec(
                    node_name="a", func_name="f", conditions=Conditions(executor_type="wf")
                ),
                FunctionSpec(
                    node_name="b", func_name="f", conditions=Conditions(executor_type="wf")
                ),
                FunctionSpec(
                    node_name="c",
                    func_name="f",
                    conditions=Conditions(executor_type="wf", dependencies=["a", "b"]),
                ),
            ]
        )
    )
    assert isinstance(graph, ProcessGraph)
    ex = await connect_executor(settings, "wf-1", "wf")
    try:
        for _ in range(2):
            got = await ex.assign(timeout=2)
            assert got is not None
            closed = await ex.close(got.process_id, half, attempt=got.retries)
            assert closed.state is ProcessState.SUCCESS  # each parent's output fits
        done = await client.graph_wait(graph.process_graph_id, timeout=10)
        assert done.state is ProcessState.FAILED
        child = await client.get(graph.nodes["c"])
        assert child.state is ProcessState.FAILED and child.input == []
        assert child.errors[0].startswith(
            "its input (its parents' outputs): with it, the process record would be "
        )
        assert await ex.assign(timeout=0) is None  # nothing left to run
    finally:
        await ex.aclose()


async def test_replies_never_exceed_max_payload(client: Client, settings) -> None:
    """Five processes of a quarter of the limit each: no listing or assign_many reply can hold
    them all; each holds what fits, and the rest stays where it was."""
    quarter = "q" * (_limit(client) // 4)
    pids = [p.process_id for p in [await client.submit(spec(args=[quarter])) for _ in range(5)]]
    listed = await client.list_processes(limit=100)
    assert 0 < len(listed) < 5
    assert [p.process_id for p in listed] == pids[::-1][: len(listed)]  # newest first
    ex = await connect_executor(settings, "e1")
    try:
        taken: list[str] = []
        async with asyncio.timeout(10):
            while len(taken) < 5:
                batch = await ex.assign_many(count=5, timeout=1)
                assert 0 < len(batch) < 5
                taken += [p.process_id for p in batch]
        assert taken == pids  # queue order kept: what did not fit was taken next time
        running = await client.list_processes(state=ProcessState.RUNNING, limit=100)
        assert {p.process_id for p in running} <= set(pids)
    finally:
        await ex.aclose()


async def test_graph_list_holds_what_one_reply_can(client: Client) -> None:
    per_graph = _limit(client) // 3
    for _ in range(4):
        graph = await client.submit_workflow(_fat_workflow(per_graph // 2 - 200, 2))
        assert isinstance(graph, ProcessGraph)
    graphs = await client.graph_list(limit=10)
    assert 0 < len(graphs) < 4


async def test_a_log_line_too_long_for_one_message_is_split(client: Client, settings) -> None:
    """Before: the log entry exceeded max_payload, the request went unanswered."""
    await client.submit(spec())
    ex = await connect_executor(settings, "e1")
    try:
        got = await ex.assign(timeout=2)
        assert got is not None
        line = "l" * (client.nc.max_payload - 200)  # the request fits; the entry does not
        await ex.add_logs(got.process_id, ["before", line, "after"], attempt=got.retries)
        await ex.close(got.process_id, [], attempt=got.retries)
        entries = [e async for e in client.logs(got.process_id)]
        messages = [e.message for e in entries]
        assert messages[0] == "before" and messages[-1] == "after"
        assert len(messages) > 3 and "".join(messages[1:-1]) == line
        assert [e.timestamp for e in entries] == sorted(e.timestamp for e in entries)
    finally:
        await ex.aclose()


async def test_raw_nats_max_payload_is_what_the_broker_reads(nats_url: str) -> None:
    """The limits come from the connection (the server's INFO), not from a file."""
    nc = await raw_nats(nats_url)
    try:
        assert nc.max_payload == 1024 * 1024  # the test server runs on NATS' default
        assert limits.record_limit(nc.max_payload) == nc.max_payload - limits.HEADROOM_BYTES
    finally:
        await nc.close()


async def test_any_other_reply_too_large_is_an_error_not_silence(client: Client, settings) -> None:
    """The backstop for replies no listing cap covers: the caller gets an answer."""
    from colonyos.models import Location

    big = Location(description="d" * (_limit(client) // 3))
    executors = [await connect_executor(settings, f"e{i}", location=big) for i in range(4)]
    try:
        with pytest.raises(RecordTooLargeError, match=r"^the executor_list reply would be "):
            await client.executor_list()
        assert isinstance(await client.submit(spec()), Process)  # and the broker goes on
    finally:
        for ex in executors:
            await ex.aclose()
