"""When a generator runs. Pure: no clock, no I/O.

:func:`decide` is a function of the definition (its ``trigger`` and ``timeout``), how many
packed arguments wait, when the first of them was packed, and the time now. It answers
:class:`RunNow` (start a run with the first ``count`` waiting arguments) or :class:`Wait`
(look again at ``until``, or when an argument arrives).

- ``trigger`` arguments waiting: a run with ``trigger`` of them, the oldest first.
- Fewer, and ``timeout`` seconds (above 0) since the first of them was packed: a run with all
  of them. The timeout counts from the oldest argument not yet used, not from the last run
  (Colonies counts from the last run, so an argument packed long after it starts a run at
  once, alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from colonyos.generators.model import Generator

__all__ = ["RunNow", "Wait", "decide"]


@dataclass(frozen=True, slots=True)
class RunNow:
    """Start a run with the first ``count`` waiting arguments; ``timed_out``: fewer than the
    trigger, their time is up."""

    count: int
    timed_out: bool = False


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to start; look again at ``until`` (the first argument's timeout), or, when
    None, once another argument arrives."""

    until: datetime | None = None


def decide(
    generator: Generator, *, pending: int, first_packed: datetime | None, now: datetime
) -> RunNow | Wait:
    """Run now (with how many of the waiting arguments) or wait (until when)."""
    if pending <= 0:
        return Wait()
    if pending >= generator.trigger:
        return RunNow(count=generator.trigger)
    if not generator.has_timeout or first_packed is None:
        return Wait()
    due = first_packed + timedelta(seconds=generator.timeout)
    if now >= due:
        return RunNow(count=pending, timed_out=True)
    return Wait(until=due)
