"""Cutting the live connections of a member whose rights were taken away (removed, rejected),
through the system account: removal takes effect within a second, not when the member's JWT
expires. A client that is cut reconnects through the callout, which refuses it (or, for an
executor sent back to pending, gives it only what pending executors may do)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from colonyos.security.permissions import jwt_user_name

__all__ = ["Kicker"]

logger = logging.getLogger(__name__)

# How long to gather the answers of every server of a cluster to "who is connected".
_GATHER_S = 0.25


class _Conn(msgspec.Struct):
    cid: int


class _Connz(msgspec.Struct):
    connections: list[_Conn] | None = None


class _Server(msgspec.Struct):
    id: str


class _ConnzReply(msgspec.Struct):
    server: _Server
    data: _Connz | None = None


_decoder = msgspec.json.Decoder(_ConnzReply)


class Kicker:
    def __init__(self, system: NATS, prefix: str) -> None:
        self.system = system
        self.prefix = prefix

    async def cut(self, colony: str, name: str) -> int:
        """Close every connection of ``name`` in ``colony`` on every server; how many."""
        user = jwt_user_name(self.prefix, colony, name)
        found = await self._connections(user)
        for server_id, cid in found:
            try:
                await self.system.request(
                    f"$SYS.REQ.SERVER.{server_id}.KICK",
                    msgspec.json.encode({"cid": cid}),
                    timeout=2,
                )
            except nats.errors.Error as err:
                logger.warning("could not cut connection %s of %s: %s", cid, user, err)
        if found:
            logger.info("cut %d connection(s) of %s", len(found), user)
        return len(found)

    async def _connections(self, user: str) -> list[tuple[str, int]]:
        inbox = self.system.new_inbox()
        replies: list[bytes] = []

        async def gather(msg: Msg) -> None:
            replies.append(msg.data)

        sub = await self.system.subscribe(inbox, cb=gather)
        try:
            await self.system.publish(
                "$SYS.REQ.SERVER.PING.CONNZ",
                msgspec.json.encode({"user": user, "auth": True, "limit": 1024}),
                reply=inbox,
            )
            await self.system.flush()
            await asyncio.sleep(_GATHER_S)  # every server of a cluster answers; no count known
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        found = []
        for data in replies:
            try:
                reply = _decoder.decode(data)
            except msgspec.DecodeError:
                continue
            for conn in (reply.data.connections or []) if reply.data else []:
                found.append((reply.server.id, conn.cid))
        return found
