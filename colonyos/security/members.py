"""The membership book: who may connect, as whom, in which role.

One record per (colony, name) in the KV bucket ``<prefix>-members``, holding the member's
public key and role; server owners are kept under the colony ``_server``. Names are unique in a
colony across users and executors (they share the inbox and rpc space). The auth callout reads
the book on every connection, so a change takes effect on the next connection; nothing
restarts.

An executor's record is made when it first connects with a name nobody holds (its key takes
the name, first come first served: a *claim*) or when the colony owner adds it with its key;
whether it may work is its executor record's state (pending, approved, rejected, removed). A
claim never approved lapses after :data:`PENDING_SILENCE_S` without a registration (a pending
executor registers every few seconds while it waits), and a colony holds at most
:data:`MAX_PENDING` live claims waiting for approval: strangers cannot keep names, nor fill the
bucket.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Literal

import msgspec
import nats.errors
import nats.js.errors
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from colonyos.buckets import latest_values, open_bucket
from colonyos.models import ZERO_TIME, Colony, Executor, ExecutorState, Model, now
from colonyos.security.permissions import Role
from colonyos.security.throttle import Throttle
from colonyos.subjects import SERVER_SCOPE, Subjects

__all__ = ["MAX_PENDING", "PENDING_SILENCE_S", "Member", "MemberBook", "Refused"]

# A claim never approved whose executor has not registered for this long is free again: a
# waiting executor registers every five seconds, so ten minutes of silence means it is gone.
PENDING_SILENCE_S = 600.0
# Claims waiting for approval per colony; executors the owner adds ahead are not counted.
MAX_PENDING = 100


class Member(Model, kw_only=True):
    colony_name: str
    name: str
    public_key: str
    role: Role
    # Removed by the colony owner: the record stays, so that the name is not free for anyone
    # who connects next (an owner may add it again).
    removed: bool = False
    # When a stranger's connection took the free name (None: the owner added the member).
    claimed_at: datetime | None = None


class Refused(Exception):
    """A connection the book does not allow; the message says why, to the one refused."""


_member_decoder = msgspec.json.Decoder(Member)
_executor_decoder = msgspec.json.Decoder(Executor)
_colony_decoder = msgspec.json.Decoder(Colony)


class MemberBook:
    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        *,
        storage: Literal["file", "memory"] = "file",
        replicas: int = 1,
    ) -> None:
        self.js = js
        self.subjects = subjects
        self._storage = storage
        self._replicas = replicas
        self._members: KeyValue | None = None
        # New executor names taken per colony by strangers' connections: a flood of invented
        # names must not fill the bucket.
        self.claims = Throttle(burst=100, per_s=2.0)
        self.pending_silence_s = PENDING_SILENCE_S
        self.max_pending = MAX_PENDING
        # Cuts the live connections of a name (the brokers' kicker): a lapsed claim's holder
        # must not keep the name's inbox once another key takes it.
        self.lapsed: Callable[[str, str], Awaitable[object]] | None = None
        self._executors: KeyValue | None = None
        self._colonies: KeyValue | None = None
        # The bucket's records in memory, while the book follows it (see follow()).
        self._known: _Mirror | None = None
        self._following: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self.subjects
        self._members = await self._bucket(s.bucket_members)
        self._executors = await self._bucket(s.bucket_executors)
        self._colonies = await self._bucket(s.bucket_colonies)

    async def _bucket(self, name: str) -> KeyValue:
        return await open_bucket(self.js, name, storage=self._storage, replicas=self._replicas)

    @property
    def members(self) -> KeyValue:
        assert self._members is not None, "MemberBook.start() first"
        return self._members

    # -- following ------------------------------------------------------------------------
    async def follow(self) -> None:
        """Keep every member record in memory from now on, following the bucket (once; again
        is no change), so that :meth:`known` answers without a read: a broker checks the
        caller's record on every executor request, and a read there was a round trip to
        JetStream on the path of every assign and close; the callout asks
        :meth:`is_member_key` of every connection refused often. Changes made through this
        book are known at once; those made by another broker's book (a claim, a removal while
        this one stood by) within moments, as the bucket delivers them."""
        if self._following is not None:
            return
        watcher = await self.members.watchall()
        known = _Mirror()
        async for entry in watcher:
            if entry is None:  # the current records have all come
                break
            known.apply(entry)
        self._known = known
        self._following = asyncio.create_task(self._follow(watcher), name="members")

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        try:
            async for entry in watcher:
                if entry is not None and self._known is not None:
                    self._known.apply(entry)
        finally:
            self._known = None  # no longer following: known() reads the bucket again
            with contextlib.suppress(nats.errors.Error):
                await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it unannotated

    async def stop_following(self) -> None:
        if self._following is not None:
            self._following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._following
            self._following = None

    async def known(self, colony: str, name: str) -> Member | None:
        """As :meth:`get`, from memory while the book follows the bucket."""
        if self._known is None:
            return await self.get(colony, name)
        return self._known.records.get(self.subjects.member_key(colony, name))

    def is_member_key(self, public_key: str) -> bool:
        """Does a member (not removed) hold this key, as far as the book has followed the
        bucket? (False while it does not follow.)"""
        return self._known is not None and self._known.holders[public_key] > 0

    def _wrote(self, key: str, member: Member | None) -> None:
        """A write of this book, known at once (the bucket's own delivery follows)."""
        if self._known is not None:
            self._known.set(key, member)

    # -- reading --------------------------------------------------------------------------
    async def get(self, colony: str, name: str) -> Member | None:
        try:
            entry = await self.members.get(self.subjects.member_key(colony, name))
        except nats.js.errors.KeyNotFoundError:
            return None
        return _member_decoder.decode(entry.value) if entry.value else None

    async def all_of(self, colony: str) -> list[Member]:
        found = [
            _member_decoder.decode(stored.value)
            async for stored in latest_values(
                self.js, self.members, self.subjects.member_key(colony, "")
            )
        ]
        return sorted((m for m in found if not m.removed), key=lambda m: m.name)

    async def _executor(self, colony: str, name: str) -> Executor | None:
        assert self._executors is not None
        try:
            entry = await self._executors.get(self.subjects.executor_key(colony, name))
        except nats.js.errors.KeyNotFoundError:
            return None
        return _executor_decoder.decode(entry.value) if entry.value else None

    async def _executor_state(self, colony: str, name: str) -> ExecutorState | None:
        executor = await self._executor(colony, name)
        return executor.state if executor is not None else None

    async def _waiting(self, held: Member) -> datetime | None:
        """For a claim never approved, its last sign of life (the claim, or its executor's
        last registration); None for anything else."""
        if held.claimed_at is None or held.removed or held.role is not Role.EXECUTOR:
            return None
        executor = await self._executor(held.colony_name, held.name)
        if executor is None:
            return held.claimed_at
        if executor.state is not ExecutorState.PENDING:
            return None
        return max(held.claimed_at, executor.last_heard_from_time or ZERO_TIME)

    async def _lapsed(self, held: Member) -> bool:
        since = await self._waiting(held)
        return since is not None and now() - since > timedelta(seconds=self.pending_silence_s)

    async def _pending_claims(self, colony: str) -> int:
        """Claims of ``colony`` waiting for approval that have not lapsed."""
        limit = now() - timedelta(seconds=self.pending_silence_s)
        count = 0
        for member in await self.all_of(colony):
            since = await self._waiting(member)
            count += since is not None and since >= limit
        return count

    async def _colony_exists(self, colony: str) -> bool:
        assert self._colonies is not None
        try:
            entry = await self._colonies.get(colony)
        except nats.js.errors.KeyNotFoundError:
            return False
        return bool(entry.value)

    # -- writing --------------------------------------------------------------------------
    async def put(self, member: Member) -> None:
        key = self.subjects.member_key(member.colony_name, member.name)
        await self.members.put(key, msgspec.json.encode(member))
        self._wrote(key, member)

    async def add(self, member: Member) -> Member:
        """Add a member whose name is free in its colony; a name held by another key is
        refused (the same key again is no change)."""
        key = self.subjects.member_key(member.colony_name, member.name)
        try:
            await self.members.create(key, msgspec.json.encode(member))
            self._wrote(key, member)
        except nats.js.errors.KeyWrongLastSequenceError:
            held = await self.get(member.colony_name, member.name)
            if held is not None and held.removed:
                await self.put(member)  # the owner adds a removed name again
                return member
            if held is None or held.public_key != member.public_key:
                raise Refused(
                    f"the name {member.name!r} is taken in colony {member.colony_name!r}"
                ) from None
            if held.role is not member.role:
                await self.put(member)
        return member

    async def remove(self, colony: str, name: str) -> bool:
        """Remove a member: its next connection is refused. The name stays taken (by the
        record marked removed) until the owner adds it again."""
        held = await self.get(colony, name)
        if held is None or held.removed:
            return False
        await self.put(msgspec.structs.replace(held, removed=True))
        return True

    async def forget_colony(self, colony: str) -> list[str]:
        """Delete every member record of ``colony``; the names it had."""
        head = self.subjects.member_key(colony, "")
        keys = [s.key async for s in latest_values(self.js, self.members, head)]
        for key in keys:
            await self.members.purge(key)
            self._wrote(key, None)
        return [key[len(head) :] for key in keys]

    # -- deciding ---------------------------------------------------------------------------
    async def roles_of(
        self, colony: str, name: str, public_key: str, *, executor: bool = False
    ) -> tuple[Role, ...]:
        """The roles of a connection that proved it holds ``public_key`` and asks to act as
        ``name`` in ``colony`` (``executor``: as an executor, which may take a free name);
        :class:`Refused` says why it has none. A server owner has that role on a connection
        to any colony, under the same name and key (so that one CLI can add a colony and then
        use it); in a colony where it has no member record, that role only (it manages
        colonies, not what is in them)."""
        owner = await self.get(SERVER_SCOPE, name)
        server_owner = owner is not None and owner.public_key == public_key and not owner.removed
        extra = (Role.SERVER_OWNER,) if server_owner else ()
        if colony == SERVER_SCOPE or not await self._colony_exists(colony):
            if server_owner:
                return extra
            if colony == SERVER_SCOPE:
                raise Refused(f"{name!r} with this key is not an owner of this server")
            raise Refused(f"there is no colony {colony!r}")
        held = await self.get(colony, name)
        if held is not None and held.public_key != public_key and await self._lapsed(held):
            held = None  # a stranger's claim, never approved and silent: the name is free
        if held is None and server_owner:
            return extra
        if held is None and not executor:
            raise Refused(f"{name!r} is not a member of colony {colony!r}")
        if held is None:  # a free name: an executor that comes to register takes it
            held = await self._claim(colony, name, public_key)
        return (await self._member_role(held, public_key), *extra)

    async def _claim(self, colony: str, name: str, public_key: str) -> Member:
        if not self.claims.allow(colony):
            wait = self.claims.wait_s(colony)
            raise Refused(
                f"too many new executors in colony {colony!r} at once; try again in {wait:.0f} s"
            )
        if await self._pending_claims(colony) >= self.max_pending:
            raise Refused(
                f"colony {colony!r} already has {self.max_pending} executors waiting for "
                "approval: its owner approves or rejects them, or adds this one ahead "
                "('colonies executor add'); a claim lapses after "
                f"{self.pending_silence_s / 60:.0f} min without a registration"
            )
        claim = Member(
            colony_name=colony,
            name=name,
            public_key=public_key,
            role=Role.EXECUTOR,
            claimed_at=now(),
        )
        key = self.subjects.member_key(colony, name)
        try:
            entry = await self.members.get(key)
        except nats.js.errors.KeyNotFoundError:
            entry = None
        if entry is None or not entry.value:
            return await self.add(claim)
        # A lapsed claim is replaced only if it is still the one read (no one took it since).
        if not await self._lapsed(_member_decoder.decode(entry.value)):
            raise Refused(f"the name {name!r} is taken in colony {colony!r}")
        try:
            await self.members.update(key, msgspec.json.encode(claim), last=entry.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise Refused(f"the name {name!r} is taken in colony {colony!r}") from None
        self._wrote(key, claim)
        if self.lapsed is not None:
            await self.lapsed(colony, name)
        return claim

    async def _member_role(self, held: Member, public_key: str) -> Role:
        colony, name = held.colony_name, held.name
        if held.public_key != public_key:
            raise Refused(f"the name {name!r} in colony {colony!r} belongs to another key")
        if held.removed:
            raise Refused(f"{name!r} was removed from colony {colony!r} by its owner")
        if held.role is not Role.EXECUTOR:
            return held.role
        state = await self._executor_state(colony, name)
        if state is ExecutorState.APPROVED:
            return Role.EXECUTOR
        if state is ExecutorState.REJECTED:
            raise Refused(f"executor {name!r} was rejected by the owner of colony {colony!r}")
        return Role.PENDING_EXECUTOR


class _Mirror:
    """The members bucket in memory: each record by key, and how many live (not removed)
    records each public key holds."""

    def __init__(self) -> None:
        self.records: dict[str, Member] = {}
        self.holders: collections.Counter[str] = collections.Counter()

    def apply(self, entry: KeyValue.Entry) -> None:
        """One delivery of the bucket: a record written, or deleted/purged (no value)."""
        member = None
        if entry.operation not in ("DEL", "PURGE") and entry.value:
            with contextlib.suppress(msgspec.MsgspecError):  # unreadable: as if absent
                member = _member_decoder.decode(entry.value)
        self.set(entry.key, member)

    def set(self, key: str, member: Member | None) -> None:
        old = self.records.pop(key, None)
        if old is not None and not old.removed:
            self.holders[old.public_key] -= 1
            if self.holders[old.public_key] <= 0:
                del self.holders[old.public_key]
        if member is not None:
            self.records[key] = member
            if not member.removed:
                self.holders[member.public_key] += 1
