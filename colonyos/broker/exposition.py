"""``/metrics``: the broker's Prometheus endpoint (off unless ``--metrics-port`` asks for it).

Every broker serves its lease state. Only a colony's leader serves the colony's figures: gauges
computed at each scrape, by a collector, from what it holds (the queue, executors and their
liveness) and from the colony's index (processes and workflows by state); the leader of the
server scope serves the specs stream's backlog; and a broker that leads anything serves the
counters and histograms it keeps (:mod:`colonyos.broker.metrics`). A standby has nothing of a
colony to say, so scraping every broker never counts anything twice.

The endpoint is served on the broker's event loop, so a scrape reads the broker's state
between two of its steps, never half-way through one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import nats.errors
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from colonyos.broker.admin import is_online
from colonyos.broker.lease import Lease
from colonyos.broker.metrics import BrokerMetrics
from colonyos.broker.service import Service
from colonyos.errors import ServerSetupError
from colonyos.models import ExecutorState, ProcessState

__all__ = ["MetricsServer", "Scraper"]

logger = logging.getLogger(__name__)

_STATES = [s.name.lower() for s in ProcessState]
# A request is one short line and a few headers; whoever sends more, or slower, is dropped.
_REQUEST_TIMEOUT_S = 5.0
_MAX_HEADER_LINES = 100
# How long a scrape waits for the specs consumer's state before leaving that gauge out.
_CONSUMER_INFO_TIMEOUT_S = 2.0


@dataclass(slots=True)
class _Families:
    """What generate_latest collects from: the families of one scrape."""

    families: list[Metric]

    def collect(self) -> Iterable[Metric]:
        return self.families


class Scraper:
    """Renders one scrape of a broker: ``services()`` are the services of the scopes it leads
    now (the server scope's and its colonies'), each colony's figures from its own."""

    def __init__(
        self,
        metrics: BrokerMetrics,
        lease: Lease,
        services: Callable[[], list[Service]],
        *,
        liveness_s: float,
    ) -> None:
        self.metrics = metrics
        self.lease = lease  # the server scope's
        self.services = services
        self.liveness_s = liveness_s

    async def render(self) -> bytes:
        services = self.services()
        server = next((s for s in services if s.colony_scope is None), None)
        colonies = [s for s in services if s.colony_scope is not None]
        counted = [(s, *await s.index.counts()) for s in colonies]
        pending = await _intake_pending(server) if server is not None else None
        led = self.services()
        families = self._lease_families(server is not None and server in led)
        for service, processes, graphs in counted:
            if service in led:  # still leading it: its figures are the colony's
                families += colony_families(service, processes, graphs, self.liveness_s)
        if server is not None and server in led and pending is not None:
            families.append(_intake_family(pending))
        if any(s in led for s in services):
            families += self.metrics.collect()
        return generate_latest(_Families(_merged(families)))

    def _lease_families(self, leading: bool) -> list[Metric]:
        lead = GaugeMetricFamily(
            "colonies_broker_leading",
            "1 while this broker holds the lease and serves, 0 while it stands by.",
            value=1 if leading else 0,
        )
        term = GaugeMetricFamily(
            "colonies_broker_lease_term",
            "The lease bucket's revision when this broker last took the lease (0: never); "
            "every change of leader has a higher one.",
            value=self.lease.term,
        )
        return [lead, term]


def colony_families(
    service: Service,
    processes: list[tuple[str, str, int, int]],
    graphs: list[tuple[str, int, int]],
    liveness_s: float,
) -> list[Metric]:
    """The gauges of every colony, from the leader's state and the index's counts."""
    by_state = GaugeMetricFamily(
        "colonies_processes",
        "Processes kept (until removed or past retention) by colony, executor type and state.",
        labels=["colony", "executortype", "state"],
    )
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for colony, etype, number, n in processes:
        counts.setdefault((colony, etype), dict.fromkeys(_STATES, 0))[_STATES[number]] += n
    for (colony, etype), states in sorted(counts.items()):
        for state, n in states.items():
            by_state.add_metric([colony, etype, state], n)

    workflows = GaugeMetricFamily(
        "colonies_workflows",
        "Workflows (process graphs) kept, by colony and state.",
        labels=["colony", "state"],
    )
    graph_counts = {colony: dict.fromkeys(_STATES, 0) for colony in service.colonies}
    for colony, number, n in graphs:
        graph_counts.setdefault(colony, dict.fromkeys(_STATES, 0))[_STATES[number]] += n
    for colony, states in sorted(graph_counts.items()):
        for state, n in states.items():
            workflows.add_metric([colony, state], n)

    executors = GaugeMetricFamily(
        "colonies_executors",
        "Registered executors (removed ones left out) by colony, executor type and whether "
        "the broker heard from them within the liveness window (online) or not (offline).",
        labels=["colony", "executortype", "state"],
    )
    mono = time.monotonic()
    online: dict[tuple[str, str], list[int]] = {}
    for (colony, _), e in service.executors.items():
        if e.state is ExecutorState.UNREGISTERED:
            continue
        seen = online.setdefault((colony, e.executor_type), [0, 0])
        seen[0 if is_online(service, e, liveness_s, mono) else 1] += 1
    for (colony, etype), (up, down) in sorted(online.items()):
        executors.add_metric([colony, etype, "online"], up)
        executors.add_metric([colony, etype, "offline"], down)

    depth = GaugeMetricFamily(
        "colonies_queue_depth",
        "Processes queued for an executor (waiting, not for parents), by colony and type.",
        labels=["colony", "executortype"],
    )
    depths = dict.fromkeys(online, 0) | service.queue.depths()
    for (colony, etype), n in sorted(depths.items()):
        depth.add_metric([colony, etype], n)

    return [by_state, workflows, executors, depth]


def _intake_family(pending: int) -> Metric:
    """Served by the leader of the server scope (one figure for the whole installation)."""
    return GaugeMetricFamily(
        "colonies_intake_pending",
        "Submitted specs and workflows in the stream not yet made processes (the specs "
        "stream's messages: a work queue, every colony's consumer together).",
        value=pending,
    )


def _merged(families: list[Metric]) -> list[Metric]:
    """One family per name, its samples those of every family of that name (each colony's
    leader gives its own; an exposition names a family once)."""
    by_name: dict[str, Metric] = {}
    for family in families:
        if family.name in by_name:
            by_name[family.name].samples.extend(family.samples)
        else:
            by_name[family.name] = family
    return list(by_name.values())


async def _intake_pending(service: Service) -> int | None:
    """The specs stream's backlog (a work queue: what intake acked is gone), every colony's
    consumer together; None if NATS does not say in time."""
    s = service.subjects
    try:
        async with asyncio.timeout(_CONSUMER_INFO_TIMEOUT_S):
            info = await service.store.js.stream_info(s.stream_specs)
    except (nats.errors.Error, TimeoutError) as err:
        logger.warning("metrics: the specs stream's state is unknown: %s", err)
        return None
    return int(info.state.messages)


class MetricsServer:
    """A minimal HTTP/1.0 server on the event loop: ``GET /metrics`` and nothing else."""

    def __init__(self, render: Callable[[], Awaitable[bytes]]) -> None:
        self.render = render
        self._server: asyncio.Server | None = None
        self.address: tuple[str, int] | None = None

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host``:``port`` (0: a free port); :attr:`address` is where."""
        try:
            self._server = await asyncio.start_server(self._serve, host, port)
        except OSError as err:
            raise ServerSetupError(
                f"cannot serve metrics on {host}:{port}: {err.strerror or err}; choose another "
                "--metrics-port (or --metrics-host)",
                host=host,
                port=port,
            ) from err
        bound = self._server.sockets[0].getsockname()
        self.address = (str(bound[0]), int(bound[1]))
        logger.info("metrics on http://%s:%d/metrics", *self.address)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body = await self._answer(reader)
            content_type = CONTENT_TYPE_LATEST if status == 200 else "text/plain; charset=utf-8"
            head = (
                f"HTTP/1.0 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (ConnectionError, TimeoutError):
            pass  # the scraper went away
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        async with asyncio.timeout(_REQUEST_TIMEOUT_S):
            request = await reader.readline()
            for _ in range(_MAX_HEADER_LINES):
                if (await reader.readline()).strip() == b"":
                    break
        method, _, rest = request.decode("latin-1").partition(" ")
        path = rest.partition(" ")[0].partition("?")[0]
        if path != "/metrics":
            return 404, b"not found: only /metrics is served here\n"
        if method != "GET":
            return 405, f"method {method} not allowed: GET /metrics\n".encode()
        try:
            return 200, await self.render()
        except Exception:  # a defect, or NATS trouble: this scrape fails, the broker goes on
            logger.exception("metrics: the scrape failed")
            return 500, b"the scrape failed; see the broker's log\n"


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error"}
