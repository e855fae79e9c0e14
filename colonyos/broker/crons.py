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
process ids, which KV refuses to create twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from datetime import datetime
from typing import Any

import msgspec
import nats.errors
import nats.js.errors

from colonyos.broker.service import Service, new_id
from colonyos.broker.standing import checked_workflow
from colonyos.broker.workflows import Workflows, plan
from colonyos.buckets import delete_at
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
from colonyos.limits import json_array_within
from colonyos.messages import Empty, Named
from colonyos.models import WorkflowSpec, now
from colonyos.specs import load_workflow_spec
from colonyos.subjects import check_name

__all__ = ["CronRunner", "run_graph_id"]

logger = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
_decode_cron = msgspec.json.Decoder(Cron).decode
_replace = msgspec.structs.replace
CRON_RECORD = "the cron record"
# How often a cron waiting for its previous run looks at that run again; and the longest
# the loop sleeps (a changed cron wakes it at once).
_RECHECK_S = 0.25
_MAX_SLEEP_S = 1.0

Key = tuple[str, str]


def run_graph_id(cron: Cron, at: datetime) -> str:
    """The graph id of the run of ``cron`` scheduled at ``at``: the same on every broker."""
    basis = f"cron:{cron.colony_name}:{cron.cron_id}:{at.isoformat()}"
    return hashlib.sha256(basis.encode()).hexdigest()


class CronRunner:
    def __init__(self, service: Service, workflows: Workflows) -> None:
        self.service = service
        self.workflows = workflows
        self.store = service.store
        self.crons: dict[Key, tuple[Cron, int]] = {}
        self._locks: dict[Key, asyncio.Lock] = {}
        self._wake = asyncio.Event()
        self._broken: set[Key] = set()  # crons that cannot be evaluated, logged once
        service.register_ops(
            cron_add=(CronAdd, self.cron_add),
            cron_get=(Named, self.cron_get),
            cron_list=(Empty, self.cron_list),
            cron_run=(Named, self.cron_run),
            cron_remove=(Named, self.cron_remove),
        )

    # -- the loop --------------------------------------------------------------------------
    async def load(self) -> None:
        """Read every definition (the first sweep finishes any run a previous leader recorded
        but did not start)."""
        self.crons.clear()
        async for cron, revision in self.store.all_crons():
            self.crons[(cron.colony_name, cron.name)] = (cron, revision)

    async def run(self) -> None:
        while True:
            try:
                until = await self.sweep()
            except (nats.errors.Error, TimeoutError):
                logger.warning("cron sweep: NATS trouble; trying again", exc_info=True)
                until = _RECHECK_S
            except Exception:
                logger.exception("cron sweep failed; trying again")
                until = _RECHECK_S
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, min(until, _MAX_SLEEP_S))):
                    await self._wake.wait()

    async def sweep(self) -> float:
        """Start every run that is due; the seconds until one may be due next."""
        sleep = _MAX_SLEEP_S
        for key in list(self.crons):
            if key[0] not in self.service.colonies:  # the colony was removed with its crons
                self.crons.pop(key, None)
                continue
            async with self._lock(key):
                try:
                    sleep = min(sleep, await self._tick(key))
                except ConflictError:
                    # Written meanwhile (a deposed leader's last write): read again, and the
                    # next sweep decides from what is stored.
                    sleep = 0.0
                    continue
                except ColoniesError as err:
                    # This cron cannot be evaluated (a stored value today's rules refuse):
                    # say so once, and let the others run.
                    if key not in self._broken:
                        self._broken.add(key)
                        logger.error("cron %s in %s is not run: %s", key[1], key[0], err)
                    continue
            self._broken.discard(key)
        return sleep

    async def _tick(self, key: Key) -> float:
        entry = self.crons.get(key)
        if entry is None:
            return _MAX_SLEEP_S
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
        graph_id = cron.prev_process_graph_id
        try:
            workflow, _ = load_workflow_spec(cron.workflow_spec)
            root_input = await self._leaf_outputs(cron.colony_name, cron.chain_from)
            t = now()
            graph, processes = plan(
                workflow,
                cron.colony_name,
                graph_id,
                t,
                time.time_ns(),
                initiator=cron.initiator_name,
                root_input=root_input,
                cron_name=cron.name,
            )
            self.workflows.check_sizes(graph, processes)
            await self.workflows.start(graph, processes)
            logger.info(
                "cron %s in %s: run of %s is graph %s",
                cron.name,
                cron.colony_name,
                cron.last_run.isoformat(),
                graph_id,
            )
        except ColoniesError as err:
            # It cannot be run (its colony or its spec no longer allow it): say so, go on.
            logger.error("cron %s in %s: run not started: %s", cron.name, cron.colony_name, err)
        done = _replace(cron, run_pending=False)
        await self._write(key, done, revision)
        return done

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

    async def _write(self, key: Key, cron: Cron, revision: int) -> int:
        data = self.store.encoded(cron, CRON_RECORD)
        subject_key = self.store.subjects.cron_key(*key)
        try:
            new_revision = int(await self.store.crons.update(subject_key, data, last=revision))
        except nats.js.errors.KeyWrongLastSequenceError as err:
            await self._reload(key)
            raise ConflictError(
                f"cron {key[1]!r} in {key[0]!r} changed meanwhile; try again",
                cron_name=key[1],
            ) from err
        self.crons[key] = (cron, new_revision)
        return new_revision

    async def _reload(self, key: Key) -> None:
        try:
            entry = await self.store.crons.get(self.store.subjects.cron_key(*key))
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            self.crons.pop(key, None)
            return
        self.crons[key] = (_decode_cron(entry.value or b""), int(entry.revision or 0))

    def forget_colony(self, colony: str) -> None:
        """A removed colony's crons (purged from the bucket with it) run no more."""
        for key in [k for k in self.crons if k[0] == colony]:
            del self.crons[key]

    def _lock(self, key: Key) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    # -- requests --------------------------------------------------------------------------
    async def cron_add(self, colony: str, caller: str, req: CronAdd) -> Cron:
        cron = _definition(colony, caller, req.cron)
        key = (colony, cron.name)
        data = self.store.encoded(cron, CRON_RECORD)
        async with self._lock(key):
            try:
                revision = await self.store.crons.create(self.store.subjects.cron_key(*key), data)
            except nats.js.errors.KeyWrongLastSequenceError:
                raise ConflictError(
                    f"$.name: cron {cron.name!r} exists in colony {colony!r}; remove it first "
                    "or choose another name",
                    path="$.name",
                ) from None
            self.crons[key] = (cron, int(revision))
        self._wake.set()
        logger.info("cron %s added in %s by %s", cron.name, colony, caller)
        return cron

    async def cron_get(self, colony: str, caller: str, req: Named) -> Cron:
        """As stored (the loop's copy is changed only under its lock)."""
        try:
            entry = await self.store.crons.get(self.store.subjects.cron_key(colony, req.name))
        except (
            nats.js.errors.KeyNotFoundError,
            nats.js.errors.KeyDeletedError,
            nats.js.errors.InvalidKeyError,
        ):
            raise CronNotFoundError(colony, req.name) from None
        return _decode_cron(entry.value or b"")

    def _held(self, key: Key) -> tuple[Cron, int]:
        entry = self.crons.get(key)
        if entry is None:
            raise CronNotFoundError(*key)
        return entry

    async def cron_list(self, colony: str, caller: str, req: Empty) -> msgspec.Raw:
        """The colony's crons by name, as many as one reply holds."""
        mine = sorted((c for (col, _), (c, _) in self.crons.items() if col == colony), key=_name)
        return msgspec.Raw(json_array_within((_encode(c) for c in mine), self.service.reply_limit))

    async def cron_run(self, colony: str, caller: str, req: Named) -> Cron:
        """Start a run now, once, beside the schedule."""
        key = (colony, req.name)
        async with self._lock(key):
            cron, revision = self._held(key)
            if cron.run_pending:
                cron = await self._finish(key, cron, revision)
                cron, revision = self.crons[key]
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
            _, revision = self._held(key)
            # Only the record this leader holds: a deposed leader's late remove must not
            # delete a cron added again since.
            if not await delete_at(self.store.crons, self.store.subjects.cron_key(*key), revision):
                await self._reload(key)
                raise ConflictError(
                    f"cron {req.name!r} in {colony!r} changed meanwhile; try again",
                    cron_name=req.name,
                ) from None
            self.crons.pop(key, None)
        logger.info("cron %s removed from %s by %s", req.name, colony, caller)


def _name(cron: Cron) -> str:
    return cron.name


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
