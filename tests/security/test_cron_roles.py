"""Who may manage crons on a secure installation: the colony's owner and users; an
executor's key may read them but not add, run or remove one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from colonyos.client import Client
from colonyos.crons.client import Crons
from colonyos.errors import NotAuthorizedError
from tests.security.conftest import Party

pytestmark = pytest.mark.timeout(60)

MakeParty = Callable[..., Party]

WORKFLOW: list[dict[str, Any]] = [
    {"nodename": "a", "funcname": "echo", "conditions": {"executortype": "echo"}}
]


async def test_owner_and_user_manage_crons(owner: Client, make_party: MakeParty) -> None:
    bob = make_party("bob")
    await owner.member_add("bob", bob.identity.public_key)
    await Crons(owner).add("by-owner", WORKFLOW, cron_expression="0 0 1 1 *")
    async with await bob.client() as bob_client:
        crons = Crons(bob_client)
        added = await crons.add("by-bob", WORKFLOW, cron_expression="0 0 1 1 *")
        assert added.initiator_name == "bob"
        ran = await crons.run("by-bob")
        assert ran.prev_process_graph_id
        await crons.remove("by-owner")
        assert [c.name for c in await crons.list()] == ["by-bob"]


async def test_an_executor_may_not_add_run_or_remove_a_cron(
    owner: Client, make_party: MakeParty
) -> None:
    await Crons(owner).add("kept", WORKFLOW, cron_expression="0 0 1 1 *")
    worker = make_party("worker-1")
    await owner.member_add(
        "worker-1", worker.identity.public_key, role="executor", executor_type="echo"
    )
    async with await worker.client() as executor_client:
        crons = Crons(executor_client)
        with pytest.raises(NotAuthorizedError, match="cron add is for the owner and users"):
            await crons.add("mine", WORKFLOW, interval=5)
        with pytest.raises(NotAuthorizedError, match="'worker-1' is an executor"):
            await crons.run("kept")
        with pytest.raises(NotAuthorizedError, match="cron remove"):
            await crons.remove("kept")
        assert [c.name for c in await crons.list()] == ["kept"]
    assert (await Crons(owner).get("kept")).last_run.year == 1
