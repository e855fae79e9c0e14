"""Retention: what has ended is kept for a while, then removed, all of it together.

One setting (``COLONIES_RETENTION``, seven days by default) bounds everything finished: a process
that ended longer ago is removed with its log (a process that belongs to a workflow goes with
its whole graph, once every process of the graph has ended that long ago), and the events and
logs streams age their messages out at the same age. So a process's record, its log and its
events live equally long; the log stream's size limit can only drop lines earlier, which
``colonies log get`` then says.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from colonyos.broker.removal import Removal
from colonyos.models import now

__all__ = ["Retention"]

logger = logging.getLogger(__name__)

# How many expired processes (and graphs) one round of the sweep removes at most.
_BATCH = 500


class Retention:
    def __init__(self, removal: Removal, *, retention_s: float, interval_s: float) -> None:
        self.removal = removal
        self.retention = timedelta(seconds=retention_s)
        self.interval_s = interval_s

    async def run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                logger.exception("retention sweep failed; trying again")
            await asyncio.sleep(self.interval_s)

    async def sweep(self) -> int:
        """Remove what ended before the retention; returns how many processes went."""
        cutoff = now() - self.retention
        index = self.removal.index
        removed = 0
        while True:
            expired = await index.ended_before(cutoff, limit=_BATCH)
            done = await asyncio.gather(
                *(self.removal.expired_process(c, pid) for c, pid in expired)
            )
            removed += sum(done)
            if len(expired) < _BATCH or not any(done):
                break
        for colony, graph_id in await index.graphs_ended_before(cutoff, limit=_BATCH):
            if await self.removal.expired_graph(colony, graph_id, cutoff):
                removed += 1
        if removed:
            logger.info("retention: removed %d processes that ended before %s", removed, cutoff)
        return removed
