"""Edges of the pure scheduler that `make mutate` found untested (no server)."""

from __future__ import annotations

import dataclasses

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
