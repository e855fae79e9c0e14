"""The container executor: each ``execute`` process runs as a container of its image.

    colonies executor start container [--runtime podman|docker] [-c 4]

It follows Colonies' ``execute`` contract (see :mod:`colonyos.executors.contract`), so Colonies'
container specs run unchanged, through the runtime's command line (podman, or docker):

* each process is a container named ``colonies-<process id>-<attempt>``, started with ``--init``
  (a stop is immediate even if the command ignores SIGTERM), the spec's resource conditions as
  its limits (``--cpus``, ``--memory`` with no swap beyond it, GPUs, walltime as podman's
  ``--timeout``), the spec's environment from a file only its owner reads, and a directory of
  its own mounted at ``/colonies`` for the ``$COLONIES_INPUT`` and ``$COLONIES_OUTPUT`` files;
* its stdout and stderr stream into the process log as they come; its exit code decides;
* a cancel, a ``maxexectime`` past, or the executor stopped now removes the container at once;
  a missing image fails in the time the runtime takes to say so;
* killed outright (SIGKILL, a crash), the executor leaves its containers running; started
  again from the same state directory it takes back those still its own and removes the rest.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from colonyos.config import Settings
from colonyos.executor import ExecutorApp, ProcessContext
from colonyos.limits import request_limit
from colonyos.resume import IdentityFile

from . import contract
from .platform import PlatformError, command, default_state_dir, finish_anyway, need, remove_tree

__all__ = ["RUNTIMES", "ContainerRuntime", "build"]

RUNTIMES = ("podman", "docker")
# The exit code of a container killed outright: by its memory limit, or by a stop.
_SIGKILL_EXIT = 137
# What `run` exits with when the runtime itself failed (no image, a command it cannot run).
_RUNTIME_FAILED = (125, 126, 127)
# Where a process finds its own directory inside the container.
MOUNT = "/colonies"
OUTPUT_FILE = "output.json"
INPUT_FILE = "input.json"


class ContainerRuntime:
    """The runtime's command line, for the containers of one executor."""

    def __init__(self, program: str, owner: str, network: str = "") -> None:
        self.program = program
        self.podman = os.path.basename(program).startswith("podman")
        # The label that tells this executor's containers from everyone else's.
        self.owner = owner
        self.network = network

    def run_argv(self, call: contract.Execute, name: str, workdir: Path) -> list[str]:
        """``<runtime> run ...`` for one process, attached: its stdout and stderr are the
        command's, its exit code the command's. Signals the runtime's client gets are not
        passed on (``--sig-proxy=false``): an executor killed outright leaves its container
        running, to be taken back."""
        limits = call.limits
        argv = [
            self.program,
            "run",
            "--sig-proxy=false",
            "--init",
            "--name",
            name,
            "--label",
            f"colonies.executor={self.owner}",
            "--label",
            f"colonies.process={call.process_id}",
            "--env-file",
            str(workdir / "env"),
            "--volume",
            f"{workdir / 'out'}:{MOUNT}",
        ]
        for key, value in call.env.items():
            if "\n" in value:  # an environment file holds one line per variable
                argv += ["--env", f"{key}={value}"]
        if self.network:
            argv += ["--network", self.network]
        if limits.cpu_millis:
            argv += ["--cpus", f"{limits.cpu_millis / 1000:g}"]
        if limits.mem_bytes:
            argv += ["--memory", str(limits.mem_bytes), "--memory-swap", str(limits.mem_bytes)]
        if limits.gpus:
            argv += (
                ["--device", "nvidia.com/gpu=all"] if self.podman else ["--gpus", str(limits.gpus)]
            )
        if limits.time_limit_s and self.podman:
            argv += ["--timeout", str(limits.time_limit_s)]
        return [*argv, call.image, *call.argv]

    async def exists(self, name: str) -> bool:
        done = await command(self.program, "container", "inspect", "--format", "{{.Id}}", name)
        return done.returncode == 0

    async def run(
        self,
        ctx: ProcessContext,
        call: contract.Execute,
        name: str,
        workdir: Path,
        tail: contract.LogTail,
    ) -> int:
        """Run the process's container to its end, its stdout and stderr into the log as they
        come: one call of the runtime, where starting it detached and then following its log
        and waiting for its end took three. Its exit code; :class:`PlatformError` if it never
        started (the runtime's own failures are 125-127, and it then says why on stderr)."""
        argv = self.run_argv(call, name, workdir)
        code = await self._attached(ctx, argv, tail, cwd=str(workdir))
        if code in _RUNTIME_FAILED and not await self.exists(name):
            raise PlatformError(f"the container of image {call.image!r} could not start: {tail}")
        return code

    async def follow(self, ctx: ProcessContext, name: str, tail: contract.LogTail) -> None:
        """Its stdout and stderr into the log, until it ends (a container taken back after a
        restart)."""
        await self._attached(ctx, [self.program, "logs", "--follow", name], tail)

    async def _attached(
        self, ctx: ProcessContext, argv: list[str], tail: contract.LogTail, cwd: str | None = None
    ) -> int:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
        )
        assert proc.stdout is not None and proc.stderr is not None
        try:
            await asyncio.gather(
                contract.pump(proc.stdout, ctx, contract.STDOUT_MARK),
                contract.pump(proc.stderr, ctx, contract.STDERR_MARK, tail),
            )
            return await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    async def ended(self, name: str) -> tuple[int, bool]:
        """Its exit code and whether it was killed for memory, once it has ended."""
        done = await command(self.program, "wait", name)  # at once if it has ended already
        if done.returncode != 0:
            raise PlatformError(f"the container {name} vanished before it ended: {done.why()}")
        try:
            code = int(done.stdout.strip())
        except ValueError:
            code = _SIGKILL_EXIT
        return await self.outcome(name, code)

    async def outcome(self, name: str, code: int) -> tuple[int, bool]:
        """The exit code of an ended container, and whether it was killed for memory (asked
        of the runtime only when it was killed)."""
        if code != _SIGKILL_EXIT:
            return code, False
        state = await command(
            self.program,
            "container",
            "inspect",
            "--format",
            "{{.State.ExitCode}} {{.State.OOMKilled}}",
            name,
        )
        try:
            exit_code, oom = state.stdout.split()
            return int(exit_code), oom == "true"
        except ValueError:
            return _SIGKILL_EXIT, False

    async def remove(self, name: str) -> None:
        """Gone at once, running or not (``-t 0``: no grace period)."""
        argv = [self.program, "rm", "--force"]
        if self.podman:
            argv += ["--time", "0", "--ignore"]
        await command(*argv, name)

    async def held(self) -> list[str]:
        """The names of this executor's containers, running or ended."""
        done = await command(
            self.program,
            "ps",
            "--all",
            "--filter",
            f"label=colonies.executor={self.owner}",
            "--format",
            "{{.Names}}",
        )
        if done.returncode != 0:
            raise PlatformError(f"cannot list containers: {done.why()}")
        return done.stdout.split()


class _Containers:
    """The executor's containers and their directories, as colonyos.resume asks for them."""

    def __init__(self, runtime: ContainerRuntime, state_dir: Path) -> None:
        self.runtime = runtime
        self.work = state_dir / "work"

    def workdir(self, name: str) -> Path:
        return self.work / name

    async def held(self) -> list[tuple[str, int]]:
        named = (contract.parse_attempt_name(n) for n in await self.runtime.held())
        return [attempt for attempt in named if attempt is not None]

    async def abandon(self, process_id: str, attempt: int) -> None:
        name = contract.attempt_name(process_id, attempt)
        await self.runtime.remove(name)
        remove_tree(self.workdir(name))


def _prepare(workdir: Path, call: contract.Execute) -> None:
    """The process's directory: its output mount (writable by whichever user the image runs
    as) and its environment file (readable by this executor's user only)."""
    out = workdir / "out"
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o777)
    (out / INPUT_FILE).write_bytes(call.input_json())
    env = call.environment(f"{MOUNT}/{OUTPUT_FILE}", f"{MOUNT}/{INPUT_FILE}")
    fd = os.open(workdir / "env", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        for key, value in env.items():
            if "\n" not in value:
                f.write(f"{key}={value}\n")


def build(
    settings: Settings | None = None,
    executor_type: str = "container",
    name: str | None = None,
    runtime: str = "podman",
    network: str = "",
    state_dir: Path | None = None,
) -> ExecutorApp:
    if os.path.basename(runtime) not in RUNTIMES:
        raise PlatformError(f"--runtime: {runtime!r} is not one of {', '.join(RUNTIMES)}")
    program = need(runtime, f"the container executor runs containers with {runtime}")
    app = ExecutorApp(executor_type, name, settings=settings)
    state = state_dir or default_state_dir("container", app.settings.colony, app.name)
    owner = f"{app.settings.colony}/{app.name}"
    containers = _Containers(ContainerRuntime(program, owner, network), state)
    app.identity = IdentityFile(state / "executor-id")
    app.resumable = containers

    @app.handler(contract.FUNC_NAME)
    async def execute(ctx: ProcessContext) -> list[Any]:
        call = contract.parse(ctx.process)
        name = contract.scratch_name(call)
        workdir = containers.workdir(name)
        rt = containers.runtime
        try:
            started = time.monotonic()
            tail = contract.LogTail()
            if ctx.resumed and await rt.exists(name):
                ctx.log(f"[executor] taken back after a restart: following container {name}")
                await rt.follow(ctx, name, tail)
                code, oom = await rt.ended(name)
            else:
                _prepare(workdir, call)
                code = await rt.run(ctx, call, name, workdir, tail)
                code, oom = await rt.outcome(name, code)
            if code != 0:
                oom = oom or (workdir / "oom").exists()  # conmon's sign on cgroup v1
                error = contract.failure(code, tail, oom=oom, what="the container")
                limit = call.limits.time_limit_s
                if not oom and limit and time.monotonic() - started >= limit:
                    error = f"the container ran past its time limit of {limit} s and was killed"
                raise PlatformError(error)
            max_bytes = request_limit(ctx.client.nc.max_payload)
            return contract.read_output(str(workdir / "out" / OUTPUT_FILE), max_bytes)
        finally:
            await finish_anyway(rt.remove(name))
            remove_tree(workdir)

    return app
