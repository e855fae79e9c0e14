"""Who may read statistics on a secure installation: a colony's, its members (an executor
too); the server's status, server owners, on the server scope only."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest

from colonyos.client import Client
from colonyos.errors import NotAuthorizedError
from colonyos.messages import Empty
from tests.security.conftest import COLONY, Party

pytestmark = pytest.mark.timeout(60)

MakeParty = Callable[..., Party]
OTHER = "other"


async def test_members_read_their_colonys_statistics(
    owner: Client, bob: Party, make_party: MakeParty
) -> None:
    worker = make_party("worker-1")
    await owner.member_add(
        "worker-1", worker.identity.public_key, role="executor", executor_type="echo"
    )
    async with await bob.client() as b, await worker.client() as w:
        assert (await b.colony_stats()).colony_name == COLONY
        assert await b.function_stats() == []
        assert (await w.colony_stats()).colony_name == COLONY


async def test_a_member_of_another_colony_is_refused(owner: Client, make_party: MakeParty) -> None:
    """carol belongs to colony other: she cannot ask dev's statistics, neither from her own
    connection (the server keeps her to her colony's subjects) nor by connecting to dev."""
    await owner.colony_add(OTHER, auto_approve=True)
    async with await owner_of(owner, OTHER) as other_owner:
        carol = make_party("carol", colony=OTHER)
        await other_owner.member_add("carol", carol.identity.public_key)
    async with await carol.client() as c:
        assert (await c.colony_stats()).colony_name == OTHER
        with pytest.raises(NotAuthorizedError, match="not allowed"):
            await c._must("colony_stats", Empty(), object, colony=COLONY)
        with pytest.raises(NotAuthorizedError, match="not allowed"):
            await c._request("function_stats", Empty(), list[object], colony=COLONY)
    with pytest.raises(NotAuthorizedError, match="not allowed"):
        await carol.client(COLONY)


async def owner_of(owner: Client, colony: str) -> Client:
    """The server owner's client again, in ``colony`` (which it just made, and so owns)."""
    settings = msgspec.structs.replace(owner.settings, colony=colony)
    return await Client.connect(settings, caller="root")


async def test_the_server_status_is_a_server_owners(owner: Client, bob: Party) -> None:
    status = await owner.server_status()
    assert status.leader is not None and status.leader.leading
    async with await bob.client() as b:
        # The server scope: the server refuses the publish, and the error says whose it is.
        with pytest.raises(NotAuthorizedError, match="only the server's owners may ask it"):
            await b.server_status()
        with pytest.raises(NotAuthorizedError, match="is not asked on colony 'dev'"):
            await b._must("server_status", Empty(), object)  # the broker refuses it there
