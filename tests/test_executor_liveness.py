"""``executor_list`` and ``colonies executor ls``: online or offline from the broker's record of
when it last heard from each executor, last heard, running count and capabilities."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import datetime, timedelta

from typer.testing import CliRunner

from colonyos.broker import Broker
from colonyos.cli.main import app
from colonyos.client import Client
from colonyos.config import Settings
from colonyos.messages import ExecutorInfo
from colonyos.models import GPU, Capabilities, Hardware, Process, ProcessState, now

from .helpers import connect_executor, spec

CAPS = Capabilities(hardware=[Hardware(cpu="2", mem="4Gi", gpu=GPU(count=1, name="T4"))])


async def listed(client: Client, name: str) -> ExecutorInfo:
    (info,) = [e for e in await client.executor_list() if e.executor_name == name]
    return info


async def test_executor_list_says_who_is_online_and_what_it_runs(
    broker: Broker, client: Client, settings: Settings
) -> None:
    before = now()
    ex = await connect_executor(settings, "e1", capabilities=CAPS)
    info = await listed(client, "e1")
    assert info.online and info.running == 0 and info.capabilities == CAPS
    assert before <= info.last_heard_from_time <= now()

    p = await client.submit(spec())
    assert isinstance(p, Process) and await ex.assign(timeout=2) is not None
    assert (await listed(client, "e1")).running == 1

    # A heartbeat moves "last heard" on (no KV write needed).
    registered = info.last_heard_from_time
    async with asyncio.timeout(5):
        while (info := await listed(client, "e1")).last_heard_from_time <= registered:
            await ex.heartbeat(info.executor_id, [p.process_id])
    assert info.online and info.running == 1

    # Silent for longer than the liveness window: offline, and the broker takes its process
    # away, as the same record says.
    service = broker.service_of(settings.colony)
    assert service is not None
    window = broker.settings.executor_liveness_s
    service.lead_start -= window + 2  # it has led for a while
    service.heard[info.executor_id] -= window + 1
    silent = await listed(client, "e1")
    assert not silent.online
    assert silent.last_heard_from_time >= info.last_heard_from_time - timedelta(seconds=1)
    async with client.watch(p.process_id) as watch, asyncio.timeout(5):
        state = (await client.get(p.process_id)).state
        while state is ProcessState.RUNNING:  # until it is taken from e1 (re-queued or failed)
            event = await watch.next(None)
            if isinstance(event, Process):
                state = event.state
    assert (await listed(client, "e1")).running == 0

    # A request is a sign of life too.
    await ex.assign(timeout=0)
    assert (await listed(client, "e1")).online
    await ex.aclose()


async def test_a_new_leader_does_not_call_executors_online_before_it_hears_them(
    broker: Broker, client: Client, settings: Settings
) -> None:
    ex = await connect_executor(settings, "e1")
    service = broker.service_of(settings.colony)
    assert service is not None
    info = await listed(client, "e1")
    # As after a restart: the executor's heard time is the grace given at load.
    service.lead_start = service.heard[info.executor_id]
    loaded = await listed(client, "e1")
    assert not loaded.online
    assert loaded.last_heard_from_time == info.commission_time  # registered, not heard since
    await ex.assign(timeout=0)
    assert (await listed(client, "e1")).online
    await ex.aclose()


def test_executor_ls_shows_liveness_at_80_columns(live_system: Settings) -> None:
    async def register() -> None:
        ex = await connect_executor(live_system, "gpu-box-1", capabilities=CAPS)
        await ex.aclose()

    asyncio.run(register())
    base = ["--nats", live_system.nats_url, "--prefix", live_system.prefix]
    result = CliRunner().invoke(app, [*base, "executor", "ls"], env={**os.environ, "COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    header, row = result.stdout.splitlines()
    assert header.split() == ["NAME", "TYPE", "STATE", "ONLINE", "HEARD", "RUNNING", "CAPABILITIES"]
    assert row.split()[:4] == ["gpu-box-1", "echo", "approved", "online"]
    assert row.endswith("0  cpu 2, mem 4Gi, gpu 1 T4")
    assert len(row) <= 80
    # Columns line up under their headers.
    for column, value in (("TYPE", "echo "), ("STATE", "approved "), ("ONLINE", "online ")):
        assert row[header.index(column) :].startswith(value)
    assert datetime.strptime(row[header.index("HEARD") :][:8], "%H:%M:%S")
    result = CliRunner().invoke(app, [*base, "executor", "ls", "--json"])
    (listed_json,) = json.loads(result.stdout)
    assert listed_json["online"] is True and listed_json["running"] == 0
    assert listed_json["executorname"] == "gpu-box-1" and "lastheardfromtime" in listed_json
