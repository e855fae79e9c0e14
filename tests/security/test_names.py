"""Names, roles and inboxes on a secure installation: what a name held once gives its next
holder (nothing), who may take a free name, and whose replies an inbox carries."""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec
import pytest

from colonyos.broker import Broker
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.errors import BrokerUnavailableError, ConflictError, NotAuthorizedError
from colonyos.models import Executor, ExecutorState, Process, ProcessState
from colonyos.security.members import PENDING_SILENCE_S, Member, MemberBook
from colonyos.security.permissions import Role
from tests.conftest import running_broker
from tests.helpers import spec, until
from tests.security.conftest import COLONY, Party

pytestmark = pytest.mark.timeout(60)

MakeParty = Callable[..., Party]


def _runs_with_key_of(person: Party, name: str) -> Party:
    """An executor ``name`` that runs with ``person``'s key (a member's executors are
    approved as they register in an auto-approve colony)."""
    return Party(name, person.identity, person.settings)


async def _approved_executor(party: Party) -> Client:
    """``party`` registered as an executor of dev (auto-approve, and its key is the owner's)
    and connected again with the rights of an approved one."""
    async with await Client.connect(party.settings, caller=party.name, executor=True) as first:
        await first.register(Executor(executor_name=party.name, executor_type="echo"))
    return await Client.connect(party.settings, caller=party.name, executor=True)


# nats-py leaves the socket of a refused reconnect open: its warning is not this test's.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_removed_executors_name_given_to_a_user_inherits_nothing(
    make_party: MakeParty, owner: Client, root: Party, secure_broker: Broker
) -> None:
    """Removing an executor member unregisters it (what it ran goes back to the queue); the
    name added again as a user's may not take, close or fail work: executor requests follow
    the member record's role, not the executor record the name had."""
    worker = _runs_with_key_of(root, "w1")
    async with await _approved_executor(worker) as ex:
        submitted = await owner.submit(spec())
        assert isinstance(submitted, Process)
        taken = await ex.assign(timeout=10)
        assert taken is not None and taken.process_id == submitted.process_id
        await owner.member_remove("w1")
    assert secure_broker.service_of(COLONY) is not None
    assert (
        secure_broker.service_of(COLONY).executor(COLONY, "w1").state is ExecutorState.UNREGISTERED
    )
    back = await owner.get(submitted.process_id)
    assert back.state is ProcessState.WAITING

    user = make_party("w1")
    await owner.member_add("w1", user.identity.public_key)
    async with await user.client() as squatter:
        with pytest.raises(NotAuthorizedError, match="'w1' is a user of colony 'dev', not an"):
            await squatter.assign(timeout=1)
        with pytest.raises(NotAuthorizedError, match="not an executor"):
            await squatter.close(submitted.process_id, ["stolen"])
        with pytest.raises(NotAuthorizedError, match="not an executor"):
            await squatter.fail(submitted.process_id, ["stolen"])
    assert (await owner.get(submitted.process_id)).state is ProcessState.WAITING


async def test_a_removed_executor_record_gives_no_executor_rights(
    owner: Client, root: Party, book: MemberBook
) -> None:
    """The broker's own check, whatever rights a connection was given when it connected."""
    worker = _runs_with_key_of(root, "w2")
    async with await _approved_executor(worker) as ex:
        held = await book.get(COLONY, "w2")
        assert held is not None
        await book.put(msgspec.structs.replace(held, removed=True))
        with pytest.raises(NotAuthorizedError, match="'w2' is a removed member of colony"):
            await ex.assign(timeout=1)


async def test_a_removed_colony_owner_owns_nothing(
    make_party: MakeParty, owner: Client, secure_broker: Broker, book: MemberBook
) -> None:
    carol = make_party("carol")
    await book.put(
        Member(
            colony_name=COLONY,
            name="carol",
            public_key=carol.identity.public_key,
            role=Role.COLONY_OWNER,
            removed=True,
        )
    )
    assert (
        secure_broker.service_of(COLONY) is not None
        and secure_broker.service_of(COLONY).authorize is not None
    )
    with pytest.raises(NotAuthorizedError, match="owner of colony 'dev', and 'carol' is not"):
        await secure_broker.service_of(COLONY).authorize(COLONY, "carol", "member_add")


async def test_a_squatter_of_the_server_owners_name_hears_none_of_its_answers(
    make_party: MakeParty, owner: Client, root: Party, secure_prefix: str
) -> None:
    """root (a server owner) connects to colony lab, where it has no member record; a stranger
    takes the name root in lab as an executor, with the inbox a member root of lab would have.
    root's answers come on the server scope, where no colony member's inbox can be."""
    olive = make_party("olive", colony="lab")
    await owner.colony_add(
        "lab", auto_approve=True, owner_key=olive.identity.public_key, owner_name="olive"
    )
    async with await root.client("lab") as root_in_lab:
        squatter = make_party("root", colony="lab")
        async with await Client.connect(squatter.settings, caller="root", executor=True) as sq:
            sub = await sq.nc.subscribe(f"_INBOX.{secure_prefix}.lab.root.>")
            await sq.nc.flush()
            assert "lab" in [c.name for c in await root_in_lab.colony_list()]
            await root_in_lab.colony_get("lab")
            await sq.nc.flush()  # anything sent to its subscription has arrived by now
            assert sub.pending_msgs == 0


async def test_a_server_owner_manages_colonies_not_what_is_in_them(
    make_party: MakeParty, owner: Client, root: Party
) -> None:
    """In a colony it has no member record in, a server owner's connection may ask server
    operations only: the server refuses it the colony's processes and members."""
    olive = make_party("olive", colony="lab")
    await owner.colony_add("lab", owner_key=olive.identity.public_key, owner_name="olive")
    async with await root.client("lab") as root_in_lab:
        assert (await root_in_lab.colony_get("lab")).name == "lab"
        with pytest.raises(NotAuthorizedError, match="the server refused 'list'"):
            await root_in_lab.list_processes()
        with pytest.raises(NotAuthorizedError, match="the server refused 'member_add'"):
            await root_in_lab.member_add("mallory", make_party("m").identity.public_key)


async def test_a_new_colony_starts_with_its_owner_whatever_records_were_left(
    make_party: MakeParty, owner: Client, book: MemberBook
) -> None:
    """Records of a colony that does not exist (left by a failed add or removal) neither
    refuse the new colony's owner nor leave the colony made without it."""
    stale, olive = make_party("olive", colony="lab"), make_party("olive", colony="lab")
    for name in ("olive", "bob"):
        await book.put(
            Member(
                colony_name="lab",
                name=name,
                public_key=stale.identity.public_key,
                role=Role.COLONY_OWNER,
            )
        )
    await owner.colony_add("lab", owner_key=olive.identity.public_key, owner_name="olive")
    held = await book.get("lab", "olive")
    assert held is not None and held.public_key == olive.identity.public_key
    assert [m.name for m in await book.all_of("lab")] == ["olive"]


async def test_adding_an_existing_colony_writes_no_owner_into_it(
    make_party: MakeParty, owner: Client, book: MemberBook
) -> None:
    mallory = make_party("mallory")
    with pytest.raises(ConflictError, match="colony 'dev' already exists"):
        await owner.colony_add(COLONY, owner_key=mallory.identity.public_key, owner_name="mallory")
    assert await book.get(COLONY, "mallory") is None
    assert await book.get(COLONY, "root") is not None


async def test_every_member_lists_the_colonys_members(make_party: MakeParty, owner: Client) -> None:
    bob = make_party("bob")
    await owner.member_add("bob", bob.identity.public_key)
    async with await bob.client() as client:
        listed = {m.name: m.role for m in await client.member_list()}
    assert listed == {"bob": Role.USER, "root": Role.COLONY_OWNER}


async def test_executors_waiting_for_approval_are_bounded_per_colony(
    make_party: MakeParty, owner: Client, book: MemberBook, caplog: pytest.LogCaptureFixture
) -> None:
    """A stranger's free names wait for approval at most max_pending at once; lapsed claims
    do not count, and executors the owner adds ahead are never refused."""
    await owner.colony_add("strict")
    book.max_pending = 2
    stranger = make_party("x", colony="strict")
    for name in ("new-1", "new-2"):
        async with await Client.connect(stranger.settings, caller=name, executor=True):
            pass
    with (
        caplog.at_level(logging.INFO, logger="colonyos.broker.callout"),
        pytest.raises(NotAuthorizedError, match="not allowed"),
    ):
        await Client.connect(stranger.settings, caller="new-3", executor=True)
    # The server tells the client no reason; the broker's log does.
    assert "refused new-3 in strict: colony 'strict' already has 2 executors waiting" in (
        caplog.text
    )
    assert await book.get("strict", "new-3") is None
    book.pending_silence_s = 0.0  # every claim so far has lapsed
    async with await Client.connect(stranger.settings, caller="new-3", executor=True):
        pass
    held = await book.get("strict", "new-3")
    assert held is not None and held.claimed_at is not None


# nats-py leaves the socket of a refused reconnect open: its warning is not this test's.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_silent_claim_never_approved_lapses_and_its_holder_is_cut(
    make_party: MakeParty, owner: Client, book: MemberBook
) -> None:
    """A stranger took gpu-1 in a colony that approves no one by itself, and stays connected
    without registering. Until its claim lapses the name is its; then the name's rightful
    executor takes it, and the squatter's connection is cut (it held the name's inbox)."""
    await owner.colony_add("strict")
    squatter, gpu = make_party("gpu-1", colony="strict"), make_party("gpu-1", colony="strict")
    async with await Client.connect(squatter.settings, caller="gpu-1", executor=True) as sq:
        with pytest.raises(NotAuthorizedError, match="not allowed"):
            await Client.connect(gpu.settings, caller="gpu-1", executor=True)
        book.pending_silence_s = 0.0
        with pytest.raises(NotAuthorizedError, match="not allowed"):  # a user takes no name
            await Client.connect(gpu.settings, caller="gpu-1")
        async with await Client.connect(gpu.settings, caller="gpu-1", executor=True) as mine:
            book.pending_silence_s = PENDING_SILENCE_S  # the squatter's reconnect is refused
            await until(lambda: not sq.nc.is_connected, timeout=10)
            registered = await mine.register(Executor(executor_name="gpu-1", executor_type="gpu"))
            assert registered.state is ExecutorState.PENDING
        held = await book.get("strict", "gpu-1")
        assert held is not None and held.public_key == gpu.identity.public_key


async def test_a_claim_once_approved_does_not_lapse(
    make_party: MakeParty, owner: Client, root: Party, book: MemberBook
) -> None:
    worker, other = _runs_with_key_of(root, "w3"), make_party("w3")
    async with await _approved_executor(worker):
        pass
    book.pending_silence_s = 0.0
    with pytest.raises(NotAuthorizedError, match="not allowed"):
        await Client.connect(other.settings, caller="w3", executor=True)


async def test_a_colony_owners_executors_are_approved_as_they_register_strangers_wait(
    make_party: MakeParty, owner: Client, root: Party
) -> None:
    """In a colony that does not auto-approve (dev, as 'colonies dev' makes it on a secure
    installation) an executor running with its owner's key needs no approval: the owner would
    give it. Anyone else who reaches the server, or a user's key, waits for the owner."""
    await owner.colony_add("strict")
    async with await root.client("strict") as strict_owner:
        bob = make_party("bob", colony="strict")
        await strict_owner.member_add("bob", bob.identity.public_key)
    for party, state in (
        (make_party("drive-by", colony="strict"), ExecutorState.PENDING),
        (Party("bob-echo", bob.identity, bob.settings), ExecutorState.PENDING),
        (
            Party("echo-2", root.identity, msgspec.structs.replace(root.settings, colony="strict")),
            ExecutorState.APPROVED,
        ),
    ):
        async with await Client.connect(party.settings, caller=party.name, executor=True) as c:
            got = await c.register(Executor(executor_name=party.name, executor_type="echo"))
            assert got.state is state, party.name


async def test_a_server_operation_with_no_broker_says_so(
    own_brokers: BrokerSettings, settings: Settings
) -> None:
    """Answered in the server owner's own inbox, not through nats-py's request: the server's
    no-responders answer still reads as "no broker", not a timeout. (A broker lets the owner
    in, and stops.)"""
    async with running_broker(own_brokers, owners=True):
        client = await Client.connect(settings, caller="tester")
    async with client:
        with pytest.raises(BrokerUnavailableError, match="no broker is answering"):
            await client.colony_list()
