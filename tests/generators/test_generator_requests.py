"""generator_add, generator_get, generator_list and generator_remove against a real broker;
packing from the SDK and by a raw publish."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from nats.js.api import DiscardPolicy

from colonyos.broker import Broker
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.errors import (
    BrokerUnavailableError,
    ConflictError,
    GeneratorNotFoundError,
    InvalidSpecError,
)
from colonyos.generators.client import Generators
from colonyos.generators.model import GeneratorDefinition
from colonyos.limits import GENERATOR_ARG_MAX_BYTES
from colonyos.subjects import Subjects
from tests.conftest import running_broker
from tests.generators.conftest import stream_emptied
from tests.helpers import raw_nats, request_as

WORKFLOW: list[dict[str, Any]] = [
    {"nodename": "a", "funcname": "echo", "conditions": {"executortype": "nobody"}},
]


async def test_a_generator_is_added_read_listed_and_removed(
    client: Client, broker_settings: BrokerSettings
) -> None:
    generators = Generators(client)
    added = await generators.add("feed", WORKFLOW, trigger=5, timeout=60)
    assert added.colony_name == "dev" and added.initiator_name == "tester"
    assert (added.trigger, added.timeout, len(added.generator_id)) == (5, 60, 64)
    got = await generators.get("feed")
    assert got.generator_id == added.generator_id and got.queue_size == 0
    assert [g.name for g in await generators.list()] == ["feed"]
    await generators.pack("feed", "waits")
    await generators.remove("feed")
    await stream_emptied(broker_settings)  # the arguments that waited go with it
    with pytest.raises(GeneratorNotFoundError, match="generator 'feed' does not exist in colony"):
        await generators.get("feed")
    with pytest.raises(GeneratorNotFoundError):
        await generators.remove("feed")
    with pytest.raises(GeneratorNotFoundError, match="'feed'"):
        await generators.pack("feed", 1)
    assert await generators.list() == []


async def test_what_waits_shows_as_queuesize_and_firstpack(client: Client) -> None:
    generators = Generators(client)
    await generators.add("slow", WORKFLOW, trigger=10)
    for value in ("a", "b"):
        await generators.pack("slow", value)
    async with asyncio.timeout(10):
        while (got := await generators.get("slow")).queue_size < 2:
            await asyncio.sleep(0.05)  # sleep-ok: polling state under a deadline
    assert got.first_pack.year > 2000 and got.last_run.year == 1


async def test_a_name_is_taken_once(client: Client) -> None:
    generators = Generators(client)
    await generators.add("g", WORKFLOW, trigger=1)
    with pytest.raises(ConflictError, match=r"^\$\.name: generator 'g' exists"):
        await generators.add("g", WORKFLOW, trigger=2)


@pytest.mark.parametrize(
    ("definition", "path"),
    [
        ({"name": "bad name", "trigger": 1}, "$.name"),
        ({"name": "g", "trigger": 0}, "$.trigger"),
        ({"name": "g", "trigger": 10_001}, "$.trigger"),
        ({"name": "g", "trigger": 1, "timeout": -2}, "$.timeout"),
        ({"name": "g", "trigger": 1, "workflow_spec": ""}, "$.workflowspec"),
        ({"name": "g", "trigger": 1, "workflow_spec": '[{"nodename": "a",'}, "$.workflowspec"),
        (
            {"name": "g", "trigger": 1, "workflow_spec": [{"nodename": "a", "funcname": "f"}]},
            "$.workflowspec[0].conditions.executortype",
        ),
        ({"name": "g", "trigger": 1, "colony_name": "other"}, "$.colonyname"),
    ],
)
async def test_a_bad_definition_is_refused_naming_its_field(
    client: Client, definition: dict[str, Any], path: str
) -> None:
    definition.setdefault("workflow_spec", WORKFLOW)
    with pytest.raises(InvalidSpecError) as info:
        await Generators(client).add_definition(GeneratorDefinition(**definition))
    assert info.value.path == path
    assert info.value.message.startswith(path.split("[")[0])
    assert await Generators(client).list() == []


@pytest.mark.parametrize(
    ("arg", "reason"),
    [
        ("{not json", "not JSON"),
        ("", "empty"),
        ('"' + "x" * GENERATOR_ARG_MAX_BYTES + '"', f"more than the {GENERATOR_ARG_MAX_BYTES}"),
    ],
)
async def test_an_argument_that_cannot_be_used_is_refused_naming_it(
    client: Client, arg: str, reason: str
) -> None:
    generators = Generators(client)
    await generators.add("g", WORKFLOW, trigger=1)
    with pytest.raises(InvalidSpecError, match=rf"^\$\.arg: .*{reason}") as info:
        await generators.pack_json("g", arg)
    assert info.value.path == "$.arg"
    with pytest.raises(InvalidSpecError, match=r"^\$\.arg: not a JSON value"):
        await generators.pack("g", object())


async def test_definitions_outlive_the_broker(
    client: Client, broker: Broker, broker_settings: BrokerSettings
) -> None:
    await Generators(client).add("kept", WORKFLOW, trigger=4, timeout=30)
    broker.stop()
    async with running_broker(broker_settings):
        kept = await Generators(client).get("kept")
    assert (kept.trigger, kept.timeout) == (4, 30)


async def test_arguments_packed_before_the_generator_existed_are_not_its_own(
    client: Client, settings: Settings
) -> None:
    """A raw publish to a name with no generator (or one packed into a generator since
    removed) is dropped when a generator of that name is added."""
    generators = Generators(client)
    subject = Subjects(settings.prefix).generator("dev", "late")
    await client.nc.jetstream().publish(subject, b'"early"')
    added = await generators.add("late", WORKFLOW, trigger=5)
    assert added.cursor > 0
    await generators.pack("late", "mine")
    async with asyncio.timeout(10):
        while (got := await generators.get("late")).queue_size < 1:
            await asyncio.sleep(0.05)  # sleep-ok: polling state under a deadline
    assert got.queue_size == 1


async def test_a_removed_colony_takes_its_generators_along(
    client: Client, broker: Broker, broker_settings: BrokerSettings
) -> None:
    await Generators(client).add("gone", WORKFLOW, trigger=3)
    await Generators(client).pack("gone", 1)
    await client.colony_remove("dev")
    await client.colony_add("dev", auto_approve=True)
    assert await Generators(client).list() == []
    broker.stop()  # and what the next broker reads is gone too
    async with running_broker(broker_settings):
        assert await Generators(client).list() == []
        with pytest.raises(GeneratorNotFoundError):
            await Generators(client).get("gone")
    await stream_emptied(broker_settings)


async def test_raw_nats_adds_a_colonies_definition(client: Client, settings: Settings) -> None:
    """Colonies' AddGeneratorMsg shape over a plain request: the workflow as a JSON string."""
    body = {
        "generator": {
            "name": "raw",
            "trigger": 2,
            "timeout": -1,
            "workflowspec": json.dumps({"colonyname": "dev", "functionspecs": WORKFLOW}),
        }
    }
    nc = await raw_nats(settings.nats_url)
    try:
        reply = await request_as(
            nc, settings.prefix, "dev", "raw-user", "generator_add", json.dumps(body).encode()
        )
        added = json.loads(reply.data)["result"]
        assert added["trigger"] == 2 and added["timeout"] == -1
        assert {"generatorid", "workflowspec", "firstpack", "lastrun", "queuesize"} <= set(added)
        missing = await request_as(
            nc, settings.prefix, "dev", "raw-user", "generator_get", b'{"name": "no such"}'
        )
        assert json.loads(missing.data)["error"]["code"] == "generator_not_found"
    finally:
        await nc.close()
    assert (await Generators(client).get("raw")).initiator_name == "raw-user"


async def test_arguments_are_bounded_and_a_full_stream_refuses_a_pack_clearly(
    client: Client, broker_settings: BrokerSettings
) -> None:
    """The arguments' stream is bounded (a member packing to a name no generator uses cannot
    fill JetStream), and when full it refuses new ones, dropping none that wait."""
    generators = Generators(client)
    await generators.add(
        "big",
        [{"nodename": "n", "funcname": "f", "conditions": {"executortype": "none"}}],
        trigger=10000,
    )
    s = Subjects(broker_settings.prefix)
    nc = await raw_nats(broker_settings.nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(s.stream_generators)
        assert info.config.max_bytes == 256 << 20
        assert info.config.discard == DiscardPolicy.NEW
        # As an operator may shrink it: room for a few arguments only.
        info.config.max_bytes = 4096
        await js.update_stream(info.config)
        arg = "x" * 1000
        with pytest.raises(BrokerUnavailableError, match="did not take the argument"):
            for _ in range(10):
                await generators.pack("big", arg)
        kept = (await js.stream_info(s.stream_generators)).state.messages
        assert kept >= 1
        first = await js.get_msg(s.stream_generators, seq=1)
        assert json.loads(first.data) == arg  # the oldest was not dropped to make room
    finally:
        await nc.close()


async def test_an_argument_packed_again_with_its_id_is_stored_once(client: Client) -> None:
    """A retry after a lost acknowledgement, with the argument's own id, stores it once."""
    generators = Generators(client)
    await generators.add(
        "retry",
        [{"nodename": "n", "funcname": "f", "conditions": {"executortype": "none"}}],
        trigger=10,
    )
    first = await generators.pack("retry", {"row": 1}, arg_id="row-1")
    assert await generators.pack("retry", {"row": 1}, arg_id="row-1") == first
    assert await generators.pack("retry", {"row": 1}) == first + 1  # no id: a new argument


async def test_roots_that_leave_no_room_for_the_arguments_are_refused(client: Client) -> None:
    """Half a process record is for the arguments packed into a run's roots: a root that takes
    more would make every run fail at its start (and drop its arguments), so it is refused
    when the generator is added, naming the node."""
    half = client.nc.max_payload // 2
    spec = [
        {
            "nodename": "heavy",
            "funcname": "f",
            "args": ["x" * half],
            "conditions": {"executortype": "none"},
        }
    ]
    with pytest.raises(InvalidSpecError, match=r"\$\.workflowspec\[0\]: the root 'heavy'"):
        await Generators(client).add("heavy", spec, trigger=1)
    light = [{**spec[0], "args": ["x" * (half // 4)]}]
    await Generators(client).add("light", light, trigger=1)  # a quarter leaves room
