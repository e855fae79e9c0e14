"""When a cron runs: the cron maths and the scheduling decision. Pure: no clock, no I/O.

The decision is :func:`decide`, a function of the definition (with its last run), whether the
previous run's workflow has ended, and the time now. It answers :class:`RunNow` (start the run
scheduled at ``at``) or :class:`Wait` (look again at ``until``).

- A cron expression has five fields (minute first) or six (seconds first, Colonies' form:
  ``0/5 * * * * *`` is every five seconds); croniter does the maths, in the cron's time zone
  (UTC by default).
- ``interval`` runs every N seconds from when the cron was added; with ``random`` it runs once
  at a random moment within each interval, the moment derived from the cron's id and the
  interval's number (the same on every broker, and reproducible in tests).
- Missed ticks are not caught up: a broker that was down for an hour fires ONE run, the latest
  tick that is due, and goes on from there.
- ``waitforprevprocessgraph``: while the previous run's workflow has not ended nothing starts;
  when it ends, one run starts (the latest tick due by then).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from colonyos.crons.model import Cron
from colonyos.errors import InvalidSpecError
from colonyos.models import ZERO_TIME

__all__ = [
    "RunNow",
    "Wait",
    "check_schedule",
    "decide",
    "latest_due",
    "next_runs",
    "next_tick",
    "random_offset_s",
    "time_zone",
]

_EPSILON = timedelta(microseconds=1)
# Far enough that a cron whose expression never matches does not spin.
_NEVER = datetime(9999, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class RunNow:
    """Start the run scheduled at ``at`` now."""

    at: datetime


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to start; look again at ``until`` (the next tick), or when the previous run
    ends (``blocked``)."""

    until: datetime
    blocked: bool = False


def _invalid(field: str, reason: str) -> InvalidSpecError:
    return InvalidSpecError(f"$.{field}: {reason}", path=f"$.{field}", reason=reason)


def time_zone(cron: Cron) -> tzinfo:
    if not cron.time_zone or cron.time_zone.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(cron.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise _invalid(
            "timezone", f"unknown time zone {cron.time_zone!r} (use an IANA name: Europe/Paris)"
        ) from None


def _fields(expression: str) -> int:
    return len(expression.split())


def _croniter(cron: Cron, start: datetime) -> croniter:
    expr = cron.cron_expression.strip()
    local = start.astimezone(time_zone(cron))
    return croniter(expr, local, second_at_beginning=_fields(expr) == 6)


def check_schedule(cron: Cron) -> None:
    """The schedule can be evaluated, or :class:`InvalidSpecError` naming the field."""
    if cron.interval == 0 or cron.interval < -1:
        raise _invalid("interval", f"{cron.interval} seconds: give a number of seconds above 0")
    if cron.uses_interval:
        if cron.cron_expression.strip():
            raise _invalid("cronexpression", "give a cron expression or an interval, not both")
        return
    if cron.random:
        raise _invalid("random", "a random moment needs an interval, not a cron expression")
    expr = cron.cron_expression.strip()
    if not expr:
        raise _invalid("cronexpression", "give a cron expression or an interval")
    time_zone(cron)
    if not expr.startswith("@") and _fields(expr) not in (5, 6):
        raise _invalid(
            "cronexpression",
            f"{expr!r} has {_fields(expr)} fields; use five (minute hour day month weekday) "
            "or six (seconds first, as Colonies: '0/5 * * * * *')",
        )
    try:
        _croniter(cron, datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
    except (CroniterError, ValueError, KeyError) as err:
        raise _invalid("cronexpression", f"{expr!r} is not a cron expression: {err}") from None


def _anchor(cron: Cron) -> datetime:
    return cron.created if cron.created != ZERO_TIME else cron.last_run


def random_offset_s(cron: Cron, window: int) -> float:
    """The moment within interval number ``window`` a random cron runs at: the same for the
    same cron and window on every broker (a hash of the cron's id), uniform in [0, interval)."""
    digest = hashlib.sha256(f"{cron.cron_id}:{window}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * cron.interval


def _interval_tick_after(cron: Cron, t: datetime) -> datetime:
    anchor, step = _anchor(cron), cron.interval
    elapsed = (t - anchor).total_seconds()
    if not cron.random:
        k = max(1, math.floor(elapsed / step) + 1)
        return anchor + timedelta(seconds=k * step)
    window = max(0, math.floor(elapsed / step))
    while True:
        at = anchor + timedelta(seconds=window * step + random_offset_s(cron, window))
        if at > t:
            return at
        window += 1


def _interval_latest_at_or_before(cron: Cron, t: datetime) -> datetime | None:
    anchor, step = _anchor(cron), cron.interval
    elapsed = (t - anchor).total_seconds()
    if elapsed < 0:
        return None
    if not cron.random:
        k = math.floor(elapsed / step)
        return anchor + timedelta(seconds=k * step) if k >= 1 else None
    window = math.floor(elapsed / step)
    while window >= 0:
        at = anchor + timedelta(seconds=window * step + random_offset_s(cron, window))
        if at <= t:
            return at
        window -= 1
    return None


def next_tick(cron: Cron, after: datetime) -> datetime:
    """The first scheduled time strictly after ``after`` (UTC)."""
    if cron.uses_interval:
        return _interval_tick_after(cron, after)
    try:
        return _croniter(cron, after).get_next(datetime).astimezone(UTC)
    except CroniterError:
        return _NEVER


def latest_due(cron: Cron, now: datetime) -> datetime | None:
    """The latest scheduled time at or before ``now`` (UTC), if any."""
    if cron.uses_interval:
        return _interval_latest_at_or_before(cron, now)
    try:
        return _croniter(cron, now + _EPSILON).get_prev(datetime).astimezone(UTC)
    except CroniterError:
        return None


def next_runs(cron: Cron, now: datetime, count: int) -> list[datetime]:
    """The next ``count`` scheduled times after ``now`` (what ``cron get`` shows)."""
    times: list[datetime] = []
    t = now
    for _ in range(count):
        t = next_tick(cron, t)
        if t >= _NEVER:
            break
        times.append(t)
    return times


def decide(cron: Cron, *, previous_ended: bool, now: datetime) -> RunNow | Wait:
    """Run now (the scheduled time of the run) or wait (until when).

    ``previous_ended``: the previous run's workflow has ended (or there is none)."""
    since = cron.last_run if cron.last_run != ZERO_TIME else _anchor(cron)
    due = next_tick(cron, since)
    if due > now:
        return Wait(until=due)
    if cron.wait_for_prev_process_graph and not previous_ended:
        return Wait(until=next_tick(cron, now), blocked=True)
    at = latest_due(cron, now)
    return RunNow(at=at if at is not None and at > since else due)
