"""An owner's requests: colonies (a server owner's), members and executors (a colony
owner's)."""

from __future__ import annotations

from typing import Literal

from colonyos.client.connected import Connected
from colonyos.messages import (
    ColonyAdd,
    Empty,
    ExecutorInfo,
    MemberAdd,
    Named,
    Removed,
)
from colonyos.models import (
    Colony,
    Executor,
)
from colonyos.security.members import Member
from colonyos.subjects import SERVER_SCOPE, check_name

__all__ = ["Administering"]


class Administering(Connected):
    async def colony_add(
        self, name: str, *, auto_approve: bool = False, owner_key: str = "", owner_name: str = ""
    ) -> Colony:
        """Create a colony (a server owner's request). Its owner is ``owner_key`` under
        ``owner_name``; by default, on a secure installation, the server owner who asks."""
        colony = Colony(name=check_name("colony", name), auto_approve=auto_approve)
        body = ColonyAdd(colony=colony, owner_key=owner_key, owner_name=owner_name)
        return await self._must("colony_add", body, Colony, colony=SERVER_SCOPE)

    async def member_add(
        self,
        name: str,
        public_key: str,
        *,
        role: Literal["user", "colony-owner", "executor"] = "user",
        executor_type: str = "",
    ) -> Member:
        """Let the holder of ``public_key`` in as ``name``: a ``user``, a ``colony-owner``,
        or an ``executor`` of ``executor_type`` approved ahead of its first start."""
        body = MemberAdd(name=name, public_key=public_key, role=role, executor_type=executor_type)
        return await self._must("member_add", body, Member)

    async def member_list(self) -> list[Member]:
        return await self._request("member_list", Empty(), list[Member]) or []

    async def member_remove(self, name: str) -> None:
        await self._request("member_remove", Named(name=name), type(None))

    async def colony_list(self) -> list[Colony]:
        return await self._request("colony_list", Empty(), list[Colony], colony=SERVER_SCOPE) or []

    async def colony_remove(self, name: str) -> int:
        """Remove a colony and everything in it (its running processes are cancelled first);
        returns how many processes it had."""
        body = Named(name=check_name("colony", name))  # as add says it: not "does not exist"
        return (await self._must("colony_remove", body, Removed, colony=SERVER_SCOPE)).count

    async def colony_get(self, name: str) -> Colony:
        body = Named(name=check_name("colony", name))
        return await self._must("colony_get", body, Colony, colony=SERVER_SCOPE)

    async def executor_list(self) -> list[ExecutorInfo]:
        """The colony's executors: registrations, last heard, online, running count."""
        return await self._request("executor_list", Empty(), list[ExecutorInfo]) or []

    async def executor_approve(self, name: str) -> Executor:
        return await self._must("executor_approve", Named(name=name), Executor)

    async def executor_reject(self, name: str) -> Executor:
        return await self._must("executor_reject", Named(name=name), Executor)

    async def executor_remove(self, name: str) -> None:
        await self._request("executor_remove", Named(name=name), type(None))
