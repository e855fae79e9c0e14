"""Id prefixes: the broker completes them from its index, for processes and for graphs."""

from __future__ import annotations

import msgspec
import pytest

from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.errors import (
    AmbiguousIdError,
    GraphNotFoundError,
    InvalidSpecError,
    ProcessNotFoundError,
)
from colonyos.executors import echo
from colonyos.models import Conditions, FunctionSpec, ProcessState, WorkflowSpec

from ..conftest import COLONY, _drop_streams, open_colony, running_broker
from ..helpers import spec


def _id(prefix: str) -> str:
    return prefix + "0" * (64 - len(prefix))


def _workflow() -> WorkflowSpec:
    return WorkflowSpec(
        function_specs=[
            FunctionSpec(
                node_name="a", func_name="echo", conditions=Conditions(executor_type="echo")
            )
        ]
    )


async def test_a_unique_prefix_names_its_process(client: Client) -> None:
    a = await client.submit(spec(), process_id=_id("abc1"))
    await client.submit(spec(), process_id=_id("abc2"))
    assert await client.resolve("abc1") == a.process_id
    assert await client.resolve(" ABC1 ") == a.process_id  # as people paste and type it
    assert await client.resolve(a.process_id) == a.process_id


async def test_an_ambiguous_prefix_names_the_candidates(client: Client) -> None:
    for i in range(7):
        await client.submit(spec(), process_id=_id(f"ab{i}"))
    with pytest.raises(AmbiguousIdError) as info:
        await client.resolve("ab")
    # Five named, as short as they can be and still differ (12 characters at least).
    assert info.value.candidates == [_id(f"ab{i}")[:12] for i in range(5)]
    assert info.value.message.endswith(", ...: type more characters")
    assert await client.resolve(_id("ab")[:20]) == _id("ab0")  # only ab0... begins so


async def test_unknown_removed_and_malformed_prefixes(client: Client) -> None:
    p = await client.submit(spec(), process_id=_id("cafe"))
    with pytest.raises(ProcessNotFoundError):
        await client.resolve("beef")
    with pytest.raises(InvalidSpecError) as info:
        await client.resolve("cafe-1")
    assert "not hexadecimal" in info.value.message
    with pytest.raises(InvalidSpecError):
        await client.resolve("")
    with pytest.raises(InvalidSpecError):
        await client.resolve("a" * 65)
    await client.remove(p.process_id)
    with pytest.raises(ProcessNotFoundError):
        await client.resolve("cafe")


async def test_other_colonies_ids_do_not_resolve(client: Client, settings: Settings) -> None:
    await client.colony_add("other", auto_approve=True)
    await client.submit(spec(), process_id=_id("d00d"))
    other = msgspec.structs.replace(settings, colony="other")
    async with await Client.connect(other, caller="tester") as theirs:
        with pytest.raises(ProcessNotFoundError):
            await theirs.resolve("d00d")


async def test_any_client_can_ask_over_plain_nats(client: Client) -> None:
    p = await client.submit(spec(), process_id=_id("f00d"))
    subject = client.subjects.rpc(COLONY, client.caller, "resolve")
    reply = await client.nc.request(subject, b'{"prefix": "f00d"}', timeout=5)
    assert msgspec.json.decode(reply.data) == {"result": p.process_id}
    reply = await client.nc.request(subject, b'{"prefix": "f00d", "graph": true}', timeout=5)
    assert msgspec.json.decode(reply.data)["error"]["code"] == "graph_not_found"


async def test_graph_ids_resolve_and_list_from_the_index(
    client: Client, settings: Settings
) -> None:
    await client.submit_workflow(_workflow(), graph_id=_id("feed1"))
    await client.submit_workflow(_workflow(), graph_id=_id("feed2"))
    assert await client.resolve("feed1", graph=True) == _id("feed1")
    with pytest.raises(AmbiguousIdError):
        await client.resolve("feed", graph=True)
    with pytest.raises(GraphNotFoundError):
        await client.resolve("beef", graph=True)
    with pytest.raises(ProcessNotFoundError):
        await client.resolve("feed1")  # a graph's id is not a process's
    graphs = await client.graph_list()
    assert [g.process_graph_id for g in graphs] == [_id("feed2"), _id("feed1")]  # newest first
    assert await client.graph_list(limit=1) == graphs[:1]
    # A graph's changes of state reach the index.
    await echo.build(settings, "echo", "echo-graphs").run(burst=True)
    graphs = await client.graph_list()
    assert {g.state for g in graphs} == {ProcessState.SUCCESS}


async def test_a_new_broker_indexes_the_graphs_it_finds(
    broker_settings: BrokerSettings, settings: Settings
) -> None:
    async with running_broker(broker_settings, owners=True):
        await open_colony(settings)
        async with await Client.connect(settings) as client:
            await client.submit_workflow(_workflow(), graph_id=_id("1ead"))
    try:
        async with (
            running_broker(broker_settings, owners=True),
            await Client.connect(settings) as client,
        ):
            assert [g.process_graph_id for g in await client.graph_list()] == [_id("1ead")]
            assert await client.resolve("1ea", graph=True) == _id("1ead")
    finally:
        await _drop_streams(broker_settings.nats_url, broker_settings.prefix)
