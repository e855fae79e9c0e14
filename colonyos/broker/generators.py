"""Generators on the leading broker: the requests (``generator_add``, ``generator_get``,
``generator_list``, ``generator_remove``) and the loop that starts a run when enough arguments
have been packed.

Definitions live in the bucket ``<prefix>-generators`` (key ``<colony>.<name>``); the packed
arguments in the stream ``<PREFIX>_GENERATORS``, one message per argument on
``<prefix>.<colony>.generators.<name>``, in the order they were packed. The definition's
``cursor`` is the sequence of the last argument a run has used: what comes after it waits.

Each argument is used by exactly one run, even if the leader dies in the middle of one:

1. the run is recorded first (``batchfirst`` and ``cursor``: the sequences of its first and
   last argument, ``runpending``, ``lastprocessgraphid``), with a compare-and-set, the graph
   id derived from the generator and its first argument's sequence;
2. the graph is written with the arguments packed from ``batchfirst`` to ``cursor``, read
   again from the stream (idempotent: what exists is kept);
3. ``runpending`` is cleared, then the used arguments are purged from the stream.

A new leader finds a pending run in the record and finishes step 2 with the same arguments and
graph id, rather than deciding afresh. Arguments are purged only after step 3: until then a
new leader can read them again. Writing the graph and clearing the record, the record's
compare-and-set and the loop are those every standing definition shares
(:mod:`colonyos.broker.standing`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import RawStreamMsg
from nats.js.kv import KeyValue

from colonyos.broker.service import Service, new_id
from colonyos.broker.standing import MAX_SLEEP_S, Key, RunInputs, StandingRunner, checked_workflow
from colonyos.broker.workflows import Workflows, plan
from colonyos.errors import (
    GeneratorNotFoundError,
    InvalidNameError,
    InvalidSpecError,
)
from colonyos.generators.model import (
    NO_TIMEOUT,
    Generator,
    GeneratorAdd,
    GeneratorDefinition,
    check_arg,
)
from colonyos.generators.trigger import RunNow, decide
from colonyos.limits import (
    MAX_GENERATOR_TRIGGER,
    MAX_SECONDS,
    generator_batch_limit,
    record_limit,
)
from colonyos.messages import Empty, Named
from colonyos.models import ZERO_TIME, now
from colonyos.specs import load_workflow_spec
from colonyos.subjects import check_name

__all__ = ["GeneratorRunner", "run_graph_id"]

logger = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
_decode_generator = msgspec.json.Decoder(Generator).decode
_replace = msgspec.structs.replace
# An argument packed wakes the loop at once. Every this many seconds it also reads every
# generator's stream, in case a wake-up was missed (a reconnect).
_RESCAN_S = 2.0


def run_graph_id(generator: Generator, first_seq: int) -> str:
    """The graph id of the run whose first argument is at ``first_seq``: the same on every
    broker."""
    basis = f"generator:{generator.colony_name}:{generator.generator_id}:{first_seq}"
    return hashlib.sha256(basis.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class _Arg:
    seq: int
    time: datetime
    data: bytes


@dataclass(slots=True)
class _Waiting:
    """What the leader has read of a generator's arguments beyond its cursor: the usable
    ones in order, and the sequence read up to (arguments skipped included)."""

    args: list[_Arg] = field(default_factory=list)
    read: int = 0
    size: int = 0
    full: bool = False  # one more would not fit in a run: run with these
    # The read stopped at the trigger or at what fits, not at the end of the stream: more
    # wait, to be read as soon as these are used (not at the next rescan).
    more: bool = False


class GeneratorRunner(StandingRunner[Generator]):
    what = "generator"
    skipped = (nats.errors.Error, TimeoutError)  # its stream, its record: the others go on

    def __init__(self, service: Service, workflows: Workflows) -> None:
        super().__init__(
            service,
            workflows,
            log=logger,
            decode=_decode_generator,
            not_found=GeneratorNotFoundError,
            retry_s=MAX_SLEEP_S,
        )
        self._waiting: dict[Key, _Waiting] = {}
        self._packed: set[Key] = set()  # told an argument arrived: read these first
        self._scanned = float("-inf")  # never: the first sweep reads every stream
        service.register_ops(
            generator_add=(GeneratorAdd, self.generator_add),
            generator_get=(Named, self.generator_get),
            generator_list=(Empty, self.generator_list),
            generator_remove=(Named, self.generator_remove),
        )

    def _bucket(self) -> KeyValue:
        return self.store.generators

    def _kv_key(self, key: Key) -> str:
        return self.store.subjects.generator_key(*key)

    # -- the loop --------------------------------------------------------------------------
    async def load(self) -> None:
        """Read every definition (the first sweep finishes any run a previous leader recorded
        but did not start)."""
        self._waiting.clear()
        colony = self.service.colony_scope
        if colony is not None:  # the server scope leads no generators
            await self._load(self.store.all_generators(colony))

    async def listen(self) -> Subscription:
        """Wake the loop when an argument is packed (the stream keeps it; this is only the
        news)."""
        colony = self.service.colony_scope
        assert colony is not None, "the server scope leads no generators"
        packs = self.store.subjects.generator(colony, "*")
        return await self.store.nc.subscribe(packs, cb=self._on_pack)

    async def _on_pack(self, msg: Msg) -> None:
        self._packed.add(self.store.subjects.parse_generator(msg.subject))
        self._wake.set()

    def _more_waiting(self) -> bool:
        return bool(self._packed)  # more arrived meanwhile

    async def sweep(self) -> float:
        """Start every run that is due; the seconds until one may be due next."""
        rescan = time.monotonic() - self._scanned >= _RESCAN_S
        if rescan:
            self._scanned = time.monotonic()
        packed, self._packed = self._packed, set()
        return await self._sweep(lambda key: self._tick(key, read=rescan or key in packed))

    async def _tick(self, key: Key, *, read: bool) -> float:
        entry = self.records.get(key)
        if entry is None:
            return MAX_SLEEP_S
        generator, revision = entry
        if generator.run_pending:
            await self._finish(key, generator, revision)
            return 0.0
        check_trigger(generator.trigger)  # a stored value (by hand, another release)
        waiting = self._waiting_for(key, generator)
        if read or waiting.more or not waiting.read:
            await self._read(key, generator, waiting)
        first = waiting.args[0].time if waiting.args else None
        decision = decide(generator, pending=len(waiting.args), first_packed=first, now=now())
        if waiting.full and not isinstance(decision, RunNow):
            decision = RunNow(count=len(waiting.args))
        if isinstance(decision, RunNow):
            batch = waiting.args[: decision.count]
            await self._start(key, generator, revision, batch)
            return 0.0
        if decision.until is None:
            return MAX_SLEEP_S
        return (decision.until - now()).total_seconds()

    def _waiting_for(self, key: Key, generator: Generator) -> _Waiting:
        waiting = self._waiting.get(key)
        if waiting is None or waiting.read < generator.cursor:
            waiting = _Waiting(read=generator.cursor)
            self._waiting[key] = waiting
        return waiting

    async def _read(self, key: Key, generator: Generator, waiting: _Waiting) -> None:
        """Read what was packed beyond what was read, up to the trigger and up to what one
        run's roots can take; an argument that cannot be used is skipped, said once."""
        budget = generator_batch_limit(self.store.nc.max_payload)
        waiting.more = True  # unless the stream's end is reached below
        while len(waiting.args) < generator.trigger and not waiting.full:
            msg = await self.store.packed_after(*key, waiting.read)
            if msg is None or msg.seq is None:
                waiting.more = False
                return
            try:
                check_arg(msg.data)
            except InvalidSpecError as err:
                logger.warning(
                    "generator %s in %s: argument %d skipped: %s", key[1], key[0], msg.seq, err
                )
                waiting.read = msg.seq
                continue
            size = len(msg.data or b"")
            if waiting.args and waiting.size + size > budget:
                waiting.full = True
                return
            waiting.args.append(_Arg(msg.seq, msg.time or now(), msg.data or b""))
            waiting.size += size
            waiting.read = msg.seq

    async def _start(
        self, key: Key, generator: Generator, revision: int, batch: list[_Arg]
    ) -> Generator:
        """Record the run of ``batch`` (the arguments from its first sequence to its last),
        then write its graph."""
        first = batch[0].seq
        pending = _replace(
            generator,
            batch_first=first,
            cursor=batch[-1].seq,
            run_pending=True,
            last_run=now(),
            last_process_graph_id=run_graph_id(generator, first),
        )
        revision = await self._write(key, pending, revision)
        return await self._finish(key, pending, revision, [check_arg(a.data) for a in batch])

    async def _finish(
        self, key: Key, generator: Generator, revision: int, args: list[Any] | None = None
    ) -> Generator:
        """Write the graph of the run the record names (again: what exists is kept), then
        clear it, then drop the arguments it used. ``args``: its arguments as read before the
        run was recorded; else (a run a previous leader recorded) read again from the
        stream."""

        async def inputs() -> RunInputs:
            given = await self._batch(key, generator) if args is None else args
            told = f"{len(given)} arguments"
            return RunInputs(told, root_args=given, generator_name=generator.name)

        graph_id = generator.last_process_graph_id
        done = await self._finish_run(key, generator, revision, graph_id, inputs)
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.args = [a for a in waiting.args if a.seq > done.cursor]
            waiting.size = sum(len(a.data) for a in waiting.args)
            waiting.full = False
        await self.store.purge_packed(*key, through=done.cursor)
        return done

    async def _batch(self, key: Key, generator: Generator) -> list[Any]:
        """The values packed from ``batchfirst`` to ``cursor``, in order, as stored."""
        values: list[Any] = []
        seq = generator.batch_first - 1
        while True:
            msg: RawStreamMsg | None = await self.store.packed_after(*key, seq)
            if msg is None or msg.seq is None or msg.seq > generator.cursor:
                return values
            seq = msg.seq
            with contextlib.suppress(InvalidSpecError):  # skipped when read, said then
                values.append(check_arg(msg.data))

    async def _reload(self, key: Key) -> None:
        self._waiting.pop(key, None)
        await super()._reload(key)

    def forget(self, key: Key) -> None:
        super().forget(key)
        self._waiting.pop(key, None)

    # -- requests --------------------------------------------------------------------------
    async def generator_add(self, colony: str, caller: str, req: GeneratorAdd) -> Generator:
        generator = _definition(colony, caller, req.generator)
        self._check_room_for_arguments(generator)
        key = (colony, generator.name)
        async with self._lock(key):
            # Arguments packed under the name before it existed (or left by a generator of
            # that name removed) are not its own.
            cursor = await self.store.packed_last_seq()
            generator = _replace(generator, cursor=cursor)
            await self._create(key, generator)
            self._waiting.pop(key, None)
            await self.store.purge_packed(*key, through=cursor)
        self._wake.set()
        logger.info("generator %s added in %s by %s", generator.name, colony, caller)
        return generator

    def _check_room_for_arguments(self, generator: Generator) -> None:
        """Refuse a workflow whose roots leave no room for the arguments a run gives them
        (half a process record): each of its runs would be refused at its start, and its
        arguments dropped."""
        max_payload = self.store.nc.max_payload
        # A comma between arguments, at most one per argument, beside their own sizes.
        room = record_limit(max_payload) - generator_batch_limit(max_payload)
        room -= MAX_GENERATOR_TRIGGER
        workflow, _ = load_workflow_spec(generator.workflow_spec)
        _, processes = plan(
            workflow,
            generator.colony_name,
            "0" * 64,
            now(),
            time.time_ns(),
            initiator=generator.initiator_name,
            generator_name=generator.name,
        )
        for i, process in enumerate(processes):
            size = len(_encode(process))
            if not process.parents and size > room:
                path = f"$.workflowspec[{i}]"
                raise InvalidSpecError(
                    f"{path}: the root {process.spec.node_name!r} makes a process record of "
                    f"{size} bytes; a generator's roots may take at most {room}, the other half "
                    "of a record being for the arguments packed into them",
                    path=path,
                    size=size,
                    limit=room,
                )

    def _shown(self, key: Key, generator: Generator) -> Generator:
        """The record with what waits: ``queuesize`` (as far as read) and ``firstpack``."""
        waiting = self._waiting.get(key)
        if waiting is None or not waiting.args:
            return _replace(generator, queue_size=0, first_pack=ZERO_TIME)
        return _replace(generator, queue_size=len(waiting.args), first_pack=waiting.args[0].time)

    async def generator_get(self, colony: str, caller: str, req: Named) -> Generator:
        key = (colony, req.name)
        return self._shown(key, self._held(key)[0])

    async def generator_list(self, colony: str, caller: str, req: Empty) -> msgspec.Raw:
        return self._listed(colony)

    async def generator_remove(self, colony: str, caller: str, req: Named) -> None:
        """Remove the definition and the arguments that wait; runs already started go on."""
        key = (colony, req.name)
        async with self._lock(key):
            await self._delete(key)
            # Only once its record is gone: a deposed leader's late remove, refused above,
            # purges nothing of a generator added again since.
            await self.store.purge_packed(*key)
        logger.info("generator %s removed from %s by %s", req.name, colony, caller)


def check_trigger(trigger: int) -> None:
    if not 1 <= trigger <= MAX_GENERATOR_TRIGGER:
        raise InvalidSpecError(
            f"$.trigger: {trigger}: give how many arguments start a run, "
            f"1 to {MAX_GENERATOR_TRIGGER}",
            path="$.trigger",
        )


def _definition(colony: str, caller: str, definition: GeneratorDefinition) -> Generator:
    """A new generator from what a user sent, checked: errors name the field."""
    try:
        check_name("name", definition.name)
    except InvalidNameError as err:
        raise InvalidSpecError(f"$.name: {err.message}", path="$.name") from None
    check_trigger(definition.trigger)
    if not NO_TIMEOUT <= definition.timeout <= MAX_SECONDS:
        raise InvalidSpecError(
            f"$.timeout: {definition.timeout}: give seconds, 1 to {MAX_SECONDS} "
            f"(0 or {NO_TIMEOUT}: no timeout)",
            path="$.timeout",
        )
    raw = definition.workflow_json()
    workflow = checked_workflow(colony, definition.colony_name, raw, "generator")
    return Generator(
        generator_id=new_id(),
        initiator_name=caller,
        colony_name=colony,
        name=definition.name,
        workflow_spec=_encode(workflow).decode(),
        trigger=definition.trigger,
        timeout=definition.timeout if definition.timeout > 0 else NO_TIMEOUT,
        created=now(),
    )
