"""An executor that reports its own result is not told, on its control subject, that the
process was taken from it: a revoke is for a process the broker takes away (cancelled,
queued again), not for one its executor closed or failed."""

from __future__ import annotations

import asyncio

import msgspec
from nats.aio.msg import Msg

from colonyos.client import Client
from colonyos.config import Settings
from colonyos.messages import Control, Revoke
from colonyos.models import ProcessState

from .helpers import executor_client, submitted

_controls: msgspec.json.Decoder[Control] = msgspec.json.Decoder(Control)


async def test_closing_or_failing_its_own_process_sends_its_executor_no_revoke(
    client: Client, settings: Settings
) -> None:
    async with executor_client(settings, "reporter") as ex:
        heard: asyncio.Queue[Control] = asyncio.Queue()

        async def on_control(msg: Msg) -> None:
            heard.put_nowait(_controls.decode(msg.data))

        sub = await ex.nc.subscribe(ex.subjects.control(ex.colony, "reporter"), cb=on_control)
        await ex.nc.flush()
        ids = [(await submitted(client)).process_id for _ in range(3)]
        async with asyncio.timeout(10):
            running = [await ex.assign(timeout=5) for _ in ids]
            assert sorted(p.process_id for p in running if p is not None) == sorted(ids)
            closed, failed, taken = (p for p in running if p is not None)
            assert (await ex.close(closed.process_id, ["done"])).state is ProcessState.SUCCESS
            assert (await ex.fail(failed.process_id, ["broke"])).state is ProcessState.FAILED
            # The broker writes each revoke before its reply, in order on one connection: the
            # cancel's is the first one this executor hears unless a report made one.
            assert (await client.cancel(taken.process_id)).state is ProcessState.CANCELLED
            first = await heard.get()
        await sub.unsubscribe()
    assert isinstance(first, Revoke)
    assert first.process_id == taken.process_id, first
