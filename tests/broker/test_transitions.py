"""The process state machine on its own (no server): every transition, field by field, and every
refusal. These are the tests `make mutate` runs against colonyos/broker/transitions.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from colonyos.broker import transitions as t
from colonyos.broker.scheduler import DAY_NS
from colonyos.errors import ConflictError, NotAuthorizedError
from colonyos.models import ZERO_TIME, Conditions, Executor, FunctionSpec, Process, ProcessState

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
LATER = NOW + timedelta(seconds=100)
W, R, OK, KO, CX = (
    ProcessState.WAITING,
    ProcessState.RUNNING,
    ProcessState.SUCCESS,
    ProcessState.FAILED,
    ProcessState.CANCELLED,
)
ALL = [W, R, OK, KO, CX]
A = Executor(executor_id="a", executor_type="x", executor_name="ea")
B = Executor(executor_id="b", executor_type="x", executor_name="eb")


def spec(**fields: int) -> FunctionSpec:
    return FunctionSpec(func_name="f", conditions=Conditions(executor_type="x"), **fields)


def waiting(**fields: object) -> Process:
    return msgspec.structs.replace(t.create("p", spec(), now=NOW, now_ns=7), **fields)


def running(**fields: object) -> Process:
    base = t.assign(waiting(spec=spec(max_exec_time=10, max_retries=1)), A, now=NOW)
    return msgspec.structs.replace(base, **fields)


def test_create_is_waiting_with_its_priority_time_and_wait_deadline() -> None:
    s = spec(priority=2, max_wait_time=30)
    assert t.create("p", s, now=NOW, now_ns=10, initiator_name="me") == Process(
        process_id="p",
        initiator_name="me",
        state=W,
        priority_time=10 - 2 * DAY_NS,
        submission_time=NOW,
        wait_deadline=NOW + timedelta(seconds=30),
        spec=s,
    )
    assert t.create("p", spec(max_wait_time=0), now=NOW, now_ns=1).wait_deadline == ZERO_TIME
    assert t.create("p", spec(max_wait_time=1), now=NOW, now_ns=1).wait_deadline == NOW + timedelta(
        seconds=1
    )
    assert t.create("p", spec(), now=NOW, now_ns=1).wait_deadline == ZERO_TIME  # -1: none


def test_assign_counts_the_attempt_and_sets_the_exec_deadline() -> None:
    p = waiting(spec=spec(max_exec_time=10), assignments=3)
    assert t.assign(p, A, now=NOW) == msgspec.structs.replace(
        p,
        state=R,
        is_assigned=True,
        assigned_executor_id="a",
        start_time=NOW,
        exec_deadline=NOW + timedelta(seconds=10),
        assignments=4,
    )
    assert t.assign(waiting(spec=spec(max_exec_time=0)), A, now=NOW).exec_deadline == ZERO_TIME
    assert t.assign(waiting(spec=spec(max_exec_time=1)), A, now=NOW).exec_deadline == (
        NOW + timedelta(seconds=1)
    )
    assert t.assign(waiting(), A, now=NOW).exec_deadline == ZERO_TIME


@pytest.mark.parametrize("state", [R, OK, KO, CX])
def test_only_a_waiting_process_is_assigned(state: ProcessState) -> None:
    with pytest.raises(ConflictError, match=f"cannot assign process p: it is {state.name}"):
        t.assign(waiting(state=state), A, now=NOW)


def test_a_process_waiting_for_its_parents_is_not_assigned() -> None:
    with pytest.raises(ConflictError):
        t.assign(waiting(wait_for_parents=True), A, now=NOW)


def test_close_and_fail_by_the_holder_in_its_attempt() -> None:
    p = running()
    assert p.attempt == 0
    assert t.close(p, A, [1, 2], now=LATER, attempt=0) == msgspec.structs.replace(
        p, state=OK, output=[1, 2], end_time=LATER
    )
    assert t.close(p, A, [1], now=LATER) == msgspec.structs.replace(
        p, state=OK, output=[1], end_time=LATER
    )
    assert t.fail(p, A, ["bad"], now=LATER, attempt=0) == msgspec.structs.replace(
        p, state=KO, errors=["bad"], end_time=LATER
    )
    assert t.fail(p, A, ["bad"], now=LATER).state is KO


@pytest.mark.parametrize("action", ["close", "fail"])
def test_close_and_fail_are_refused_to_another_executor_or_attempt(action: str) -> None:
    def act(p: Process, executor: Executor, attempt: int | None) -> Process:
        if action == "close":
            return t.close(p, executor, [], now=LATER, attempt=attempt)
        return t.fail(p, executor, [], now=LATER, attempt=attempt)

    second = running(assignments=2)  # attempt 1
    with pytest.raises(NotAuthorizedError, match=f"cannot {action} process p: .* 'eb'") as err:
        act(second, B, 1)
    assert err.value.detail == {"process_id": "p", "executor_name": "eb"}
    with pytest.raises(NotAuthorizedError):
        act(second, B, None)
    with pytest.raises(NotAuthorizedError):
        act(second, A, 0)  # the earlier attempt
    with pytest.raises(NotAuthorizedError):
        act(second, A, 2)
    assert act(second, A, 1).state in (OK, KO)
    for state in (W, OK, KO, CX):
        with pytest.raises(ConflictError, match=f"cannot {action} process p: it is {state.name}"):
            act(msgspec.structs.replace(second, state=state), A, 1)


def test_require_lease_names_the_state_in_its_conflict() -> None:
    with pytest.raises(ConflictError) as err:
        t.require_lease(running(state=W), A, "log")
    assert err.value.detail == {"process_id": "p", "state": "WAITING"}
    t.require_lease(running(), A, "log")
    t.require_lease(running(), A, "log", 0)


@pytest.mark.parametrize("state", [W, R])
def test_cancel_ends_a_live_process(state: ProcessState) -> None:
    p = running(state=state, errors=["before"])
    assert t.cancel(p, now=LATER) == msgspec.structs.replace(
        p, state=CX, end_time=LATER, errors=["before", "cancelled"]
    )


@pytest.mark.parametrize("state", [OK, KO, CX])
def test_nothing_leaves_a_terminal_state(state: ProcessState) -> None:
    p = running(state=state)
    for move in (
        lambda: t.cancel(p, now=LATER),
        lambda: t.fail_descendant(p, "x", now=LATER),
        lambda: t.refuse(p, "x", now=LATER),
        lambda: t.requeue(p, "x", now=LATER),
        lambda: t.requeue_lost(p, "x", now=LATER, max_losses=5),
        lambda: t.expire_wait(p, now=LATER),
        lambda: t.release(p, [], now=LATER),
    ):
        with pytest.raises(ConflictError):
            move()


def test_expire_wait_only_past_the_deadline_of_a_waiting_process() -> None:
    p = waiting(wait_deadline=NOW)
    assert t.expire_wait(p, now=NOW) == msgspec.structs.replace(
        p, state=KO, errors=[t.WAIT_TIMEOUT], end_time=NOW
    )
    with pytest.raises(ConflictError, match="may still wait"):
        t.expire_wait(p, now=NOW - timedelta(microseconds=1))
    with pytest.raises(ConflictError, match="cannot expire"):
        t.expire_wait(waiting(), now=NOW)  # no wait deadline
    with pytest.raises(ConflictError, match="cannot expire"):
        t.expire_wait(running(wait_deadline=NOW), now=LATER)


def test_requeue_spends_a_retry_and_keeps_the_place_in_the_queue() -> None:
    p = running(spec=spec(max_exec_time=10, max_retries=2, max_wait_time=5), retries=1)
    back = t.requeue(p, t.EXEC_TIMEOUT, now=LATER)
    assert back == msgspec.structs.replace(
        p,
        state=W,
        is_assigned=False,
        assigned_executor_id="",
        start_time=ZERO_TIME,
        exec_deadline=ZERO_TIME,
        wait_deadline=LATER + timedelta(seconds=5),
        retries=2,
    )
    assert back.priority_time == p.priority_time and back.assignments == p.assignments


def test_requeue_fails_with_the_attempt_count_once_retries_are_spent() -> None:
    p = running(spec=spec(max_exec_time=10, max_retries=3), retries=3, errors=["e"])
    assert t.requeue(p, t.EXEC_TIMEOUT, now=LATER) == msgspec.structs.replace(
        p, state=KO, errors=["e", f"{t.EXEC_TIMEOUT} (attempt 4 of 4)"], end_time=LATER
    )
    none = running(spec=spec(max_exec_time=10, max_retries=0))
    assert t.requeue(none, "x", now=LATER).errors == ["x (attempt 1 of 1)"]


def test_unlimited_retries_never_fail() -> None:
    p = running(spec=spec(max_exec_time=10, max_retries=-1), retries=1000)
    back = t.requeue(p, "x", now=LATER)
    assert (back.state, back.retries) == (W, 1001)


def test_requeue_lost_counts_a_loss_not_a_retry_and_fails_past_the_bound() -> None:
    p = running(retries=1, executor_losses=4)
    back = t.requeue_lost(p, t.EXECUTOR_LOST, now=LATER, max_losses=5)
    assert back == msgspec.structs.replace(
        p,
        state=W,
        is_assigned=False,
        assigned_executor_id="",
        start_time=ZERO_TIME,
        exec_deadline=ZERO_TIME,
        wait_deadline=ZERO_TIME,
        executor_losses=5,
    )
    gone = t.requeue_lost(running(executor_losses=5), "gone", now=LATER, max_losses=5)
    assert gone == msgspec.structs.replace(
        running(executor_losses=5),
        state=KO,
        errors=[
            "gone; 6 executors were lost while running this process, more than the 5 allowed "
            "(COLONIES_MAX_EXECUTOR_LOSSES)"
        ],
        end_time=LATER,
        executor_losses=6,
    )


@pytest.mark.parametrize("state", [W, OK, KO, CX])
def test_only_a_running_process_is_requeued(state: ProcessState) -> None:
    with pytest.raises(ConflictError, match=f"cannot re-queue process p: it is {state.name}"):
        t.requeue(running(state=state), "x", now=LATER)
    with pytest.raises(ConflictError, match=f"cannot re-queue process p: it is {state.name}"):
        t.requeue_lost(running(state=state), "x", now=LATER, max_losses=5)


def test_same_assignment_needs_the_same_executor_and_attempt_while_running() -> None:
    p = running(assignments=2)
    assert t.same_assignment(p, p)
    assert not t.same_assignment(p, running(assignments=1))
    assert not t.same_assignment(p, running(assignments=2, assigned_executor_id="b"))
    assert not t.same_assignment(running(assignments=2, state=OK), p)


def test_release_gives_the_parents_outputs_and_starts_the_wait() -> None:
    child = waiting(wait_for_parents=True, spec=spec(max_wait_time=9))
    assert t.release(child, [[1], [2]], now=LATER) == msgspec.structs.replace(
        child, wait_for_parents=False, input=[[1], [2]], wait_deadline=LATER + timedelta(seconds=9)
    )
    with pytest.raises(ConflictError, match="cannot release"):
        t.release(waiting(), [], now=LATER)  # not waiting for parents
    with pytest.raises(ConflictError, match="cannot release"):
        t.release(running(wait_for_parents=True), [], now=LATER)


@pytest.mark.parametrize("state", [W, R])
def test_fail_descendant_and_refuse_end_a_live_process(state: ProcessState) -> None:
    p = running(state=state, errors=["before"])
    assert t.fail_descendant(p, "parent failed", now=LATER) == msgspec.structs.replace(
        p, state=KO, errors=["parent failed"], end_time=LATER
    )
    assert t.refuse(p, "too big", now=LATER) == msgspec.structs.replace(
        p, state=KO, errors=["before", "too big"], end_time=LATER
    )


def test_the_holder_is_recognised_by_its_id_equal_not_the_same_object() -> None:
    # Ids decoded from JSON are new strings each time: the lease compares their value.
    holder = Executor(executor_id="ex-c", executor_type="x", executor_name="ec")
    same = Executor(executor_id="".join(["ex", "-c"]), executor_type="x", executor_name="ec")
    assert same.executor_id == holder.executor_id and same.executor_id is not holder.executor_id
    p = t.assign(waiting(), holder, now=NOW)
    assert t.close(p, same, [], now=LATER, attempt=0).state is OK


def test_retries_left_and_losses_under_the_bound_go_back_to_the_queue() -> None:
    first = running(spec=spec(max_exec_time=10, max_retries=2))
    assert (t.requeue(first, "x", now=LATER).state, t.requeue(first, "x", now=LATER).retries) == (
        W,
        1,
    )
    lost = t.requeue_lost(running(), "x", now=LATER, max_losses=5)
    assert (lost.state, lost.executor_losses, lost.retries) == (W, 1, 0)
