"""ColonyOS on NATS JetStream.

The public API: :class:`Client` to submit and follow processes, :class:`ExecutorApp` to write
executors, the models and the errors. The broker lives in :mod:`colonyos.broker` and is not
imported here, so that executors on small devices need only nats-py and msgspec.

Names are imported when first used (PEP 562), so that ``import colonyos`` (and the ``colonies``
command's first instant, when Ctrl-C must already be answered quietly) costs nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from colonyos.client import Client
    from colonyos.config import Settings
    from colonyos.errors import (
        AssignTimeoutError,
        BrokerUnavailableError,
        ColoniesError,
        ColonyNotFoundError,
        ConflictError,
        ExecutorNotFoundError,
        GraphNotFoundError,
        IdTakenError,
        InvalidNameError,
        InvalidSpecError,
        NotAuthorizedError,
        NotFoundError,
        ProcessExistsError,
        ProcessNotFoundError,
    )
    from colonyos.executor import ExecutorApp, ProcessContext
    from colonyos.messages import Event, GraphEvent, ProcessEvent, Rejection, UnknownEvent
    from colonyos.models import (
        Colony,
        Conditions,
        Executor,
        ExecutorState,
        FunctionSpec,
        Process,
        ProcessGraph,
        ProcessState,
        WorkflowSpec,
    )
    from colonyos.specs import load_function_spec, load_workflow_spec

# Where each public name lives.
_HOMES = {
    "AssignTimeoutError": "colonyos.errors",
    "BrokerUnavailableError": "colonyos.errors",
    "Client": "colonyos.client",
    "ColoniesError": "colonyos.errors",
    "Colony": "colonyos.models",
    "ColonyNotFoundError": "colonyos.errors",
    "Conditions": "colonyos.models",
    "ConflictError": "colonyos.errors",
    "Event": "colonyos.messages",
    "Executor": "colonyos.models",
    "ExecutorApp": "colonyos.executor",
    "ExecutorNotFoundError": "colonyos.errors",
    "ExecutorState": "colonyos.models",
    "FunctionSpec": "colonyos.models",
    "GraphEvent": "colonyos.messages",
    "GraphNotFoundError": "colonyos.errors",
    "IdTakenError": "colonyos.errors",
    "InvalidNameError": "colonyos.errors",
    "InvalidSpecError": "colonyos.errors",
    "NotAuthorizedError": "colonyos.errors",
    "NotFoundError": "colonyos.errors",
    "Process": "colonyos.models",
    "ProcessContext": "colonyos.executor",
    "ProcessEvent": "colonyos.messages",
    "ProcessExistsError": "colonyos.errors",
    "ProcessGraph": "colonyos.models",
    "ProcessNotFoundError": "colonyos.errors",
    "ProcessState": "colonyos.models",
    "Rejection": "colonyos.messages",
    "Settings": "colonyos.config",
    "UnknownEvent": "colonyos.messages",
    "WorkflowSpec": "colonyos.models",
    "load_function_spec": "colonyos.specs",
    "load_workflow_spec": "colonyos.specs",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'colonyos' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


__all__ = [
    "AssignTimeoutError",
    "BrokerUnavailableError",
    "Client",
    "ColoniesError",
    "Colony",
    "ColonyNotFoundError",
    "Conditions",
    "ConflictError",
    "Event",
    "Executor",
    "ExecutorApp",
    "ExecutorNotFoundError",
    "ExecutorState",
    "FunctionSpec",
    "GraphEvent",
    "GraphNotFoundError",
    "IdTakenError",
    "InvalidNameError",
    "InvalidSpecError",
    "NotAuthorizedError",
    "NotFoundError",
    "Process",
    "ProcessContext",
    "ProcessEvent",
    "ProcessExistsError",
    "ProcessGraph",
    "ProcessNotFoundError",
    "ProcessState",
    "Rejection",
    "Settings",
    "UnknownEvent",
    "WorkflowSpec",
    "load_function_spec",
    "load_workflow_spec",
]
