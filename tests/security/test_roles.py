"""Role rules on a secure installation: owners manage members, users submit and read,
executors register with their own key and work, and each is refused the others' requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import msgspec
import nats.errors
import pytest

from colonyos.broker.membership import reply_in_inbox
from colonyos.client import Client
from colonyos.errors import (
    BrokerUnavailableError,
    ColonyNotFoundError,
    InvalidSpecError,
    NotAuthorizedError,
)
from colonyos.executor import ExecutorApp
from colonyos.messages import ColonyAdd, Empty, Named
from colonyos.models import Colony, ExecutorState, ProcessState
from colonyos.security.members import Member, MemberBook
from colonyos.security.permissions import Role
from executors import echo
from tests.helpers import spec, until
from tests.security.conftest import COLONY, Party

pytestmark = pytest.mark.timeout(60)

MakeParty = Callable[..., Party]


@pytest.fixture
async def bob_client(bob: Party) -> AsyncIterator[Client]:
    client = await bob.client()
    yield client
    await client.aclose()


async def _run_executor(party: Party) -> tuple[ExecutorApp, asyncio.Task[int]]:
    app = echo.build(party.settings, "echo", party.name)
    task = asyncio.create_task(app.run())
    ready = asyncio.create_task(app.ready.wait())
    await asyncio.wait({task, ready}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    assert ready.done(), "the executor did not become ready"
    return app, task


async def _stop(app: ExecutorApp, task: asyncio.Task[int]) -> None:
    app.stop()
    async with asyncio.timeout(10):
        await task


async def test_the_server_owner_who_adds_a_colony_owns_it(owner: Client, book: MemberBook) -> None:
    held = await book.get(COLONY, "root")
    assert held is not None and held.role is Role.COLONY_OWNER


async def test_an_added_user_submits_and_reads(bob_client: Client) -> None:
    process = await bob_client.submit(spec(args=["hi"]))
    assert (await bob_client.get(process.process_id)).initiator_name == "bob"


async def test_a_user_cannot_do_what_the_owner_does(
    bob_client: Client, make_party: MakeParty
) -> None:
    other = make_party("carol")
    with pytest.raises(NotAuthorizedError, match="owner of colony"):
        await bob_client.member_add("carol", other.identity.public_key)
    with pytest.raises(NotAuthorizedError, match="owner of colony"):
        await bob_client.executor_approve("anyone")
    with pytest.raises(NotAuthorizedError, match="owner of colony"):
        await bob_client.member_remove("root")


async def test_a_user_cannot_register_as_an_executor(bob: Party) -> None:
    app = echo.build(bob.settings, "echo", "bob")
    with pytest.raises(NotAuthorizedError, match="not an executor"):
        async with asyncio.timeout(20):
            await app.run(burst=True)


async def test_a_removed_user_cannot_connect_again(bob: Party, owner: Client) -> None:
    async with await bob.client():
        pass
    await owner.member_remove("bob")
    with pytest.raises(NotAuthorizedError, match="not allowed"):
        await bob.client()


async def test_an_executor_with_its_own_key_registers_and_runs_work(
    make_party: MakeParty, owner: Client, bob_client: Client
) -> None:
    """Colony dev approves executors as they register: the first connection may only
    register; the executor connects again as approved and takes work."""
    worker = make_party("worker-1")
    app, task = await _run_executor(worker)
    try:
        process = await bob_client.submit(spec(args=["hi"]))
        done = await bob_client.wait(process.process_id, timeout=20)
        assert done.state is ProcessState.SUCCESS and done.output == ["hi"]
    finally:
        await _stop(app, task)


async def test_an_executor_added_ahead_runs_without_waiting_for_approval(
    make_party: MakeParty, owner: Client, root: Party
) -> None:
    """Colony strict approves no one by itself: an executor its owner added with its key and
    type is approved before it first starts."""
    await owner.colony_add("strict", auto_approve=False)
    async with await root.client("strict") as strict_owner:
        worker = make_party("worker-2", colony="strict")
        added = await strict_owner.member_add(
            "worker-2", worker.identity.public_key, role="executor", executor_type="echo"
        )
        assert added.role is Role.EXECUTOR
        app, task = await _run_executor(worker)
        try:
            process = await strict_owner.submit(spec(args=["hi"]))
            done = await strict_owner.wait(process.process_id, timeout=20)
            assert done.state is ProcessState.SUCCESS
        finally:
            await _stop(app, task)


async def test_an_unknown_executor_waits_for_the_owner_then_works(
    make_party: MakeParty, owner: Client, root: Party
) -> None:
    await owner.colony_add("strict", auto_approve=False)
    async with await root.client("strict") as strict_owner:
        worker = make_party("worker-3", colony="strict")
        app = echo.build(worker.settings, "echo", "worker-3")
        task = asyncio.create_task(app.run())
        try:
            async with asyncio.timeout(20):
                while not [
                    e for e in await strict_owner.executor_list() if e.executor_name == "worker-3"
                ]:
                    await asyncio.sleep(0.05)  # sleep-ok: polling the owner's list under a deadline
            [pending] = [
                e for e in await strict_owner.executor_list() if e.executor_name == "worker-3"
            ]
            assert pending.state is ExecutorState.PENDING
            await strict_owner.executor_approve("worker-3")
            async with asyncio.timeout(20):
                await app.ready.wait()
            process = await strict_owner.submit(spec(args=["hi"]))
            assert (
                await strict_owner.wait(process.process_id, timeout=20)
            ).state is ProcessState.SUCCESS
        finally:
            await _stop(app, task)


async def test_a_refused_request_says_not_allowed_not_no_broker(
    make_party: MakeParty, owner: Client, book: MemberBook
) -> None:
    """The server refuses the publish and tells only the error callback; the request would
    then time out. The client says what was refused, at once (not after its timeout)."""
    worker = make_party("worker-4")
    await book.add(
        Member(
            colony_name=COLONY,
            name="worker-4",
            public_key=worker.identity.public_key,
            role=Role.EXECUTOR,
        )
    )
    settings = msgspec.structs.replace(worker.settings, request_timeout_s=600.0)
    async with await Client.connect(settings, caller="worker-4", executor=True) as pending:
        with pytest.raises(NotAuthorizedError, match="not allowed: the server refused 'list'"):
            await pending.list_processes()
        with pytest.raises(NotAuthorizedError, match="not allowed: the server refused 'submit'"):
            await pending.submit(spec(args=["hi"]))


async def test_a_server_owner_in_a_colony_that_does_not_exist_hears_so(root: Party) -> None:
    """A server owner may connect to a colony that does not exist (to add it), and may do
    nothing in it: the client says the colony does not exist, not "not allowed"."""
    settings = msgspec.structs.replace(root.settings, colony="nowhere", request_timeout_s=600.0)
    async with await Client.connect(settings, caller="root") as lost:
        with pytest.raises(ColonyNotFoundError, match="nowhere"):
            await lost.list_processes()
        with pytest.raises(ColonyNotFoundError, match="nowhere"):
            await lost.submit(spec(args=["hi"]))


# nats-py leaves the socket of a refused reconnect open: its warning is not this test's.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_removing_a_member_cuts_its_live_connection(bob: Party, owner: Client) -> None:
    """Within the request: the removal answers once the server has closed bob's connection."""
    async with await bob.client() as connected:
        await connected.list_processes()  # in and working
        await owner.member_remove("bob")
        await until(lambda: not connected.nc.is_connected, timeout=10)
        with pytest.raises((NotAuthorizedError, BrokerUnavailableError, nats.errors.Error)):
            await connected.list_processes()


@pytest.mark.parametrize(
    ("colony", "caller", "reply", "answered"),
    [
        ("dev", "alice", "_INBOX.P.dev.alice.abc.1", True),
        ("dev", "alice", "", True),  # a publish without reply: nothing is sent
        ("dev", "alice", "P.other.specs.echo", False),  # into another colony's stream
        ("dev", "alice", "_INBOX.P.dev.bob.abc", False),  # another member's inbox
        ("dev", "alice", "_INBOX.P.other.alice.abc", False),  # another colony's alice
        ("dev", "alice", "_INBOX.Q.dev.alice.abc", False),  # another installation's
        ("dev", "alice", "_INBOX.P.dev.alice", False),  # the prefix itself
        ("dev", "alice", "_INBOX.abc", False),  # nats-py's default inbox
        ("_server", "root", "_INBOX.P._server.root.abc", True),  # a server owner's own
        ("_server", "root", "_INBOX.P.dev.root.abc", False),  # whoever holds root in dev
        ("_server", "root", "_INBOX.P._server.alice.abc", False),
    ],
)
def test_the_broker_answers_only_into_the_callers_inbox(
    colony: str, caller: str, reply: str, answered: bool
) -> None:
    assert reply_in_inbox("P", colony, caller, reply) is answered


async def test_an_executor_started_before_its_colony_waits_then_works(
    make_party: MakeParty, owner: Client, root: Party
) -> None:
    """Refused while colony later does not exist, it says so and tries again; once the colony
    is made it registers (auto-approve) and takes work."""
    worker = make_party("worker-6", colony="later")
    said: list[str] = []
    app = echo.build(worker.settings, "echo", "worker-6")
    app.on_status = lambda status: said.append(status.message)
    task = asyncio.create_task(app.run())
    try:
        await until(
            lambda: any("refused 'worker-6' in colony 'later'" in m for m in said), timeout=20
        )
        assert not task.done()
        await owner.colony_add("later", auto_approve=True)
        async with asyncio.timeout(30):
            await app.ready.wait()
        async with await root.client("later") as later_owner:
            process = await later_owner.submit(spec(args=["hi"]))
            done = await later_owner.wait(process.process_id, timeout=20)
            assert done.state is ProcessState.SUCCESS
    finally:
        await _stop(app, task)


async def test_server_operations_are_refused_on_a_colonys_subject(
    bob_client: Client, owner: Client, book: MemberBook
) -> None:
    """A member may publish rpc on its own colony's subject, so a server operation asked there
    must be refused by the broker: bob cannot list, remove or add colonies."""
    await owner.colony_add("victim")
    for op, body in (
        ("colony_list", Empty()),
        ("colony_remove", Named(name="victim")),
        ("colony_add", ColonyAdd(colony=Colony(name="mine"))),
        ("colony_get", Named(name="victim")),
    ):
        with pytest.raises(NotAuthorizedError, match="is not asked on colony 'dev'"):
            await bob_client._must(op, body, object)
    assert sorted(c.name for c in await owner.colony_list()) == ["dev", "victim"]


async def test_a_removed_colony_takes_its_members_with_it(
    bob: Party, owner: Client, book: MemberBook
) -> None:
    """Made again under the same name, a colony starts with no one: bob's old key is not let in."""
    await owner.colony_remove(COLONY)
    assert await book.all_of(COLONY) == []
    await owner.colony_add(COLONY)
    with pytest.raises(NotAuthorizedError, match="not allowed"):
        await bob.client()


async def test_an_executor_added_without_a_valid_type_leaves_nothing_behind(
    owner: Client, book: MemberBook, make_party: MakeParty
) -> None:
    worker = make_party("w9")
    with pytest.raises(InvalidSpecError):
        await owner.member_add("w9", worker.identity.public_key, role="executor")
    assert await book.get(COLONY, "w9") is None
