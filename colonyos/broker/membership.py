"""Members of a colony (its owners, users and executors' keys), and the role rules of every
request on a secure installation.

The NATS server already makes the caller token of ``<prefix>.<colony>.rpc.<caller>.<op>``
unforgeable and keeps members inside their colony (see colonyos/security/permissions.py).
What remains is the broker's to decide, here, in one place:

- only a colony owner (a live record; a server owner manages colonies, not their members)
  approves, rejects, removes and adds executors and manages members;
- requests on the server scope reach the broker only from server owners (the server allows
  no one else to publish there);
- executors' own requests (register, assign, close, fail, log, release...) need a live member
  record of role executor for the caller: the executor record alone is not enough (its name may
  since have been removed and given to a user). Beyond that they are bound to the executor named
  by the caller token (service.py): an executor acts only on what is assigned to it.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec

from colonyos.broker.admin import Admin
from colonyos.broker.service import Service, new_id
from colonyos.errors import ConflictError, InvalidSpecError, NotAuthorizedError, NotFoundError
from colonyos.messages import ColonyAdd, Empty, MemberAdd, Named
from colonyos.models import Colony, Executor, ExecutorState, now
from colonyos.security.keys import public_key_kind
from colonyos.security.members import Member, MemberBook, Refused
from colonyos.security.permissions import Role
from colonyos.security.throttle import Throttle
from colonyos.subjects import SERVER_SCOPE, check_name

__all__ = ["OWNER_OPS", "Membership"]

logger = logging.getLogger(__name__)

# What only a colony's owner may ask (a server owner without a record there may not).
OWNER_OPS = frozenset(
    {"executor_approve", "executor_reject", "executor_remove", "member_add", "member_remove"}
)
# What only a server owner may ask, and only on the server scope (the server lets no one else
# publish there): asked on a colony's subject, any member could run them.
SERVER_OPS = frozenset(
    {"colony_add", "colony_remove", "colony_list", "colony_get", "server_status"}
)
# What an executor's key may not ask: a cron is a standing submission in the colony's name,
# made by its people (Colonies lets any member, executors too).
CRON_OPS = frozenset({"cron_add", "cron_run", "cron_remove"})
# Likewise a generator; packing an argument into one is not a request (a publish, which
# executors may make: see permissions.py).
GENERATOR_OPS = frozenset({"generator_add", "generator_remove"})
# What only an executor may ask: a live (not removed) member record of role executor for the
# caller's name, whatever executor record the name still has (a removed executor's name added
# again as a user must not inherit its registration).
EXECUTOR_OPS = frozenset(
    {
        "register",
        "release",
        "assign",
        "assign_many",
        "results",
        "results_next",
        "close",
        "fail",
        "log",
        "add_child",
    }
)


def reply_in_inbox(prefix: str, colony: str, caller: str, reply: str) -> bool:
    """Whether the broker may answer a request into ``reply``: only into the caller's own
    inbox, ``_INBOX.<prefix>.<colony>.<caller>.``. nats-server checks what a client publishes
    to, not the reply subject it names, and the answer goes out with the broker's rights (a
    reply subject in another colony's specs would have it stored there). A server owner's
    request (colony ``_server``) is answered in its inbox on the server scope, which no colony
    member's can be."""
    if not reply:
        return True  # nothing to answer
    parts = reply.split(".")
    return len(parts) >= 5 and parts[:4] == ["_INBOX", prefix, colony, caller]


class Membership:
    def __init__(self, service: Service, admin: Admin, book: MemberBook, *, secure: bool) -> None:
        self.service = service
        self.admin = admin
        self.book = book
        self.secure = secure
        # A run registers once, then again every few seconds while pending approval.
        self._registrations = Throttle(burst=20, per_s=0.5)
        self._adding = asyncio.Lock()
        service.register_ops(
            colony_add=(ColonyAdd, self.colony_add),
            member_add=(MemberAdd, self.member_add),
            member_list=(Empty, self.member_list),
            member_remove=(Named, self.member_remove),
        )
        service.on_colony_removed = self.colony_removed
        if secure:
            service.authorize = self.authorize
            service.reply_allowed = self.reply_allowed
            service.owners_executor = self.owners_executor

    # -- the role rules ---------------------------------------------------------------------
    async def authorize(self, colony: str, caller: str, op: str) -> None:
        """Refuse ``op`` to a caller whose role does not allow it (secure installations)."""
        if (colony == SERVER_SCOPE) != (op in SERVER_OPS):
            where = "the server scope" if colony == SERVER_SCOPE else f"colony {colony!r}"
            raise NotAuthorizedError(
                f"not allowed: {op.replace('_', ' ')} is not asked on {where}", op=op
            )
        if colony == SERVER_SCOPE:
            return  # only server owners can publish there
        if op in OWNER_OPS and not await self._owns(colony, caller):
            raise NotAuthorizedError(
                f"not allowed: {op.replace('_', ' ')} is for the owner of colony {colony!r}, "
                f"and {caller!r} is not",
                op=op,
                caller=caller,
            )
        if op == "register" and not self._registrations.allow(f"{colony}.{caller}"):
            wait = self._registrations.wait_s(f"{colony}.{caller}")
            raise NotAuthorizedError(
                f"not allowed: too many registrations of {caller!r} in colony {colony!r}; "
                f"try again in {wait:.0f} s",
                op=op,
                caller=caller,
            )
        if op in CRON_OPS | GENERATOR_OPS and await self._is_executor(colony, caller):
            raise NotAuthorizedError(
                f"not allowed: {op.replace('_', ' ')} is for the owner and users of colony "
                f"{colony!r}, and {caller!r} is an executor",
                op=op,
                caller=caller,
            )
        if op in EXECUTOR_OPS:
            member = await self.book.known(colony, caller)
            if member is None or member.removed or member.role is not Role.EXECUTOR:
                what = "a stranger"
                if member is not None:
                    what = "a removed member" if member.removed else f"a {member.role}"
                raise NotAuthorizedError(
                    f"not allowed: {op.replace('_', ' ')}: {caller!r} is {what} of colony "
                    f"{colony!r}, not an executor",
                    op=op,
                    caller=caller,
                )

    async def owners_executor(self, colony: str, name: str) -> bool:
        """Whether the key holding executor ``name`` is also the key of a live owner of the
        colony: the owner would approve its own executor, so it is approved as it registers,
        in any colony (``colonies dev``'s echo executor, and the ones you start, run with the
        key that owns ``dev``). Any other key waits for the owner's approval."""
        held = await self.book.get(colony, name)
        if held is None or held.removed:
            return False
        return any(
            m.public_key == held.public_key and m.role is Role.COLONY_OWNER
            for m in await self.book.all_of(colony)
        )

    def reply_allowed(self, colony: str, caller: str, reply: str) -> bool:
        return reply_in_inbox(self.service.subjects.prefix, colony, caller, reply)

    async def _owns(self, colony: str, caller: str) -> bool:
        """A colony owner's live record: a server owner without one manages colonies, not
        what is in them."""
        member = await self.book.get(colony, caller)
        return member is not None and not member.removed and member.role is Role.COLONY_OWNER

    async def _is_executor(self, colony: str, caller: str) -> bool:
        """A member with an executor's key. (Only members publish on a colony's subjects; a
        caller without a record is not taken for an executor.)"""
        member = await self.book.get(colony, caller)
        return member is not None and member.role in (Role.EXECUTOR, Role.PENDING_EXECUTOR)

    # -- members ------------------------------------------------------------------------------
    async def member_add(self, colony: str, caller: str, req: MemberAdd) -> Member:
        self.service.colony(colony)
        name = check_name("name", req.name)
        if public_key_kind(req.public_key) != "user":
            raise InvalidSpecError(
                f"publickey {req.public_key!r} is not a user's public nkey (U..., 56 "
                "characters, as 'colonies key generate' prints it)",
                path="$.publickey",
            )
        member = Member(
            colony_name=colony, name=name, public_key=req.public_key, role=Role(req.role)
        )
        if member.role is Role.EXECUTOR:  # checked before anything is written
            check_name("executortype", req.executor_type)
        try:
            added = await self.book.add(member)
        except Refused as err:
            raise ConflictError(str(err), name=name) from None
        if member.role is Role.EXECUTOR:
            await self._approve_ahead(colony, name, req.executor_type)
        logger.info("%s added %s %s to %s", caller, member.role, name, colony)
        return added

    async def _approve_ahead(self, colony: str, name: str, executor_type: str) -> None:
        """An executor added by its owner is approved before it first starts."""
        known = self.service.executors.get((colony, name))
        if known is not None and known.state is not ExecutorState.UNREGISTERED:
            approved = msgspec.structs.replace(known, state=ExecutorState.APPROVED)
        else:
            approved = Executor(
                executor_id=new_id(),
                executor_type=executor_type,
                executor_name=name,
                colony_name=colony,
                state=ExecutorState.APPROVED,
                commission_time=now(),
            )
        await self.service.store.put_executor(approved)
        self.service.remember_executor(approved)

    async def member_list(self, colony: str, caller: str, req: Empty) -> list[Member]:
        self.service.colony(colony)
        return await self.book.all_of(colony)

    async def member_remove(self, colony: str, caller: str, req: Named) -> None:
        """The member's next connection is refused and its live ones are cut; an executor is
        unregistered too (its processes go back to the queue, as a lost executor's do), so
        that nothing of its registration is left for whoever holds the name next."""
        held = await self.book.get(colony, req.name)
        if not await self.book.remove(colony, req.name):
            raise NotFoundError(f"colony {colony!r} has no member {req.name!r}", name=req.name)
        logger.info("%s removed member %s from %s", caller, req.name, colony)
        known = self.service.executors.get((colony, req.name))
        if held is not None and held.role is Role.EXECUTOR and known is not None:
            await self.admin.executor_remove(colony, caller, Named(name=req.name))
        if self.service.cut is not None:  # its live connections end now, not at JWT expiry
            await self.service.cut(colony, req.name)
        return None

    async def colony_removed(self, colony: str, caller: str) -> None:
        """A removed colony's members go with it (a colony made again under the name starts
        with no one), and their live connections are cut, but the caller's: it waits for the
        answer."""
        names = await self.book.forget_colony(colony)
        if self.service.cut is not None:
            for name in names:
                if name != caller:
                    await self.service.cut(colony, name)

    # -- colonies and their owners ------------------------------------------------------------
    async def colony_add(self, colony: str, caller: str, req: ColonyAdd) -> Colony:
        """A new colony, with its owner: the key given, else (on a secure installation) the
        server owner who adds it, under its own name. The owner's record is written first, so
        that no colony is left made without its owner; one colony is added at a time, so that
        two adding the same name cannot mix their owners."""
        name = check_name("colonyname", req.colony.name)
        owner = await self._owner_of_new_colony(name, caller, req)
        async with self._adding:
            if name in self.service.colonies:
                raise ConflictError(f"colony {name!r} already exists", colony_name=name)
            if owner is not None:
                # A colony that does not exist has no members: records a removal or an
                # earlier failed add left behind do not stand in its new owner's way.
                await self.book.forget_colony(name)
                try:
                    await self.book.add(owner)
                except Refused as err:
                    raise ConflictError(str(err), name=owner.name) from None
            return await self.admin.colony_add(colony, caller, req)

    async def _owner_of_new_colony(self, colony: str, caller: str, req: ColonyAdd) -> Member | None:
        key, name = req.owner_key, req.owner_name
        if not key:
            held = await self.book.get(SERVER_SCOPE, caller) if self.secure else None
            if held is None:
                return None
            key, name = held.public_key, name or caller
        if public_key_kind(key) != "user":
            raise InvalidSpecError(
                f"ownerkey {key!r} is not a user's public nkey (U..., 56 characters, as "
                "'colonies key generate' prints it)",
                path="$.ownerkey",
            )
        name = check_name("ownername", name or "owner")
        return Member(colony_name=colony, name=name, public_key=key, role=Role.COLONY_OWNER)
