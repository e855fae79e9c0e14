"""Crons on the leading broker: the requests (``cron_add``, ``cron_get``, ``cron_list``,
``cron_run``, ``cron_remove``) and the loop that starts each run on time.

Definitions live in the bucket ``<prefix>-crons`` (key ``<colony>.<name>``) with their last
run; the leader keeps them in memory and writes every change with a compare-and-set.

A tick runs exactly once, even if the leader dies in the middle of it:

1. the run is recorded first (``lastrun`` = its scheduled time, ``prevprocessgraphid`` = its
   graph id, ``runpending``), the graph id derived from the cron and that time;
2. the graph and its processes are written (idempotent: what exists is kept);
3. ``runpending`` is cleared.

A new leader finds a pending run in the record and finishes step 2 with the same graph id,
rather than deciding afresh; a second leader racing the first writes the same graph and
process ids, which KV refuses to create twice. Steps 2 and 3, the record's compare-and-set and
the loop are those every standing definition shares (:mod:`colonyos.broker.standing`).
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime
from typing import Any

import msgspec
from nats.js.kv import KeyValue

from colonyos.broker.service import Service, new_id
from colonyos.broker.standing import MAX_SLEEP_S, Key, RunInputs, StandingRunner, checked_workflow
from colonyos.broker.workflows import Workflows
from colonyos.crons.model import NO_INTERVAL, Cron, CronAdd, CronDefinition
from colonyos.crons.schedule import RunNow, check_schedule, decide, next_tick
from colonyos.errors import (
    ColoniesError,
    ConflictError,
    CronNotFoundError,
    GraphNotFoundError,
    InvalidNameError,
    InvalidSpecError,
)
from colonyos.messages import Empty, Named
from colonyos.models import WorkflowSpec, now
from colonyos.subjects import check_name

__all__ = ["CronRunner", "run_graph_id"]

logger = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
_decode_cron = msgspec.json.Decoder(Cron).decode
_replace = msgspec.structs.replace
# How often a cron waiting for its previous run looks at that run again (and a failed sweep
# is tried again).
_RECHECK_S = 0.25


def run_graph_id(cron: Cron, at: datetime) -> str:
    """The graph id of the run of ``cron`` scheduled at ``at``: the same on every broker."""
    basis = f"cron:{cron.colony_name}:{cron.cron_id}:{at.isoformat()}"
    return hashlib.sha256(basis.encode()).hexdigest()


class CronRunner(StandingRunner[Cron]):
    what = "cron"

    def __init__(self, service: Service, workflows: Workflows) -> None:
        super().__init__(
            service,
            workflows,
            log=logger,
            decode=_decode_cron,
            not_found=CronNotFoundError,
            retry_s=_RECHECK_S,
        )
        service.register_ops(
            cron_add=(CronAdd, self.cron_add),
            cron_get=(Named, self.cron_get),
            cron_list=(Empty, self.cron_list),
            cron_run=(Named, self.cron_run),
            cron_remove=(Named, self.cron_remove),
        )

    def _bucket(self) -> KeyValue:
        return self.store.crons

    def _kv_key(self, key: Key) -> str:
        return self.store.subjects.cron_key(*key)

    # -- the loop --------------------------------------------------------------------------
    async def load(self) -> None:
        """Read every definition (the first sweep finishes any run a previous leader recorded
        but did not start)."""
        colony = self.service.colony_scope
        if colony is not None:  # the server scope leads no crons
            await self._load(self.store.all_crons(colony))

    async def sweep(self) -> float:
        """Start every run that is due; the seconds until one may be due next."""
        return await self._sweep(self._tick)

    async def _tick(self, key: Key) -> float:
        entry = self.records.get(key)
        if entry is None:
            return MAX_SLEEP_S
        cron, revision = entry
        if cron.run_pending:
            await self._finish(key, cron, revision)
            return 0.0
        t = now()
        decision = decide(cron, previous_ended=True, now=t)
        if isinstance(decision, RunNow) and cron.wait_for_prev_process_graph:
            ended = await self._ended(cron)
            decision = decide(cron, previous_ended=ended, now=t)
        if isinstance(decision, RunNow):
            await self._start(key, cron, revision, decision.at)
            return 0.0
        if decision.blocked:
            return _RECHECK_S
        return (decision.until - now()).total_seconds()

    async def _ended(self, cron: Cron) -> bool:
        """Whether the previous run's workflow has ended (a removed one has)."""
        if not cron.prev_process_graph_id:
            return True
        try:
            graph, _ = await self.store.get_graph(cron.colony_name, cron.prev_process_graph_id)
        except GraphNotFoundError:
            return True
        return graph.state.is_terminal

    async def _start(self, key: Key, cron: Cron, revision: int, at: datetime) -> Cron:
        """Record the run scheduled at ``at``, then write its graph."""
        pending = _replace(
            cron,
            last_run=at,
            prev_process_graph_id=run_graph_id(cron, at),
            chain_from=cron.prev_process_graph_id,
            run_pending=True,
            next_run=next_tick(cron, max(at, now())),
        )
        revision = await self._write(key, pending, revision)
        return await self._finish(key, pending, revision)

    async def _finish(self, key: Key, cron: Cron, revision: int) -> Cron:
        """Write the graph of the run the record names (again: what exists is kept)."""

        async def inputs() -> RunInputs:
            root_input = await self._leaf_outputs(cron.colony_name, cron.chain_from)
            told = cron.last_run.isoformat()
            return RunInputs(told, root_input=root_input, cron_name=cron.name)

        return await self._finish_run(key, cron, revision, cron.prev_process_graph_id, inputs)

    async def _leaf_outputs(self, colony: str, graph_id: str) -> list[Any]:
        """The outputs of a graph's leaves (processes without children), in node order: what
        the next run's roots get as input. Nothing if there is no such graph any more."""
        if not graph_id:
            return []
        try:
            graph, _ = await self.store.get_graph(colony, graph_id)
        except GraphNotFoundError:
            return []
        ordered = list(graph.nodes.values())
        ordered += [pid for pid in graph.process_ids if pid not in set(ordered)]
        outputs: list[Any] = []
        for pid in ordered:
            try:
                process, _ = await self.store.get(colony, pid)
            except ColoniesError:
                continue
            if not process.children:
                outputs.extend(process.output)
        return outputs

    # -- requests --------------------------------------------------------------------------
    async def cron_add(self, colony: str, caller: str, req: CronAdd) -> Cron:
        cron = _definition(colony, caller, req.cron)
        key = (colony, cron.name)
        async with self._lock(key):
            await self._create(key, cron)
        self._wake.set()
        logger.info("cron %s added in %s by %s", cron.name, colony, caller)
        return cron

    async def cron_get(self, colony: str, caller: str, req: Named) -> Cron:
        return await self._stored((colony, req.name))

    async def cron_list(self, colony: str, caller: str, req: Empty) -> msgspec.Raw:
        return self._listed(colony)

    async def cron_run(self, colony: str, caller: str, req: Named) -> Cron:
        """Start a run now, once, beside the schedule."""
        key = (colony, req.name)
        async with self._lock(key):
            cron, revision = self._held(key)
            if cron.run_pending:
                cron = await self._finish(key, cron, revision)
                cron, revision = self.records[key]
            if cron.wait_for_prev_process_graph and not await self._ended(cron):
                raise ConflictError(
                    f"cron {req.name!r} waits for its previous run, graph "
                    f"{cron.prev_process_graph_id}, which has not ended",
                    process_graph_id=cron.prev_process_graph_id,
                )
            return await self._start(key, cron, revision, now())

    async def cron_remove(self, colony: str, caller: str, req: Named) -> None:
        """Remove the definition; runs already started go on."""
        key = (colony, req.name)
        async with self._lock(key):
            await self._delete(key)
        logger.info("cron %s removed from %s by %s", req.name, colony, caller)


def _definition(colony: str, caller: str, definition: CronDefinition) -> Cron:
    """A new cron from what a user sent, checked: errors name the field."""
    try:
        check_name("name", definition.name)
    except InvalidNameError as err:
        raise InvalidSpecError(f"$.name: {err.message}", path="$.name") from None
    workflow = _workflow(colony, definition)
    interval = definition.interval
    if interval == 0 and definition.cron_expression.strip():
        interval = NO_INTERVAL  # no interval given beside the expression
    t = now()
    cron = Cron(
        cron_id=new_id(),
        initiator_name=caller,
        colony_name=colony,
        name=definition.name,
        cron_expression=definition.cron_expression.strip(),
        interval=interval,
        random=definition.random,
        workflow_spec=_encode(workflow).decode(),
        wait_for_prev_process_graph=definition.waits_for_previous,
        time_zone=definition.time_zone,
        created=t,
    )
    check_schedule(cron)
    return _replace(cron, next_run=next_tick(cron, t))


def _workflow(colony: str, definition: CronDefinition) -> WorkflowSpec:
    return checked_workflow(colony, definition.colony_name, definition.workflow_json(), "cron")
