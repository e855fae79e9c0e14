"""The Service's small decisions on their own (no server): its ids, whether a write took a
running process from its executor, whether a revision loaded from KV may lack its event, and
an executor's last heartbeat."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import msgspec

from colonyos.broker import transitions as t
from colonyos.broker.service import Report, _revoked, event_may_be_missing, new_id
from colonyos.models import Conditions, Executor, FunctionSpec, Process, ProcessState

START = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SLACK = timedelta(seconds=30)
A = Executor(executor_id="a", executor_type="x", executor_name="ea")


def _running() -> Process:
    spec = FunctionSpec(func_name="f", conditions=Conditions(executor_type="x"), max_retries=3)
    return t.assign(t.create("p", spec, now=START, now_ns=1), A, now=START)


def _decoded(process: Process) -> Process:
    """As read back from storage: equal values, new objects (ints past 256 included)."""
    return msgspec.json.decode(msgspec.json.encode(process), type=Process)


def test_an_id_is_64_lowercase_hex_characters() -> None:
    ids = {new_id() for _ in range(20)}
    assert len(ids) == 20
    assert all(re.fullmatch(r"[0-9a-f]{64}", i) for i in ids)


def test_a_write_that_ends_or_reassigns_a_running_process_revokes_it() -> None:
    before = _running()
    assert _revoked(before, t.close(before, A, [], now=START))
    requeued = t.requeue(before, "past its maxexectime", now=START)
    assert _revoked(before, requeued)
    reassigned = t.assign(requeued, A, now=START)
    assert reassigned.assignments == before.assignments + 1
    assert _revoked(before, reassigned)


def test_a_write_that_leaves_a_running_process_in_its_assignment_does_not() -> None:
    before = msgspec.structs.replace(_running(), assignments=1000)
    assert not _revoked(before, _decoded(before))  # 1000 == 1000, not the same int object


def test_only_a_running_process_can_be_revoked() -> None:
    waiting = msgspec.structs.replace(_running(), state=ProcessState.WAITING)
    assert not _revoked(waiting, waiting)  # WAITING sorts before RUNNING
    ended = t.close(_running(), A, [], now=START)
    assert not _revoked(ended, ended)  # SUCCESS sorts after it
    failed = msgspec.structs.replace(ended, state=ProcessState.FAILED)
    assert not _revoked(ended, failed)


def test_a_revision_written_within_the_slack_of_the_last_event_may_lack_its_event() -> None:
    last = START
    assert event_may_be_missing(last - SLACK, last)  # the edge: written exactly 30 s before
    assert event_may_be_missing(last - SLACK / 3, last)
    assert event_may_be_missing(last, last)
    assert event_may_be_missing(last + SLACK * 2, last)  # written after the newest event


def test_a_revision_written_well_before_the_last_event_has_its_event() -> None:
    last = START
    assert not event_may_be_missing(last - SLACK - timedelta(microseconds=1), last)
    assert not event_may_be_missing(last - SLACK * 3, last)


def test_an_unknown_time_on_either_side_means_the_event_may_be_missing() -> None:
    assert event_may_be_missing(START, None)  # no event at all yet
    assert event_may_be_missing(None, START)
    assert event_may_be_missing(None, None)


def test_a_report_holds_nothing_running_unless_told() -> None:
    report = Report(wall_ns=5)
    assert report.wall_ns == 5 and report.running == frozenset()
    assert Report(wall_ns=6, running=frozenset({"p"})).running == {"p"}
