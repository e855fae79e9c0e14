"""The Slurm executor: each ``execute`` process runs as one batch job of a Slurm cluster.

    colonies executor start slurm [--partition P] [--account A] [--image-runtime RUNTIME]

It runs where ``sbatch`` works (an HPC login node) and follows Colonies' ``execute`` contract (see
:mod:`colonyos.executors.contract`), so Colonies' container specs run unchanged:

* each process gets a directory under the state directory, holding an sbatch script (job name
  ``colonies-<process id>-<attempt>``; nodes, tasks per node, CPUs, memory, GPUs and time from
  the spec's conditions), its environment (a file only its owner reads, sourced by the script:
  the job is submitted with ``--export=NONE``, so nothing of the executor's environment goes
  with it), the job's stdout and stderr (two files), its ``$COLONIES_INPUT`` and
  ``$COLONIES_OUTPUT`` and its exit code, which the script writes as it ends (so the result
  outlives Slurm's memory of the job);
* the command runs in the image through ``--image-runtime``: ``none`` (the image is not used:
  ``/bin/sh -c`` on the node), ``podman`` (``srun podman run --init``), ``apptainer`` or
  ``singularity`` (``srun apptainer exec docker://IMAGE``);
* the job is followed with ``scontrol`` (``sacct`` needs an accounting database that many
  clusters lack), its two files are tailed into the process log as they grow, and at its end exit
  code 0 closes the process with the output file's JSON, anything else fails it with the code and
  the last lines of stderr (a job cancelled, timed out or lost with its node says so);
* a cancel, a ``maxexectime`` past, or the executor stopped now ``scancel`` the job at once;
* killed outright, the executor leaves its jobs running; started again from the same state
  directory it follows those still its own (their ids are in its journal) and cancels the rest.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from colonyos.config import Settings
from colonyos.executor import ExecutorApp, ProcessContext
from colonyos.limits import request_limit
from colonyos.resume import IdentityFile

from . import contract
from .platform import PlatformError, command, default_state_dir, finish_anyway, need, remove_tree

__all__ = ["IMAGE_RUNTIMES", "Slurm", "build", "script"]

IMAGE_RUNTIMES = ("none", "podman", "apptainer", "singularity")
# Where a process finds its own directory inside a container.
MOUNT = "/colonies"
OUTPUT_FILE = "output.json"
INPUT_FILE = "input.json"
# The process's environment, sourced by the job. Not a program's name: srun with no PATH
# takes a file of its program's name in the job's directory.
ENV_FILE = "process.env"
# How often a job's files are read (its end shows there first: its exit code file), and how
# often Slurm is asked about it (an end without that file: cancelled, timed out, lost). Slurm's
# controller serves every user of the cluster: it is asked seldom.
POLL_S = 0.25
ASK_EVERY_S = 2.0
# How long a job killed by a signal may take to say why (COMPLETING, then its end state).
_SETTLE_S = 5.0
# Job states after which a job runs no more (scontrol's words).
_ENDED = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "TIMEOUT",
}
_IN_WORDS = {
    "CANCELLED": "was cancelled (scancel, or by the cluster's administrators)",
    "TIMEOUT": "ran past its time limit and was stopped by Slurm",
    "NODE_FAIL": "was lost: a node it ran on failed",
    "OUT_OF_MEMORY": "was killed for using more memory than its limit (out of memory)",
    "BOOT_FAIL": "could not start: its node failed to boot",
    "DEADLINE": "missed its deadline and was stopped by Slurm",
    "PREEMPTED": "was preempted by Slurm",
}
# srun inside the job: the job's environment for its tasks (a job submitted with --export=NONE
# would otherwise give them none, not even PATH).
_SRUN = ("srun", "--export=ALL")
# The variables of the executor's environment that configure each image runtime.
_RUNTIME_ENV = {
    "podman": ("CONTAINERS_",),
    "apptainer": ("APPTAINER_",),
    "singularity": ("SINGULARITY_",),
}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True, slots=True)
class Options:
    partition: str = ""
    account: str = ""
    image_runtime: str = "none"


def _time_limit(seconds: int) -> str:
    """Slurm's ``--time`` in whole minutes, rounded up (Slurm counts no finer)."""
    return str(max(1, math.ceil(seconds / 60)))


def _run_lines(call: contract.Execute, name: str, workdir: Path, runtime: str) -> list[str]:
    """The lines of the batch script that run the process's command in its image; ``$?`` is
    its exit code after them."""
    sh = shlex.join(call.argv)
    if runtime == "none":
        return [sh]
    keys = [*call.env, contract.PROCESS_ID_ENV, contract.INPUT_ENV, contract.OUTPUT_ENV]
    # The runtime's own settings from the executor's environment (CONTAINERS_CONF, ...), for
    # the runtime alone: the container gets the process's environment only.
    prefixes = _RUNTIME_ENV[runtime]
    own = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith(prefixes)]
    env = ["env", *own] if own else []
    if runtime == "podman":
        argv = [*_SRUN, "--ntasks=1", *env, "podman", "run", "--rm", "--init", "--name", name]
        argv += ["--pull", "never", "--volume", f"{workdir / 'out'}:{MOUNT}"]
        for key in keys:  # each taken from the environment the script sourced
            argv += ["--env", key]
        remove = shlex.join([*env, "podman", "rm", "--force", "--time", "0", "--ignore", name])
        return [
            "# scancel stops podman's client, not its container (conmon runs outside the job's",
            "# processes): the script removes the container itself.",
            f"remove_container() {{ {remove} >/dev/null 2>&1; }}",
            "trap 'remove_container; exit 143' TERM INT",
            shlex.join([*argv, call.image, *call.argv]) + " &",
            'wait "$!"',
        ]
    argv = [*_SRUN, *env, runtime, "exec", "--cleanenv", "--env-file", str(workdir / ENV_FILE)]
    argv += ["--bind", f"{workdir / 'out'}:{MOUNT}", f"docker://{call.image}", *call.argv]
    return [shlex.join(argv)]


def script(call: contract.Execute, workdir: Path, options: Options) -> str:
    """The sbatch script of one process (its directory is ``workdir``)."""
    name = contract.scratch_name(call)
    limits = call.limits
    head = [
        f"--job-name={name}",
        f"--output={workdir / 'stdout'}",
        f"--error={workdir / 'stderr'}",
        f"--chdir={workdir}",
    ]
    if limits.nodes:
        head.append(f"--nodes={limits.nodes}")
    if limits.processes_per_node:
        head.append(f"--ntasks-per-node={limits.processes_per_node}")
    if limits.cpu_millis:
        head.append(f"--cpus-per-task={math.ceil(limits.cpu_millis / 1000)}")
    if limits.mem_bytes:
        head.append(f"--mem={math.ceil(limits.mem_bytes / 2**20)}M")
    if limits.gpus:
        head.append(f"--gres=gpu:{limits.gpus}")
    if limits.time_limit_s:
        head.append(f"--time={_time_limit(limits.time_limit_s)}")
    if options.partition:
        head.append(f"--partition={options.partition}")
    if options.account:
        head.append(f"--account={options.account}")
    exit_file = shlex.quote(str(workdir / "exitcode"))
    lines = [
        "#!/bin/sh",
        *(f"#SBATCH {h}" for h in head),
        "# The process's environment only: sbatch --export=NONE passes none of the executor's.",
        "set -a",
        f". {shlex.quote(str(workdir / ENV_FILE))}",
        "set +a",
        *_run_lines(call, name, workdir, options.image_runtime),
        "code=$?",
        "# The exit code outlives Slurm's memory of the job (MinJobAge).",
        f'printf "%s\\n" "$code" > {exit_file}.tmp && mv {exit_file}.tmp {exit_file}',
        'exit "$code"',
    ]
    return "\n".join(lines) + "\n"


def _prepare(workdir: Path, call: contract.Execute, options: Options) -> None:
    """The process's directory: its script, its output directory (writable by whichever user a
    container runs as) and its environment (readable by this executor's user only)."""
    for key in call.env:
        if not _NAME.match(key):
            raise contract.ContractError(
                f"env: {key!r} is not a variable name a job's shell can set "
                "(letters, digits and _, not starting with a digit)"
            )
    out = workdir / "out"
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o777)
    (out / INPUT_FILE).write_bytes(call.input_json())
    where = MOUNT if options.image_runtime != "none" else str(out)
    env = call.environment(f"{where}/{OUTPUT_FILE}", f"{where}/{INPUT_FILE}")
    fd = os.open(workdir / ENV_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        for key, value in env.items():
            f.write(f"{key}={shlex.quote(value)}\n")
    (workdir / "job.sh").write_text(script(call, workdir, options))


class _Tail:
    """A job's output file, read as it grows, one complete line at a time."""

    def __init__(
        self, path: Path, mark: str, tail: contract.LogTail | None = None, offset: int = 0
    ) -> None:
        self.path = path
        self.mark = mark
        self.tail = tail
        self.offset = offset
        self.partial = b""

    @property
    def logged(self) -> int:
        """How far the file has gone into the log, in whole lines."""
        return self.offset - len(self.partial)

    def read(self, ctx: ProcessContext, *, final: bool = False) -> bool:
        """Its new lines into the log; whether there were any."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return False
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        if final and self.partial:
            lines.append(self.partial)
            self.partial = b""
        for raw in lines:
            line = raw.decode(errors="replace").rstrip("\r")
            ctx.log(self.mark + line)
            if self.tail is not None:
                self.tail.lines.append(line)
        return bool(lines)


@dataclass(frozen=True, slots=True)
class JobState:
    state: str  # scontrol's JobState, or "" once Slurm has forgotten the job
    exit_code: int
    reason: str

    @property
    def ended(self) -> bool:
        return self.state in _ENDED or not self.state


class Slurm:
    """The cluster's commands and this executor's journal of the jobs it submitted."""

    def __init__(self, state_dir: Path, options: Options) -> None:
        self.options = options
        self.jobs = state_dir / "jobs"

    def workdir(self, name: str) -> Path:
        return self.jobs / name

    # -- the journal: one entry per process attempt, its job id once submitted ---------------
    def _entry(self, name: str) -> Path:
        return self.workdir(name) / "job.json"

    def recorded(self, name: str) -> dict[str, Any] | None:
        try:
            value = json.loads(self._entry(name).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def record(self, name: str, call: contract.Execute, job_id: str) -> None:
        entry = self._entry(name)
        tmp = entry.with_suffix(".tmp")
        body = {"process_id": call.process_id, "attempt": call.attempt, "job_id": job_id}
        tmp.write_text(json.dumps(body))
        os.replace(tmp, entry)

    def forget(self, name: str) -> None:
        remove_tree(self.workdir(name))

    async def held(self) -> list[tuple[str, int]]:
        out = []
        for entry in sorted(self.jobs.glob("colonies-*/job.json")):
            job = self.recorded(entry.parent.name)
            if job is not None:
                out.append((str(job["process_id"]), int(job["attempt"])))
        return out

    async def abandon(self, process_id: str, attempt: int) -> None:
        name = contract.attempt_name(process_id, attempt)
        job = self.recorded(name)
        job_id = str(job["job_id"]) if job else ""
        if job is not None and not job_id:
            job_id = await self.named(name)
        if job_id:
            await self.cancel(job_id)
        self.forget(name)

    # -- the cluster ---------------------------------------------------------------------
    async def submit(self, workdir: Path) -> str:
        done = await command(
            "sbatch", "--parsable", "--export=NONE", str(workdir / "job.sh"), cwd=str(workdir)
        )
        job_id = done.stdout.strip().split(";")[0]
        if done.returncode != 0 or not job_id.isdigit():
            raise PlatformError(f"sbatch refused the job: {done.why()}")
        return job_id

    async def named(self, name: str) -> str:
        """The id of the job of this name that Slurm knows, if any (submitted by a run that
        was killed before it wrote the id down)."""
        done = await command("squeue", "-h", "-t", "all", "--name", name, "-o", "%i")
        ids = done.stdout.split()
        return ids[-1] if done.returncode == 0 and ids else ""

    async def state(self, job_id: str) -> JobState | None:
        """What ``scontrol`` says of the job; a state of "" once Slurm has forgotten it, None
        if Slurm did not answer."""
        done = await command("scontrol", "show", "job", "-o", job_id)
        if done.returncode != 0:
            if "Invalid job id" in done.stderr:
                return JobState("", 0, "")
            return None
        fields = dict(f.split("=", 1) for f in done.stdout.split() if "=" in f)
        code, _, _signal = fields.get("ExitCode", "0:0").partition(":")
        return JobState(
            fields.get("JobState", ""),
            int(code) if code.isdigit() else 0,
            fields.get("Reason", ""),
        )

    async def cancel(self, job_id: str) -> None:
        await command("scancel", job_id)

    async def image_missing(self, image: str) -> str:
        """Why the image cannot run (podman has no such image here), else ""."""
        if self.options.image_runtime != "podman":
            return ""
        done = await command("podman", "image", "exists", image)
        if done.returncode == 0:
            return ""
        return (
            f"the image {image!r} is not on this machine (podman image exists said "
            f"{done.why() if done.returncode != 1 else 'no'}): "
            "pull it first; Slurm jobs do not pull images"
        )


async def _follow(
    ctx: ProcessContext, slurm: Slurm, job_id: str, workdir: Path, tail: contract.LogTail
) -> JobState:
    """The job's files into the log until it ends; how it ended. How far they went into the
    log is kept in ``logged`` once sent, so that a run taking the job back after a restart
    goes on from there (a line sent just before a kill may come twice; none is lost)."""
    marks = workdir / "logged"
    try:
        out, err = (int(n) for n in marks.read_text().split())
    except (FileNotFoundError, ValueError):
        out = err = 0
    files = [
        _Tail(workdir / "stdout", contract.STDOUT_MARK, offset=out),
        _Tail(workdir / "stderr", contract.STDERR_MARK, tail, offset=err),
    ]
    said = ""
    next_ask = 0.0
    while True:
        new = [f.read(ctx) for f in files]  # both, always
        if any(new):
            await ctx.flush()
            marks.write_text(" ".join(str(f.logged) for f in files))
        if (workdir / "exitcode").exists():
            state = JobState("COMPLETED", 0, "")
            if job_id and _signalled(workdir):
                # Killed by a signal: by Slurm (scancel, its time limit) or not, which only
                # Slurm can tell, once the job has settled.
                state = await _settled(slurm, job_id) or state
            break
        known = None
        if job_id and time.monotonic() >= next_ask:
            known = await slurm.state(job_id)
            next_ask = time.monotonic() + ASK_EVERY_S
        if known is not None:
            if known.state != said and known.state in ("PENDING", "RUNNING"):
                pending = known.state == "PENDING" and known.reason not in ("", "None")
                why = f" ({known.reason})" if pending else ""
                ctx.log(f"[executor] Slurm job {job_id} is {known.state}{why}")
                said = known.state
            if known.ended:
                state = known
                break
        await asyncio.sleep(POLL_S)  # sleep-ok: Slurm says nothing when a job ends; poll it
    for f in files:
        f.read(ctx, final=True)
    return state


def _exit_code(workdir: Path) -> int | None:
    try:
        return int((workdir / "exitcode").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _signalled(workdir: Path) -> bool:
    """Did the command end by a signal (the shell's exit code 128 + N)?"""
    code = _exit_code(workdir)
    return code is not None and code > 128


async def _settled(slurm: Slurm, job_id: str) -> JobState | None:
    """How Slurm says the job ended, once it does (a job is COMPLETING for a moment after its
    script ends); None if it does not say within a few seconds."""
    deadline = time.monotonic() + _SETTLE_S
    while time.monotonic() < deadline:
        known = await slurm.state(job_id)
        if known is not None and known.state and known.ended:
            return known
        await asyncio.sleep(POLL_S)  # sleep-ok: Slurm says nothing when a job settles; poll it
    return None


def _outcome(job_id: str, ended: JobState, workdir: Path, tail: contract.LogTail) -> int:
    """The exit code of the job's command; PlatformError if the job ended without one, or
    Slurm ended it (cancelled, past its time limit: the command's own code then is only the
    signal's)."""
    words = _IN_WORDS.get(ended.state)
    code = _exit_code(workdir)
    if code is not None and words is None:
        return code
    if words is None:
        state = ended.state or "forgotten by Slurm"
        words = f"ended ({state}) without its exit code"
        if ended.state in ("COMPLETED", "FAILED"):
            words = f"ended {ended.state} with exit code {ended.exit_code}, before its command did"
    error = f"the Slurm job {job_id} {words}"
    raise PlatformError(f"{error}: {tail}" if tail.lines else error)


def build(
    settings: Settings | None = None,
    executor_type: str = "slurm",
    name: str | None = None,
    partition: str = "",
    account: str = "",
    image_runtime: str = "none",
    state_dir: Path | None = None,
) -> ExecutorApp:
    if image_runtime not in IMAGE_RUNTIMES:
        raise PlatformError(
            f"--image-runtime: {image_runtime!r} is not one of {', '.join(IMAGE_RUNTIMES)}"
        )
    for program in ("sbatch", "squeue", "scontrol", "scancel"):
        need(program, "the Slurm executor submits and follows jobs with Slurm's commands")
    if image_runtime != "none":
        need(image_runtime, f"--image-runtime {image_runtime} runs each job's image with it")
    app = ExecutorApp(executor_type, name, settings=settings)
    state = state_dir or default_state_dir("slurm", app.settings.colony, app.name)
    slurm = Slurm(state, Options(partition, account, image_runtime))
    app.identity = IdentityFile(state / "executor-id")
    app.resumable = slurm

    @app.handler(contract.FUNC_NAME)
    async def execute(ctx: ProcessContext) -> list[Any]:
        call = contract.parse(ctx.process)
        name = contract.scratch_name(call)
        workdir = slurm.workdir(name)
        job = slurm.recorded(name)
        job_id = str(job["job_id"]) if job else ""
        if job is not None and not job_id:
            job_id = await slurm.named(name)  # the earlier run was killed as it submitted
        # Or its job ended meanwhile and Slurm has forgotten it: its result is here.
        ended_unnoted = job is not None and not job_id and (workdir / "exitcode").exists()
        ended: JobState | None = None
        try:
            if job_id or ended_unnoted:
                ctx.log(
                    f"[executor] taken back after a restart: following Slurm job {job_id or name}"
                )
            else:
                missing = await slurm.image_missing(call.image)
                if missing:
                    raise PlatformError(missing)
                _prepare(workdir, call, slurm.options)
                slurm.record(name, call, "")  # held from now on, even if killed as it submits
                job_id = await slurm.submit(workdir)
                slurm.record(name, call, job_id)
                ctx.log(f"[executor] submitted as Slurm job {job_id}")
            tail = contract.LogTail()
            ended = await _follow(ctx, slurm, job_id, workdir, tail)
            code = _outcome(job_id or name, ended, workdir, tail)
            if code != 0:
                what = f"the Slurm job {job_id or name}"
                raise PlatformError(contract.failure(code, tail, what=what))
            max_bytes = request_limit(ctx.client.nc.max_payload)
            return contract.read_output(str(workdir / "out" / OUTPUT_FILE), max_bytes)
        finally:
            if job_id and (ended is None or not ended.ended):
                await finish_anyway(slurm.cancel(job_id))
            slurm.forget(name)

    return app
