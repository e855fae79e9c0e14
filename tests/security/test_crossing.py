"""Colonies cannot reach each other through what a client chooses: the executor id a
heartbeat carries, or the id a spec asks for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import msgspec
import nats
import pytest

from colonyos.client import Client
from colonyos.models import (
    Conditions,
    Executor,
    FunctionSpec,
    Process,
    ProcessGraph,
    ProcessState,
    WorkflowSpec,
)
from tests.security.conftest import COLONY, Party, SecureServer

pytestmark = pytest.mark.timeout(60)

MakeParty = Callable[..., Party]
OTHER = "other"


async def _replaced_run(owner: Party, party: Party, colony: str, old_id: str) -> None:
    """Add ``party`` as an executor, register it as run ``old_id``, then replace that run:
    ``old_id`` is a stale run the broker tells again whenever it still heartbeats."""
    async with await owner.client(colony) as o:
        await o.member_add(
            party.name, party.identity.public_key, role="executor", executor_type="echo"
        )
    async with await party.client(colony) as c:
        ex = Executor(executor_name=party.name, executor_type="echo", executor_id=old_id)
        await c.register(ex)
        await c.register(msgspec.structs.replace(ex, executor_id="b" * 64), replace=True)


async def test_a_heartbeat_cannot_make_the_broker_tell_another_colonys_executor(
    secure_server: SecureServer,
    secure_prefix: str,
    make_party: MakeParty,
    owner: Client,
    root: Party,
) -> None:
    """An executor of colony ``other`` heartbeats with the id of a replaced run of colony
    ``dev``: the broker tells ``dev``'s executor nothing (only its own stale run is told)."""
    await owner.colony_add(OTHER, auto_approve=True)
    theirs, ours = make_party("same"), make_party("z", colony=OTHER)
    await _replaced_run(root, theirs, COLONY, "a" * 64)
    await _replaced_run(root, ours, OTHER, "c" * 64)
    # Everything the broker tells executors, in the order it tells it.
    watcher = await nats.connect(
        secure_server.url, nkeys_seed_str=secure_server.keys.broker.seed.decode()
    )
    try:
        told = await watcher.subscribe(f"{secure_prefix}.*.control.*")
        await watcher.flush()
        async with await ours.client() as z:
            await z.heartbeat("a" * 64, [])  # dev's stale run, beaten as z of other
            await z.heartbeat("c" * 64, [])  # its own stale run: told again
            seen = []
            async with asyncio.timeout(20):
                while True:
                    msg = await told.next_msg(timeout=20)
                    seen.append(msg.subject)
                    body = msgspec.json.decode(msg.data)
                    if body.get("executorid") == "c" * 64:
                        break
        assert seen[-1] == f"{secure_prefix}.{OTHER}.control.z"
        assert not [s for s in seen if f".{COLONY}." in s], seen
    finally:
        await watcher.close()


def _spec(node: str = "") -> FunctionSpec:
    return FunctionSpec(
        func_name="echo", args=["x"], node_name=node, conditions=Conditions(executor_type="echo")
    )


@pytest.fixture
async def mallory(owner: Client, root: Party, make_party: MakeParty) -> AsyncIterator[Client]:
    """A user of colony ``other``, and nothing of ``dev``."""
    await owner.colony_add(OTHER, auto_approve=True)
    party = make_party("mallory", colony=OTHER)
    async with await root.client(OTHER) as other_owner:
        await other_owner.member_add("mallory", party.identity.public_key)
    client = await party.client()
    yield client
    await client.aclose()


async def _graph_in_dev(owner: Client) -> ProcessGraph:
    """A workflow of ``dev``: its process ids were never a spec's ``Nats-Msg-Id``, so a
    spec asking for one reaches the broker at once (no dedup window in the way)."""
    graph = await owner.submit_workflow(WorkflowSpec(function_specs=[_spec("a")]))
    assert isinstance(graph, ProcessGraph)
    return graph


async def test_a_spec_with_the_id_of_another_colonys_process_is_a_process_of_its_own(
    owner: Client, mallory: Client
) -> None:
    """Mallory (colony ``other``) submits a spec asking for the id of a process of ``dev``:
    ids are unique within a colony, and everything keyed by one (record, queue, index, events'
    ids) is the colony's own, so mallory gets a process of ``other`` and ``dev``'s process
    stays as it was, listed and readable by its own colony only."""
    graph = await _graph_in_dev(owner)
    pid = graph.process_ids[0]
    before = await owner.get(pid)
    theirs = await mallory.submit(_spec(), process_id=pid)
    assert isinstance(theirs, Process) and theirs.process_id == pid
    assert (await mallory.get(pid)).spec.conditions.colony_name == OTHER
    assert await owner.get(pid) == before
    assert [p.process_id for p in await owner.list_processes()] == [pid]
    assert [p.process_id for p in await mallory.list_processes()] == [pid]
    assert before.state is ProcessState.WAITING


async def test_a_workflow_with_the_id_of_another_colonys_process_changes_nothing_of_it(
    owner: Client, mallory: Client
) -> None:
    """The graph id of mallory's workflow is the id of a process of ``dev``: a workflow of
    ``other``; nothing of ``dev`` changes."""
    graph = await _graph_in_dev(owner)
    pid = graph.process_ids[0]
    before = await owner.get(pid)
    theirs = await mallory.submit_workflow(WorkflowSpec(function_specs=[_spec("b")]), graph_id=pid)
    assert isinstance(theirs, ProcessGraph) and theirs.process_graph_id == pid
    assert await owner.get(pid) == before
    assert [p.process_id for p in await owner.list_processes()] == [pid]
