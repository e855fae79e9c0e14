"""Intake never loops on a spec: each message is a process or a rejection with its reason.

Only NATS trouble leaves a message to be delivered again, and the consumer bounds that too:
its last delivery is rejected with the reason, never dropped in silence.
"""

from __future__ import annotations

import msgspec
import nats
import pytest

from colonyos import limits
from colonyos.broker.colonyfeeds import open_consumer
from colonyos.broker.intake import Intake
from colonyos.broker.store import ProcessStore
from colonyos.broker.workflows import Workflows
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.errors import ProcessNotFoundError
from colonyos.messages import Rejection
from colonyos.models import Colony, Process, ProcessState
from colonyos.subjects import GRAPH_TOKEN, SERVER_SCOPE, Subjects

from .conftest import COLONY, _drop_streams, running_broker
from .helpers import raw_nats, spec, specs_drained, standalone_service

GOOD = b'{"funcname": "f", "conditions": {"executortype": "echo"}}'


async def test_the_specs_consumer_bounds_its_deliveries(client: Client, settings) -> None:
    subjects = Subjects(settings.prefix)
    inspector = await raw_nats(settings.nats_url)  # members may not read consumers
    try:
        js = inspector.jetstream()
        info = await js.consumer_info(subjects.stream_specs, subjects.consumer_intake(COLONY))
    finally:
        await inspector.close()
    assert info.config.max_deliver == limits.SPEC_DELIVERIES
    assert info.config.backoff and len(info.config.backoff) < limits.SPEC_DELIVERIES


@pytest.mark.parametrize("kind", ["spec", "workflow"])
async def test_the_last_delivery_is_rejected_with_a_reason(
    broker_settings: BrokerSettings, settings: Settings, kind: str
) -> None:
    """A message the broker failed on (NATS trouble, a broker that died on it) for every
    delivery but the last: the last is a rejection that says so, and nothing is left behind."""
    subjects = Subjects(settings.prefix)
    nc = await raw_nats(settings.nats_url)
    js = nc.jetstream()
    try:
        store = ProcessStore(nc, subjects, storage="memory")
        await store.setup()
        await store.put_colony(Colony(name=COLONY, auto_approve=True))
        await open_consumer(js, subjects, COLONY)  # as a leader makes it
        item_id = "d" * 64
        if kind == "spec":
            subject, body, token = subjects.specs(COLONY, "echo"), GOOD, "echo"
        else:
            subject, token = subjects.workflows(COLONY), GRAPH_TOKEN
            body = b'[{"nodename": "a", "funcname": "f", "conditions": {"executortype": "e"}}]'
        await js.publish(subject, body, headers={"Nats-Msg-Id": item_id})
        # Every delivery but the last taken and given back, as by brokers that failed on it.
        puller = await js.pull_subscribe_bind(
            subjects.consumer_intake(COLONY), subjects.stream_specs
        )
        for n in range(1, limits.SPEC_DELIVERIES):
            (msg,) = await puller.fetch(1, timeout=5)
            assert msg.metadata.num_delivered == n
            await msg.nak()
        await puller.unsubscribe()
        events = await nc.subscribe(subjects.events_filter(colony=COLONY))
        async with running_broker(broker_settings, owners=True):
            msg = await events.next_msg(timeout=10)
            assert msg.subject == subjects.event(COLONY, token, "rejected", item_id)
            rejection = msgspec.json.decode(msg.data, type=Rejection)
            assert rejection.error.startswith(
                f"not accepted in {limits.SPEC_DELIVERIES} deliveries; the last attempt: "
            )
            assert await specs_drained(js, subjects)
            async with await Client.connect(settings, caller="tester") as c:
                assert await c.list_processes() == []
                ok = await c.submit(spec())
                assert isinstance(ok, Process) and ok.state is ProcessState.WAITING
    finally:
        await nc.close()
        await _drop_streams(settings.nats_url, settings.prefix)


async def test_a_spec_is_acked_only_once_its_process_is_written(
    broker_settings: BrokerSettings, settings: Settings
) -> None:
    """The broker's write fails (NATS trouble; a broker that dies there is the same): the spec
    is still in the work queue, taken but not acked, and its next delivery becomes the
    process."""
    subjects = Subjects(settings.prefix)
    nc = await raw_nats(settings.nats_url)
    js = nc.jetstream()
    try:
        store = ProcessStore(nc, subjects, storage="memory")
        await store.setup()
        await store.put_colony(Colony(name=COLONY, auto_approve=True))
        await open_consumer(js, subjects, COLONY)  # as a leader makes it
        pid = "e" * 64
        await js.publish(subjects.specs(COLONY, "echo"), GOOD, headers={"Nats-Msg-Id": pid})
        puller = await js.pull_subscribe_bind(
            subjects.consumer_intake(COLONY), subjects.stream_specs
        )
        async with standalone_service(broker_settings) as service:
            intake = Intake(service, Workflows(service))
            (msg,) = await puller.fetch(1, timeout=5)
            # The processes bucket is gone: the write finds no stream to answer it.
            await js.delete_stream(subjects.kv_stream(subjects.bucket_processes))
            with pytest.raises(nats.errors.NoRespondersError):
                await intake.accept_batch([msg])
            info = await js.consumer_info(subjects.stream_specs, subjects.consumer_intake(COLONY))
            assert info.num_ack_pending == 1
            assert (await js.stream_info(subjects.stream_specs)).state.messages == 1
            await service.store.setup()  # the bucket is back
            await msg.nak()  # as the ack wait running out would, without waiting for it
            (again,) = await puller.fetch(1, timeout=5)
            assert again.metadata.num_delivered == 2
            await intake.accept_batch([again])
            process, _ = await service.store.get(COLONY, pid)
            assert process.state is ProcessState.WAITING
        assert await specs_drained(js, subjects)
    finally:
        await nc.close()
        await _drop_streams(settings.nats_url, settings.prefix)


async def test_a_raw_spec_whose_record_cannot_be_stored_is_rejected_once(
    client: Client, settings
) -> None:
    """Before: the broker's write raised MaxPayloadError and the spec came back for ever."""
    subjects = Subjects(settings.prefix)
    nc = await raw_nats(settings.nats_url)
    try:
        events = await nc.subscribe(subjects.events_filter(colony=COLONY))
        filler = "x" * (nc.max_payload - 400)
        body = msgspec.json.encode(
            {"funcname": "f", "conditions": {"executortype": "echo"}, "args": [filler]}
        )
        assert len(body) < nc.max_payload  # the spec itself fits; its process record does not
        await nc.jetstream().publish(subjects.specs(COLONY, "echo"), body)
        msg = await events.next_msg(timeout=5)
        assert ".rejected." in msg.subject, msg.subject
        rejection = msgspec.json.decode(msg.data, type=Rejection)
        assert "bytes" in rejection.error
        assert await specs_drained(nc.jetstream(), subjects)
        ok = await client.submit(spec())
        assert isinstance(ok, Process)
    finally:
        await nc.close()


async def test_the_server_scope_makes_no_process_of_a_colony_it_does_not_lead(
    broker_settings: BrokerSettings, settings: Settings
) -> None:
    """The server scope knows every colony but leads none: a spec of an existing colony that
    reaches it (read as a stray just as the colony was added) is refused, never made a process
    there, beside the colony's own leader."""
    subjects = Subjects(settings.prefix)
    nc = await raw_nats(settings.nats_url)
    js = nc.jetstream()
    try:
        store = ProcessStore(nc, subjects, storage="memory")
        await store.setup()
        await store.put_colony(Colony(name=COLONY, auto_approve=True))
        await open_consumer(js, subjects, COLONY)
        pid = "f" * 64
        await js.publish(subjects.specs(COLONY, "echo"), GOOD, headers={"Nats-Msg-Id": pid})
        puller = await js.pull_subscribe_bind(
            subjects.consumer_intake(COLONY), subjects.stream_specs
        )
        async with standalone_service(broker_settings, colony=SERVER_SCOPE) as server:
            assert COLONY in server.colonies
            (msg,) = await puller.fetch(1, timeout=5)
            await Intake(server, Workflows(server)).accept_batch([msg])
            with pytest.raises(ProcessNotFoundError):
                await server.store.get(COLONY, pid)
    finally:
        await nc.close()
