"""The Slurm executor against a real single-node Slurm cluster (tests/executors/conftest.py).

Each job takes about a second from sbatch to its end, so the tests submit several processes at
once to one executor where they can. The pure part (the sbatch script) needs no cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.executor import ExecutorApp
from colonyos.executors import container, contract, slurm
from colonyos.executors.platform import PlatformError
from colonyos.models import GPU, Conditions, FunctionSpec, Process, ProcessState
from colonyos.specs import decode_function_spec, load_workflow_spec

from ..helpers import DATA, EXAMPLES, until
from ..procs import COLONIES, Child
from .conftest import SlurmCluster

CASES = DATA / "colonies-tutorial-cases" / "files" / "colonyos+executors" / "examples"
# Colonies' container specs whose commands a node has (the image is not used with runtime none).
SPECS = ["docker_helloworld.json", "docker_ls.json", "dev_env.json", "lumi_ubuntu_echo.json"]
TYPE = "slurm"


@pytest.fixture
def broker_settings(broker_settings: BrokerSettings) -> BrokerSettings:
    # A killed executor's processes stay its own while it starts again.
    return msgspec.structs.replace(broker_settings, executor_liveness_s=60.0)


def spec(cmd: str, **kw: Any) -> FunctionSpec:
    env = kw.pop("env", {})
    return FunctionSpec(
        func_name="execute",
        kwargs={"docker-image": "localhost/busybox:test", "cmd": cmd},
        env=env,
        conditions=Conditions(executor_type=TYPE),
        **kw,
    )


async def submit(client: Client, *specs: FunctionSpec) -> list[Process]:
    out = []
    for s in specs:
        p = await client.submit(s)
        assert isinstance(p, Process)
        out.append(p)
    return out


async def log_of(client: Client, pid: str) -> list[str]:
    return [e.message async for e in client.logs(pid)]


async def logged(client: Client, pid: str, line: str, timeout: float = 20.0) -> list[str]:
    """Until the process's log holds ``line`` (followed as it grows); its log up to there."""
    seen: list[str] = []
    async with (
        asyncio.timeout(timeout),
        contextlib.aclosing(client.logs(pid, follow=True)) as entries,
    ):
        async for entry in entries:
            seen.append(entry.message)
            if entry.message == line:
                return seen
    raise AssertionError(f"the process ended without logging {line!r}: {seen}")


Runner = Callable[..., Awaitable[ExecutorApp]]


@pytest.fixture
async def executor(
    slurm_cluster: SlurmCluster, settings: Settings, tmp_path: Path
) -> AsyncIterator[Runner]:
    """Start a Slurm executor on this loop; stopped (now) at the end of the test."""
    running: list[tuple[ExecutorApp, asyncio.Task[int]]] = []

    async def start(concurrency: int = 4, executor_type: str = TYPE, **options: Any) -> ExecutorApp:
        options.setdefault("state_dir", tmp_path / f"state-{len(running)}")
        app = slurm.build(settings, executor_type, f"slurm-{len(running)}", **options)
        app.concurrency = concurrency
        task = asyncio.create_task(app.run())
        running.append((app, task))
        await asyncio.wait_for(app.ready.wait(), 15)
        return app

    yield start
    for app, task in running:
        app.stop(force=True)
        await asyncio.wait_for(task, 30)


async def active(cluster: SlurmCluster, name: str) -> list[str]:
    """The jobs of ``name`` still pending or running."""
    done = await asyncio.to_thread(
        subprocess.run,
        ["squeue", "-h", "-n", name, "-o", "%i"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()


# -- the sbatch script ------------------------------------------------------------------------


def call_of(cmd: str = "echo", pid: str = "p" * 64, **conditions: Any) -> contract.Execute:
    process = Process(
        process_id=pid,
        spec=FunctionSpec(
            func_name="execute",
            kwargs={"docker-image": "ubuntu:20.04", "cmd": cmd, "args": ["hi"]},
            conditions=Conditions(executor_type=TYPE, **conditions),
            max_exec_time=30,
        ),
    )
    return contract.parse(process)


def directives(text: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in text.splitlines() if "#SBATCH" in line]


def test_the_script_asks_slurm_for_what_the_conditions_say(tmp_path: Path) -> None:
    call = call_of(
        nodes=2, processes_per_node=4, cpu="1500m", mem="1Gi", gpu=GPU(count=2), walltime=61
    )
    options = slurm.Options(partition="gpu", account="proj1")
    text = slurm.script(call, tmp_path, options)
    assert directives(text) == [
        f"--job-name=colonies-{'p' * 64}-{call.attempt}",
        f"--output={tmp_path}/stdout",
        f"--error={tmp_path}/stderr",
        f"--chdir={tmp_path}",
        "--nodes=2",
        "--ntasks-per-node=4",
        "--cpus-per-task=2",
        "--mem=1024M",
        "--gres=gpu:2",
        "--time=2",  # 61 s, in whole minutes
        "--partition=gpu",
        "--account=proj1",
    ]
    # No walltime: maxexectime is the limit. No conditions: no directives beyond the files.
    assert "--time=1" in directives(slurm.script(call_of(), tmp_path, slurm.Options()))
    bare = directives(slurm.script(call_of(), tmp_path, slurm.Options()))
    assert not any(d.startswith(("--nodes", "--cpus", "--mem", "--gres", "--part")) for d in bare)


def test_the_script_runs_the_image_through_the_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in os.environ:
        if key.startswith(("CONTAINERS_", "APPTAINER_", "SINGULARITY_")):
            monkeypatch.delenv(key)
    # The runtime's settings reach the runtime (not the container); nothing else does.
    monkeypatch.setenv("CONTAINERS_CONF", "/etc/ours.conf")
    monkeypatch.setenv("APPTAINER_CACHEDIR", "/scratch/cache")
    call = call_of()
    for runtime, head in [
        ("none", "/bin/sh -c 'echo hi'"),
        (
            "podman",
            "srun --export=ALL --ntasks=1 env CONTAINERS_CONF=/etc/ours.conf podman run --rm --init "
            "--name colonies-",
        ),
        (
            "apptainer",
            "srun --export=ALL env APPTAINER_CACHEDIR=/scratch/cache apptainer exec --cleanenv",
        ),
        ("singularity", "srun --export=ALL singularity exec --cleanenv --env-file"),
    ]:
        text = slurm.script(call, tmp_path, slurm.Options(image_runtime=runtime))
        (line,) = [x for x in text.splitlines() if x.startswith(head.split()[0])]
        assert line.startswith(head), line
        if runtime != "none":
            assert line.removesuffix(" &").endswith("ubuntu:20.04 /bin/sh -c 'echo hi'"), line


def test_a_missing_sbatch_or_a_wrong_runtime_is_said_at_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, settings: Settings
) -> None:
    with pytest.raises(PlatformError, match="--image-runtime: 'docker' is not one of none,"):
        slurm.build(settings, image_runtime="docker", state_dir=tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PlatformError, match="'sbatch' is not found on PATH: the Slurm executor"):
        slurm.build(settings, state_dir=tmp_path)


def test_the_cli_says_sbatch_is_missing(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}
    argv = [*COLONIES, "executor", "start", "slurm", "--state-dir", str(tmp_path / "s")]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    out = " ".join((done.stdout + done.stderr).split())
    assert "'sbatch' is not found on PATH" in out, out
    assert "Traceback" not in out


# -- against the cluster ----------------------------------------------------------------------


def colonies_spec(path: Path, image: str = "localhost/busybox:test") -> FunctionSpec:
    """Colonies' own spec, for this executor's type (and the test image)."""
    raw = json.loads(path.read_text())
    raw["conditions"]["executortype"] = TYPE
    raw["conditions"].pop("executornames", None)
    raw["kwargs"]["docker-image"] = image
    return decode_function_spec(json.dumps(raw).encode())


async def test_colonies_specs_run_unchanged(client: Client, executor: Runner) -> None:
    processes = await submit(client, *(colonies_spec(CASES / name) for name in SPECS))
    await executor()
    hello, ls, env, lumi = [await client.wait(p.process_id, timeout=60) for p in processes]
    for done in (hello, ls, env, lumi):
        assert done.state is ProcessState.SUCCESS, done.errors
    assert "[stdout] hello world" in await log_of(client, hello.process_id)
    assert "[stdout] hello world" in await log_of(client, lumi.process_id)
    assert "[stdout] bin" in await log_of(client, ls.process_id)
    assert f"[stdout] COLONIES_PROCESS_ID={env.process_id}" in await log_of(client, env.process_id)


async def test_exit_codes_output_and_the_environment(
    client: Client, executor: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLONIES_TEST_SECRET", "s3cr3t-of-the-executor")
    ok, failing, output, env, bad_env = await submit(
        client,
        spec("echo fine"),
        spec("echo partial; echo first problem >&2; echo last problem >&2; exit 3"),
        spec('cat "$COLONIES_INPUT"; echo; echo \'{"answer": 42}\' > "$COLONIES_OUTPUT"'),
        spec("env", env={"GREETING": "hi there", "QUOTED": 'it\'s "$HOME"'}),
        spec("env", env={"OK": "1", "NOT-A-NAME": "x"}),
    )
    await executor()
    refused = await client.wait(bad_env.process_id, timeout=60)
    assert refused.errors == [
        "env: 'NOT-A-NAME' is not a variable name a job's shell can set "
        "(letters, digits and _, not starting with a digit)"
    ]
    done = await client.wait(ok.process_id, timeout=60)
    assert done.state is ProcessState.SUCCESS and done.output == []
    assert "[stdout] fine" in await log_of(client, ok.process_id)

    failed = await client.wait(failing.process_id, timeout=60)
    assert failed.state is ProcessState.FAILED
    (error,) = failed.errors
    assert error.startswith("the Slurm job "), error
    assert error.endswith(" exited with code 3: first problem | last problem"), error
    lines = await log_of(client, failing.process_id)
    assert "[stdout] partial" in lines and "[stderr] last problem" in lines

    out = await client.wait(output.process_id, timeout=60)
    assert out.state is ProcessState.SUCCESS and out.output == [{"answer": 42}]
    assert "[stdout] []" in await log_of(client, output.process_id)  # no input: no parents

    seen = await client.wait(env.process_id, timeout=60)
    assert seen.state is ProcessState.SUCCESS
    lines = await log_of(client, env.process_id)
    assert "[stdout] GREETING=hi there" in lines
    assert '[stdout] QUOTED=it\'s "$HOME"' in lines
    assert f"[stdout] COLONIES_PROCESS_ID={env.process_id}" in lines
    assert not any("s3cr3t" in line or "COLONIES_NATS" in line for line in lines), lines


async def test_output_is_in_the_log_while_the_job_runs(
    client: Client, executor: Runner, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    (p,) = await submit(
        client, spec(f"echo first; while [ ! -e {gate} ]; do sleep 0.1; done; printf second >&2")
    )
    await executor()
    lines = await logged(client, p.process_id, "[stdout] first")
    assert "[stderr] second" not in lines
    gate.touch()
    done = await client.wait(p.process_id, timeout=30)
    assert done.state is ProcessState.SUCCESS, done.errors
    # Its last line, though it has no newline.
    assert "[stderr] second" in await log_of(client, p.process_id)


async def gone(cluster: SlurmCluster, name: str, timeout: float = 10.0) -> None:
    """Until no job of ``name`` is pending or running."""
    async with asyncio.timeout(timeout):
        while await active(cluster, name):
            await asyncio.sleep(0.1)  # sleep-ok: polling squeue under a deadline


async def test_cancel_and_maxexectime_cancel_the_job_at_once(
    client: Client, executor: Runner, slurm_cluster: SlurmCluster
) -> None:
    cancelled, timed, outside = await submit(
        client,
        spec("echo started; sleep 120"),
        spec("echo started; sleep 120", max_exec_time=3, max_retries=0),
        spec("echo started; sleep 120"),
    )
    await executor()
    # Cancelled on the cluster (an administrator's scancel): the process fails saying so.
    await logged(client, outside.process_id, "[stdout] started")
    (job_id,) = await active(slurm_cluster, f"colonies-{outside.process_id}-0")
    await asyncio.to_thread(subprocess.run, ["scancel", job_id], check=True)
    done = await client.wait(outside.process_id, timeout=20)
    assert done.state is ProcessState.FAILED
    (error,) = done.errors
    # Then the job's stderr, where Slurm says so too.
    assert error.startswith(
        f"the Slurm job {job_id} was cancelled (scancel, or by the cluster's administrators): "
    ), error
    assert f"JOB {job_id} ON localhost CANCELLED" in error, error

    await logged(client, cancelled.process_id, "[stdout] started")
    name = f"colonies-{cancelled.process_id}-0"
    assert await active(slurm_cluster, name)
    await client.cancel(cancelled.process_id)
    await gone(slurm_cluster, name)
    done = await client.wait(cancelled.process_id, timeout=10)
    assert done.state is ProcessState.CANCELLED

    done = await client.wait(timed.process_id, timeout=30)
    assert done.state is ProcessState.FAILED
    lines = await log_of(client, timed.process_id)
    assert any(line.startswith("[executor] submitted as Slurm job ") for line in lines), lines
    await gone(slurm_cluster, f"colonies-{timed.process_id}-0")


def test_a_job_slurm_ended_is_said_so_even_if_its_command_left_an_exit_code(
    tmp_path: Path,
) -> None:
    """A command that handles SIGTERM (or whose shell outlives it) ends with a code of its own
    (143) as Slurm cancels the job: the process fails as cancelled, which only Slurm can tell;
    a job Slurm says completed keeps its command's code."""
    (tmp_path / "exitcode").write_text("143\n")
    tail = contract.LogTail()
    with pytest.raises(PlatformError, match=r"^the Slurm job 7 was cancelled"):
        slurm._outcome("7", slurm.JobState("CANCELLED", 0, ""), tmp_path, tail)
    assert slurm._outcome("7", slurm.JobState("COMPLETED", 0, ""), tmp_path, tail) == 143


# An sbatch that submits, then does not answer: a kill in that window finds the job submitted
# and its id not yet written down.
SBATCH_HANGS = """#!/bin/sh
{sbatch} "$@"
touch {submitted}
while :; do sleep 1; done
"""
# And one whose job Slurm cannot find by its name afterwards (as once it has forgotten it).
SBATCH_HANGS_UNNAMED = SBATCH_HANGS.replace('"$@"', '--job-name=unnamed "$@"')


@pytest.mark.parametrize("when", ["running", "submitting", "submitting, ended, forgotten"])
async def test_a_killed_executor_started_again_follows_its_job(
    client: Client,
    settings: Settings,
    slurm_cluster: SlurmCluster,
    tmp_path: Path,
    when: str,
) -> None:
    gate = tmp_path / "gate"
    forgotten = when.endswith("forgotten")
    if forgotten:
        gate.touch()  # the job runs to its end while no executor is there
    (p,) = await submit(
        client,
        spec(
            f"echo started; while [ ! -e {gate} ]; do sleep 0.1; done; "
            'echo finished; echo \'["once"]\' > "$COLONIES_OUTPUT"'
        ),
    )
    env = {
        "COLONIES_NATS_URL": settings.nats_url,
        "COLONIES_PREFIX": settings.prefix,
        "COLONIES_COLONY_NAME": settings.colony,
    }
    argv = ["executor", "start", "slurm", "--name", "slurm-r", "--state-dir", str(tmp_path / "s")]
    first_env = dict(env)
    submitted = tmp_path / "submitted"
    if when.startswith("submitting"):
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        wrapper = bin_dir / "sbatch"
        hangs = SBATCH_HANGS if when == "submitting" else SBATCH_HANGS_UNNAMED
        wrapper.write_text(hangs.format(sbatch=shutil.which("sbatch"), submitted=submitted))
        wrapper.chmod(0o755)
        first_env["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    children = [
        Child(argv, tmp_path / f"executor-{i}.log", e) for i, e in enumerate([first_env, env])
    ]
    name = f"colonies-{p.process_id}-0"
    try:
        children[0].start()
        if when.startswith("submitting"):
            await until(submitted.exists, timeout=20)
        else:
            await logged(client, p.process_id, "[stdout] started")
            # Once the executor has noted the line as sent, SIGKILL: its job goes on running.
            marks = tmp_path / "s" / "jobs" / name / "logged"
            await until(lambda: marks.exists() and marks.read_text() != "0 0", timeout=10)
        children[0].kill()
        if forgotten:
            exit_file = tmp_path / "s" / "jobs" / name / "exitcode"
            await until(exit_file.exists, timeout=20)  # it ended; squeue knows no such name
            job = name
        else:
            (job,) = await active(slurm_cluster, name)  # still running
        children[1].start()
        await logged(
            client,
            p.process_id,
            f"[executor] taken back after a restart: following Slurm job {job}",
        )
        gate.touch()
        done = await client.wait(p.process_id, timeout=30)
        assert done.state is ProcessState.SUCCESS, done.errors
        assert done.output == ["once"]
        assert done.assignments == 1
        lines = await log_of(client, p.process_id)
        assert lines.count("[stdout] started") == 1, lines  # not logged again by the second run
        assert lines.count("[stdout] finished") == 1, lines
    finally:
        for child in children:
            child.kill()
        gate.touch()  # the job ends, whatever happened
    # One job in all, submitted by the first run and followed by the second.
    jobs = await asyncio.to_thread(
        subprocess.run,
        ["squeue", "-h", "-t", "all", "-o", "%j"],
        capture_output=True,
        text=True,
        check=True,
    )
    ours = [j for j in jobs.stdout.split() if j.startswith(f"colonies-{p.process_id}-")]
    if forgotten:
        assert ours == [] and jobs.stdout.split().count("unnamed") == 1, jobs.stdout
    else:
        assert ours == [name]


async def test_a_job_slurm_refuses_or_a_missing_image_fails_at_once(
    client: Client, executor: Runner
) -> None:
    (refused,) = await submit(client, spec("echo never"))
    await executor(partition="nosuch")
    done = await client.wait(refused.process_id, timeout=30)
    assert done.state is ProcessState.FAILED
    (error,) = done.errors
    assert error.startswith("sbatch refused the job: "), error
    assert "invalid partition" in error.lower(), error
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed: the missing image is not checked")
    missing = FunctionSpec(
        func_name="execute",
        kwargs={"docker-image": "localhost/nope:1", "cmd": "echo never"},
        conditions=Conditions(executor_type="slurm-podman"),
    )
    (p,) = await submit(client, missing)
    await executor(image_runtime="podman", executor_type="slurm-podman")
    done = await client.wait(p.process_id, timeout=30)
    assert done.state is ProcessState.FAILED
    assert done.errors == [
        "the image 'localhost/nope:1' is not on this machine (podman image exists said no): "
        "pull it first; Slurm jobs do not pull images"
    ]


def test_the_executor_imports_nothing_heavy() -> None:
    """On a login node it needs the project's core only: no sqlite_utils, rich or typer."""
    code = (
        "import sys, colonyos.executors.slurm\n"
        "heavy = ('sqlite_utils', 'rich', 'typer', 'colonyos.broker', 'sqlite3')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


async def test_a_job_submitted_as_its_executor_was_killed_is_found_by_name(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    # As a run killed after it noted the process in its journal but before sbatch answered.
    jobs = slurm.Slurm(tmp_path / "state", slurm.Options())
    call = call_of("echo started; sleep 120; echo", pid=uuid.uuid4().hex * 2)
    name = contract.scratch_name(call)
    workdir = jobs.workdir(name)
    slurm._prepare(workdir, call, jobs.options)
    jobs.record(name, call, "")
    job_id = await jobs.submit(workdir)
    assert await jobs.held() == [(call.process_id, 0)]
    assert await jobs.named(name) == job_id
    stdout = workdir / "stdout"
    await until(lambda: stdout.exists() and "started" in stdout.read_text(), timeout=20)
    await jobs.abandon(call.process_id, 0)
    await gone(slurm_cluster, name)
    assert not workdir.exists() and await jobs.held() == []


async def containers_named(name: str) -> list[str]:
    done = await asyncio.to_thread(
        subprocess.run,
        ["podman", "ps", "--all", "--filter", f"name={name}", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()


async def test_podman_runs_each_job_in_its_image(
    client: Client, executor: Runner, slurm_cluster: SlurmCluster, podman_image: str
) -> None:
    hello = colonies_spec(CASES / "docker_helloworld.json", podman_image)
    inside, held = [
        msgspec.structs.replace(s, kwargs={**s.kwargs, "docker-image": podman_image})
        for s in (
            spec(
                'ls /colonies; echo "$GREETING"; echo \'["in"]\' > "$COLONIES_OUTPUT"',
                env={"GREETING": "hi there"},
            ),
            spec("echo started; sleep 120"),
        )
    ]
    processes = await submit(client, hello, inside, held)
    for p in processes:
        assert p.spec.conditions.executor_type == TYPE
    await executor(image_runtime="podman")
    done = await client.wait(processes[0].process_id, timeout=60)
    assert done.state is ProcessState.SUCCESS, done.errors
    assert "[stdout] hello world" in await log_of(client, done.process_id)
    done = await client.wait(processes[1].process_id, timeout=60)
    assert done.state is ProcessState.SUCCESS, done.errors
    assert done.output == ["in"]
    lines = await log_of(client, done.process_id)
    # /colonies is the container's own directory: not on the host, so this ran in the image.
    assert "[stdout] input.json" in lines and "[stdout] hi there" in lines, lines
    # A cancel stops the container with the job (podman run --init forwards scancel's SIGTERM).
    await logged(client, processes[2].process_id, "[stdout] started")
    name = f"colonies-{processes[2].process_id}-0"
    assert await containers_named(name) == [name]
    await client.cancel(processes[2].process_id)
    await gone(slurm_cluster, name)
    async with asyncio.timeout(10):
        while await containers_named(name):
            await asyncio.sleep(0.1)  # sleep-ok: polling podman under a deadline


async def test_a_workflow_passes_outputs_from_a_container_to_a_slurm_job(
    client: Client,
    executor: Runner,
    settings: Settings,
    podman_image: str,
    tmp_path: Path,
) -> None:
    """The walk-through of docs/executors.md: the same contract on two platforms, a container's
    output the input of a Slurm job."""
    raw = json.loads((EXAMPLES / "container-slurm-workflow.json").read_text())
    for node in raw:
        node["kwargs"]["docker-image"] = podman_image
    workflow, warnings = load_workflow_spec(json.dumps(raw))
    assert warnings == []
    graph = await client.submit_workflow(workflow)
    containers = container.build(settings, "container", "container-0", state_dir=tmp_path / "c")
    task = asyncio.create_task(containers.run())
    try:
        await executor()
        done = await client.wait(graph.nodes["report"], timeout=60)
        assert done.state is ProcessState.SUCCESS, done.errors
        assert done.output == ["reported"]
        out = [x for x in await log_of(client, done.process_id) if x.startswith("[stdout]")]
        assert out == ["[stdout] the container measured", '[stdout] [{"reading": 21}]']
    finally:
        containers.stop(force=True)
        await asyncio.wait_for(task, 30)
