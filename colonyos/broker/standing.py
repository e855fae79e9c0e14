"""What crons and generators share: a workflow stored to be run later, checked when it is
added, with errors that name the field under ``$.workflowspec``; and the leader's runner of
such definitions (:class:`StandingRunner`): the records in their KV bucket, written with a
compare-and-set, the loop that sweeps them, and a recorded run's graph written, then the record
cleared (the order that makes each run happen exactly once: see the runners' modules)."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from colonyos.broker.service import Service
from colonyos.broker.workflows import Workflows, plan
from colonyos.buckets import delete_at
from colonyos.crons.model import Cron
from colonyos.errors import ColoniesError, ConflictError, InvalidSpecError
from colonyos.generators.model import Generator
from colonyos.graphs import check_workflow
from colonyos.limits import json_array_within
from colonyos.models import WorkflowSpec, now
from colonyos.specs import check_function_spec, load_workflow_spec

__all__ = ["MAX_SLEEP_S", "Key", "RunInputs", "StandingRunner", "checked_workflow"]

_encode = msgspec.json.Encoder().encode
_replace = msgspec.structs.replace


def checked_workflow(colony: str, claimed_colony: str, raw: bytes, what: str) -> WorkflowSpec:
    """The workflow ``raw`` (JSON) that a ``what`` (cron, generator) of ``colony`` runs,
    checked as a submitted one is: :class:`InvalidSpecError` naming the field if not."""
    if claimed_colony and claimed_colony != colony:
        raise InvalidSpecError(
            f"$.colonyname: {claimed_colony!r} is not this colony {colony!r}",
            path="$.colonyname",
        )
    if raw in (b"", b'""'):
        raise InvalidSpecError(
            f"$.workflowspec: required: the workflow the {what} runs", path="$.workflowspec"
        )
    try:
        workflow, _ = load_workflow_spec(raw)
        specs = [check_function_spec(s, f"$[{i}]") for i, s in enumerate(workflow.function_specs)]
        workflow = _replace(workflow, function_specs=specs)
        check_workflow(workflow)
    except InvalidSpecError as err:
        path = "$.workflowspec" + str(err.detail.get("path", "$"))[1:]
        message = err.message if err.message.startswith("$") else f"$: {err.message}"
        raise InvalidSpecError(
            f"$.workflowspec{message[1:]}", path=path, reason=err.detail.get("reason", "")
        ) from None
    if workflow.colony_name and workflow.colony_name != colony:
        raise InvalidSpecError(
            f"$.workflowspec.colonyname: {workflow.colony_name!r} is not this colony {colony!r}",
            path="$.workflowspec.colonyname",
        )
    return _replace(workflow, colony_name=colony)


R = TypeVar("R", Cron, Generator)
Key = tuple[str, str]
# The longest a loop sleeps (a changed definition wakes it at once).
MAX_SLEEP_S = 1.0


@dataclass(frozen=True, slots=True)
class RunInputs:
    """What a run's graph is planned with beside its workflow, and how the log names the run
    (``told``)."""

    told: str
    root_input: list[Any] | None = None
    root_args: list[Any] | None = None
    cron_name: str = ""
    generator_name: str = ""


class StandingRunner(abc.ABC, Generic[R]):
    """The leader's copy of the definitions of one kind (``what``: cron, generator), kept in a
    KV bucket under ``<colony>.<name>`` with their revisions: every write a compare-and-set
    (a conflict reloads the key and is refused), each key changed under its own lock; the loop
    that sweeps them; and the steps of a run after it is recorded (graph written, record
    cleared)."""

    what: ClassVar[str]
    # Errors that skip one definition for this sweep (logged, looked at again shortly) rather
    # than end the sweep.
    skipped: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(
        self,
        service: Service,
        workflows: Workflows,
        *,
        log: logging.Logger,
        decode: Callable[[bytes], R],
        not_found: Callable[[str, str], ColoniesError],
        retry_s: float,
    ) -> None:
        self.service = service
        self.workflows = workflows
        self.store = service.store
        self.records: dict[Key, tuple[R, int]] = {}
        self.log = log
        self._decode: Callable[[bytes], R] = decode
        self._not_found = not_found
        self._retry_s = retry_s  # how soon a failed sweep is tried again
        self._record = f"the {self.what} record"
        self._locks: dict[Key, asyncio.Lock] = {}
        self._wake = asyncio.Event()
        self._broken: set[Key] = set()  # definitions that cannot be run, logged once

    @abc.abstractmethod
    def _bucket(self) -> KeyValue:
        """The KV bucket of the definitions."""

    @abc.abstractmethod
    def _kv_key(self, key: Key) -> str:
        """The key in :meth:`_bucket` of the definition ``key`` (colony, name)."""

    # -- the loop --------------------------------------------------------------------------
    def _more_waiting(self) -> bool:
        """Whether to sweep again at once, without sleeping."""
        return False

    async def run(self) -> None:
        while True:
            try:
                until = await self.sweep()
                if self._more_waiting():
                    continue
            except (nats.errors.Error, TimeoutError):
                self.log.warning("%s sweep: NATS trouble; trying again", self.what, exc_info=True)
                until = self._retry_s
            except Exception:
                self.log.exception("%s sweep failed; trying again", self.what)
                until = self._retry_s
            self._wake.clear()
            # Without definitions nothing can fall due: sleep until one is added (a colony
            # without crons costs nothing while idle).
            sleep = max(0.0, min(until, MAX_SLEEP_S)) if self.records else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(sleep):
                    await self._wake.wait()

    @abc.abstractmethod
    async def sweep(self) -> float:
        """Start every run that is due (through :meth:`_sweep`); the seconds until one may be
        due next."""

    async def _sweep(self, tick: Callable[[Key], Awaitable[float]]) -> float:
        """``tick`` each definition under its lock; the seconds until one may be due next."""
        sleep = MAX_SLEEP_S
        for key in list(self.records):
            if key[0] not in self.service.colonies:  # the colony was removed with them
                self.forget(key)
                continue
            async with self._lock(key):
                try:
                    sleep = min(sleep, await tick(key))
                except ConflictError:
                    sleep = 0.0  # written meanwhile: the next sweep decides from what is stored
                    continue
                except self.skipped as err:
                    self.log.warning(
                        "%s %s in %s: %s; trying again", self.what, key[1], key[0], err
                    )
                    sleep = min(sleep, MAX_SLEEP_S)
                    continue
                except ColoniesError as err:
                    # It cannot be run (a stored value today's rules refuse): say so once, and
                    # let the others run.
                    if key not in self._broken:
                        self._broken.add(key)
                        self.log.error("%s %s in %s is not run: %s", self.what, key[1], key[0], err)
                    continue
            self._broken.discard(key)
        return sleep

    async def _finish_run(
        self,
        key: Key,
        record: R,
        revision: int,
        graph_id: str,
        inputs: Callable[[], Awaitable[RunInputs]],
    ) -> R:
        """Write the graph of the run the record names (again: what exists is kept), then
        clear ``runpending``."""
        try:
            given = await inputs()
            workflow, _ = load_workflow_spec(record.workflow_spec)
            graph, processes = plan(
                workflow,
                record.colony_name,
                graph_id,
                now(),
                time.time_ns(),
                initiator=record.initiator_name,
                root_input=given.root_input,
                root_args=given.root_args,
                cron_name=given.cron_name,
                generator_name=given.generator_name,
            )
            self.workflows.check_sizes(graph, processes)
            await self.workflows.start(graph, processes)
            self.log.info(
                "%s %s in %s: run of %s is graph %s",
                self.what,
                key[1],
                key[0],
                given.told,
                graph_id,
            )
        except ColoniesError as err:
            # It cannot be run (its colony or its spec no longer allow it): say so, go on.
            self.log.error("%s %s in %s: run not started: %s", self.what, key[1], key[0], err)
        done = _replace(record, run_pending=False)
        await self._write(key, done, revision)
        return done

    # -- the records -----------------------------------------------------------------------
    async def _load(self, records: AsyncIterator[tuple[R, int]]) -> None:
        """Read every definition (the first sweep finishes any run a previous leader recorded
        but did not start)."""
        self.records.clear()
        async for record, revision in records:
            self.records[(record.colony_name, record.name)] = (record, revision)

    async def _create(self, key: Key, record: R) -> None:
        """Store a new definition (under the key's lock): refused if the name is taken."""
        data = self.store.encoded(record, self._record)
        try:
            revision = await self._bucket().create(self._kv_key(key), data)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise ConflictError(
                f"$.name: {self.what} {key[1]!r} exists in colony {key[0]!r}; remove it first "
                "or choose another name",
                path="$.name",
            ) from None
        self.records[key] = (record, int(revision))

    async def _stored(self, key: Key) -> R:
        """The definition as stored (the loop's copy is changed only under its lock)."""
        try:
            entry = await self._bucket().get(self._kv_key(key))
        except (
            nats.js.errors.KeyNotFoundError,
            nats.js.errors.KeyDeletedError,
            nats.js.errors.InvalidKeyError,
        ):
            raise self._not_found(*key) from None
        return self._decode(entry.value or b"")

    async def _write(self, key: Key, record: R, revision: int) -> int:
        data = self.store.encoded(record, self._record)
        try:
            new_revision = int(await self._bucket().update(self._kv_key(key), data, last=revision))
        except nats.js.errors.KeyWrongLastSequenceError as err:
            await self._reload(key)
            raise self._changed(key) from err
        self.records[key] = (record, new_revision)
        return new_revision

    async def _delete(self, key: Key) -> None:
        """Remove the definition (under the key's lock), and forget it."""
        _, revision = self._held(key)
        # Only the record this leader holds: a deposed leader's late remove must not delete
        # one added again since.
        if not await delete_at(self._bucket(), self._kv_key(key), revision):
            await self._reload(key)
            raise self._changed(key) from None
        self.forget(key)

    def _changed(self, key: Key) -> ConflictError:
        return ConflictError(
            f"{self.what} {key[1]!r} in {key[0]!r} changed meanwhile; try again",
            **{f"{self.what}_name": key[1]},
        )

    async def _reload(self, key: Key) -> None:
        try:
            entry = await self._bucket().get(self._kv_key(key))
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            self.records.pop(key, None)
            return
        self.records[key] = (self._decode(entry.value or b""), int(entry.revision or 0))

    def _held(self, key: Key) -> tuple[R, int]:
        entry = self.records.get(key)
        if entry is None:
            raise self._not_found(*key)
        return entry

    def _shown(self, key: Key, record: R) -> R:
        """The record as a reply shows it."""
        return record

    def _listed(self, colony: str) -> msgspec.Raw:
        """The colony's definitions by name, as many as one reply holds."""
        mine = sorted(
            (self._shown(k, r) for k, (r, _) in self.records.items() if k[0] == colony),
            key=_name,
        )
        return msgspec.Raw(json_array_within((_encode(r) for r in mine), self.service.reply_limit))

    def forget(self, key: Key) -> None:
        self.records.pop(key, None)

    def forget_colony(self, colony: str) -> None:
        """A removed colony's definitions (purged from the bucket with it) run no more."""
        for key in [k for k in self.records if k[0] == colony]:
            self.forget(key)

    def _lock(self, key: Key) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())


def _name(record: Cron | Generator) -> str:
    return record.name
