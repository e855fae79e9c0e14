"""The statistics requests: a colony's counts (``colony_stats``), its functions' counts and
times (``function_stats``), and the installation's state (``server_status``, a server owner's);
and the roster of brokers, which every broker keeps from the others' announcements."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

from colonyos.broker.admin import Admin
from colonyos.broker.service import Service
from colonyos.limits import json_array_within
from colonyos.messages import Empty
from colonyos.models import ExecutorState, ProcessState
from colonyos.statistics import BrokerInfo, ColonyStats, ServerStatus, StreamState

__all__ = ["Roster", "Statistics", "colonyos_version"]

logger = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
_decode_info = msgspec.json.Decoder(BrokerInfo).decode
# The most brokers a roster keeps (a reply lists them all, and must fit one message).
MAX_BROKERS = 64


def colonyos_version() -> str:
    try:
        return version("colonyos")
    except PackageNotFoundError:  # pragma: no cover - run from a tree that is not installed
        return "unknown"


def this_broker(broker_id: str, since: datetime) -> BrokerInfo:
    """What a broker says of itself (``leading`` set by its caller)."""
    return BrokerInfo(
        broker_id=broker_id,
        host=socket.gethostname(),
        pid=os.getpid(),
        version=colonyos_version(),
        since=since,
    )


class Roster:
    """The brokers heard from within ``window_s`` (monotonic seconds), by id. Every broker
    keeps one, from the start, so that a broker that starts leading already knows the
    others."""

    def __init__(self, window_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._heard: dict[str, tuple[BrokerInfo, float]] = {}
        # Called with the id of a broker heard for the first time (or again after a term).
        self.joined: Callable[[str], None] | None = None

    async def on_announce(self, msg: Msg) -> None:
        try:
            info = _decode_info(msg.data)
        except msgspec.MsgspecError:
            logger.warning("ignored a malformed broker announcement on %s", msg.subject)
            return
        new = info.broker_id not in self._heard
        self.heard(info)
        if new and self.joined is not None:
            self.joined(info.broker_id)

    def heard(self, info: BrokerInfo) -> None:
        self._heard[info.broker_id] = (info, self.clock())
        if len(self._heard) > MAX_BROKERS:  # the one heard from longest ago goes
            oldest = min(self._heard, key=lambda k: self._heard[k][1])
            del self._heard[oldest]

    def forget(self, broker_id: str) -> None:
        """A broker that said it stops."""
        self._heard.pop(broker_id, None)

    def others(self, broker_id: str) -> list[BrokerInfo]:
        """The brokers heard from lately but ``broker_id``, by when they started."""
        cutoff = self.clock() - self.window_s
        for key in [k for k, (_, t) in self._heard.items() if t < cutoff]:
            del self._heard[key]
        found = [info for key, (info, _) in self._heard.items() if key != broker_id]
        return sorted(found, key=lambda b: (b.since, b.broker_id))


class Statistics:
    def __init__(
        self,
        service: Service,
        admin: Admin,
        *,
        me: Callable[[], BrokerInfo],
        roster: Roster,
    ) -> None:
        self.service = service
        self.admin = admin
        self.me = me
        self.roster = roster
        service.register_ops(
            colony_stats=(Empty, self.colony_stats),
            function_stats=(Empty, self.function_stats),
            server_status=(Empty, self.server_status),
        )

    async def colony_stats(self, colony: str, caller: str, req: Empty) -> ColonyStats:
        index = self.service.index
        states, _ = await index.stats(colony)
        graphs = await index.graph_stats(colony)
        executors = await self.admin.executor_list(colony, caller, req)

        def of(counts: dict[int, int], state: ProcessState) -> int:
            return counts.get(int(state), 0)

        def in_state(state: ExecutorState) -> int:
            return sum(e.state is state for e in executors)

        return ColonyStats(
            colony_name=colony,
            executors=len(executors),
            active_executors=sum(e.online for e in executors),
            offline_executors=sum(
                not e.online and e.state is ExecutorState.APPROVED for e in executors
            ),
            pending_executors=in_state(ExecutorState.PENDING),
            unregistered_executors=in_state(ExecutorState.UNREGISTERED),
            waiting_processes=of(states, ProcessState.WAITING),
            running_processes=of(states, ProcessState.RUNNING),
            successful_processes=of(states, ProcessState.SUCCESS),
            failed_processes=of(states, ProcessState.FAILED),
            cancelled_processes=of(states, ProcessState.CANCELLED),
            waiting_workflows=of(graphs, ProcessState.WAITING),
            running_workflows=of(graphs, ProcessState.RUNNING),
            successful_workflows=of(graphs, ProcessState.SUCCESS),
            failed_workflows=of(graphs, ProcessState.FAILED),
            cancelled_workflows=of(graphs, ProcessState.CANCELLED),
        )

    async def function_stats(self, colony: str, caller: str, req: Empty) -> msgspec.Raw:
        """Most called first, as many as one reply holds."""
        found = await self.service.index.function_stats(colony)
        items = (_encode(f) for f in found)
        return msgspec.Raw(json_array_within(items, self.service.reply_limit))

    async def server_status(self, colony: str, caller: str, req: Empty) -> ServerStatus:
        me = self.me()
        streams = await self._streams()
        return ServerStatus(
            build_version=me.version,
            uptime=max(0.0, (datetime.now(UTC) - me.since).total_seconds()),
            leader=me,
            standbys=self.roster.others(me.broker_id),
            streams=streams,
            messages=sum(s.messages for s in streams),
            bytes=sum(s.bytes for s in streams),
        )

    async def _streams(self) -> list[StreamState]:
        """The installation's streams, as JetStream's API tells the broker (members may not
        ask it: ``STREAM.INFO`` is not scoped to a colony)."""
        js = self.service.store.js
        found = []
        for name in self.service.subjects.streams:
            try:
                info = await js.stream_info(name)
            except nats.js.errors.NotFoundError:
                continue  # not made yet (a bucket made on first use)
            except (nats.errors.Error, TimeoutError) as err:
                logger.warning("stream %s: no state: %s", name, err)
                continue
            state = info.state
            found.append(
                StreamState(
                    name=name,
                    messages=state.messages,
                    bytes=state.bytes,
                    consumers=state.consumer_count,
                )
            )
        return found
