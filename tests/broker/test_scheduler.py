"""The pure scheduler: order, matching and one-wake parking, with no server."""

from __future__ import annotations

from colonyos.broker.scheduler import DAY_NS, Capacity, ParkedAssigns, WaitingQueue, priority_time
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


def drain(q: WaitingQueue, c: Capacity, etype: str = "x") -> list[str]:
    out = []
    while (picked := q.pop_match("c", c, etype)) is not None:
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
    assert drain(q, cap()) == ["plain"]
    assert drain(q, cap(gpu_count=2)) == ["for-gpu"]


def test_matching_rules() -> None:
    q = WaitingQueue()
    q.push(proc("named", 1, executor_names=["alice"]), 1)
    q.push(proc("located", 2, location_name="lab"), 1)
    q.push(proc("big", 3, cpu="2", mem="4Gi"), 1)
    assert drain(q, cap("bob")) == []
    assert drain(q, cap("alice")) == ["named"]
    assert drain(q, cap("bob", location="lab")) == ["located"]
    assert drain(q, cap("bob", cpu_millis=1999, mem_bytes=8 << 30)) == []
    assert drain(q, cap("bob", cpu_millis=2000, mem_bytes=4 << 30)) == ["big"]


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


def test_parked_executors_are_woken_one_at_a_time_in_order() -> None:
    parked: ParkedAssigns[str] = ParkedAssigns()
    parked.park("c", "x", cap("e1"), "w1")
    parked.park("c", "x", cap("e2"), "w2")
    assert parked.take_for(proc("p", 1)) == "w1"
    assert len(parked) == 1
    assert parked.take_for(proc("q", 2, executor_names=["e3"])) is None
    assert parked.take_for(proc("r", 3, executor_names=["e2"])) == "w2"
    assert parked.take_for(proc("s", 4)) is None


def test_unpark() -> None:
    parked: ParkedAssigns[str] = ParkedAssigns()
    parked.park("c", "x", cap(), "w")
    assert parked.unpark("c", "x", "w")
    assert not parked.unpark("c", "x", "w")
    assert len(parked) == 0


def test_bodies_beyond_the_limit_are_left_to_kv() -> None:
    q = WaitingQueue(max_bodies=2)
    for i, pid in enumerate("abcd"):
        q.push(proc(pid, i), 7)
    popped = [q.pop_match("c", cap(), "x") for _ in range(4)]
    assert [p[0] for p in popped if p] == ["a", "b", "c", "d"]
    assert [p[1] is not None for p in popped if p] == [True, True, False, False]
    assert all(p[2] == 7 for p in popped if p)
    q.push(proc("e", 9), 1)  # the freed places hold bodies again
    picked = q.pop_match("c", cap(), "x")
    assert picked is not None and picked[1] is not None
