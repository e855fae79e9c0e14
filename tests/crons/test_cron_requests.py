"""cron_add, cron_get, cron_list, cron_run and cron_remove against a real broker."""

from __future__ import annotations

import json
from typing import Any

import pytest

from colonyos.broker import Broker
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.crons.client import Crons
from colonyos.crons.model import CronDefinition
from colonyos.errors import ConflictError, CronNotFoundError, InvalidSpecError
from tests.conftest import running_broker
from tests.helpers import raw_nats, request_as

WORKFLOW: list[dict[str, Any]] = [
    {"nodename": "a", "funcname": "echo", "conditions": {"executortype": "nobody"}},
    {
        "nodename": "b",
        "funcname": "echo",
        "conditions": {"executortype": "nobody", "dependencies": ["a"]},
    },
]


async def test_a_cron_is_added_read_listed_and_removed(client: Client) -> None:
    crons = Crons(client)
    added = await crons.add("nightly", WORKFLOW, cron_expression="0 3 * * *")
    assert added.colony_name == "dev" and added.initiator_name == "tester"
    assert added.next_run > added.created
    got = await crons.get("nightly")
    assert got.cron_id == added.cron_id and got.cron_expression == "0 3 * * *"
    assert [c.name for c in await crons.list()] == ["nightly"]
    await crons.remove("nightly")
    with pytest.raises(CronNotFoundError, match="cron 'nightly' does not exist in colony 'dev'"):
        await crons.get("nightly")
    for gone in (crons.run, crons.remove):
        with pytest.raises(CronNotFoundError, match="cron 'nightly' does not exist"):
            await gone("nightly")
    assert await crons.list() == []


async def test_a_name_is_taken_once(client: Client) -> None:
    crons = Crons(client)
    await crons.add("c", WORKFLOW, interval=60)
    with pytest.raises(ConflictError, match=r"^\$\.name: cron 'c' exists"):
        await crons.add("c", WORKFLOW, interval=5)


@pytest.mark.parametrize(
    ("definition", "path"),
    [
        ({"name": "bad name", "interval": 5}, "$.name"),
        ({"name": "c", "interval": 5, "workflowspec": ""}, "$.workflowspec"),
        ({"name": "c", "interval": 5, "workflowspec": '[{"nodename": "a",'}, "$.workflowspec"),
        (
            {"name": "c", "interval": 5, "workflowspec": [{"nodename": "a", "funcname": "f"}]},
            "$.workflowspec[0].conditions.executortype",
        ),
        ({"name": "c", "cronexpression": "* * *"}, "$.cronexpression"),
        ({"name": "c", "interval": 0}, "$.interval"),
        ({"name": "c", "cronexpression": "* * * * *", "random": True}, "$.random"),
        ({"name": "c", "cronexpression": "0 9 * * *", "timezone": "Nowhere/Else"}, "$.timezone"),
    ],
)
async def test_a_bad_definition_is_refused_naming_its_field(
    client: Client, definition: dict[str, Any], path: str
) -> None:
    definition.setdefault("workflowspec", WORKFLOW)
    d = CronDefinition(**{_attr(k): v for k, v in definition.items()})
    with pytest.raises(InvalidSpecError) as info:
        await Crons(client).add_definition(d)
    assert info.value.path == path
    assert info.value.message.startswith(path.split("[")[0])
    assert await Crons(client).list() == []


def _attr(key: str) -> str:
    return {
        "cronexpression": "cron_expression",
        "workflowspec": "workflow_spec",
        "timezone": "time_zone",
    }.get(key, key)


async def test_malformed_workflow_json_is_refused_with_line_and_column(client: Client) -> None:
    text = '[\n  {\n    "nodename": "a",\n    "args": ["0": "x"]\n  }\n]'
    with pytest.raises(InvalidSpecError, match="line 4, column 17"):
        await Crons(client).add("c", text, interval=5)


async def test_definitions_outlive_the_broker(
    client: Client, broker: Broker, broker_settings: BrokerSettings
) -> None:
    await Crons(client).add("kept", WORKFLOW, interval=3600, wait_for_previous=True)
    broker.stop()
    async with running_broker(broker_settings):
        kept = await Crons(client).get("kept")
    assert kept.interval == 3600 and kept.wait_for_prev_process_graph


async def test_a_manual_run_starts_the_workflow_once_now(client: Client) -> None:
    crons = Crons(client)
    await crons.add("manual", WORKFLOW, cron_expression="0 0 1 1 *")
    ran = await crons.run("manual")
    graph = await client.graph_get(ran.prev_process_graph_id)
    assert graph.cron_name == "manual" and len(graph.process_ids) == 2
    assert (await crons.get("manual")).prev_process_graph_id == graph.process_graph_id


async def test_a_manual_run_waits_for_the_previous_when_told(client: Client) -> None:
    crons = Crons(client)
    await crons.add("w", WORKFLOW, cron_expression="0 0 1 1 *", wait_for_previous=True)
    first = await crons.run("w")
    with pytest.raises(ConflictError, match="waits for its previous run"):
        await crons.run("w")
    await client.graph_cancel(first.prev_process_graph_id)
    second = await crons.run("w")
    assert second.prev_process_graph_id != first.prev_process_graph_id


async def test_a_removed_colony_takes_its_crons_along(client: Client) -> None:
    await Crons(client).add("gone", WORKFLOW, interval=3600)
    await client.colony_remove("dev")
    await client.colony_add("dev", auto_approve=True)
    assert await Crons(client).list() == []
    with pytest.raises(CronNotFoundError):
        await Crons(client).get("gone")


async def test_raw_nats_adds_a_colonies_definition(client: Client, settings: Settings) -> None:
    """Colonies' AddCronMsg shape over a plain request: the workflow as a JSON string, and
    pycolonies' misspelt waitforprevprocessgrap."""
    body = {
        "cron": {
            "name": "raw",
            "cronexpression": "0 0 3 * * *",
            "interval": -1,
            "waitforprevprocessgrap": True,
            "workflowspec": json.dumps({"colonyname": "dev", "functionspecs": WORKFLOW}),
        }
    }
    nc = await raw_nats(settings.nats_url)
    try:
        reply = await request_as(
            nc, settings.prefix, "dev", "raw-user", "cron_add", json.dumps(body).encode()
        )
        added = json.loads(reply.data)["result"]
        assert added["waitforprevprocessgraph"] is True and "waitforprevprocessgrap" not in added
        missing = await request_as(
            nc, settings.prefix, "dev", "raw-user", "cron_get", b'{"name": "no such"}'
        )
        assert json.loads(missing.data)["error"]["code"] == "cron_not_found"
    finally:
        await nc.close()
    assert (await Crons(client).get("raw")).initiator_name == "raw-user"
