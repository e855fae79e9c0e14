"""The ColonyOS data model, with the Colonies JSON keys on the wire.

Python attributes are snake_case; one rename rule (drop the underscores) produces the
Colonies key, so ``max_exec_time`` travels as ``maxexectime``. The only exceptions are the
Python keywords ``in``/``out`` of a process, spelled ``input``/``output`` here.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from msgspec import Meta, field

__all__ = [
    "GPU",
    "ZERO_TIME",
    "Attribute",
    "Capabilities",
    "Colony",
    "Conditions",
    "Executor",
    "ExecutorState",
    "Filesystem",
    "FunctionSpec",
    "Hardware",
    "Location",
    "LogEntry",
    "Process",
    "ProcessGraph",
    "ProcessState",
    "Software",
    "WorkflowSpec",
    "now",
]

# Go's zero time.Time, which Colonies writes for "not yet" (start, end, deadlines).
ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)

NO_LIMIT = -1


def now() -> datetime:
    return datetime.now(UTC)


def _colonies_name(name: str) -> str:
    return name.replace("_", "")


class Model(msgspec.Struct, rename=_colonies_name, kw_only=True, omit_defaults=False):
    """Base of every wire model: Colonies keys, keyword-only construction."""


class ProcessState(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    SUCCESS = 2
    FAILED = 3
    CANCELLED = 4

    @property
    def is_terminal(self) -> bool:
        return self >= ProcessState.SUCCESS

    @property
    def token(self) -> str:
        """The lowercase name used in event subjects (``waiting``, ``success``...)."""
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> ProcessState:
        """Accept a name (any case) or the number, as users type either."""
        text = text.strip()
        if text.isdigit() and int(text) in cls._value2member_map_:
            return cls(int(text))
        try:
            return cls[text.upper()]
        except KeyError:
            names = ", ".join(s.name.lower() for s in cls)
            raise ValueError(f"unknown process state {text!r}; expected one of {names}") from None


class ExecutorState(enum.IntEnum):
    PENDING = 0
    APPROVED = 1
    REJECTED = 2
    # Removed by the colony owner (Colonies' value): kept for the record, given no work.
    UNREGISTERED = 3


NonNegative = Annotated[int, Meta(ge=0)]
Limit = Annotated[int, Meta(ge=-1)]


class GPU(Model, kw_only=True):
    name: str = ""
    mem: str = ""
    count: NonNegative = 0
    node_count: NonNegative = 0


class Conditions(Model, kw_only=True):
    colony_name: str = ""
    executor_names: list[str] = field(default_factory=list)
    executor_type: str = ""
    location_name: str = ""
    dependencies: list[str] = field(default_factory=list)
    nodes: NonNegative = 0
    cpu: str = ""
    processes: NonNegative = 0
    processes_per_node: NonNegative = 0
    mem: str = ""
    storage: str = ""
    gpu: GPU = field(default_factory=GPU)
    walltime: NonNegative = 0


class KeepLocal(Model, kw_only=True):
    keep_local: bool = False


class OnConflicts(Model, kw_only=True):
    on_start: KeepLocal = field(default_factory=KeepLocal)
    on_close: KeepLocal = field(default_factory=KeepLocal)


class SyncDir(Model, kw_only=True):
    label: str = ""
    dir: str = ""
    keep_files: bool = False
    on_conflicts: OnConflicts = field(default_factory=OnConflicts)


class Snapshot(Model, kw_only=True):
    snapshot_id: str = ""
    label: str = ""
    dir: str = ""
    keep_files: bool = False
    keep_snapshot: bool = False


class Filesystem(Model, kw_only=True):
    """ColonyFS directives (``fs``); carried to executors that implement them."""

    mount: str = ""
    snapshots: list[Snapshot] = field(default_factory=list)
    dirs: list[SyncDir] = field(default_factory=list)


class FunctionSpec(Model, kw_only=True):
    node_name: str = ""
    func_name: str = ""
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    max_wait_time: Limit = NO_LIMIT
    max_exec_time: Limit = NO_LIMIT
    max_retries: Limit = 0
    conditions: Conditions = field(default_factory=Conditions)
    label: str = ""
    fs: Filesystem = field(default_factory=Filesystem)
    env: dict[str, str] = field(default_factory=dict)
    channels: list[str] = field(default_factory=list)


class WorkflowSpec(Model, kw_only=True):
    colony_name: str = ""
    function_specs: list[FunctionSpec] = field(default_factory=list)


class Attribute(Model, kw_only=True):
    attribute_id: str = ""
    target_id: str = ""
    target_colony_name: str = ""
    target_process_graph_id: str = ""
    attribute_type: int = 0
    key: str = ""
    value: str = ""


class Process(Model, kw_only=True):
    process_id: str
    initiator_id: str = ""
    initiator_name: str = ""
    assigned_executor_id: str = ""
    is_assigned: bool = False
    state: ProcessState = ProcessState.WAITING
    priority_time: int = 0
    submission_time: datetime = ZERO_TIME
    start_time: datetime = ZERO_TIME
    end_time: datetime = ZERO_TIME
    wait_deadline: datetime = ZERO_TIME
    exec_deadline: datetime = ZERO_TIME
    retries: int = 0
    attributes: list[Attribute] = field(default_factory=list)
    spec: FunctionSpec = field(default_factory=FunctionSpec)
    wait_for_parents: bool = False
    parents: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    process_graph_id: str = ""
    input: list[Any] = field(default_factory=list, name="in")
    output: list[Any] = field(default_factory=list, name="out")
    errors: list[str] = field(default_factory=list)
    # Not in Colonies: how many times it was assigned, and how many of those assignments ended
    # with its executor gone (lost, removed, replaced, restarted, stopped), which re-queue it
    # without spending a retry.
    assignments: int = 0
    executor_losses: int = 0

    @property
    def attempt(self) -> int:
        """The token close, fail and log carry: 0 for the first assignment, one more for each
        later one, so that a result from an earlier assignment is refused."""
        return max(0, self.assignments - 1)

    @property
    def colony_name(self) -> str:
        return self.spec.conditions.colony_name

    @property
    def executor_type(self) -> str:
        return self.spec.conditions.executor_type


class ProcessGraph(Model, kw_only=True):
    """A workflow's processes; ``nodes`` maps each node name to its process id."""

    process_graph_id: str
    colony_name: str
    root_process_ids: list[str] = field(default_factory=list)
    process_ids: list[str] = field(default_factory=list)
    nodes: dict[str, str] = field(default_factory=dict)
    state: ProcessState = ProcessState.WAITING
    submission_time: datetime = ZERO_TIME
    start_time: datetime = ZERO_TIME
    end_time: datetime = ZERO_TIME
    # Not in Colonies: the cron or the generator that started this graph, if one did.
    cron_name: str = ""
    generator_name: str = ""


class Location(Model, kw_only=True):
    long: float = 0.0
    lat: float = 0.0
    description: str = ""


class Hardware(Model, kw_only=True):
    model: str = ""
    nodes: NonNegative = 0
    cpu: str = ""
    cores: NonNegative = 0
    mem: str = ""
    storage: str = ""
    gpu: GPU = field(default_factory=GPU)
    platform: str = ""  # as Go's GOOS: "linux", "darwin", "windows"
    architecture: str = ""  # as Go's GOARCH: "amd64", "arm64", "riscv64"
    network: list[str] = field(default_factory=list)  # local addresses


class Software(Model, kw_only=True):
    name: str = ""
    type: str = ""
    version: str = ""


class Capabilities(Model, kw_only=True):
    hardware: list[Hardware] = field(default_factory=list)
    software: list[Software] = field(default_factory=list)


class Executor(Model, kw_only=True):
    executor_id: str = ""
    executor_type: str
    executor_name: str
    colony_name: str = ""
    state: ExecutorState = ExecutorState.PENDING
    require_func_reg: bool = False
    commission_time: datetime = ZERO_TIME
    last_heard_from_time: datetime = ZERO_TIME
    location_name: str = ""
    location: Location = field(default_factory=Location)
    capabilities: Capabilities = field(default_factory=Capabilities)


class Colony(Model, kw_only=True):
    colony_id: str = ""
    name: str
    auto_approve: bool = False


class LogEntry(Model, kw_only=True):
    process_id: str
    colony_name: str
    executor_name: str
    message: str
    sequence: int = 0
    timestamp: int = 0
