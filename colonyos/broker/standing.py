"""What crons and generators share: a workflow stored to be run later, checked when it is
added, with errors that name the field under ``$.workflowspec``."""

from __future__ import annotations

import msgspec

from colonyos.errors import InvalidSpecError
from colonyos.graphs import check_workflow
from colonyos.models import WorkflowSpec
from colonyos.specs import check_function_spec, load_workflow_spec

__all__ = ["checked_workflow"]

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
