"""The decisions of the lifecycle sweeps on their own (no server): when an executor has been
silent too long, when an assignment counts as never confirmed, and which processes the
``maxexectime`` sweep re-queues."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from colonyos.broker import transitions as t
from colonyos.broker.lifecycle import requeue_if_past_exec, silent_too_long, unconfirmed
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


def test_a_silence_longer_than_the_window_loses_the_executor() -> None:
    assert silent_too_long(100.0, 101.6, WINDOW_S)
    assert not silent_too_long(100.0, 101.4, WINDOW_S)
    # Exactly the window (values exact in binary) is not too long.
    assert not silent_too_long(100.0, 101.5, WINDOW_S)


def test_the_silence_is_the_difference_of_the_readings_however_early_the_last_one() -> None:
    """A monotonic clock counts from an arbitrary point (boot): an executor last heard at 1 s
    and silent since is lost at 10 s."""
    assert silent_too_long(1.0, 10.0, WINDOW_S)
    assert silent_too_long(4.0, 10.0, WINDOW_S)


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
    again = requeue_if_past_exec(past, now=now)
    assert again.state is ProcessState.WAITING and again.retries == 1
    for kept in (
        running(exec_deadline=now + timedelta(seconds=60)),  # not yet
        running(exec_deadline=ZERO_TIME),  # no maxexectime
        msgspec.structs.replace(past, state=ProcessState.SUCCESS),  # closed meanwhile
        msgspec.structs.replace(past, state=ProcessState.WAITING),  # queued meanwhile
    ):
        with pytest.raises(ConflictError):
            requeue_if_past_exec(kept, now=now)


def test_a_deadline_within_the_sweeps_millisecond_counts_as_passed() -> None:
    now = datetime(2026, 5, 6, 7, 8, 9, 500_000, tzinfo=UTC)
    for due in (now - timedelta(seconds=1), now, now + timedelta(milliseconds=1)):
        again = requeue_if_past_exec(running(exec_deadline=due), now=now)
        assert again.state is ProcessState.WAITING, due
    for ahead in (timedelta(microseconds=1001), timedelta(microseconds=1500)):
        with pytest.raises(ConflictError):
            requeue_if_past_exec(running(exec_deadline=now + ahead), now=now)


def test_a_stored_process_without_a_maxexectime_is_never_requeued() -> None:
    """The deadline as read back from storage: equal to ``ZERO_TIME``, not the same object."""
    stored = msgspec.json.decode(
        msgspec.json.encode(running(exec_deadline=ZERO_TIME)), type=Process
    )
    assert stored.exec_deadline == ZERO_TIME and stored.exec_deadline is not ZERO_TIME
    with pytest.raises(ConflictError):
        requeue_if_past_exec(stored, now=datetime.now(UTC))
