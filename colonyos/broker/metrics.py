"""What the broker counts as it works, for Prometheus: counters and histograms per colony and
executor type, each incremented in the one place where the broker does the thing.

- a process created: :meth:`ProcessStore.create` (``colonies_submissions_total``);
- a submission rejected: :meth:`ProcessStore.publish_rejection` (``colonies_rejections_total``);
- a process assigned: the assignment path's write (``colonies_assignments_total`` and the
  waiting-time histogram);
- every other change of a process: :meth:`Service.transition` (retries, re-queues, and the
  execution-time histogram).

The gauges are not kept here: a scrape computes them from the broker's state
(:mod:`colonyos.broker.exposition`). Nothing here does I/O or blocks.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import NamedTuple

from prometheus_client import Counter, Histogram
from prometheus_client.metrics_core import Metric

from colonyos.models import ZERO_TIME, Process, ProcessState

__all__ = ["EXEC_BUCKETS", "WAIT_BUCKETS", "BrokerMetrics"]

# Seconds from submission to running: queued work is taken in milliseconds, or waits for an
# executor for minutes or hours.
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
# Seconds from running to closed or failed. (prometheus-client adds +Inf to each.)
EXEC_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400)
_LABELS = ("colony", "executortype")


class _PerType(NamedTuple):
    """The children of every counter and histogram for one colony and executor type."""

    submissions: Counter
    assignments: Counter
    retries: Counter
    requeues: Counter
    rejections: Counter
    waiting: Histogram
    execution: Histogram


class BrokerMetrics:
    """The counters and histograms of one broker (registered nowhere: the scrape collects them
    while the broker leads)."""

    def __init__(self) -> None:
        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, _LABELS, registry=None)

        self._counters = (
            counter("colonies_submissions", "Processes created (submitted specs, workflow nodes)."),
            counter("colonies_assignments", "Processes assigned to an executor."),
            counter(
                "colonies_retries",
                "Running processes queued again after their execution deadline (a retry).",
            ),
            counter(
                "colonies_requeues",
                "Running processes queued again because their executor went away (no retry).",
            ),
            counter(
                "colonies_rejections",
                "Submissions rejected (an invalid spec, an unknown colony, a taken id...).",
            ),
        )
        self._histograms = (
            Histogram(
                "colonies_process_waiting_seconds",
                "Time from submission to running, observed at each assignment.",
                _LABELS,
                buckets=WAIT_BUCKETS,
                registry=None,
            ),
            Histogram(
                "colonies_process_execution_seconds",
                "Time from running to closed or failed.",
                _LABELS,
                buckets=EXEC_BUCKETS,
                registry=None,
            ),
        )
        # Looked up once per colony and executor type: the hot path pays one dict lookup.
        self._children: dict[tuple[str, str], _PerType] = {}

    def _of(self, colony: str, executor_type: str) -> _PerType:
        key = (colony, executor_type)
        found = self._children.get(key)
        if found is None:
            submissions, assignments, retries, requeues, rejections = (
                m.labels(colony, executor_type) for m in self._counters
            )
            waiting, execution = (m.labels(colony, executor_type) for m in self._histograms)
            found = _PerType(
                submissions, assignments, retries, requeues, rejections, waiting, execution
            )
            self._children[key] = found
        return found

    def created(self, process: Process) -> None:
        self._of(process.colony_name, process.executor_type).submissions.inc()

    def rejected(self, colony: str, executor_type: str) -> None:
        """``executor_type``: the subject's (``_graph`` for a workflow)."""
        self._of(colony, executor_type).rejections.inc()

    def assigned(self, process: Process) -> None:
        """``process`` as written RUNNING."""
        of = self._of(process.colony_name, process.executor_type)
        of.assignments.inc()
        of.waiting.observe(_seconds(process.submission_time, process.start_time))

    def changed(self, before: Process, after: Process) -> None:
        """A write through :meth:`Service.transition`: ``before`` as read, ``after`` as written."""
        if before.state is not ProcessState.RUNNING:
            return
        if after.state is ProcessState.WAITING:
            of = self._of(after.colony_name, after.executor_type)
            (of.retries if after.retries > before.retries else of.requeues).inc()
        elif after.state in (ProcessState.SUCCESS, ProcessState.FAILED):
            of = self._of(after.colony_name, after.executor_type)
            of.execution.observe(_seconds(after.start_time, after.end_time))

    def collect(self) -> Iterator[Metric]:
        for metric in (*self._counters, *self._histograms):
            yield from metric.collect()


def _seconds(start: datetime, end: datetime) -> float:
    """From ``start`` to ``end``; 0 if either is unset (Go's zero time) or the clock stepped."""
    if start == ZERO_TIME or end == ZERO_TIME:
        return 0.0
    return max(0.0, (end - start).total_seconds())
