"""Colonies' ``execute`` contract, shared by the container, Slurm and Kubernetes executors.

A spec of funcname ``execute`` names an image and a command, as Colonies' container executors
take them, so that the same spec runs on a laptop (container), a cluster (Kubernetes) or a
supercomputer (Slurm) by changing only its executor type::

    "funcname": "execute",
    "kwargs": {"docker-image": "ubuntu:20.04", "cmd": "echo", "args": ["hello", "{processid}"],
               "init-cmd": "apt-get install -y curl"},
    "env": {"GREETING": "hi"}

* ``cmd`` and ``args`` (joined with spaces) make one shell line, run by ``/bin/sh -c`` in the
  image, after ``init-cmd`` when given (a failing ``init-cmd`` fails the process, ``cmd`` does
  not run). ``{processid}`` becomes the process id in all three.
* The environment is the spec's ``env``, ``COLONIES_PROCESS_ID``, ``COLONIES_INPUT`` and
  ``COLONIES_OUTPUT``: never the executor's own (its keys, its NATS address).
* Beyond Colonies: JSON written to the file named by ``$COLONIES_OUTPUT`` becomes the process's
  output (a JSON array is the output as it is; any other value is its one item), and the file
  named by ``$COLONIES_INPUT`` holds the process's input (in a workflow, its parents' outputs)
  as a JSON array: so the nodes of a workflow pass data from one to the next.
* Stdout and stderr become log lines as they come, marked ``[stdout]`` and ``[stderr]``; a
  non-zero exit fails the process with the code and the last lines of stderr.

This module is pure (no processes, no I/O beyond reading the output file) so that each
executor's tests can check it without a runtime.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
from dataclasses import dataclass, field
from typing import Any

from colonyos.execution import ProcessFailure
from colonyos.executor import ProcessContext
from colonyos.models import Process
from colonyos.resources import parse_bytes, parse_cpu_millis

__all__ = [
    "FUNC_NAME",
    "INPUT_ENV",
    "OUTPUT_ENV",
    "PROCESS_ID_ENV",
    "STDERR_MARK",
    "STDOUT_MARK",
    "ContractError",
    "Execute",
    "Limits",
    "LogTail",
    "failure",
    "parse",
    "pump",
    "read_output",
]

FUNC_NAME = "execute"
PROCESS_ID_ENV = "COLONIES_PROCESS_ID"
OUTPUT_ENV = "COLONIES_OUTPUT"
INPUT_ENV = "COLONIES_INPUT"
STDOUT_MARK = "[stdout] "
STDERR_MARK = "[stderr] "
# How many of the last stderr lines a failure quotes.
STDERR_TAIL_LINES = 10
# Exit codes of a process killed by a signal, as shells and container runtimes report them.
_SIGKILL_EXIT = 137

_PLACEHOLDER = "{processid}"


class ContractError(ProcessFailure):
    """A spec that does not follow the contract: the message names the field and the reason."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What the spec's conditions ask for, as numbers a platform enforces (0: not asked)."""

    cpu_millis: int = 0
    mem_bytes: int = 0
    gpus: int = 0
    nodes: int = 0
    processes_per_node: int = 0
    # conditions.walltime, else maxexectime: the platform's own time limit.
    time_limit_s: int = 0


@dataclass(frozen=True, slots=True)
class Execute:
    """One ``execute`` call, checked: what every platform runs."""

    process_id: str
    attempt: int
    image: str
    init_cmd: str
    command: str  # cmd and args, one shell line
    env: dict[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    # The process's input: its parents' outputs in a workflow.
    input: list[Any] = field(default_factory=list)

    @property
    def script(self) -> str:
        """The shell text run in the image: ``init-cmd`` first, and ``cmd`` only if it passed."""
        if not self.init_cmd:
            return self.command
        return f"{self.init_cmd} || exit $?\n{self.command}"

    @property
    def argv(self) -> list[str]:
        """The command the image runs."""
        return ["/bin/sh", "-c", self.script]

    def environment(self, output_path: str, input_path: str) -> dict[str, str]:
        """The process's whole environment, with its output and input files at these paths."""
        return {
            **self.env,
            PROCESS_ID_ENV: self.process_id,
            INPUT_ENV: input_path,
            OUTPUT_ENV: output_path,
        }

    def input_json(self) -> bytes:
        """What the ``$COLONIES_INPUT`` file holds."""
        return json.dumps(self.input).encode()


def parse(process: Process) -> Execute:
    """The ``execute`` call of ``process``; :class:`ContractError` naming the field if the spec
    does not follow the contract."""
    spec = process.spec
    kwargs = spec.kwargs
    pid = process.process_id

    def text(key: str, *, required: bool) -> str:
        value = kwargs.get(key)
        if value is None or (value == "" and not required):
            if required:
                raise ContractError(f"kwargs.{key}: required, {_WHAT[key]}")
            return ""
        if not isinstance(value, str) or not value.strip():
            raise ContractError(f"kwargs.{key}: must be {_WHAT[key]}, not {value!r}")
        return value.replace(_PLACEHOLDER, pid)

    image = text("docker-image", required=True)
    if any(c.isspace() for c in image):
        raise ContractError(f"kwargs.docker-image: {image!r} is not an image name (it has spaces)")
    cmd = text("cmd", required=True)
    raw_args = kwargs.get("args", [])
    if raw_args is None:
        raw_args = []
    if not isinstance(raw_args, list) or any(
        isinstance(a, dict | list | bool) or a is None for a in raw_args
    ):
        raise ContractError(f"kwargs.args: must be a list of strings or numbers, not {raw_args!r}")
    args = [str(a).replace(_PLACEHOLDER, pid) for a in raw_args]
    return Execute(
        process_id=pid,
        attempt=process.attempt,
        image=image,
        init_cmd=text("init-cmd", required=False),
        command=" ".join([cmd, *args]),
        env=dict(spec.env),
        limits=limits_of(process),
        input=list(process.input),
    )


_WHAT = {
    "docker-image": "the image to run (a string such as 'ubuntu:20.04')",
    "cmd": "the command to run in it (a string)",
    "init-cmd": "a command run before cmd (a string)",
}


def limits_of(process: Process) -> Limits:
    """The spec's resource conditions as numbers; ContractError names a quantity not understood
    (the broker checks them at submit, so this is for specs from elsewhere)."""
    spec = process.spec
    cond = spec.conditions
    try:
        cpu = parse_cpu_millis(cond.cpu)
    except ValueError as err:
        raise ContractError(f"conditions.cpu: {err}") from None
    try:
        mem = parse_bytes(cond.mem)
    except ValueError as err:
        raise ContractError(f"conditions.mem: {err}") from None
    time_limit = cond.walltime or max(spec.max_exec_time, 0)
    return Limits(
        cpu_millis=cpu,
        mem_bytes=mem,
        gpus=cond.gpu.count,
        nodes=cond.nodes,
        processes_per_node=cond.processes_per_node,
        time_limit_s=time_limit,
    )


def read_output(path: str, max_bytes: int) -> list[Any]:
    """The process output the command left in the file at ``path``: none if it wrote none.
    ContractError if it is not JSON or larger than ``max_bytes``."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        return []
    except OSError as err:
        raise ContractError(f"${OUTPUT_ENV}: cannot be read: {err.strerror}") from None
    if len(data) > max_bytes:
        raise ContractError(
            f"${OUTPUT_ENV}: the output file is larger than the {max_bytes} bytes an output "
            "may have"
        )
    if not data.strip():
        return []
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise ContractError(f"${OUTPUT_ENV}: the output file is not JSON: {err}") from None
    return value if isinstance(value, list) else [value]


class LogTail:
    """The last lines of stderr, quoted by a failure."""

    def __init__(self, size: int = STDERR_TAIL_LINES) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=size)

    def __str__(self) -> str:
        return " | ".join(self.lines)


async def pump(
    stream: asyncio.StreamReader, ctx: ProcessContext, mark: str, tail: LogTail | None = None
) -> None:
    """Each line of ``stream`` into the process log as it comes, marked."""
    async for raw in stream:
        line = raw.decode(errors="replace").rstrip("\r\n")
        ctx.log(mark + line)
        if tail is not None:
            tail.lines.append(line)


def failure(code: int, tail: LogTail, *, oom: bool = False, what: str = "the command") -> str:
    """The error of a command that exited with ``code``."""
    if oom:
        head = f"{what} was killed for using more memory than its limit (out of memory)"
    elif code == _SIGKILL_EXIT:
        head = f"{what} was killed (exit code 137: SIGKILL, or out of memory)"
    else:
        head = f"{what} exited with code {code}"
    return f"{head}: {tail}" if tail.lines else head


_NAME_PREFIX = "colonies-"


def scratch_name(call: Execute) -> str:
    """A name for what a platform makes for one attempt of a process (a container, a job, a
    directory), the same after a restart: ``colonies-<process id>-<attempt>``."""
    return attempt_name(call.process_id, call.attempt)


def attempt_name(process_id: str, attempt: int) -> str:
    return f"{_NAME_PREFIX}{process_id}-{attempt}"


def parse_attempt_name(name: str) -> tuple[str, int] | None:
    """The (process id, attempt) an :func:`attempt_name` names, or None for any other name."""
    if not name.startswith(_NAME_PREFIX):
        return None
    pid, _, attempt = name.removeprefix(_NAME_PREFIX).rpartition("-")
    return (pid, int(attempt)) if pid and attempt.isdigit() else None


def ensure_dir(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path
