"""Listing and filtering from the SQLite index, which is rebuilt from KV at start."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import msgspec
import pytest

from colonyos.broker.index import ProcessIndex
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.errors import IdTakenError
from colonyos.models import Process, ProcessGraph, ProcessState, WorkflowSpec, now

from ..conftest import COLONY, open_colony
from ..helpers import connect_executor, spec, standalone_service, submitted
from ..helpers import spec as helper_spec


async def test_filters(client: Client, settings) -> None:
    t0 = now()
    a = await client.submit(spec("echo", label="nightly"))
    b = await client.submit(spec("other"))
    c = await client.submit(spec("echo"))
    ex = await connect_executor(settings, "e1")
    got = await ex.assign(timeout=1)
    assert got is not None and got.process_id == a.process_id
    await ex.close(got.process_id, [])

    async def ids(**kw: object) -> list[str]:
        return [p.process_id for p in await client.list_processes(**kw)]  # type: ignore[arg-type]

    assert await ids() == [c.process_id, b.process_id, a.process_id]  # newest first
    assert await ids(state=ProcessState.SUCCESS) == [a.process_id]
    assert await ids(state=ProcessState.WAITING) == [c.process_id, b.process_id]
    assert await ids(executor_type="other") == [b.process_id]
    assert await ids(label="nightly") == [a.process_id]
    assert await ids(limit=1) == [c.process_id]
    assert await ids(since=b.submission_time) == [c.process_id, b.process_id]
    assert await ids(until=b.submission_time) == [a.process_id]
    assert await ids(since=t0 + timedelta(days=1)) == []
    await client.remove(b.process_id)
    assert await ids() == [c.process_id, a.process_id]
    await ex.aclose()


async def test_colonies_do_not_see_each_other(client: Client, settings) -> None:
    from colonyos.executors import echo

    await client.colony_add("other", auto_approve=True)
    mine = await client.submit(spec(args=["secret"]))
    await echo.build(settings, "echo", "echo-mine").run(burst=True)
    assert [line.message async for line in client.logs(mine.process_id)] == ["echo secret"]
    other = msgspec.structs.replace(settings, colony="other")
    async with await Client.connect(other, caller="tester") as theirs:
        assert await theirs.list_processes() == []
        assert [line async for line in theirs.logs(mine.process_id)] == []
        from colonyos.errors import ProcessNotFoundError

        try:
            await theirs.get(mine.process_id)
        except ProcessNotFoundError:
            pass
        else:
            raise AssertionError("a process was visible from another colony")


async def test_rows_round_trip_exactly_in_large_batches(tmp_path) -> None:
    """Rows go to sqlite as one JSON parameter per statement: every character must survive,
    and batches larger than one statement must be written whole."""
    from colonyos.broker import transitions
    from colonyos.broker.index import ProcessIndex
    from colonyos.messages import ListProcesses

    index = ProcessIndex(tmp_path / "index.db")
    await index.open()
    t = now()
    here = {"colony_name": COLONY}
    tricky = ['quote " back\\slash', "tab\there", "ünïcødé ✓", "newline\nline", "{}[],:"]
    processes = [
        transitions.create(
            f"{i:064x}",
            spec("echo", label=tricky[i % 5], args=[tricky[i % 5], i], conditions=here),
            now=t,
            now_ns=i,
        )
        for i in range(2_500)
    ]
    for p in processes:
        index.put(p)
    listed = await index.query(COLONY, ListProcesses(limit=5_000))
    decoded = msgspec.json.decode(listed, type=list[Process])
    assert sorted(decoded, key=lambda p: p.process_id) == processes
    for label in tricky:
        rows = await index.query(COLONY, ListProcesses(label=label, limit=5_000))
        assert len(msgspec.json.decode(rows, type=list[Process])) == 500
    await index.close()


async def test_a_loaded_index_knows_which_colony_holds_each_id(
    client: Client, broker_settings: BrokerSettings
) -> None:
    """A broker that takes over loads every id with its colony: a spec of another colony asking
    for one is refused there too, not only by the broker that made the process."""
    p = await submitted(client)
    async with standalone_service(broker_settings) as service:
        with pytest.raises(IdTakenError):
            service.index.claim("other", [p.process_id])
        assert service.index.claim(COLONY, [p.process_id]) == []  # its own colony's


async def test_a_removed_process_gives_its_id_up(client: Client, settings: Settings) -> None:
    """What the index holds follows what exists: once a process is removed, its id is free
    (the broker does not keep every id it has ever seen). A workflow's process: its id was
    never a spec's Nats-Msg-Id, which JetStream would drop for two minutes."""
    node = helper_spec(node_name="a")
    graph = await client.submit_workflow(WorkflowSpec(function_specs=[node]))
    assert isinstance(graph, ProcessGraph)
    pid = graph.process_ids[0]
    await client.graph_remove(graph.process_graph_id)
    await open_colony(settings, "other")
    other = msgspec.structs.replace(settings, colony="other")
    async with await Client.connect(other, caller="tester") as owner:
        spec_ = helper_spec(conditions={"colony_name": "other"})
        again = await owner.submit(spec_, process_id=pid)
    assert isinstance(again, Process) and again.colony_name == "other"


async def test_two_brokers_on_one_data_directory_keep_their_indexes_apart(tmp_path: Path) -> None:
    """Each broker rebuilds its index from KV at start: a second broker started on the same
    data directory must not empty the first one's."""
    first, second = ProcessIndex(tmp_path / "index.db"), ProcessIndex(tmp_path / "index.db")
    await first.open()
    try:
        mine = helper_spec(conditions={"colony_name": COLONY})
        first.put(Process(process_id="a" * 64, spec=mine))
        await first.flush()
        await second.open()
        try:
            assert await first.colony_ids(COLONY) == (["a" * 64], [])
            assert await second.colony_ids(COLONY) == ([], [])
        finally:
            await second.close()
    finally:
        await first.close()
