"""Bounds on what strangers can make the brokers do: new executor names per colony, and
registrations per name."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from colonyos.client import Client
from colonyos.errors import NotAuthorizedError
from colonyos.models import Executor
from colonyos.security.members import MemberBook
from colonyos.security.throttle import Throttle
from tests.security.conftest import Party

pytestmark = pytest.mark.timeout(60)

MakeParty = Callable[..., Party]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_throttle_allows_its_burst_then_its_rate() -> None:
    clock = Clock()
    throttle = Throttle(burst=3, per_s=2.0, clock=clock)
    assert [throttle.allow("a") for _ in range(4)] == [True, True, True, False]
    assert throttle.wait_s("a") == pytest.approx(0.5)
    assert throttle.allow("b")  # each key its own bucket
    clock.now = 0.5
    assert throttle.allow("a") and not throttle.allow("a")
    clock.now = 100.0
    assert [throttle.allow("a") for _ in range(4)] == [True, True, True, False]  # burst at most


def test_a_throttle_remembers_only_the_most_recent_keys() -> None:
    throttle = Throttle(burst=1, per_s=0.001, keys=2, clock=Clock())
    assert throttle.allow("a") and not throttle.allow("a")
    assert throttle.allow("b") and throttle.allow("c")  # "a" is forgotten: a fresh bucket
    assert throttle.allow("a")


async def test_new_executor_names_are_bounded_per_colony(
    make_party: MakeParty, owner: Client, book: MemberBook
) -> None:
    book.claims = Throttle(burst=2, per_s=0.001)
    stranger = make_party("x")
    for name in ("new-1", "new-2"):
        async with await Client.connect(stranger.settings, caller=name, executor=True):
            pass
    with pytest.raises(NotAuthorizedError, match="not allowed"):
        await Client.connect(stranger.settings, caller="new-3", executor=True)
    assert await book.get("dev", "new-3") is None
    # A name already taken is no new claim: its key still gets in.
    async with await Client.connect(stranger.settings, caller="new-1", executor=True):
        pass


async def test_registrations_of_one_name_are_bounded(make_party: MakeParty, owner: Client) -> None:
    worker = make_party("busy")
    executor = Executor(executor_name="busy", executor_type="echo")
    async with await Client.connect(worker.settings, caller="busy", executor=True) as client:
        for _ in range(20):
            await client.register(executor)
        with pytest.raises(NotAuthorizedError, match="too many registrations of 'busy'"):
            await client.register(executor)
