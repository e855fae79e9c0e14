"""The callout under load: requests answered at once (one slow to decide does not hold up the
others), and a client host refused too often refused without reading the book, unless a member
connects from it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import msgspec
import nats
import pytest

from colonyos.broker import callout as callout_module
from colonyos.broker.callout import Callout
from colonyos.errors import BrokerUnavailableError, NotAuthorizedError
from colonyos.models import Colony
from colonyos.security.members import MemberBook
from colonyos.security.permissions import Role
from colonyos.security.throttle import Throttle
from colonyos.subjects import Subjects
from tests.helpers import until
from tests.security.conftest import COLONY, Party, SecureServer, drop_streams, enroll

pytestmark = [
    pytest.mark.timeout(60),
    # nats-py leaves the socket of a refused connection open: its warning is not this test's.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

MakeParty = Callable[..., Party]


class GatedBook(MemberBook):
    """The book, but deciding about ``slow`` waits until ``gate`` is set; counts decisions."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.gate = asyncio.Event()
        self.asked: list[str] = []

    async def roles_of(
        self, colony: str, name: str, public_key: str, *, executor: bool = False
    ) -> tuple[Role, ...]:
        self.asked.append(name)
        if name == "slow":
            await self.gate.wait()
        return await super().roles_of(colony, name, public_key, executor=executor)


@contextlib.asynccontextmanager
async def _callout_on(server: SecureServer, prefix: str) -> AsyncIterator[Callout]:
    """The only callout of ``prefix`` on ``server`` (no broker runs), over a book with colony
    ``dev``."""
    nc = await nats.connect(server.url, nkeys_seed_str=server.keys.broker.seed.decode())
    subjects = Subjects(prefix)
    book = GatedBook(nc.jetstream(), subjects, storage="memory")
    await book.start()
    colonies = await nc.jetstream().key_value(subjects.bucket_colonies)
    await colonies.put(COLONY, msgspec.json.encode(Colony(name=COLONY)))
    callout = Callout(server.url, subjects, server.keys, book)
    await callout.start()
    try:
        yield callout
    finally:
        book.gate.set()
        await callout.stop()
        await book.stop_following()
        await nc.close()
        await drop_streams(server, prefix)


@pytest.fixture
async def callout(secure_server: SecureServer, secure_prefix: str) -> AsyncIterator[Callout]:
    async with _callout_on(secure_server, secure_prefix) as callout:
        yield callout


async def _member(make_party: MakeParty, callout: Callout, name: str) -> Party:
    party = make_party(name)
    await enroll(callout.book, party, COLONY, Role.USER)
    await until(lambda: callout.is_member_key(party.identity.public_key), timeout=5)
    return party


async def test_a_request_slow_to_decide_does_not_hold_up_the_others(
    make_party: MakeParty, callout: Callout
) -> None:
    book = callout.book
    assert isinstance(book, GatedBook)
    slow = await _member(make_party, callout, "slow")
    alice = await _member(make_party, callout, "alice")
    slow_connecting = asyncio.create_task(slow.client())
    try:
        await until(lambda: "slow" in book.asked, timeout=5)
        async with await alice.client() as client:  # while slow's request still waits
            assert client.nc.is_connected
            assert not slow_connecting.done()
    finally:
        book.gate.set()
    async with asyncio.timeout(10):
        await (await slow_connecting).aclose()


@pytest.mark.usefixtures("one_connect_retry")
async def test_a_host_refused_too_often_is_refused_without_reading_the_book(
    make_party: MakeParty, callout: Callout
) -> None:
    book = callout.book
    assert isinstance(book, GatedBook)
    alice = await _member(make_party, callout, "alice")
    callout.refusals = Throttle(burst=1, per_s=1.0, clock=lambda: 0.0)
    with pytest.raises(NotAuthorizedError):
        await make_party("mallory").client()
    assert book.asked == ["mallory"]  # read the book, refused: the host's one refusal
    with pytest.raises(NotAuthorizedError):
        await make_party("eve").client()
    assert book.asked == ["mallory"]  # refused at once
    async with await alice.client() as client:  # a member's key, from the same host
        assert client.nc.is_connected
    assert book.asked == ["mallory", "alice"]


async def test_the_member_keys_follow_the_book(make_party: MakeParty, callout: Callout) -> None:
    alice = await _member(make_party, callout, "alice")
    await callout.book.remove(COLONY, "alice")
    await until(lambda: not callout.is_member_key(alice.identity.public_key), timeout=5)
    await enroll(callout.book, alice, COLONY, Role.USER)
    await until(lambda: callout.is_member_key(alice.identity.public_key), timeout=5)
    await callout.book.forget_colony(COLONY)
    await until(lambda: not callout.is_member_key(alice.identity.public_key), timeout=5)


@pytest.mark.usefixtures("one_connect_retry")
async def test_requests_beyond_those_waiting_are_dropped(
    make_party: MakeParty,
    impatient_server: SecureServer,
    secure_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the requests already waiting, one more is not answered (the server refuses the
    connection once its auth timeout passes): a flood cannot queue without end."""
    async with _callout_on(impatient_server, secure_prefix) as callout:
        book = callout.book
        assert isinstance(book, GatedBook)
        alice = await _member(make_party, callout, "alice")
        alice.settings = msgspec.structs.replace(alice.settings, nats_url=impatient_server.url)
        monkeypatch.setattr(callout_module, "_MAX_WAITING", 0)
        # Refused, or closed without a word once the server's auth timeout passes.
        with pytest.raises((NotAuthorizedError, BrokerUnavailableError)):
            await alice.client()
        assert book.asked == []
