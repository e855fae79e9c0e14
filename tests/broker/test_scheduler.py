"""The pure scheduler: order, matching and one-wake parking, with no server."""

from __future__ import annotations

import msgspec

from colonyos.broker.scheduler import (
    DAY_NS,
    Capacity,
    CapacityInUse,
    Offer,
    ParkedAssigns,
    Requirement,
    WaitingQueue,
    priority_time,
)
from colonyos.models import GPU, Capabilities, Conditions, Executor, FunctionSpec, Hardware, Process


def proc(pid: str, t: int, priority: int = 0, etype: str = "x", **cond: object) -> Process:
    spec = FunctionSpec(
        func_name="f",
        priority=priority,
        conditions=Conditions(colony_name="c", executor_type=etype, **cond),  # type: ignore[arg-type]
    )
    return Process(process_id=pid, priority_time=priority_time(t, priority), spec=spec)


def cap(name: str = "e", **kw: object) -> Capacity:
    return Capacity(name=name, location=str(kw.pop("location", "")), **kw)  # type: ignore[arg-type]


def drain(q: WaitingQueue, c: Capacity | Offer, etype: str = "x") -> list[str]:
    offer = c if isinstance(c, Offer) else Offer(c)
    out = []
    while (picked := q.pop_match("c", offer, etype)) is not None:
        pid, body, _ = picked
        assert body is None or body.process_id == pid
        out.append(pid)
    return out


def test_priority_time_is_a_day_per_point() -> None:
    assert priority_time(10 * DAY_NS, 1) == 9 * DAY_NS
    assert priority_time(5, -1) == 5 + DAY_NS


def test_lowest_priority_time_first_then_fifo() -> None:
    q = WaitingQueue()
    q.push(proc("a", 1), 1)
    q.push(proc("b", 2), 1)
    q.push(proc("c", 3, priority=1), 1)
    q.push(proc("d", 4), 1)
    assert drain(q, cap()) == ["c", "a", "b", "d"]


def test_queues_are_per_executor_type() -> None:
    q = WaitingQueue()
    q.push(proc("a", 1, etype="x"), 1)
    q.push(proc("b", 2, etype="y"), 1)
    assert drain(q, cap(), "y") == ["b"]
    assert drain(q, cap(), "x") == ["a"]


def test_removed_processes_are_skipped() -> None:
    q = WaitingQueue()
    for i, pid in enumerate("abc"):
        q.push(proc(pid, i), 1)
    assert q.remove("b") is not None
    assert len(q) == 2
    assert drain(q, cap()) == ["a", "c"]


def test_unmatched_processes_keep_their_place() -> None:
    q = WaitingQueue()
    q.push(proc("for-gpu", 1, gpu=GPU(count=1)), 1)
    q.push(proc("plain", 2), 1)
    assert drain(q, cap(gpu_count=0)) == ["plain"]
    assert drain(q, cap(gpu_count=2)) == ["for-gpu"]


def test_matching_rules() -> None:
    q = WaitingQueue()
    q.push(proc("named", 1, executor_names=["alice"]), 1)
    q.push(proc("located", 2, location_name="lab"), 1)
    q.push(proc("big", 3, cpu="2", mem="4Gi"), 1)
    small = {"cpu_millis": 1000, "mem_bytes": 8 << 30}
    assert drain(q, cap("bob", **small)) == []
    assert drain(q, cap("alice", **small)) == ["named"]
    assert drain(q, cap("bob", location="lab", **small)) == ["located"]
    assert drain(q, cap("bob", cpu_millis=1999, mem_bytes=8 << 30)) == []
    assert drain(q, cap("bob", cpu_millis=2000, mem_bytes=4 << 30)) == ["big"]


def test_a_dimension_not_stated_is_no_limit_a_stated_one_is() -> None:
    tutorial = proc("tutorial", 1, nodes=1, cpu="1000m", mem="10Gi")
    assert Requirement.of(tutorial.spec).accepts(cap())  # states nothing: takes it, as Colonies
    assert Requirement.of(tutorial.spec).accepts(cap(cpu_millis=1000))  # mem not stated
    assert not Requirement.of(tutorial.spec).accepts(cap(mem_bytes=8 << 30))
    gpu = Requirement.of(proc("g", 1, gpu=GPU(count=1, name="a100", mem="40Gi")).spec)
    assert gpu.accepts(cap())
    assert not gpu.accepts(cap(gpu_count=0))  # stated: none
    assert gpu.accepts(cap(gpu_count=1))  # name and memory not stated
    assert not gpu.accepts(cap(gpu_count=1, gpu_name="t4"))
    assert not gpu.accepts(cap(gpu_count=1, gpu_mem_bytes=16 << 30))
    assert gpu.accepts(cap(gpu_count=4, gpu_name="a100", gpu_mem_bytes=80 << 30))


def test_capacity_from_registration() -> None:
    ex = Executor(
        executor_name="e",
        executor_type="x",
        location_name="lab",
        capabilities=Capabilities(
            hardware=[Hardware(cpu="500m", mem="1Gi", gpu=GPU(name="a100", count=2), nodes=1)]
        ),
    )
    c = Capacity.of(ex)
    assert (c.cpu_millis, c.mem_bytes, c.gpu_count, c.gpu_name, c.nodes) == (
        500,
        1 << 30,
        2,
        "a100",
        1,
    )
    assert (c.storage_bytes, c.gpu_mem_bytes) == (None, None)  # not stated


def test_what_a_registration_states() -> None:
    def of(*hardware: Hardware) -> Capacity:
        ex = Executor(
            executor_name="e", executor_type="x", capabilities=Capabilities(hardware=list(hardware))
        )
        return Capacity.of(ex)

    assert of() == cap()  # no hardware: nothing stated, no limits
    bare = of(Hardware())
    assert bare.gpu_count == 0  # a hardware entry lists its GPUs: none
    assert (bare.cpu_millis, bare.mem_bytes, bare.nodes) == (None, None, None)
    two = of(Hardware(cpu="2", mem="4Gi"), Hardware(cpu="8", gpu=GPU(count=1)))
    assert (two.cpu_millis, two.mem_bytes, two.gpu_count) == (8000, 4 << 30, 1)


def test_parked_executors_are_woken_one_at_a_time_in_order() -> None:
    parked: ParkedAssigns[str] = ParkedAssigns()
    parked.park("c", "x", Offer(cap("e1")), "w1")
    parked.park("c", "x", Offer(cap("e2")), "w2")
    assert parked.take_for(proc("p", 1)) == "w1"
    assert len(parked) == 1
    assert parked.take_for(proc("q", 2, executor_names=["e3"])) is None
    assert parked.take_for(proc("r", 3, executor_names=["e2"])) == "w2"
    assert parked.take_for(proc("s", 4)) is None


def test_unpark() -> None:
    parked: ParkedAssigns[str] = ParkedAssigns()
    parked.park("c", "x", Offer(cap()), "w")
    assert parked.unpark("c", "x", "w")
    assert not parked.unpark("c", "x", "w")
    assert len(parked) == 0


def test_bodies_beyond_the_limit_are_left_to_kv() -> None:
    q = WaitingQueue(max_bodies=2)
    for i, pid in enumerate("abcd"):
        q.push(proc(pid, i), 7)
    popped = [q.pop_match("c", Offer(cap()), "x") for _ in range(4)]
    assert [p[0] for p in popped if p] == ["a", "b", "c", "d"]
    assert [p[1] is not None for p in popped if p] == [True, True, False, False]
    assert all(p[2] == 7 for p in popped if p)
    q.push(proc("e", 9), 1)  # the freed places hold bodies again
    picked = q.pop_match("c", Offer(cap()), "x")
    assert picked is not None and picked[1] is not None


# -- capacity in use ---------------------------------------------------------------------------


def test_running_processes_use_up_capacity() -> None:
    """A 4-core executor with any number of slots takes at most two `cpu: 2` processes."""
    q = WaitingQueue()
    for i in range(4):
        q.push(proc(f"p{i}", i, cpu="2"), 1)
    in_use = CapacityInUse()
    offer = Offer(cap(cpu_millis=4000), "ex-1", in_use)
    assert drain(q, offer) == ["p0", "p1"]
    assert in_use.used("ex-1").cpu_millis == 4000
    assert in_use.used("ex-1").processes == 2
    in_use.release("p0")  # p0 left RUNNING
    assert drain(q, offer) == ["p2"]
    # Another executor's processes are not this one's.
    assert drain(q, Offer(cap(cpu_millis=2000), "ex-2", in_use)) == ["p3"]
    assert in_use.used("ex-1").cpu_millis == 4000


def test_processes_asking_for_nothing_use_up_nothing() -> None:
    q = WaitingQueue()
    for i in range(5):
        q.push(proc(f"p{i}", i), 1)
    q.push(proc("named", 9, executor_names=["e"]), 1)
    in_use = CapacityInUse()
    assert len(drain(q, Offer(cap(cpu_millis=0, mem_bytes=0), "ex", in_use))) == 6
    assert len(in_use) == 0


def test_holding_is_idempotent_and_releasing_unknown_ids_is_harmless() -> None:
    in_use = CapacityInUse()
    two = Requirement(cpu_millis=2000, mem_bytes=1 << 30, gpu_count=1, storage_bytes=5)
    in_use.hold("ex", "p", two)
    in_use.hold("ex", "p", two)  # the RUNNING write after the hold at pop time
    assert in_use.used("ex").cpu_millis == 2000 and in_use.used("ex").processes == 1
    in_use.hold("other", "p", two)  # re-assigned elsewhere: moves
    assert in_use.used("ex").processes == 0
    in_use.release("p")
    in_use.release("p")
    in_use.release("never-held")
    assert len(in_use) == 0 and in_use.used("other").cpu_millis == 0
    free = in_use.free(cap(cpu_millis=4000), "ex")
    assert free.cpu_millis == 4000


def test_unstated_dimensions_stay_unlimited_when_in_use() -> None:
    in_use = CapacityInUse()
    in_use.hold("ex", "p", Requirement(cpu_millis=64_000, mem_bytes=1 << 40))
    free = in_use.free(cap(mem_bytes=2 << 40), "ex")
    assert free.cpu_millis is None and free.mem_bytes == 1 << 40


def test_available_cpu_and_mem_bound_one_assign_further() -> None:
    q = WaitingQueue()
    q.push(proc("p", 1, cpu="2", mem="1Gi"), 1)
    in_use = CapacityInUse()
    # Colonies' availablecpu on an executor that states nothing bounds this assign only.
    assert drain(q, Offer(cap(), "ex", in_use, cpu_millis=1000)) == []
    assert drain(q, Offer(cap(), "ex", in_use, mem_bytes=512 << 20)) == []
    # The bound narrows what is free (capacity less what is in use), never widens it.
    in_use.hold("ex", "running", Requirement(cpu_millis=3000))
    assert drain(q, Offer(cap(cpu_millis=4000), "ex", in_use, cpu_millis=8000)) == []
    assert drain(q, Offer(cap(cpu_millis=5000), "ex", in_use, cpu_millis=2000)) == ["p"]


def test_a_parked_executor_is_matched_with_what_it_has_free_when_woken() -> None:
    in_use = CapacityInUse()
    parked: ParkedAssigns[str] = ParkedAssigns()
    parked.park("c", "x", Offer(cap("e1", cpu_millis=4000), "ex-1", in_use), "w1")
    in_use.hold("ex-1", "running", Requirement(cpu_millis=3000))  # since it parked
    assert parked.take_for(proc("p", 1, cpu="2")) is None
    in_use.release("running")
    assert parked.take_for(proc("p", 1, cpu="2")) == "w1"
    assert in_use.used("ex-1").cpu_millis == 2000  # held for it from the hand-over


def test_parked_assigns_of_an_executor_whose_capacity_came_back() -> None:
    in_use = CapacityInUse()
    in_use.hold("ex-1", "running", Requirement(cpu_millis=1000))
    parked: ParkedAssigns[str] = ParkedAssigns()
    parked.park("c", "x", Offer(cap("e1"), "ex-1", in_use), "w1")
    parked.park("c", "y", Offer(cap("e1"), "ex-1", in_use), "w1-other-type")
    parked.park("c", "x", Offer(cap("e2"), "ex-2", in_use), "w2")
    assert in_use.release("running") == "ex-1"
    assert in_use.release("running") is None
    assert sorted(parked.take_all_of("ex-1")) == ["w1", "w1-other-type"]
    assert parked.all_waiters() == ["w2"]


def test_place_in_the_queue() -> None:
    q = WaitingQueue()
    for i, pid in enumerate("abcd"):
        q.push(proc(pid, i), 1)
    q.push(proc("urgent", 9, priority=1), 1)
    q.push(proc("other-type", 0, etype="y"), 1)
    assert [q.ahead_of(pid) for pid in ("urgent", "a", "d", "other-type")] == [0, 1, 4, 0]
    q.remove("b")
    q.push(proc("a", 0), 1)  # re-queued: its old place is not counted twice
    assert q.ahead_of("d") == 3
    assert q.ahead_of("missing") is None
    # Only those an executor that can take it would take first are ahead of it.
    q.push(proc("big", 0, cpu="8"), 1)
    q.push(proc("small", 99, cpu="1"), 1)
    assert q.ahead_of("small") == 5  # a, c, d, urgent, big
    assert q.ahead_of("small", [cap(cpu_millis=2000)]) == 4
    assert q.ahead_of("small", [cap(cpu_millis=2000), cap(cpu_millis=8000)]) == 5


def test_a_process_goes_to_an_idle_executor_before_a_prefetch() -> None:
    """A prefetch parked first still comes after an idle executor parked later: the process
    would wait behind the prefetcher's running one."""
    parked: ParkedAssigns[str] = ParkedAssigns()
    parked.park("c", "x", Offer(cap("busy"), prefetch=True), "ahead")
    parked.park("c", "x", Offer(cap("idle")), "idle")
    assert parked.idle_match(proc("p", 1))
    assert parked.take_for(proc("p", 1)) == "idle"
    # No idle executor left: the prefetch takes the next one.
    assert not parked.idle_match(proc("q", 2))
    assert parked.take_for(proc("q", 2)) == "ahead"
    assert len(parked) == 0


def test_a_prefetch_gets_what_no_idle_executor_matches() -> None:
    parked: ParkedAssigns[str] = ParkedAssigns()
    parked.park("c", "x", Offer(cap("idle", gpu_count=0)), "idle")  # states: no GPU
    parked.park("c", "x", Offer(cap("gpu", gpu_count=1), prefetch=True), "ahead")
    needs_gpu = proc("p", 1, gpu=GPU(count=1))
    assert not parked.idle_match(needs_gpu)  # the idle one has no GPU
    assert parked.take_for(needs_gpu) == "ahead"
    assert parked.take_for(proc("q", 2)) == "idle"


def test_prefetches_are_unparked_and_taken_back_like_the_others() -> None:
    in_use = CapacityInUse()
    parked: ParkedAssigns[str] = ParkedAssigns()
    parked.park("c", "x", Offer(cap("e1"), "ex-1", in_use, prefetch=True), "ahead-1")
    parked.park("c", "x", Offer(cap("e2"), "ex-2", in_use, prefetch=True), "ahead-2")
    parked.park("c", "x", Offer(cap("e1"), "ex-1", in_use), "idle-1")
    assert len(parked) == 3
    assert sorted(parked.all_waiters()) == ["ahead-1", "ahead-2", "idle-1"]
    assert sorted(parked.take_all_of("ex-1")) == ["ahead-1", "idle-1"]
    assert parked.unpark("c", "x", "ahead-2")
    assert not parked.unpark("c", "x", "ahead-2")
    assert len(parked) == 0


def test_a_prefetch_holds_the_capacity_of_what_it_takes() -> None:
    in_use = CapacityInUse()
    parked: ParkedAssigns[str] = ParkedAssigns()
    offer = Offer(cap("e1", cpu_millis=4000), "ex-1", in_use, prefetch=True)
    parked.park("c", "x", offer, "ahead")
    assert parked.take_for(proc("p", 1, cpu="3")) == "ahead"
    assert in_use.used("ex-1").cpu_millis == 3000
    parked.park("c", "x", offer, "ahead")
    assert parked.take_for(proc("q", 2, cpu="2")) is None  # 1 CPU left


def test_a_prefetch_takes_no_process_with_a_maxexectime() -> None:
    """A prefetched process waits behind the running one, and maxexectime counts from the
    assignment: a prefetch never takes one that has it, from the park or from the queue."""
    plain = proc("t", 1)
    timed = msgspec.structs.replace(
        plain, spec=msgspec.structs.replace(plain.spec, max_exec_time=10)
    )
    parked: ParkedAssigns[str] = ParkedAssigns()
    parked.park("c", "x", Offer(cap("busy"), prefetch=True), "ahead")
    assert parked.take_for(timed) is None
    assert parked.take_for(proc("p", 2)) == "ahead"
    q = WaitingQueue()
    q.push(timed, 1)
    assert q.pop_match("c", Offer(cap("busy"), prefetch=True), "x") is None
    popped = q.pop_match("c", Offer(cap("idle")), "x")
    assert popped is not None and popped[0] == "t"
