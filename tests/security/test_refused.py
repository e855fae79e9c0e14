"""A connection the server cuts and then refuses (its member removed): a client stops with the
reason, an executor's connection keeps trying, slower and slower, and gets back in once let in
again (a broker fail-over also refuses for a moment)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import nats
import pytest

from colonyos import connection
from colonyos.broker import Broker
from colonyos.broker import callout as callout_module
from colonyos.broker.kicker import Kicker
from colonyos.client import Client, executor_calls
from colonyos.config import BrokerSettings
from colonyos.connection import refusal
from colonyos.errors import BrokerUnavailableError, NotAuthorizedError
from colonyos.executor import ExecutorStage, ExecutorStatus
from colonyos.models import ProcessState
from colonyos.security.members import MemberBook
from colonyos.security.permissions import Role
from colonyos.subjects import SERVER_SCOPE
from executors import echo
from tests.conftest import running_broker
from tests.helpers import connect_executor, spec, until
from tests.security.conftest import COLONY, Party, SecureServer, drop_streams, enroll

pytestmark = [
    pytest.mark.timeout(60),
    # nats-py leaves the socket of a refused reconnect open: its warning is not this test's.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

MakeParty = Callable[..., Party]


@pytest.fixture
def quick_to_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused client stops after 1 s of refusals, trying every quarter second (15 s and
    2 s in use): the same decisions, sooner (a few refused attempts, then the stop)."""
    monkeypatch.setattr(connection, "REFUSED_STOP_AFTER_S", 1.0)
    monkeypatch.setattr(connection, "_REFUSED_STOP_WAIT_S", 0.25)


@pytest.fixture
def quick_to_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused executor's waits double up to 1 s (a minute in use): back in sooner."""
    monkeypatch.setattr(connection, "REFUSED_RETRY_MAX_S", 1.0)


@pytest.mark.usefixtures("quick_to_stop")
async def test_a_removed_members_client_stops_with_the_reason(bob: Party, owner: Client) -> None:
    async with await bob.client() as client:
        await client.list_processes()
        await owner.member_remove("bob")
        # Refused for longer than a restart takes to be answered, it stops: no reconnecting
        # twice a second for ever.
        await until(lambda: client.nc.is_closed, timeout=40)
        with pytest.raises(NotAuthorizedError, match=r"not allowed: .* refused 'bob'"):
            await client.list_processes()


async def _parked_poll(secure_broker: Broker, worker: Party) -> tuple[Client, asyncio.Task[object]]:
    """``worker``'s executor (a client that stops when refused), its long poll for work held
    by the broker: nothing would answer it for an hour."""
    ex = await connect_executor(worker.settings, worker.name)
    polling: asyncio.Task[object] = asyncio.create_task(ex.assign(timeout=3600))
    service = secure_broker.service_of(COLONY)
    assert service is not None
    await until(lambda: len(service.parked.all_waiters()) == 1, timeout=10)
    return ex, polling


async def test_a_request_waiting_when_its_member_is_cut_fails_at_once_with_the_reason(
    make_party: MakeParty,
    owner: Client,
    secure_broker: Broker,
    book: MemberBook,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cut and refused back, a connection gets no answer to what it asked before: the
    request says why now, not when its timeout ends (here an hour away); so does a request
    asked while it is refused. The connection tries again in an hour here (every 2 s for 15 s
    in use), so neither its close nor its next refusal can be what ends them."""
    monkeypatch.setattr(connection, "REFUSED_STOP_AFTER_S", 3600.0)
    monkeypatch.setattr(connection, "_REFUSED_STOP_WAIT_S", 3600.0)
    ex, polling = await _parked_poll(secure_broker, make_party("worker"))
    try:
        await book.remove(COLONY, "worker")  # refused from now on
        service = secure_broker.service_of(COLONY)
        assert service is not None and service.cut is not None
        await service.cut(COLONY, "worker")
        with pytest.raises(NotAuthorizedError, match=r"not allowed: .* refused 'worker'"):
            async with asyncio.timeout(30):  # a bound on a hang, not a measure
                await polling
        with pytest.raises(NotAuthorizedError, match=r"not allowed: .* refused 'worker'"):
            async with asyncio.timeout(30):
                await ex.assign(timeout=3600)
    finally:
        polling.cancel()
        await ex.aclose()


async def test_a_request_waiting_when_its_connection_closes_fails_at_once(
    make_party: MakeParty, owner: Client, secure_broker: Broker
) -> None:
    ex, polling = await _parked_poll(secure_broker, make_party("worker"))
    try:
        await ex.nc.close()
        with pytest.raises(BrokerUnavailableError, match="the connection to NATS is closed"):
            async with asyncio.timeout(30):  # a bound on a hang, not a measure
                await polling
    finally:
        polling.cancel()


async def test_a_connection_that_keeps_trying_backs_off_and_gets_back_in(
    bob: Party, owner: Client
) -> None:
    client = await Client.connect(bob.settings, caller="bob", keep_trying=True)
    try:
        await client.list_processes()
        await owner.member_remove("bob")
        # Each refusal doubles the wait before the next attempt (up to a minute).
        await until(lambda: client.nc.options["reconnect_time_wait"] >= 2, timeout=15)
        assert not client.nc.is_closed
        assert "not allowed" in (refusal(client.nc) or "")
        await owner.member_add("bob", bob.identity.public_key)
        # Back in: nats-py says connected just before it calls the reconnected callback.
        await until(lambda: client.nc.is_connected and refusal(client.nc) is None, timeout=20)
        assert client.nc.options["reconnect_time_wait"] == 0.5
        await client.list_processes()
    finally:
        await client.aclose()


@pytest.mark.usefixtures("quick_to_stop")
@pytest.mark.parametrize("since", [None, datetime(2000, 1, 1, tzinfo=UTC)])
async def test_a_removed_members_event_stream_ends_with_the_reason(
    bob: Party, owner: Client, since: datetime | None
) -> None:
    """``colonies events`` (live, or replayed through a reader) stops, not waits for ever."""
    async with await bob.client() as client, client.subscribe(since=since) as events:
        await owner.member_remove("bob")
        with pytest.raises(NotAuthorizedError, match="not allowed"):
            async with asyncio.timeout(40):
                await events.next(None)


@pytest.fixture
def short_poll_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long poll for work gives up 1 s after its timeout without an answer (5 s in use)."""
    monkeypatch.setattr(executor_calls, "_ASSIGN_MARGIN_S", 1.0)


@pytest.mark.usefixtures("quick_to_retry", "short_poll_margin")
async def test_an_executor_refused_for_a_while_says_why_and_comes_back(
    make_party: MakeParty, owner: Client, secure_broker: Broker, book: MemberBook
) -> None:
    """As in a broker fail-over (no broker answers the callout): refused on reconnecting, an
    executor keeps trying, slower and slower, says why, and works again once let in."""
    worker = make_party("worker")
    said: list[ExecutorStatus] = []
    app = echo.build(worker.settings, "echo", "worker")
    # It says why when a request fails: its long poll for work, here of 2 s (10 in use), and
    # its margin (1 s here). A long poll is not abandoned on a refusal: the broker may answer it once the
    # connection is let in again (the reply comes to the same inbox).
    app.assign_timeout_s = 2.0
    app.on_status = said.append
    task = asyncio.create_task(app.run())
    try:
        async with asyncio.timeout(40):
            await app.ready.wait()
        member = await book.get(COLONY, "worker")
        assert member is not None
        await book.remove(COLONY, "worker")  # refused from now on, its records kept
        service = secure_broker.service_of(COLONY)
        assert service is not None and service.cut is not None
        await service.cut(COLONY, "worker")
        await until(
            lambda: any(
                s.stage is ExecutorStage.NOT_LET_IN and "not allowed" in s.message for s in said
            ),
            timeout=30,
        )
        assert not task.done()
        app.ready.clear()
        await book.put(member)  # let in again
        async with asyncio.timeout(40):
            await app.ready.wait()
        process = await owner.submit(spec(args=["hi"]))
        assert (await owner.wait(process.process_id, timeout=20)).state is ProcessState.SUCCESS
    finally:
        app.stop()
        async with asyncio.timeout(10):
            await task


async def test_a_connection_whose_jwt_expired_reconnects_for_a_new_one(
    bob: Party, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server closes a connection when its user JWT expires (after an hour); nats-py would
    then stay closed for good."""
    monkeypatch.setattr(callout_module, "USER_JWT_TTL_S", 1.0)
    async with await bob.client() as client:
        await until(lambda: client.nc.stats["reconnects"] >= 1, timeout=15)
        await until(lambda: client.nc.is_connected, timeout=15)
        await client.list_processes()
        assert not client.nc.is_closed


@pytest.mark.usefixtures("quick_to_retry")
async def test_an_executor_rides_out_a_broker_fail_over(
    make_party: MakeParty, secure_server: SecureServer, secure_prefix: str
) -> None:
    """No broker answers the callout for a while (the one running stopped, the next not yet
    up): the executor's reconnect is refused meanwhile; it keeps trying and, once a broker
    answers again, takes work."""
    settings = BrokerSettings(
        nats_url=secure_server.url,
        prefix=secure_prefix,
        storage="memory",
        keys_dir=secure_server.keys_dir,
    )
    root = make_party("root")
    worker = make_party("worker")
    app = echo.build(worker.settings, "echo", "worker")
    app.assign_timeout_s = 2.0  # it says why a request failed when its long poll ends
    said: list[ExecutorStatus] = []
    app.on_status = said.append
    task: asyncio.Task[int] | None = None
    try:
        async with running_broker(settings) as first:
            assert first.members is not None
            await enroll(first.members, root, SERVER_SCOPE, Role.SERVER_OWNER)
            async with await root.client() as owner:
                await owner.colony_add(COLONY, auto_approve=True)
            task = asyncio.create_task(app.run())
            async with asyncio.timeout(20):
                await app.ready.wait()
        # No broker now: cut the executor's connection, as a server going away would.
        system = await nats.connect(
            secure_server.url, nkeys_seed_str=secure_server.keys.system.seed.decode()
        )
        try:
            assert await Kicker(system, secure_prefix).cut(COLONY, "worker") == 1
        finally:
            await system.close()
        # Refused once the server stops waiting for a callout answer (or, when nats-py stops
        # waiting first, a connection that timed out).
        troubled = (ExecutorStage.NOT_LET_IN, ExecutorStage.UNREACHABLE, ExecutorStage.NO_BROKER)
        await until(lambda: any(s.stage in troubled for s in said), timeout=30)
        app.ready.clear()
        async with running_broker(settings):
            async with asyncio.timeout(40):
                await app.ready.wait()
            async with await root.client() as owner:
                process = await owner.submit(spec(args=["hi"]))
                done = await owner.wait(process.process_id, timeout=20)
                assert done.state is ProcessState.SUCCESS
            app.stop()
            async with asyncio.timeout(10):
                await task
    finally:
        app.stop()
        if task is not None and not task.done():
            task.cancel()
        await drop_streams(secure_server, secure_prefix)


async def test_a_client_rides_out_a_moment_when_no_broker_lets_it_in(
    make_party: MakeParty, secure_server: SecureServer, secure_prefix: str
) -> None:
    """A restarted NATS server, or a broker fail-over, refuses everyone until a broker answers
    the callout again: an SDK client refused meanwhile keeps trying for a while, and works
    again once let in, instead of closing for good at the first refusal."""
    settings = BrokerSettings(
        nats_url=secure_server.url,
        prefix=secure_prefix,
        storage="memory",
        keys_dir=secure_server.keys_dir,
    )
    root = make_party("root")
    async with running_broker(settings) as first:
        assert first.members is not None
        await enroll(first.members, root, SERVER_SCOPE, Role.SERVER_OWNER)
        async with await root.client() as owner:
            await owner.colony_add(COLONY, auto_approve=True)
        client = await root.client()
    try:
        # No broker now: cut the client's connection, as a server going away would.
        system = await nats.connect(
            secure_server.url, nkeys_seed_str=secure_server.keys.system.seed.decode()
        )
        try:
            assert await Kicker(system, secure_prefix).cut(COLONY, "root") >= 1
        finally:
            await system.close()
        # Refused once the server stops waiting for a callout answer, or, when nats-py stops
        # waiting first, an attempt that timed out: either way, not let back in yet.
        await until(lambda: not client.nc.is_connected, timeout=30)
        async with running_broker(settings):
            await until(lambda: client.nc.is_connected and refusal(client.nc) is None, timeout=30)
            assert not client.nc.is_closed
            await client.list_processes()
    finally:
        await client.aclose()


async def test_a_request_given_up_by_its_caller_goes_with_it() -> None:
    """Cancelled while it waits (an executor's parked assign when its colony's leader changes),
    the request is cancelled too: left running, it timed out later and asyncio logged "Task
    exception was never retrieved" with a traceback in the executor's output."""
    nc = nats.NATS()
    connection._denials[nc] = connection._Heard("back_off", "refused")
    started, request_cancelled = asyncio.Event(), asyncio.Event()

    async def asking() -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # a request never answered
        except asyncio.CancelledError:
            request_cancelled.set()
            raise

    caller = asyncio.ensure_future(
        connection.refused_at_once(nc, "colonies.a.rpc.x.assign", asking())
    )
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    async with asyncio.timeout(5):
        await request_cancelled.wait()
