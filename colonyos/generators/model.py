"""A generator: a workflow started by the arguments packed into it, with Colonies' JSON keys.

Colonies' keys are kept (``generatorid``, ``initiatorname``, ``colonyname``, ``name``,
``workflowspec`` as a JSON string, ``trigger``, ``timeout``, ``firstpack``, ``lastrun``,
``queuesize``, ``checkerperiod``). Ours, beyond Colonies: ``created``; ``cursor``, the stream
sequence of the last packed argument consumed by a run; ``runpending`` with ``batchfirst``,
a run recorded (its arguments are those packed at sequences ``batchfirst`` to ``cursor``) whose
graph may not be written yet, which a new leader finishes; and ``lastprocessgraphid``, the
graph of the last run.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from colonyos.errors import InvalidSpecError
from colonyos.limits import GENERATOR_ARG_MAX_BYTES
from colonyos.models import ZERO_TIME, Model
from colonyos.specs import WorkflowValue, workflow_json

__all__ = ["NO_TIMEOUT", "Generator", "GeneratorAdd", "GeneratorDefinition", "check_arg"]

# Colonies' "no timeout": a run starts only when ``trigger`` arguments are packed.
NO_TIMEOUT = -1


class Generator(Model, kw_only=True):
    generator_id: str = ""
    initiator_id: str = ""
    initiator_name: str = ""
    colony_name: str = ""
    name: str
    workflow_spec: str = ""
    trigger: int = 1
    timeout: int = NO_TIMEOUT
    first_pack: datetime = ZERO_TIME
    last_run: datetime = ZERO_TIME
    queue_size: int = 0
    checker_period: int = 0
    created: datetime = ZERO_TIME
    cursor: int = 0
    batch_first: int = 0
    run_pending: bool = False
    last_process_graph_id: str = ""

    @property
    def has_timeout(self) -> bool:
        return self.timeout > 0


class GeneratorDefinition(Model, kw_only=True):
    """What a user sends to add a generator: Colonies' keys. ``workflowspec`` is Colonies'
    JSON string, or the workflow itself (a list of function specs, or
    ``{"functionspecs": [...]}``)."""

    name: str = ""
    workflow_spec: WorkflowValue = ""
    trigger: int = 0
    timeout: int = NO_TIMEOUT
    colony_name: str = ""

    def workflow_json(self) -> bytes:
        return workflow_json(self.workflow_spec)


class GeneratorAdd(Model, kw_only=True):
    """The ``generator_add`` request: ``{"generator": {...}}``, as Colonies' AddGeneratorMsg."""

    generator: GeneratorDefinition


def check_arg(data: bytes | None) -> Any:
    """A packed argument's value, or :class:`InvalidSpecError` naming ``$.arg`` and why it
    cannot be used: empty, too big, or not JSON."""
    if not data:
        raise InvalidSpecError("$.arg: empty: give a JSON value", path="$.arg")
    if len(data) > GENERATOR_ARG_MAX_BYTES:
        raise InvalidSpecError(
            f"$.arg: {len(data)} bytes, more than the {GENERATOR_ARG_MAX_BYTES} an argument "
            "may have",
            path="$.arg",
        )
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError as err:
        raise InvalidSpecError(f"$.arg: not JSON: {err}", path="$.arg") from None
