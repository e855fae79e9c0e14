"""Edges of the pure scheduler that `make mutate` found untested (no server)."""

from __future__ import annotations

import dataclasses

import msgspec
import pytest

from colonyos.broker.scheduler import (
    Capacity,
    CapacityInUse,
    DeadlineHeap,
    Offer,
    ParkedAssigns,
    Requirement,
    Usage,
    WaitingQueue,
    priority_time,
)
from colonyos.models import GPU, Conditions, FunctionSpec, Process


def proc(pid: str, t: int, **cond: object) -> Process:
    spec = FunctionSpec(
        func_name="f",
        conditions=Conditions(colony_name="c", executor_type="x", **cond),  # type: ignore[arg-type]
    )
    return Process(process_id=pid, priority_time=t, spec=spec)


def test_one_priority_point_is_one_day_in_nanoseconds() -> None:
    assert priority_time(0, 1) == -86_400_000_000_000
    assert priority_time(7, 0) == 7


def test_nothing_requested_is_all_zero_and_consumes_nothing() -> None:
    assert Requirement() == Requirement(frozenset(), "", 0, 0, 0, 0, 0, "", 0)
    assert Usage() == Usage(0, 0, 0, 0, 0)
    assert not Requirement().consumes


@pytest.mark.parametrize("field", ["cpu_millis", "mem_bytes", "storage_bytes", "gpu_count"])
def test_each_held_quantity_consumes(field: str) -> None:
    assert Requirement(**{field: 1}).consumes  # type: ignore[arg-type]


def test_requirements_are_frozen_and_slotted() -> None:
    req = Requirement(cpu_millis=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.cpu_millis = 2  # type: ignore[misc]
    assert not hasattr(req, "__dict__")


def test_a_gpu_name_alone_is_a_condition() -> None:
    spec = FunctionSpec(
        func_name="f", conditions=Conditions(executor_type="x", gpu=GPU(name="a100"))
    )
    req = Requirement.of(spec)
    assert req.gpu_name == "a100"
    assert not req.accepts(Capacity(name="e", location="", gpu_name="t4"))
    assert req.accepts(Capacity(name="e", location="", gpu_name="a100"))


def test_a_dimension_not_asked_for_fits_even_when_overcommitted() -> None:
    # Capacity in use can exceed what is registered after a re-registration with less.
    over = Capacity(name="e", location="", cpu_millis=-1, mem_bytes=10)
    assert Requirement(mem_bytes=5, location="").accepts(over)
    assert not Requirement(cpu_millis=1).accepts(over)


def test_usage_adds_and_takes_away_every_quantity() -> None:
    used = Usage()
    req = Requirement(cpu_millis=2, mem_bytes=3, storage_bytes=5, gpu_count=7)
    used.add(req)
    used.add(req)
    assert used == Usage(4, 6, 10, 14, 2)
    used.add(req, -1)
    assert used == Usage(2, 3, 5, 7, 1)
    in_use = CapacityInUse()
    in_use.hold("e", "p", req)
    cap = Capacity(
        name="e", location="", cpu_millis=10, mem_bytes=10, storage_bytes=10, gpu_count=10
    )
    assert in_use.free(cap, "e") == dataclasses.replace(
        cap, cpu_millis=8, mem_bytes=7, storage_bytes=5, gpu_count=3
    )


def test_place_in_the_queue_after_a_re_push_with_a_new_priority() -> None:
    q = WaitingQueue()
    q.push(proc("a", 5), 1)
    q.push(proc("b", 3), 1)
    q.push(proc("a", 1), 2)  # re-queued ahead of b: its old entry (after b) is stale
    assert q.ahead_of("a") == 0
    assert q.ahead_of("b") == 1


def test_an_executors_parked_assigns_are_found_by_id_value() -> None:
    parked: ParkedAssigns[str] = ParkedAssigns()
    parked.park("c", "x", Offer(Capacity(name="e", location=""), executor_id="ex-1"), "w1")
    assert parked.take_all_of("".join(["ex", "-1"])) == ["w1"]
    assert len(parked) == 0


def test_deadlines_pop_when_due_and_in_order() -> None:
    heap = DeadlineHeap()
    heap.push(30, "c", "late")
    heap.push(10, "c", "early")
    heap.push(20, "c", "middle")
    assert heap.pop_due(5) == []
    assert heap.pop_due(20) == [("c", "early"), ("c", "middle")]
    assert len(heap) == 1
    assert heap.pop_due(100) == [("c", "late")]
    assert heap.pop_due(100) == []


def test_place_in_the_queue_when_the_stale_entry_came_first() -> None:
    q = WaitingQueue()
    q.push(proc("a", 1), 1)
    q.push(proc("b", 3), 1)
    q.push(proc("a", 5), 2)  # re-queued behind b: its old entry (before b) is stale
    assert q.ahead_of("a") == 1
    assert q.ahead_of("b") == 0


def test_an_assign_may_bound_cpu_and_not_mem_or_the_other_way() -> None:
    cap = Capacity(name="e", location="", cpu_millis=4000, mem_bytes=100)
    assert cap.within(1000, None) == dataclasses.replace(cap, cpu_millis=1000)
    assert cap.within(None, 10) == dataclasses.replace(cap, mem_bytes=10)
    assert cap.within(None, None) == cap


def test_an_assign_bound_applies_where_the_executor_states_nothing() -> None:
    unstated = Capacity(name="e", location="")
    assert unstated.within(500, None) == dataclasses.replace(unstated, cpu_millis=500)
    assert unstated.within(None, 64) == dataclasses.replace(unstated, mem_bytes=64)


def _accepts(req_cond: dict[str, object], cap: Capacity) -> bool:
    return Requirement.of(proc("p", 0, **req_cond).spec).accepts(cap)


def test_location_and_gpu_name_must_be_equal_not_ordered_or_the_same_object() -> None:
    built = "".join(["l", "ab"])  # equal to "lab", another object
    assert _accepts({"location_name": "lab"}, Capacity(name="e", location=built))
    for other in ("la", "lab2", "lb"):
        assert not _accepts({"location_name": "lab"}, Capacity(name="e", location=other))
    gpu = GPU(name="A100", count=1)
    assert _accepts(
        {"gpu": gpu}, Capacity(name="e", location="", gpu_count=1, gpu_name="".join(["A", "100"]))
    )
    for other in ("A10", "A1000", "B100"):
        cap = Capacity(name="e", location="", gpu_count=1, gpu_name=other)
        assert not _accepts({"gpu": gpu}, cap)


def test_storage_alone_is_a_condition() -> None:
    req = Requirement.of(proc("p", 0, storage="10Gi").spec)
    assert req.storage_bytes == 10 * 2**30
    assert not req.accepts(Capacity(name="e", location="", storage_bytes=2**30))
    assert req.accepts(Capacity(name="e", location="", storage_bytes=20 * 2**30))


def test_a_process_msgpack_cannot_hold_is_queued_without_a_body() -> None:
    q = WaitingQueue()
    big = msgspec.structs.replace(proc("big", 1), input=[2**70])
    q.push(big, 3)
    q.push(proc("small", 2), 4)
    offer = Offer(Capacity(name="e", location=""))
    assert q.pop_match("c", offer, "x") == ("big", None, 3)  # read back from KV
    popped = q.pop_match("c", offer, "x")
    assert popped is not None and popped[1] is not None and popped[1].process_id == "small"


def test_removal_says_whether_it_removed_and_gives_its_body_room_back() -> None:
    q = WaitingQueue(max_bodies=1)
    q.push(proc("a", 1), 1)
    assert q.remove("a") is True
    assert q.remove("a") is False
    assert q.remove("never") is False
    q.push(proc("b", 2), 1)  # the room a's body took is free again
    offer = Offer(Capacity(name="e", location=""))
    popped = q.pop_match("c", offer, "x")
    assert popped is not None and popped[1] is not None


def test_bodies_stop_at_the_limit_past_small_numbers() -> None:
    q = WaitingQueue(max_bodies=300)  # past the integers Python keeps as single objects
    for i in range(301):
        q.push(proc(f"p{i:03}", i), 1)
    offer = Offer(Capacity(name="e", location=""))
    bodies = [q.pop_match("c", offer, "x") for _ in range(301)]
    assert [b is not None and b[1] is not None for b in bodies] == [True] * 300 + [False]


def test_unpark_takes_only_the_waiter_given_and_says_so() -> None:
    parked: ParkedAssigns[int] = ParkedAssigns()
    offer = Offer(Capacity(name="e", location=""))
    parked.park("c", "x", offer, 1)
    parked.park("c", "x", offer, 3)
    assert parked.unpark("c", "x", 2) is False  # neither 1 nor 3 is 2
    assert len(parked) == 2
    assert parked.unpark("c", "x", 3) is True
    assert parked.all_waiters() == [1]
    assert parked.unpark("other", "x", 1) is False


def test_taking_an_executors_parked_assigns_takes_no_other() -> None:
    parked: ParkedAssigns[str] = ParkedAssigns()
    for executor_id in ("a", "b", "c"):
        offer = Offer(Capacity(name=executor_id, location=""), executor_id=executor_id)
        parked.park("c", "x", offer, f"w-{executor_id}")
    assert parked.take_all_of("b") == ["w-b"]
    assert sorted(parked.all_waiters()) == ["w-a", "w-c"]
