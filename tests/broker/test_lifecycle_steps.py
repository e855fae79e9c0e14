"""The decisions of the lifecycle sweeps on their own (no server): when an assignment counts as
never confirmed, and which processes the ``maxexectime`` sweep re-queues."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from colonyos.broker import transitions as t
from colonyos.broker.lifecycle import requeue_if_past_exec, unconfirmed
from colonyos.broker.service import Report
from colonyos.errors import ConflictError
from colonyos.models import ZERO_TIME, Conditions, Executor, FunctionSpec, Process, ProcessState

START = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
START_NS = int(START.timestamp() * 1e9)
WINDOW_S = 1.5
WINDOW_NS = int(WINDOW_S * 1e9)
A = Executor(executor_id="a", executor_type="x", executor_name="ea")


def running(**fields: object) -> Process:
    spec = FunctionSpec(
        func_name="f", conditions=Conditions(executor_type="x"), max_exec_time=10, max_retries=1
    )
    process = t.assign(t.create("p", spec, now=START, now_ns=1), A, now=START)
    return msgspec.structs.replace(process, **fields)


def test_a_heartbeat_within_the_window_may_predate_the_assignment() -> None:
    p = running()
    assert p.start_time == START
    for sent_ns in (START_NS - 1, START_NS + 1, START_NS + WINDOW_NS // 2, START_NS + WINDOW_NS):
        assert not unconfirmed(p, Report(sent_ns), WINDOW_S), sent_ns


def test_a_heartbeat_past_the_window_that_leaves_the_process_out_loses_it() -> None:
    p = running()
    assert unconfirmed(p, Report(START_NS + WINDOW_NS + 1), WINDOW_S)
    assert unconfirmed(p, Report(START_NS + 10 * WINDOW_NS, frozenset({"other"})), WINDOW_S)


def test_a_heartbeat_that_lists_the_process_or_none_at_all_keeps_it() -> None:
    p = running()
    assert not unconfirmed(p, Report(START_NS + 10 * WINDOW_NS, frozenset({"p"})), WINDOW_S)
    assert not unconfirmed(p, None, WINDOW_S)


def test_the_window_is_counted_in_seconds_from_the_assignment() -> None:
    """A process assigned much later than another: the same heartbeat is past the first's
    window and within the second's."""
    early, late = running(), running(start_time=START + timedelta(seconds=60))
    beat = Report(START_NS + 30 * 10**9)
    assert unconfirmed(early, beat, WINDOW_S)
    assert not unconfirmed(late, beat, WINDOW_S)
    # A window of 40 s holds the same heartbeat for the early one too.
    assert not unconfirmed(early, beat, 40.0)


def test_only_a_running_process_past_its_deadline_is_requeued() -> None:
    now = datetime.now(UTC)
    past = running(exec_deadline=now - timedelta(seconds=1))
    again = requeue_if_past_exec(past)
    assert again.state is ProcessState.WAITING and again.retries == 1
    for kept in (
        running(exec_deadline=now + timedelta(seconds=60)),  # not yet
        running(exec_deadline=ZERO_TIME),  # no maxexectime
        msgspec.structs.replace(past, state=ProcessState.SUCCESS),  # closed meanwhile
        msgspec.structs.replace(past, state=ProcessState.WAITING),  # queued meanwhile
    ):
        with pytest.raises(ConflictError):
            requeue_if_past_exec(kept)
