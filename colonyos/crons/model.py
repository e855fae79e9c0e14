"""A cron: a workflow that starts itself on a schedule, with Colonies' JSON keys.

Colonies' keys are kept (``cronexpression``, ``interval``, ``random``, ``nextrun``,
``lastrun``, ``workflowspec`` as a JSON string, ``prevprocessgraphid``,
``waitforprevprocessgraph``). Ours, beyond Colonies: ``timezone`` (the expression's time zone,
UTC when empty), ``created`` (where intervals count from), and ``runpending`` (the run named by
``lastrun``/``prevprocessgraphid`` is recorded but its graph may not be written yet: a new
leader finishes it) with ``chainfrom`` (the graph whose leaves feed that run's roots).
"""

from __future__ import annotations

from datetime import datetime

from colonyos.models import ZERO_TIME, Model
from colonyos.specs import WorkflowValue, workflow_json

__all__ = ["NO_INTERVAL", "Cron", "CronAdd", "CronDefinition"]

# Colonies' "no interval: the cron expression decides".
NO_INTERVAL = -1


class Cron(Model, kw_only=True):
    cron_id: str = ""
    initiator_id: str = ""
    initiator_name: str = ""
    colony_name: str = ""
    name: str
    cron_expression: str = ""
    interval: int = NO_INTERVAL
    random: bool = False
    next_run: datetime = ZERO_TIME
    last_run: datetime = ZERO_TIME
    workflow_spec: str = ""
    prev_process_graph_id: str = ""
    wait_for_prev_process_graph: bool = False
    checker_period: int = 0
    time_zone: str = ""
    created: datetime = ZERO_TIME
    run_pending: bool = False
    chain_from: str = ""

    @property
    def uses_interval(self) -> bool:
        return self.interval > 0


class CronDefinition(Model, kw_only=True):
    """What a user sends to add a cron: Colonies' keys, and pycolonies' misspelling
    ``waitforprevprocessgrap`` beside the right one. ``workflowspec`` is Colonies' JSON string,
    or the workflow itself (a list of function specs, or ``{"functionspecs": [...]}``)."""

    name: str = ""
    cron_expression: str = ""
    interval: int = NO_INTERVAL
    random: bool = False
    workflow_spec: WorkflowValue = ""
    wait_for_prev_process_graph: bool = False
    wait_for_prev_process_grap: bool = False
    time_zone: str = ""
    colony_name: str = ""

    @property
    def waits_for_previous(self) -> bool:
        return self.wait_for_prev_process_graph or self.wait_for_prev_process_grap

    def workflow_json(self) -> bytes:
        return workflow_json(self.workflow_spec)


class CronAdd(Model, kw_only=True):
    """The ``cron_add`` request: ``{"cron": {...}}``, as Colonies' AddCronMsg."""

    cron: CronDefinition
