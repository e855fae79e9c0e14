"""Arbitrary input at every door of a live broker: the specs subject, the workflows subject and
every request operation. Whatever arrives, the broker keeps leading, every submission becomes a
process or a rejection that says why, every request gets an answer, and a good spec afterwards
still runs.

``COLONIES_FUZZ_EXAMPLES`` sets the examples per door; ``COLONIES_FUZZ_RANDOM=1`` draws new ones
on each run instead of the same fixed set (``make soak`` does both).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import msgspec
import nats
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from colonyos.client import Client
from colonyos.config import Settings
from colonyos.errors import ConflictError
from colonyos.graphs import node_process_id
from colonyos.models import Conditions, FunctionSpec, ProcessState
from colonyos.subjects import GRAPH_TOKEN, Subjects

from ..conftest import COLONY, live_brokers, live_loops
from ..helpers import raw_nats
from .strategies import bodies, request_like, spec_like, tokens, workflow_like

T = TypeVar("T")

EXAMPLES = int(os.environ.get("COLONIES_FUZZ_EXAMPLES", "60"))
# The whole run, bounded generously: a loaded machine runs each input slower.
_TEST_S = 120 + EXAMPLES * 2
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    # The same examples on every run of make test (CI stays deterministic); make soak explores.
    derandomize=not os.environ.get("COLONIES_FUZZ_RANDOM"),
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
# Long polls may legitimately wait for work instead of answering at once.
_LONG_POLLS = frozenset({"assign", "assign_many"})
_OUTCOME_S = 10.0


class Door:
    """A NATS connection on the live system's event loop, used from the synchronous test
    (hypothesis drives plain functions)."""

    def __init__(self, live: Settings) -> None:
        self.settings = live
        self.loop = live_loops[live.prefix]
        self.subjects = Subjects(live.prefix)
        self.nc: Any = self.call(raw_nats(live.nats_url))

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.call(self.nc.close())

    async def request(self, colony: str, caller: str, subject: str, body: bytes) -> Any:
        """A request as ``caller`` would make it: the broker answers only into the caller's
        inbox (``_INBOX.P.C.N``), whoever publishes."""
        inbox = f"_INBOX.{self.settings.prefix}.{colony}.{caller}.{secrets.token_hex(8)}"
        sub = await self.nc.subscribe(inbox, max_msgs=1)
        try:
            await self.nc.publish(subject, body, reply=inbox)
            return await sub.next_msg(timeout=_OUTCOME_S)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def first_event(self, filters: list[str], publish: Coroutine[Any, Any, Any]) -> Any:
        """Listen on ``filters``, then publish; the first event that arrives (None: none did)."""
        arrived: asyncio.Queue[Any] = asyncio.Queue()

        async def on_msg(msg: Any) -> None:
            await arrived.put(msg)

        subs = [await self.nc.subscribe(f, cb=on_msg) for f in filters]
        await self.nc.flush()
        try:
            await publish
            try:
                return await asyncio.wait_for(arrived.get(), _OUTCOME_S)
            except TimeoutError:
                return None
        finally:
            for sub in subs:
                await sub.unsubscribe()

    def assert_broker_leads(self) -> None:
        broker = live_brokers[self.settings.prefix]
        assert broker.leading.is_set(), "the broker stopped leading"

    def assert_intake_drained(self) -> None:
        """Every spec and workflow taken was acknowledged: none is redelivered for ever."""
        self.call(_intake_drained(self.nc, self.subjects))

    def assert_broker_would_restart(self) -> None:
        """What a broker does when it starts leading (load everything stored) succeeds."""
        self.call(_load_as_a_new_leader(self.nc, self.subjects))

    def assert_good_spec_runs(self) -> None:
        """After everything thrown at it: the colony exists, a spec runs to SUCCESS."""
        self.call(_good_spec_runs(self.settings))


async def _intake_drained(nc: Any, subjects: Subjects) -> None:
    js = nc.jetstream()
    async with asyncio.timeout(_OUTCOME_S * 2):
        while True:
            # A work queue: what is taken and acked is gone.
            if (await js.stream_info(subjects.stream_specs)).state.messages == 0:
                return
            await asyncio.sleep(0.1)  # sleep-ok: polling the consumer's state under a deadline


async def _load_as_a_new_leader(nc: Any, subjects: Subjects) -> None:
    from colonyos.broker.admin import Admin
    from colonyos.broker.index import ProcessIndex
    from colonyos.broker.service import Service
    from colonyos.broker.store import ProcessStore
    from colonyos.broker.workflows import Workflows

    store = ProcessStore(nc, subjects, storage="memory")
    await store.setup()
    index = ProcessIndex(None)
    await index.open()
    try:
        server = Service(store, index, subjects, max_executor_losses=5)
        Admin(server)
        await server.load()
        for colony in list(server.colonies):  # each colony as its own leader loads it
            service = Service(store, index, subjects, max_executor_losses=5, scope=colony)
            Admin(service)
            workflows = Workflows(service)
            await service.load()
            await workflows.load()
    finally:
        await index.close()
        await store.close()


async def _good_spec_runs(live: Settings) -> None:
    from colonyos.executors import echo

    async with await Client.connect(live, caller="tester") as client:
        with contextlib.suppress(ConflictError):  # a fuzzed colony_remove took it
            await client.colony_add(COLONY, auto_approve=True)
        spec = FunctionSpec(
            func_name="echo", args=["ok"], conditions=Conditions(executor_type="fuzzcheck")
        )
        process = await client.submit(spec)
        assert not isinstance(process, str)
        app = echo.build(live, "fuzzcheck", f"fuzzcheck-{secrets.token_hex(3)}")
        async with asyncio.timeout(30):
            await app.run(burst=True)
        done = await client.wait(process.process_id, timeout=10)
        assert done.state is ProcessState.SUCCESS, done.errors


@pytest.fixture
def door(live_system: Settings) -> Iterator[Door]:
    d = Door(live_system)
    yield d
    d.close()


def _reason(msg: Any) -> str:
    body = json.loads(msg.data)
    return str(body.get("error", ""))


# Specs that once stopped or wedged a broker, tried on every run.
_KNOWN_SPEC = b'{"funcname": "echo", "conditions": {"executortype": "echo"}, %s}'

colonies = st.one_of(st.just(COLONY), st.just(COLONY), tokens)
executor_types = st.one_of(st.just("echo"), tokens)


@pytest.mark.timeout(_TEST_S)
def test_every_spec_becomes_a_process_or_a_rejection(door: Door) -> None:
    @FUZZ
    @given(colony=colonies, executor_type=executor_types, body=bodies(spec_like()))
    @example(COLONY, "echo", _KNOWN_SPEC % b'"priority": 200000')
    @example(COLONY, "echo", _KNOWN_SPEC % b'"maxexectime": 1000000000000000')
    @example(COLONY, "echo", _KNOWN_SPEC % b'"maxwaittime": 10000000000000')
    @example(COLONY, "echo", _KNOWN_SPEC % b'"maxretries": -7')
    def one_spec(colony: str, executor_type: str, body: bytes) -> None:
        pid = secrets.token_hex(32)
        subject = door.subjects.specs(colony, executor_type)
        publish = door.nc.jetstream().publish(subject, body, headers={"Nats-Msg-Id": pid})
        watched = [door.subjects.events_filter(colony=colony, process_id=pid)]
        msg = door.call(door.first_event(watched, publish))
        assert msg is not None, f"no process and no rejection for {body[:200]!r} on {subject}"
        if ".rejected." in msg.subject:
            assert _reason(msg), msg.data
        door.assert_broker_leads()

    one_spec()
    door.assert_intake_drained()
    door.assert_broker_would_restart()
    door.assert_good_spec_runs()


@pytest.mark.timeout(_TEST_S)
def test_every_workflow_becomes_a_graph_or_a_rejection(door: Door) -> None:
    @FUZZ
    @given(colony=colonies, body=bodies(workflow_like()))
    def one_workflow(colony: str, body: bytes) -> None:
        gid = secrets.token_hex(32)
        subject = door.subjects.workflows(colony)
        publish = door.nc.jetstream().publish(subject, body, headers={"Nats-Msg-Id": gid})
        watched = [
            door.subjects.events_filter(colony=colony, executor_type=GRAPH_TOKEN, process_id=gid),
            door.subjects.events_filter(colony=colony, process_id=node_process_id(gid, 0)),
        ]
        msg = door.call(door.first_event(watched, publish))
        assert msg is not None, f"no graph and no rejection for {body[:200]!r}"
        if ".rejected." in msg.subject:
            assert _reason(msg), msg.data
        door.assert_broker_leads()

    one_workflow()
    door.assert_intake_drained()
    door.assert_broker_would_restart()
    door.assert_good_spec_runs()


def _operations(door: Door) -> dict[str, list[str]]:
    """Every request operation the live broker serves, with its request's field names."""
    service = live_brokers[door.settings.prefix].service_of(COLONY)
    assert service is not None
    found = {}
    for op, (decoder, _) in service._ops.items():
        info = msgspec.inspect.type_info(decoder.type)
        fields = [f.encode_name for f in getattr(info, "fields", ())]
        found[op] = fields
    return found


@pytest.mark.timeout(_TEST_S)
def test_every_request_gets_an_answer(door: Door) -> None:
    operations = _operations(door)

    @FUZZ
    @given(data=st.data())
    def one_request(data: st.DataObject) -> None:
        op = data.draw(st.sampled_from(sorted(operations)), label="op")
        body = data.draw(bodies(request_like(operations[op])), label="body")
        colony = data.draw(st.one_of(colonies, st.just("_server")), label="colony")
        caller = data.draw(st.one_of(st.just("tester"), tokens), label="caller")
        subject = door.subjects.rpc(colony, caller, op)
        try:
            reply = door.call(door.request(colony, caller, subject, body))
        except nats.errors.TimeoutError:
            assert op in _LONG_POLLS, f"no answer to {op} {body[:200]!r}"
        else:
            if (reply.headers or {}).get("Status") == "503":  # no responders: no broker
                # leads a colony that does not exist (the SDK then asks the server scope why)
                assert colony not in (COLONY, "_server"), f"{op} in {colony}: no broker"
                return
            answer = json.loads(reply.data)
            assert isinstance(answer, dict) and ("result" in answer or "error" in answer)
        door.assert_broker_leads()

    one_request()
    door.assert_broker_would_restart()
    door.assert_good_spec_runs()


@pytest.mark.timeout(_TEST_S)
def test_after_the_fuzz_a_good_spec_still_runs(door: Door) -> None:
    """The same end check, on its own: it must pass on an untouched system too."""
    door.assert_broker_leads()
    door.assert_good_spec_runs()
