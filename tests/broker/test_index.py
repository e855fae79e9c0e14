"""Listing and filtering from the SQLite index, which is rebuilt from KV at start."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import msgspec

from colonyos.broker.index import ProcessIndex
from colonyos.client import Client
from colonyos.models import Process, ProcessState, now

from ..conftest import COLONY
from ..helpers import connect_executor, spec
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
