"""When a generator runs: the decision against a fake clock (plain datetimes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from colonyos.generators.model import NO_TIMEOUT, Generator
from colonyos.generators.trigger import RunNow, Wait, decide

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def gen(trigger: int = 3, timeout: int = NO_TIMEOUT) -> Generator:
    return Generator(name="g", trigger=trigger, timeout=timeout)


def test_nothing_packed_waits_for_an_argument() -> None:
    assert decide(gen(timeout=5), pending=0, first_packed=None, now=at(100)) == Wait()


def test_trigger_arguments_start_a_run_with_trigger_of_them() -> None:
    assert decide(gen(3), pending=3, first_packed=at(0), now=at(0)) == RunNow(count=3)
    assert decide(gen(3), pending=7, first_packed=at(0), now=at(0)) == RunNow(count=3)


def test_fewer_than_trigger_wait_for_the_timeout_from_the_first() -> None:
    g = gen(3, timeout=10)
    assert decide(g, pending=2, first_packed=at(5), now=at(14)) == Wait(until=at(15))
    assert decide(g, pending=2, first_packed=at(5), now=at(15)) == RunNow(2, timed_out=True)


def test_no_timeout_waits_for_the_trigger_however_long() -> None:
    for timeout in (NO_TIMEOUT, 0):
        g = gen(3, timeout=timeout)
        assert decide(g, pending=2, first_packed=at(0), now=at(10**6)) == Wait()


def test_a_trigger_of_one_runs_each_argument_alone() -> None:
    assert decide(gen(1, timeout=60), pending=4, first_packed=at(0), now=at(0)) == RunNow(1)
