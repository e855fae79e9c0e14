"""Statistics: a colony's counts and its functions' times (any member's), and the
installation's state (a server owner's)."""

from __future__ import annotations

import msgspec

from colonyos.client.connected import Connected
from colonyos.connection import shown_url
from colonyos.messages import Empty
from colonyos.statistics import ColonyStats, FunctionStats, NatsInfo, ServerStatus
from colonyos.subjects import SERVER_SCOPE

__all__ = ["Statistics"]


class Statistics(Connected):
    async def colony_stats(self) -> ColonyStats:
        """The colony's processes and workflows by state, and its executors online and not."""
        return await self._must("colony_stats", Empty(), ColonyStats)

    async def function_stats(self) -> list[FunctionStats]:
        """Per function name and executor type: counts by state, waiting and execution
        times; most called first."""
        return await self._request("function_stats", Empty(), list[FunctionStats]) or []

    async def server_status(self) -> ServerStatus:
        """The leading broker's view (version, uptime, standbys, streams), with the NATS
        server this client is connected to and the servers its connection knows of."""
        status = await self._must("server_status", Empty(), ServerStatus, colony=SERVER_SCOPE)
        return msgspec.structs.replace(status, nats=self.nats_info())

    def nats_info(self) -> NatsInfo:
        nc = self.nc
        # nats-py keeps the server's INFO only in a private attribute.
        info: dict[str, object] = getattr(nc, "_server_info", {}) or {}
        url = nc.connected_url
        servers = dict.fromkeys(shown_url(u.geturl()) for u in nc.servers)
        return NatsInfo(
            server_id=str(info.get("server_id", "")),
            server_name=str(info.get("server_name", "")),
            version=str(info.get("version", "")),
            cluster=str(info.get("cluster", "")),
            jetstream=bool(info.get("jetstream", False)),
            max_payload=nc.max_payload,
            connected_url=shown_url(url.geturl()) if url is not None else "",
            servers=list(servers),
        )
