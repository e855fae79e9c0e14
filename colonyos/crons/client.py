"""Crons from the SDK: ``Crons(client).add(...)``, ``get``, ``list``, ``run``, ``remove``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from colonyos.crons.model import NO_INTERVAL, Cron, CronAdd, CronDefinition
from colonyos.messages import Empty, Named
from colonyos.models import WorkflowSpec

if TYPE_CHECKING:
    from colonyos.client import Client

__all__ = ["Crons"]


class Crons:
    """The colony's crons, through a connected :class:`Client` (its colony and caller)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def add(
        self,
        name: str,
        workflow: WorkflowSpec | list[Any] | dict[str, Any] | str,
        *,
        cron_expression: str = "",
        interval: int = NO_INTERVAL,
        random: bool = False,
        wait_for_previous: bool = False,
        time_zone: str = "",
    ) -> Cron:
        """Add a cron that runs ``workflow`` (a WorkflowSpec, its JSON text, or the decoded
        JSON) on a cron expression or every ``interval`` seconds."""
        spec: Any = workflow
        if isinstance(workflow, WorkflowSpec):
            spec = {"functionspecs": workflow.function_specs}
        definition = CronDefinition(
            name=name,
            cron_expression=cron_expression,
            interval=interval,
            random=random,
            workflow_spec=spec,
            wait_for_prev_process_graph=wait_for_previous,
            time_zone=time_zone,
        )
        return await self.add_definition(definition)

    async def add_definition(self, definition: CronDefinition) -> Cron:
        return await self.client._must("cron_add", CronAdd(cron=definition), Cron)

    async def get(self, name: str) -> Cron:
        return await self.client._must("cron_get", Named(name=name), Cron)

    async def list(self) -> list[Cron]:
        return await self.client._request("cron_list", Empty(), list[Cron]) or []

    async def run(self, name: str) -> Cron:
        """Start a run now, once; the cron after it (its ``prevprocessgraphid`` is the run)."""
        return await self.client._must("cron_run", Named(name=name), Cron)

    async def remove(self, name: str) -> None:
        await self.client._request("cron_remove", Named(name=name), Cron)
