"""Statistics of a colony, of its functions and of the server: the replies' shapes, and the
pure maths behind them (percentiles, one function's summary).

The keys follow Colonies where Colonies has them: a colony's counts are those of its
``Statistics`` (``activeexecutors``, ``waitingprocesses``, ``successfulworkflows``...), a
function's those of its ``Function`` (``funcname``, ``executortype``, ``counter``,
``minwaittime``, ``avgexectime``...; seconds). Ours are marked below; docs/cli.md lists which
is which.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

import msgspec

from colonyos.models import ZERO_TIME, Model

__all__ = [
    "BrokerInfo",
    "ColonyStats",
    "FunctionStats",
    "NatsInfo",
    "ServerStatus",
    "StreamState",
    "Summary",
    "percentile",
    "seconds_between",
    "summarize",
]


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 < q <= 100) of values sorted ascending, by nearest rank:
    the smallest value with at least ``q`` percent of the values at or below it (always one
    of the values, never an interpolation). 0.0 for no values."""
    if not ordered:
        return 0.0
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q!r} is not in (0, 100]")
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[max(rank, 1) - 1]


class Summary(msgspec.Struct, frozen=True, kw_only=True):
    """Durations in seconds: how many, and their min, mean, median, 95th percentile, max."""

    count: int = 0
    min: float = 0.0
    avg: float = 0.0
    p50: float = 0.0
    p95: float = 0.0
    max: float = 0.0


def summarize(values: Sequence[float]) -> Summary:
    """The :class:`Summary` of some durations (in any order)."""
    if not values:
        return Summary()
    ordered = sorted(values)
    return Summary(
        count=len(ordered),
        min=ordered[0],
        avg=sum(ordered) / len(ordered),
        p50=percentile(ordered, 50),
        p95=percentile(ordered, 95),
        max=ordered[-1],
    )


class ColonyStats(Model, kw_only=True):
    """``colonies colony stats``: Colonies' ``Statistics`` for one colony, and ours
    (``colonyname``, ``offlineexecutors``, ``pendingexecutors``)."""

    colony_name: str  # ours
    executors: int = 0  # registrations, every state
    active_executors: int = 0  # online: heard from within the liveness window
    offline_executors: int = 0  # ours: registered, not removed, not heard from lately
    pending_executors: int = 0  # ours: waiting for approval
    unregistered_executors: int = 0  # removed by the colony's owner
    waiting_processes: int = 0
    running_processes: int = 0
    successful_processes: int = 0
    failed_processes: int = 0
    cancelled_processes: int = 0
    waiting_workflows: int = 0
    running_workflows: int = 0
    successful_workflows: int = 0
    failed_workflows: int = 0
    cancelled_workflows: int = 0


class FunctionStats(Model, kw_only=True):
    """``colonies function stats``: one function name of one executor type. Colonies' keys
    (``counter``, min/max/avg of waiting and execution time) and ours (each state's count,
    ``p50``/``p95``). Waiting time: submitted to (last) started; execution time: started to
    ended, of processes that ran and ended SUCCESS or FAILED. Times of no process (no sample)
    are 0."""

    func_name: str
    executor_type: str
    counter: int = 0  # processes of this function the index has, every state
    waiting: int = 0  # ours, likewise the next four
    running: int = 0
    successful: int = 0
    failed: int = 0
    cancelled: int = 0
    wait_samples: int = 0  # ours: how many processes the waiting times are of (they started)
    exec_samples: int = 0  # ours: and the execution times (they ran and ended)
    min_wait_time: float = 0.0
    max_wait_time: float = 0.0
    avg_wait_time: float = 0.0
    p50_wait_time: float = 0.0  # ours
    p95_wait_time: float = 0.0  # ours
    min_exec_time: float = 0.0
    max_exec_time: float = 0.0
    avg_exec_time: float = 0.0
    p50_exec_time: float = 0.0  # ours
    p95_exec_time: float = 0.0  # ours

    @classmethod
    def of(
        cls,
        func_name: str,
        executor_type: str,
        states: dict[str, int],
        waits: Sequence[float],
        execs: Sequence[float],
    ) -> FunctionStats:
        w, e = summarize(waits), summarize(execs)
        return cls(
            func_name=func_name,
            executor_type=executor_type,
            counter=sum(states.values()),
            waiting=states.get("waiting", 0),
            running=states.get("running", 0),
            successful=states.get("success", 0),
            failed=states.get("failed", 0),
            cancelled=states.get("cancelled", 0),
            wait_samples=w.count,
            exec_samples=e.count,
            min_wait_time=w.min,
            max_wait_time=w.max,
            avg_wait_time=w.avg,
            p50_wait_time=w.p50,
            p95_wait_time=w.p95,
            min_exec_time=e.min,
            max_exec_time=e.max,
            avg_exec_time=e.avg,
            p50_exec_time=e.p50,
            p95_exec_time=e.p95,
        )


def seconds_between(start: datetime, end: datetime) -> float | None:
    """Seconds from ``start`` to ``end``; None if either is not set (Go's zero time)."""
    if start == ZERO_TIME or end == ZERO_TIME:
        return None
    return max(0.0, (end - start).total_seconds())


class BrokerInfo(Model, kw_only=True):
    """A broker as it announces itself (ours)."""

    broker_id: str
    host: str = ""
    pid: int = 0
    version: str = ""
    since: datetime = ZERO_TIME  # when it started
    leading: bool = False  # leads the server scope
    leading_since: datetime = ZERO_TIME
    colonies: int = 0  # how many colonies it leads
    colony_names: list[str] = msgspec.field(default_factory=list)  # ours: which ones
    # Started with COLONIES_SHARDED (None: a broker of a version that did not say).
    sharded: bool | None = None


class StreamState(Model, kw_only=True):
    """One of the installation's JetStream streams (KV buckets are streams too)."""

    name: str
    messages: int = 0
    bytes: int = 0
    consumers: int = 0


class NatsInfo(Model, kw_only=True):
    """The NATS server the client is connected to, as its INFO says, and every server of
    the cluster the connection knows of (its seed URLs and those the cluster announced)."""

    server_id: str = ""
    server_name: str = ""
    version: str = ""
    cluster: str = ""
    jetstream: bool = False
    max_payload: int = 0
    connected_url: str = ""
    servers: list[str] = msgspec.field(default_factory=list)


class ServerStatus(Model, kw_only=True):
    """``colonies server status``: Colonies' ``buildversion``, and ours."""

    build_version: str = ""  # the leading broker's colonyos version
    uptime: float = 0.0  # ours: seconds since the leading broker started
    leader: BrokerInfo | None = None
    standbys: list[BrokerInfo] = msgspec.field(default_factory=list)
    streams: list[StreamState] = msgspec.field(default_factory=list)
    messages: int = 0  # in all streams
    bytes: int = 0
    nats: NatsInfo | None = None  # filled by the client, from its own connection
