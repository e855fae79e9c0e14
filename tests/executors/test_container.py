"""The container executor against real podman: Colonies' ``execute`` specs run as containers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from colonyos.client import Client
from colonyos.config import Settings
from colonyos.executor import ExecutorApp
from colonyos.executors import container
from colonyos.models import (
    Conditions,
    FunctionSpec,
    Process,
    ProcessGraph,
    ProcessState,
    WorkflowSpec,
)
from tests.helpers import DATA, EXAMPLES
from tests.procs import Child, said

TUTORIAL = DATA / "colonies-tutorial-cases" / "files"

Start = Callable[..., Awaitable[ExecutorApp]]


@pytest.fixture
async def start(
    podman_image: str, client: Client, settings: Settings, tmp_path: Path
) -> AsyncIterator[Start]:
    """Start container executors in this test, on its broker (stopped now at its end)."""
    running: list[tuple[ExecutorApp, asyncio.Task[int]]] = []

    async def start(name: str = "box", executor_type: str = "container", **kw: Any) -> ExecutorApp:
        app = container.build(
            settings, executor_type, name, network="none", state_dir=tmp_path / name, **kw
        )
        app.concurrency = 4
        task = asyncio.create_task(app.run())
        running.append((app, task))
        async with asyncio.timeout(20):
            await app.ready.wait()
        return app

    yield start
    for app, task in running:
        app.stop(force=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 20)


def execute(image: str, cmd: str, *args: str, **spec: Any) -> FunctionSpec:
    spec.setdefault("conditions", Conditions(executor_type="container"))
    kwargs = {"docker-image": image, "cmd": cmd, "args": list(args)}
    return FunctionSpec(func_name="execute", kwargs=kwargs, **spec)


async def submitted(client: Client, spec: FunctionSpec) -> Process:
    p = await client.submit(spec)
    assert isinstance(p, Process)
    return p


async def log_of(client: Client, pid: str) -> list[str]:
    return [line.message async for line in client.logs(pid)]


def containers_of(pid: str) -> list[str]:
    done = subprocess.run(
        ["podman", "ps", "--all", "--filter", f"name=colonies-{pid}", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()


async def gone(pid: str, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while containers_of(pid):
            await asyncio.sleep(0.1)  # sleep-ok: polling podman under a deadline


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("colonyos+tutorials/01-getting-started/echo.json", ["[stdout] hello world"]),
        ("colonyos+executors/examples/docker_helloworld.json", ["[stdout] hello world"]),
        ("colonyos+executors/examples/docker_ls.json", ["[stdout] bin"]),
    ],
)
async def test_colonies_container_specs_run_unchanged(
    client: Client, start: Start, podman_image: str, path: str, expected: list[str]
) -> None:
    """Colonies' own specs, with only the image made local (no registry is reachable)."""
    raw = json.loads((TUTORIAL / path).read_text())
    raw["kwargs"]["docker-image"] = podman_image
    spec = msgspec.convert(raw, FunctionSpec)
    await start(spec.conditions.executor_names[0], spec.conditions.executor_type)
    p = await submitted(client, spec)
    done = await client.wait(p.process_id, timeout=30)
    assert done.state is ProcessState.SUCCESS, done.errors
    log = await log_of(client, p.process_id)
    assert all(line in log for line in expected), log
    await gone(p.process_id)


async def test_lines_stream_while_it_runs_and_the_output_file_is_the_output(
    client: Client, start: Start, podman_image: str, tmp_path: Path
) -> None:
    await start()
    script = (
        "echo first; echo warming up >&2; "
        "while [ ! -f /colonies/go ]; do sleep 0.05; done; "
        'printf \'{"id": "%s", "n": [1, 2]}\' "$COLONIES_PROCESS_ID" > "$COLONIES_OUTPUT"'
    )
    p = await submitted(client, execute(podman_image, script))
    async with asyncio.timeout(30):
        while "[stdout] first" not in await log_of(client, p.process_id):
            await asyncio.sleep(0.1)  # sleep-ok: polling the log under a deadline
    # Still running: the line came as it was written.
    assert (await client.get(p.process_id)).state is ProcessState.RUNNING
    (tmp_path / "box" / "work" / f"colonies-{p.process_id}-0" / "out" / "go").touch()
    done = await client.wait(p.process_id, timeout=30)
    assert done.state is ProcessState.SUCCESS, done.errors
    assert done.output == [{"id": p.process_id, "n": [1, 2]}]
    assert "[stderr] warming up" in await log_of(client, p.process_id)
    await gone(p.process_id)
    assert not (tmp_path / "box" / "work" / f"colonies-{p.process_id}-0").exists()


async def test_a_failing_command_fails_with_its_exit_code_and_stderr(
    client: Client, start: Start, podman_image: str
) -> None:
    await start()
    p = await submitted(client, execute(podman_image, "echo out; echo broken >&2; exit 3"))
    done = await client.wait(p.process_id, timeout=30)
    assert done.state is ProcessState.FAILED
    assert done.errors == ["the container exited with code 3: broken"]
    await gone(p.process_id)


async def test_init_cmd_runs_first_and_a_failing_one_stops_the_command(
    client: Client, start: Start, podman_image: str
) -> None:
    await start()
    spec = execute(podman_image, "cat /tmp/ready")
    spec.kwargs["init-cmd"] = "echo prepared > /tmp/ready"
    ok = await submitted(client, spec)
    bad_spec = execute(podman_image, "echo never")
    bad_spec.kwargs["init-cmd"] = "echo no >&2; exit 9"
    bad = await submitted(client, bad_spec)
    done = await client.wait(ok.process_id, timeout=30)
    assert done.state is ProcessState.SUCCESS, done.errors
    assert "[stdout] prepared" in await log_of(client, ok.process_id)
    failed = await client.wait(bad.process_id, timeout=30)
    assert failed.errors == ["the container exited with code 9: no"]
    assert "[stdout] never" not in await log_of(client, bad.process_id)


async def test_the_environment_is_the_specs_and_never_the_executors(
    client: Client, start: Start, podman_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXECUTOR_SECRET", "hunter2")
    await start()
    p = await submitted(client, execute(podman_image, "env", env={"GREETING": "hi there"}))
    done = await client.wait(p.process_id, timeout=30)
    assert done.state is ProcessState.SUCCESS, done.errors
    env = {line.removeprefix("[stdout] ") for line in await log_of(client, p.process_id)}
    assert {"GREETING=hi there", f"COLONIES_PROCESS_ID={p.process_id}"} <= env
    assert {"COLONIES_OUTPUT=/colonies/output.json", "COLONIES_INPUT=/colonies/input.json"} <= env
    assert not [line for line in env if "hunter2" in line or "NATS" in line], env


async def test_cancel_removes_the_container_at_once(
    client: Client, start: Start, podman_image: str
) -> None:
    await start()
    p = await submitted(client, execute(podman_image, "echo started; sleep 300"))
    async with asyncio.timeout(30):
        while "[stdout] started" not in await log_of(client, p.process_id):
            await asyncio.sleep(0.1)  # sleep-ok: polling the log under a deadline
    assert containers_of(p.process_id)
    await client.cancel(p.process_id)
    await gone(p.process_id, timeout=5)


async def test_maxexectime_removes_the_container(
    client: Client, start: Start, podman_image: str
) -> None:
    await start()
    p = await submitted(client, execute(podman_image, "sleep 300", max_exec_time=1))
    done = await client.wait(p.process_id, timeout=30)
    assert done.state is ProcessState.FAILED
    await gone(p.process_id, timeout=5)


async def test_a_missing_image_fails_in_seconds_naming_it(client: Client, start: Start) -> None:
    await start()
    p = await submitted(client, execute("registry.invalid/no-such-image:1", "true"))
    done = await client.wait(p.process_id, timeout=15)
    assert done.state is ProcessState.FAILED
    (error,) = done.errors
    assert "registry.invalid/no-such-image:1" in error and "could not start" in error, error


async def test_a_container_past_its_memory_is_said_to_be_out_of_memory(
    client: Client, start: Start, podman_image: str
) -> None:
    await start()
    spec = execute(
        podman_image,
        "dd if=/dev/zero of=/dev/null bs=200M count=1",
        conditions=Conditions(executor_type="container", mem="64Mi"),
    )
    p = await submitted(client, spec)
    done = await client.wait(p.process_id, timeout=30)
    assert done.state is ProcessState.FAILED
    assert done.errors == [
        "the container was killed for using more memory than its limit (out of memory)"
    ]


async def test_a_stop_now_removes_its_containers_and_gives_the_processes_back(
    client: Client, start: Start, podman_image: str
) -> None:
    app = await start()
    p = await submitted(client, execute(podman_image, "echo started; sleep 300"))
    async with asyncio.timeout(30):
        while "[stdout] started" not in await log_of(client, p.process_id):
            await asyncio.sleep(0.1)  # sleep-ok: polling the log under a deadline
    app.stop(force=True)
    await gone(p.process_id, timeout=5)
    again = await client.wait_for_state(p.process_id, ProcessState.WAITING, timeout=10)
    assert again.executor_losses == 1


async def test_a_killed_executor_takes_its_running_container_back(
    client: Client, settings: Settings, podman_image: str, tmp_path: Path
) -> None:
    """SIGKILLed, the executor leaves its container running; started again from the same state
    directory, it follows that container to its end: one container, one result. The assign
    request its other slot had parked is ended, so new work goes to the new run at once (not
    to a dead inbox for a liveness window, 30 s)."""
    env = {
        "COLONIES_NATS_URL": settings.nats_url,
        "COLONIES_PREFIX": settings.prefix,
        "COLONIES_COLONY_NAME": settings.colony,
    }
    args = ["executor", "start", "container", "--name", "box", "--network", "none", "-c", "2"]
    args += ["--state-dir", str(tmp_path / "state")]
    first = Child(args, tmp_path / "first.log", env).start()
    try:
        await said(first, "box: waiting for work")
        script = (
            "echo started; while [ ! -f /colonies/go ]; do sleep 0.05; done; "
            "echo '[\"once\"]' > $COLONIES_OUTPUT"
        )
        p = await submitted(client, execute(podman_image, script))
        async with asyncio.timeout(30):
            while "[stdout] started" not in await log_of(client, p.process_id):
                await asyncio.sleep(0.1)  # sleep-ok: polling the log under a deadline
    finally:
        first.kill()
    (name,) = containers_of(p.process_id)
    second = Child(args, tmp_path / "second.log", env).start()
    try:
        await said(second, "box: waiting for work")
        taken = f"[executor] taken back after a restart: following container {name}"
        async with asyncio.timeout(10):
            while taken not in await log_of(client, p.process_id):
                await asyncio.sleep(0.1)  # sleep-ok: polling the log under a deadline
        (tmp_path / "state" / "work" / name / "out" / "go").touch()
        done = await client.wait(p.process_id, timeout=30)
        assert done.state is ProcessState.SUCCESS, done.errors
        assert done.output == ["once"]
        assert done.assignments == 1 and done.executor_losses == 0
        await gone(p.process_id)
        later = await submitted(client, execute(podman_image, "true"))
        assert (await client.wait(later.process_id, timeout=15)).state is ProcessState.SUCCESS
    finally:
        second.stop()


async def test_a_signal_to_the_runtime_s_client_is_not_passed_to_the_container(
    client: Client, settings: Settings, podman_image: str, tmp_path: Path
) -> None:
    """The executor runs each container attached, through the runtime's client. Killed alone
    (its client then orphaned), and that client then told to stop, as a service manager stopping
    the executor's whole group would: the container runs on, to be taken back."""
    env = {
        "COLONIES_NATS_URL": settings.nats_url,
        "COLONIES_PREFIX": settings.prefix,
        "COLONIES_COLONY_NAME": settings.colony,
    }
    args = ["executor", "start", "container", "--name", "box", "--network", "none"]
    args += ["--state-dir", str(tmp_path / "state")]
    first = Child(args, tmp_path / "first.log", env).start()
    p: Process | None = None
    try:
        await said(first, "box: waiting for work")
        p = await submitted(client, execute(podman_image, "echo started; sleep 60"))
        async with asyncio.timeout(30):
            while "[stdout] started" not in await log_of(client, p.process_id):
                await asyncio.sleep(0.1)  # sleep-ok: polling the log under a deadline
        (name,) = containers_of(p.process_id)
        runner = subprocess.run(
            ["pgrep", "-f", f"podman run .*--name {name}"], capture_output=True, text=True
        ).stdout.split()
        assert runner, "the executor's podman run client"
        assert first.proc is not None
        first.proc.kill()  # the executor alone, not its group
        first.proc.wait()
        for pid in runner:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGTERM)
        async with asyncio.timeout(10):
            while subprocess.run(["pgrep", "-f", f"podman run .*--name {name}"]).returncode == 0:
                await asyncio.sleep(0.05)  # sleep-ok: polling the client's end under a deadline
        state = subprocess.run(
            ["podman", "inspect", "--format", "{{.State.Running}}", name],
            capture_output=True,
            text=True,
        ).stdout.strip()
        assert state == "true", "the container was stopped with its runtime's client"
    finally:
        first.kill()
        for name in containers_of(p.process_id) if p is not None else []:
            subprocess.run(["podman", "rm", "--force", "--time", "0", name], capture_output=True)


async def test_a_second_executor_on_the_same_state_directory_is_refused(
    start: Start, settings: Settings, tmp_path: Path
) -> None:
    await start()
    twin = container.build(settings, "container", "box", state_dir=tmp_path / "box")
    with pytest.raises(Exception, match="another executor runs from"):
        await twin.run(burst=True)


async def test_other_funcnames_are_refused_naming_execute(client: Client, start: Start) -> None:
    await start()
    p = await submitted(
        client, FunctionSpec(func_name="train", conditions=Conditions(executor_type="container"))
    )
    done = await client.wait(p.process_id, timeout=15)
    assert done.state is ProcessState.FAILED
    assert "has no function 'train' (it has: execute)" in done.errors[0]


async def test_a_spec_missing_the_image_fails_at_once_naming_the_field(
    client: Client, start: Start
) -> None:
    await start()
    spec = FunctionSpec(
        func_name="execute",
        kwargs={"cmd": "ls"},
        conditions=Conditions(executor_type="container"),
    )
    p = await submitted(client, spec)
    done = await client.wait(p.process_id, timeout=15)
    assert done.errors == [
        "kwargs.docker-image: required, the image to run (a string such as 'ubuntu:20.04')"
    ]


async def test_a_workflows_nodes_pass_outputs_through_their_files(
    client: Client, start: Start, podman_image: str
) -> None:
    """A node's output is the next one's input: written to ``$COLONIES_OUTPUT`` by one
    container, read from ``$COLONIES_INPUT`` by the next."""
    await start()
    make = execute(podman_image, "echo 21 > $COLONIES_OUTPUT", node_name="make")
    double = execute(
        podman_image,
        'v=$(cat "$COLONIES_INPUT"); v=${v#[}; v=${v%]}; echo "[$((v * 2))]" > $COLONIES_OUTPUT',
        node_name="double",
    )
    double.conditions.dependencies = ["make"]
    graph = await client.submit_workflow(WorkflowSpec(function_specs=[make, double]))
    assert isinstance(graph, ProcessGraph)
    done = await client.graph_wait(graph.process_graph_id, timeout=60)
    assert done.state is ProcessState.SUCCESS
    last = [p for p in await client.graph_processes(done) if p.spec.node_name == "double"]
    assert last[0].input == [21] and last[0].output == [42]


async def test_several_run_at_once_up_to_its_concurrency(
    client: Client, start: Start, podman_image: str, tmp_path: Path
) -> None:
    await start()  # four at once
    gate = "while [ ! -f /colonies/go ]; do sleep 0.05; done"
    ps = [await submitted(client, execute(podman_image, gate)) for _ in range(3)]
    for p in ps:
        await client.wait_for_state(p.process_id, ProcessState.RUNNING, timeout=30)
    async with asyncio.timeout(30):
        while sum(bool(containers_of(p.process_id)) for p in ps) < 3:
            await asyncio.sleep(0.1)  # sleep-ok: polling podman under a deadline
    for p in ps:
        (tmp_path / "box" / "work" / f"colonies-{p.process_id}-0" / "out" / "go").touch()
    for p in ps:
        assert (await client.wait(p.process_id, timeout=30)).state is ProcessState.SUCCESS


def _docker_is_podman() -> bool:
    try:
        return "podman" in Path("/usr/bin/docker").read_text(errors="replace")[:2000]
    except OSError:
        return False


@pytest.mark.skipif(
    not _docker_is_podman(),
    reason="no docker command line with an engine here (podman-docker's /usr/bin/docker is "
    "what the test machines have)",
)
async def test_the_docker_command_line_runs_it_the_same_way(
    client: Client, start: Start, podman_image: str
) -> None:
    """The flags podman alone has (``rm --time 0 --ignore``, ``--timeout``) are left out."""
    await start(runtime="/usr/bin/docker")
    ok = await submitted(
        client, execute(podman_image, "echo '\"hi\"' > $COLONIES_OUTPUT; echo done")
    )
    bad = await submitted(client, execute(podman_image, "echo nope >&2; exit 4", max_exec_time=60))
    done = await client.wait(ok.process_id, timeout=30)
    assert done.state is ProcessState.SUCCESS and done.output == ["hi"], done.errors
    assert "[stdout] done" in await log_of(client, ok.process_id)
    failed = await client.wait(bad.process_id, timeout=30)
    assert failed.errors == ["the container exited with code 4: nope"]
    await gone(ok.process_id)
    await gone(bad.process_id)


async def test_the_readme_example_runs_with_a_local_image(
    client: Client, start: Start, podman_image: str
) -> None:
    raw = json.loads((EXAMPLES / "container.json").read_text())
    raw["kwargs"]["docker-image"] = podman_image
    await start()
    p = await submitted(client, msgspec.convert(raw, FunctionSpec))
    done = await client.wait(p.process_id, timeout=30)
    assert done.state is ProcessState.SUCCESS and done.output == [{"greeting": "hello"}]
    assert f"[stdout] hello from {p.process_id}" in await log_of(client, p.process_id)
