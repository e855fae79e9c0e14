"""ColonyOS on NATS JetStream.

The public API: :class:`Client` to submit and follow processes, :class:`ExecutorApp` to write
executors, the models and the errors. The broker lives in :mod:`colonyos.broker` and is not
imported here, so that executors on small devices need only nats-py and msgspec.
"""

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
