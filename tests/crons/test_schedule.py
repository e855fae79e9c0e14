"""The cron maths and the scheduling decision, against a fake clock (plain datetimes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from colonyos.crons.model import Cron, CronDefinition
from colonyos.crons.schedule import (
    RunNow,
    Wait,
    check_schedule,
    decide,
    next_runs,
    next_tick,
    random_offset_s,
)
from colonyos.errors import InvalidSpecError
from colonyos.models import ZERO_TIME

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def cron(**kw: object) -> Cron:
    kw.setdefault("name", "c")
    kw.setdefault("cron_id", "id-1")
    kw.setdefault("created", T0)
    return Cron(**kw)  # type: ignore[arg-type]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# -- the cron maths --------------------------------------------------------------------------
def test_six_fields_have_seconds_first() -> None:
    c = cron(cron_expression="0/5 * * * * *")
    assert next_runs(c, at(1), 3) == [at(5), at(10), at(15)]


def test_five_fields_start_at_the_minute() -> None:
    c = cron(cron_expression="*/15 * * * *")
    assert next_runs(c, at(1), 2) == [at(15 * 60), at(30 * 60)]


def test_a_time_zone_moves_the_tick() -> None:
    # 09:00 in Stockholm is 08:00 UTC in winter and 07:00 UTC in summer.
    c = cron(cron_expression="0 9 * * *", time_zone="Europe/Stockholm")
    assert next_tick(c, datetime(2026, 1, 10, tzinfo=UTC)) == datetime(2026, 1, 10, 8, tzinfo=UTC)
    assert next_tick(c, datetime(2026, 7, 10, tzinfo=UTC)) == datetime(2026, 7, 10, 7, tzinfo=UTC)


def test_utc_is_the_default() -> None:
    c = cron(cron_expression="0 9 * * *")
    assert next_tick(c, datetime(2026, 1, 10, tzinfo=UTC)) == datetime(2026, 1, 10, 9, tzinfo=UTC)


def test_an_interval_counts_from_when_the_cron_was_added() -> None:
    c = cron(interval=10)
    assert next_runs(c, T0, 3) == [at(10), at(20), at(30)]
    assert next_tick(c, at(25)) == at(30)


def test_a_random_interval_runs_once_within_each_interval() -> None:
    c = cron(interval=60, random=True)
    runs = next_runs(c, T0 - timedelta(microseconds=1), 50)
    for k, t in enumerate(runs):
        assert at(60 * k) <= t < at(60 * (k + 1)), (k, t)
    offsets = {round((t - T0).total_seconds() % 60, 3) for t in runs}
    assert len(offsets) > 10  # not the same moment every time


def test_the_random_moment_is_reproducible_from_the_cron_id() -> None:
    a, b = cron(interval=60, random=True), cron(interval=60, random=True)
    assert next_runs(a, T0, 5) == next_runs(b, T0, 5)
    other = cron(interval=60, random=True, cron_id="id-2")
    assert next_runs(other, T0, 5) != next_runs(a, T0, 5)
    assert all(0 <= random_offset_s(a, k) < 60 for k in range(1000))


# -- checking a definition -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"cron_expression": "0/5 * * *"}, "$.cronexpression"),
        ({"cron_expression": "99 * * * * *"}, "$.cronexpression"),
        ({"cron_expression": ""}, "$.cronexpression"),
        ({"interval": 0}, "$.interval"),
        ({"interval": -7}, "$.interval"),
        ({"interval": 5, "cron_expression": "* * * * *"}, "$.cronexpression"),
        ({"cron_expression": "* * * * *", "random": True}, "$.random"),
        ({"cron_expression": "* * * * *", "time_zone": "Mars/Olympus"}, "$.timezone"),
    ],
)
def test_a_bad_schedule_is_refused_naming_its_field(kw: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidSpecError) as info:
        check_schedule(cron(**kw))
    assert info.value.path == field
    assert info.value.message.startswith(field)


def test_good_schedules_pass() -> None:
    for kw in (
        {"cron_expression": "0/5 * * * * *"},
        {"cron_expression": "0 9 * * 1-5", "time_zone": "Europe/Stockholm"},
        {"interval": 3, "random": True},
    ):
        check_schedule(cron(**kw))


def test_pycolonies_spellings_of_waitprevious_are_both_read() -> None:
    right = msgspec.json.decode(b'{"name":"a","waitforprevprocessgraph":true}', type=CronDefinition)
    typo = msgspec.json.decode(b'{"name":"a","waitforprevprocessgrap":true}', type=CronDefinition)
    neither = msgspec.json.decode(b'{"name":"a"}', type=CronDefinition)
    assert right.waits_for_previous and typo.waits_for_previous
    assert not neither.waits_for_previous


def test_a_cron_has_colonies_keys() -> None:
    keys = set(msgspec.json.decode(msgspec.json.encode(cron())))
    assert {
        "cronid",
        "initiatorid",
        "initiatorname",
        "colonyname",
        "name",
        "cronexpression",
        "interval",
        "random",
        "nextrun",
        "lastrun",
        "workflowspec",
        "prevprocessgraphid",
        "waitforprevprocessgraph",
        "checkerperiod",
    } <= keys


# -- the decision ----------------------------------------------------------------------------
def test_nothing_runs_before_the_first_tick() -> None:
    c = cron(cron_expression="0/5 * * * * *")
    assert decide(c, previous_ended=True, now=at(4.9)) == Wait(until=at(5))


def test_a_due_tick_runs_with_its_scheduled_time() -> None:
    c = cron(cron_expression="0/5 * * * * *")
    assert decide(c, previous_ended=True, now=at(5.3)) == RunNow(at=at(5))


def test_after_a_run_the_next_tick_is_awaited() -> None:
    c = cron(cron_expression="0/5 * * * * *", last_run=at(5))
    assert decide(c, previous_ended=False, now=at(7)) == Wait(until=at(10))
    assert decide(c, previous_ended=False, now=at(10)) == RunNow(at=at(10))


def test_an_hour_of_missed_ticks_fires_one_run_the_latest() -> None:
    c = cron(cron_expression="0 * * * * *", last_run=at(60))
    decision = decide(c, previous_ended=True, now=at(3600 + 60 + 30))
    assert decision == RunNow(at=at(3600 + 60))
    ran = Cron(**{**msgspec.structs.asdict(c), "last_run": at(3660)})
    assert decide(ran, previous_ended=True, now=at(3690)) == Wait(until=at(3720))


def test_missed_intervals_fire_one_run_too() -> None:
    c = cron(interval=10, last_run=at(10))
    assert decide(c, previous_ended=True, now=at(1005)) == RunNow(at=at(1000))


def test_a_missed_random_interval_runs_at_the_latest_moment_due() -> None:
    c = cron(interval=60, random=True)
    first = next_tick(c, T0 - timedelta(microseconds=1))
    later = next_runs(c, at(600), 1)[0]  # a moment in a later interval
    decision = decide(c, previous_ended=True, now=later + timedelta(seconds=1))
    assert decision == RunNow(at=later)
    assert first < later


def test_waitprevious_holds_while_the_previous_run_goes_on() -> None:
    c = cron(cron_expression="0/5 * * * * *", last_run=at(5), wait_for_prev_process_graph=True)
    assert decide(c, previous_ended=False, now=at(12)) == Wait(until=at(15), blocked=True)
    assert decide(c, previous_ended=False, now=at(31)) == Wait(until=at(35), blocked=True)


def test_waitprevious_starts_one_run_when_the_previous_ends() -> None:
    c = cron(cron_expression="0/5 * * * * *", last_run=at(5), wait_for_prev_process_graph=True)
    assert decide(c, previous_ended=True, now=at(31)) == RunNow(at=at(30))


def test_without_waitprevious_a_running_previous_does_not_hold() -> None:
    c = cron(cron_expression="0/5 * * * * *", last_run=at(5))
    assert decide(c, previous_ended=False, now=at(10)) == RunNow(at=at(10))


def test_the_same_inputs_give_the_same_tick() -> None:
    """A new leader deciding again after the previous died gets the same scheduled time."""
    c = cron(interval=7, random=True, last_run=ZERO_TIME)
    now = at(100)
    assert decide(c, previous_ended=True, now=now) == decide(c, previous_ended=True, now=now)
