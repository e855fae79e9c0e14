"""Transitions on values as they come back from storage: equal but not the same object, and
ordered either way round. Each test kills a mutant of transitions.py that `make mutate` left
alive (an identity or an ordering where the code compares values)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from colonyos.broker import transitions as t
from colonyos.errors import ConflictError, NotAuthorizedError
from colonyos.models import ZERO_TIME, Conditions, Executor, FunctionSpec, Process, ProcessState

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
LATER = NOW + timedelta(seconds=100)
A = Executor(executor_id="a", executor_type="x", executor_name="ea")
B = Executor(executor_id="b", executor_type="x", executor_name="eb")


def _waiting(**fields: object) -> Process:
    spec = FunctionSpec(func_name="f", conditions=Conditions(executor_type="x"))
    return msgspec.structs.replace(t.create("p", spec, now=NOW, now_ns=7), **fields)


def _stored(process: Process) -> Process:
    """The process as a broker reads it back: every field a new object."""
    return msgspec.json.decode(msgspec.json.encode(process), type=Process)


def test_an_executor_whose_id_sorts_before_the_holders_is_refused() -> None:
    held_by_b = t.assign(_waiting(), B, now=NOW)
    with pytest.raises(NotAuthorizedError):
        t.close(held_by_b, A, [], now=LATER)
    with pytest.raises(NotAuthorizedError):
        t.fail(held_by_b, A, [], now=LATER)
    assert t.close(held_by_b, B, [], now=LATER).state is ProcessState.SUCCESS


def test_a_late_attempt_is_recognised_by_its_number() -> None:
    """Past 256, equal ints are distinct objects (unlimited retries get there)."""
    p = _stored(t.assign(_waiting(assignments=1000), A, now=NOW))
    attempt = int("1000")
    assert p.attempt == attempt and p.attempt is not attempt
    assert t.close(p, A, [], now=LATER, attempt=attempt).state is ProcessState.SUCCESS


def test_a_stored_process_without_a_wait_deadline_never_expires() -> None:
    p = _stored(_waiting())
    assert p.wait_deadline == ZERO_TIME and p.wait_deadline is not ZERO_TIME
    with pytest.raises(ConflictError, match="cannot expire"):
        t.expire_wait(p, now=LATER)


def test_a_wait_deadline_passed_by_a_later_clock_reading_expires() -> None:
    p = _stored(_waiting(wait_deadline=NOW))
    assert t.expire_wait(p, now=LATER).state is ProcessState.FAILED
    with pytest.raises(ConflictError, match="may still wait"):
        t.expire_wait(p, now=NOW - timedelta(seconds=1))


def test_a_waiting_process_is_not_in_its_last_assignment() -> None:
    """Re-queued with its executor and count unchanged, it is still no longer running."""
    p = t.assign(_waiting(), A, now=NOW)
    assert t.same_assignment(p, p)
    assert not t.same_assignment(msgspec.structs.replace(p, state=ProcessState.WAITING), p)
