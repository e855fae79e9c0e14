"""Why a process waits: the pure answer, from facts given by hand."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from colonyos.broker.explain import ExecutorFacts, explain
from colonyos.broker.scheduler import Capacity, Usage
from colonyos.models import (
    GPU,
    Capabilities,
    Conditions,
    Executor,
    ExecutorState,
    FunctionSpec,
    Hardware,
    Process,
    ProcessState,
)

AT = datetime(2026, 1, 1, tzinfo=UTC)
LIVENESS_S = 30.0


def proc(state: ProcessState = ProcessState.WAITING, **cond: object) -> Process:
    spec = FunctionSpec(
        func_name="f",
        conditions=Conditions(colony_name="dev", executor_type="edge", **cond),  # type: ignore[arg-type]
    )
    return Process(process_id="p" * 64, state=state, spec=spec)


def facts(
    name: str,
    *,
    silent_s: float = 1.0,
    used: Usage | None = None,
    running: int = 0,
    state: ExecutorState = ExecutorState.APPROVED,
    location: str = "",
    **hw: object,
) -> ExecutorFacts:
    hardware = [Hardware(**hw)] if hw else []  # type: ignore[arg-type]
    ex = Executor(
        executor_id=f"id-{name}",
        executor_name=name,
        executor_type="edge",
        state=state,
        location_name=location,
        capabilities=Capabilities(hardware=hardware),
    )
    return ExecutorFacts(ex, Capacity.of(ex), used or Usage(), silent_s, running)


def why(process: Process, *executors: ExecutorFacts, **kw: object):  # type: ignore[no-untyped-def]
    return explain(process, executors=executors, liveness_s=LIVENESS_S, at=AT, **kw)  # type: ignore[arg-type]


def test_no_executor_of_the_type() -> None:
    e = why(proc())
    assert e.reason == "no executor of type 'edge' is registered in colony 'dev'"
    assert e.executors == [] and e.details == []


def test_none_online_names_each_and_when_it_was_last_heard() -> None:
    e = why(
        proc(),
        facts("edge-1", silent_s=300),
        facts("edge-2", state=ExecutorState.PENDING),
        facts("edge-3", silent_s=math.inf),
    )
    assert e.reason == "no executor of type 'edge' is online and approved"
    assert e.details == [
        "edge-1: offline: last heard 5 min ago",
        "edge-2: not approved yet (colonies executor approve --name edge-2)",
        "edge-3: offline: not heard from",
    ]
    first = e.executors[0]
    assert not first.online and first.last_heard_from_time == AT - timedelta(seconds=300)


def test_each_executor_with_the_condition_it_fails() -> None:
    e = why(
        proc(cpu="1000m", mem="10Gi", executor_names=["edge-1", "edge-3"], location_name="cloud"),
        facts("edge-1", mem="8Gi", location="cloud"),
        facts("edge-2", location="cloud"),
        facts("edge-3", location="lab"),
    )
    assert e.reason == "no executor of type 'edge' meets its conditions"
    assert e.details == [
        "edge-1: mem 8Gi < 10Gi requested",
        "edge-2: not in executornames",
        "edge-3: location lab != cloud requested",
    ]


def test_every_resource_is_explained() -> None:
    e = why(
        proc(cpu="4", storage="1Ti", nodes=2, gpu=GPU(count=2, name="a100", mem="80Gi")),
        facts("edge-1", cpu="500m", storage="512Gi", gpu=GPU(count=1, name="t4", mem="16Gi")),
    )
    assert e.details == [
        "edge-1: cpu 0.5 < 4 requested, storage 512Gi < 1Ti requested, gpus 1 < 2 requested, "
        "gpu mem 16Gi < 80Gi requested, gpu t4 != a100 requested"
    ]  # nodes: not stated, so no limit
    e = why(proc(nodes=2, gpu=GPU(count=1)), facts("edge-1", nodes=1))
    assert e.details == ["edge-1: gpus 0 < 1 requested, nodes 1 < 2 requested"]


def test_offline_executors_are_named_beside_the_online_ones() -> None:
    e = why(
        proc(executor_names=["gpu-box"]),
        facts("edge-1"),
        facts("gpu-box", silent_s=90),
    )
    assert e.reason == "no online executor of type 'edge' meets its conditions"
    assert e.details == [
        "edge-1: not in executornames",
        "gpu-box: offline: last heard 90 s ago",
    ]


def test_busy_says_what_its_running_processes_hold() -> None:
    e = why(
        proc(cpu="1"),
        facts("edge-1", cpu="4", used=Usage(cpu_millis=3500, processes=2), running=2),
    )
    assert e.reason == "every executor of type 'edge' that meets its conditions is busy"
    assert e.details == ["edge-1: busy: 3.5 of 4 cpu in use by 2 running processes"]
    e = why(
        proc(cpu="1", mem="4Gi"),
        facts(
            "edge-1",
            cpu="1",
            mem="8Gi",
            used=Usage(cpu_millis=1000, mem_bytes=6 << 30, processes=1),
        ),
    )
    assert e.details == ["edge-1: busy: 1 of 1 cpu and 6Gi of 8Gi mem in use by 1 running process"]


def test_it_waits_its_turn() -> None:
    asked: list[list[Capacity]] = []

    def three(caps: list[Capacity]) -> int:
        asked.append(caps)
        return 3

    e = why(proc(cpu="1"), facts("edge-1"), facts("edge-2", cpu="500m"), ahead_of=three)
    assert [c.name for c in asked[0]] == ["edge-1"]  # only those that can take it compete
    assert e.reason == "it waits its turn: 3 processes of type 'edge' ahead of it"
    assert e.details == ["edge-1: can take it (running 0)"]
    assert e.ahead == 3
    e = why(proc(), facts("edge-1", running=4), ahead_of=lambda _: 0)
    assert e.reason == "it is next: an executor that can take it has not asked for work yet"
    assert e.details == ["edge-1: can take it (running 4)"]


def test_waiting_for_its_parents() -> None:
    child = proc()
    child.wait_for_parents = True
    a = Process(process_id="a" * 64, state=ProcessState.SUCCESS, spec=FunctionSpec(node_name="a"))
    b = Process(process_id="b" * 64, state=ProcessState.RUNNING, spec=FunctionSpec(node_name="b"))
    c = Process(process_id="c" * 64, state=ProcessState.WAITING)
    e = why(child, facts("edge-1"), parents=[a, b, c])
    assert e.reason == "waiting for 2 of its 3 parents to succeed"
    assert e.details == ["b: RUNNING", "cccccccccccc: WAITING"]
    assert [p.state for p in e.parents] == [
        ProcessState.SUCCESS,
        ProcessState.RUNNING,
        ProcessState.WAITING,
    ]


def test_a_process_that_is_not_waiting() -> None:
    running = proc(ProcessState.RUNNING)
    running.assigned_executor_id = "id-edge-1"
    assert why(running, facts("edge-1")).reason == "it is not waiting: it runs on edge-1"
    done = proc(ProcessState.SUCCESS)
    assert why(done).reason == "it is not waiting: it ended SUCCESS"


def test_a_removed_executor_is_named_as_removed_not_online() -> None:
    e = why(proc(), facts("edge-1", silent_s=1, state=ExecutorState.UNREGISTERED))
    assert e.reason == "no executor of type 'edge' is online and approved"
    assert e.details == ["edge-1: removed (UNREGISTERED): starting it again registers it afresh"]
    assert not e.executors[0].online
