"""The arithmetic of an assign_many batch, with no server: how many queued processes it pops,
and how many of them one reply holds beside the first."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import msgspec

from colonyos.broker import transitions
from colonyos.broker.assignment import _ASSIGNED_GROWTH, pop_batch, reply_holds
from colonyos.broker.scheduler import Capacity, Offer, WaitingQueue
from colonyos.models import Conditions, Executor, FunctionSpec, Process

# Each process past the first costs its size, what assigning it adds, and a comma.
COST = _ASSIGNED_GROWTH + 1


def test_a_reply_filled_to_the_byte_holds_the_process_and_one_byte_less_does_not() -> None:
    # 2 brackets, the first (500 bytes), then 300 bytes and its cost.
    exact = 2 + 500 + 300 + COST
    assert reply_holds(exact, 500, [300]) == 1
    assert reply_holds(exact - 1, 500, [300]) == 0
    assert reply_holds(exact + 1, 500, [300]) == 1


def test_each_process_past_the_first_costs_its_size_growth_and_comma() -> None:
    sizes = [301, 300, 299, 1]
    for n in range(len(sizes) + 1):
        exact = 2 + 500 + sum(sizes[:n]) + n * COST
        assert reply_holds(exact, 500, sizes) == n
        if n:
            assert reply_holds(exact - 1, 500, sizes) == n - 1


def test_the_first_process_takes_its_share_of_the_room() -> None:
    limit = 2 + 500 + 300 + COST
    assert reply_holds(limit, 500, [300]) == 1
    assert reply_holds(limit, 501, [300]) == 0
    assert reply_holds(limit, 499, [301]) == 1
    assert reply_holds(10, 500, [300]) == 0  # not even the first fits: none beside it


def test_every_limit_around_the_edges_holds_exactly_what_fits() -> None:
    """Limits and sizes of every parity around the edges, against the sum written out: bit
    operators that agree with ``+``/``-`` on some values do not on all of these."""
    for first in (498, 499, 500, 501, 502, 503):
        for size in (298, 299, 300, 301, 302, 303):
            sizes = [size, size + 1, size + 2]
            for limit in range(first + 2 * size, first + 4 * (size + COST) + 8):
                fits = [
                    n
                    for n in range(len(sizes) + 1)
                    if 2 + first + sum(sizes[:n]) + n * COST <= limit
                ]
                assert reply_holds(limit, first, sizes) == max(fits), (limit, first, size)


def test_a_process_that_does_not_fit_ends_the_batch_even_if_a_later_one_would() -> None:
    limit = 2 + 500 + 100 + COST
    assert reply_holds(limit, 500, [5_000, 100]) == 0
    assert reply_holds(limit, 500, []) == 0


def test_an_assigned_process_grows_by_less_than_the_bound() -> None:
    """The worst case: a 64-character executor id, start and deadline to the microsecond,
    the assignment count gaining a digit."""
    spec = FunctionSpec(
        func_name="f", max_exec_time=10**9, conditions=Conditions(executor_type="x")
    )
    queued = Process(process_id=secrets.token_hex(32), spec=spec, assignments=9)
    executor = Executor(executor_name="e", executor_type="x", executor_id=secrets.token_hex(32))
    at = datetime(2026, 12, 1, 22, 44, 54, 897_358, tzinfo=UTC)
    assigned = transitions.assign(queued, executor, now=at)
    grown = len(msgspec.json.encode(assigned)) - len(msgspec.json.encode(queued))
    assert 0 < grown <= _ASSIGNED_GROWTH


def _queue(n: int) -> WaitingQueue:
    q = WaitingQueue()
    spec = FunctionSpec(func_name="f", conditions=Conditions(colony_name="c", executor_type="x"))
    for i in range(n):
        q.push(Process(process_id=f"p{i:04}", priority_time=i, spec=spec), 1)
    return q


def test_a_batch_stops_at_its_count_however_large() -> None:
    """Past 256 a count is an int object of its own in CPython: the count is compared by value."""
    q = _queue(300)
    offer = Offer(Capacity(name="e", location=""))
    batch = pop_batch(q, "c", offer, "x", 257)
    assert [pid for pid, _, _ in batch] == [f"p{i:04}" for i in range(257)]
    assert len(q) == 43
    assert pop_batch(q, "c", offer, "x", 0) == []
    assert len(pop_batch(q, "c", offer, "x", 1_000)) == 43
    assert len(q) == 0
