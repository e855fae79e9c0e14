"""The Kubernetes executor against a live broker and a fake API server at the HTTP level
(tests/kubefake.py: no real API server can run here). The fake's kubelet runs each pod's command
as a local process, so Colonies' specs run for real; what a cluster decides (image pulls, memory
kills, deadlines) the fake is told."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trustme

from colonyos.client import Client
from colonyos.config import Settings
from colonyos.executor import ExecutorApp
from colonyos.executors import contract, kubejob, kubernetes
from colonyos.models import (
    Capabilities,
    Conditions,
    FunctionSpec,
    Hardware,
    Process,
    ProcessGraph,
    ProcessState,
    WorkflowSpec,
)
from tests.helpers import until
from tests.kubefake import FakeKube
from tests.procs import Child, said

CASES = Path("/work/shared/colonies-tutorial-cases")
TOKEN = "fake-token-0123"
ETYPE = "kube"


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[FakeKube]:
    """The fake API server over TLS (its own CA), asking for a bearer token."""
    ca = trustme.CA()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(tls)
    fake = FakeKube(tmp_path / "pods", token=TOKEN)
    await fake.start(tls)
    fake.ca_pem = ca.cert_pem.bytes()
    try:
        yield fake
    finally:
        await fake.close()


def kubeconfig(path: Path, fake: FakeKube, **user: str) -> Path:
    """A JSON kubeconfig for ``fake`` (namespace ``colonies``)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "fake",
        "contexts": [
            {"name": "fake", "context": {"cluster": "c", "user": "u", "namespace": "colonies"}}
        ],
        "clusters": [
            {
                "name": "c",
                "cluster": {
                    "server": fake.url,
                    "certificate-authority-data": base64.b64encode(fake.ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": "u", "user": user or {"token": TOKEN}}],
    }
    path.write_text(json.dumps(config))
    return path


def executor(settings: Settings, fake: FakeKube, tmp_path: Path, name: str = "k1") -> ExecutorApp:
    app = kubernetes.build(
        settings,
        executor_type=ETYPE,
        name=name,
        kubeconfig=str(kubeconfig(tmp_path / "kubeconfig.json", fake)),
        state_dir=tmp_path / "state" / name,
        poll_s=0.05,
    )
    app.capabilities = Capabilities(
        hardware=[Hardware(nodes=4, cpu="8", cores=8, mem="16Gi", storage="10Gi")]
    )
    app.concurrency = 4
    return app


def execute(cmd: str, *, image: str = "busybox:1.36", **spec: Any) -> FunctionSpec:
    conditions = spec.pop("conditions", Conditions())
    return FunctionSpec(
        func_name="execute",
        kwargs={"docker-image": image, "cmd": cmd, **spec.pop("kwargs", {})},
        conditions=msgspec.structs.replace(conditions, executor_type=ETYPE),
        **spec,
    )


async def submit(client: Client, spec: FunctionSpec) -> Process:
    p = await client.submit(spec)
    assert isinstance(p, Process)
    return p


async def logs_of(client: Client, pid: str) -> list[str]:
    return [line.message async for line in client.logs(pid)]


@pytest.fixture
async def serving(
    client: Client, settings: Settings, kube: FakeKube, tmp_path: Path
) -> AsyncIterator[ExecutorApp]:
    """An executor running in the background until the test ends."""
    app = executor(settings, kube, tmp_path)
    task = asyncio.create_task(app.run())
    try:
        async with asyncio.timeout(15):
            await app.ready.wait()
        yield app
    finally:
        app.stop(force=True)
        async with asyncio.timeout(15):
            await task


def tutorial(path: str) -> FunctionSpec:
    """A spec of Colonies' tutorials as it is, sent to this executor type (and image)."""
    raw = json.loads((CASES / path).read_text())
    raw["conditions"]["executortype"] = ETYPE
    raw["conditions"].pop("executornames", None)
    return msgspec.convert(raw, FunctionSpec)


# -- Colonies' specs ---------------------------------------------------------------------------


async def test_colonies_kubernetes_spec_runs_unchanged_on_two_pods(
    client: Client, serving: ExecutorApp, kube: FakeKube
) -> None:
    """Colonies' own kube executor example: nodes 2 -> two pods, cpu/mem/walltime as limits."""
    spec = tutorial("embedded/executors__kube__README__01.json")
    p = await submit(client, spec)
    done = await client.wait(p.process_id, timeout=20)
    assert done.state is ProcessState.SUCCESS, done.errors
    logs = await logs_of(client, p.process_id)
    assert sorted(logs) == ["[log] [pod 0] Hello, World!", "[log] [pod 1] Hello, World!"]
    (job,) = kube.created
    spec_ = job["spec"]
    assert (spec_["parallelism"], spec_["completions"], spec_["completionMode"]) == (
        2,
        2,
        "Indexed",
    )
    assert spec_["activeDeadlineSeconds"] == 90
    container = spec_["template"]["spec"]["containers"][0]
    assert container["image"] == "busybox"
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": str(2**30)},
        "limits": {"cpu": "500m", "memory": str(2**30)},
    }
    # Deleted once done, its pods with it.
    assert kube.jobs == {} and kube.pods == {}
    assert kube.deletes[-1]["propagationPolicy"] == "Background"


async def test_container_executor_specs_run_unchanged(client: Client, serving: ExecutorApp) -> None:
    specs = [
        tutorial("files/colonyos+executors/examples/docker_ls.json"),
        tutorial("embedded/documentation__content__tutorial1__01.json"),
    ]
    listing, hello = [await submit(client, s) for s in specs]
    assert (await client.wait(hello.process_id, timeout=20)).state is ProcessState.SUCCESS
    assert await logs_of(client, hello.process_id) == ["[log] hello world"]
    done = await client.wait(listing.process_id, timeout=20)
    assert done.state is ProcessState.SUCCESS, done.errors
    assert "[log] bin" in await logs_of(client, listing.process_id)


# -- what a process sees and gives back -----------------------------------------------------------


async def test_output_file_becomes_the_output_and_stays_out_of_the_log(
    client: Client, serving: ExecutorApp
) -> None:
    p = await submit(
        client,
        execute('echo \'{"sum": 3, "id": "{processid}"}\' > $COLONIES_OUTPUT; printf unfinished'),
    )
    done = await client.wait(p.process_id, timeout=20)
    assert done.state is ProcessState.SUCCESS, done.errors
    assert done.output == [{"sum": 3, "id": p.process_id}]
    # The last line had no end: the marker followed it on the same line, and was cut off.
    assert await logs_of(client, p.process_id) == ["[log] unfinished"]


async def test_a_workflows_nodes_pass_outputs_through_their_files(
    client: Client, serving: ExecutorApp, kube: FakeKube
) -> None:
    """A node's output is the next one's input: printed after the marker by one pod, given to
    the next through its downwardAPI volume."""
    make = execute("echo 21 > $COLONIES_OUTPUT", node_name="make")
    double = execute(
        'v=$(cat "$COLONIES_INPUT"); v=${v#[}; v=${v%]}; echo "[$((v * 2))]" > $COLONIES_OUTPUT',
        node_name="double",
    )
    double.conditions.dependencies = ["make"]
    graph = await client.submit_workflow(WorkflowSpec(function_specs=[make, double]))
    assert isinstance(graph, ProcessGraph)
    done = await client.graph_wait(graph.process_graph_id, timeout=30)
    assert done.state is ProcessState.SUCCESS
    last = [p for p in await client.graph_processes(done) if p.spec.node_name == "double"]
    assert last[0].input == [21] and last[0].output == [42]
    second = kube.created[1]["spec"]["template"]["metadata"]["annotations"]
    assert json.loads(second[kubejob.INPUT_ANNOTATION]) == [21]


async def test_env_is_the_specs_and_the_process_id_only(
    client: Client, serving: ExecutorApp, kube: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLONIES_SECRET_OF_THE_EXECUTOR", "hush")
    p = await submit(client, execute("env | sort", env={"GREETING": "hi there"}))
    done = await client.wait(p.process_id, timeout=20)
    assert done.state is ProcessState.SUCCESS, done.errors
    (job,) = kube.created
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {e["name"]: e["value"] for e in env} == {
        "GREETING": "hi there",
        "COLONIES_PROCESS_ID": p.process_id,
        "COLONIES_INPUT": "/colonies/in/input.json",
        "COLONIES_OUTPUT": "/colonies/out/output.json",
    }
    logs = await logs_of(client, p.process_id)
    assert "[log] GREETING=hi there" in logs and f"[log] COLONIES_PROCESS_ID={p.process_id}" in logs
    assert not any("hush" in line or "NATS" in line for line in logs)
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


async def test_exit_code_fails_with_the_last_lines(client: Client, serving: ExecutorApp) -> None:
    p = await submit(client, execute("echo working; echo broken >&2; exit 3"))
    done = await client.wait(p.process_id, timeout=20)
    assert done.state is ProcessState.FAILED
    assert done.errors == ["the container exited with code 3: working | broken"]


async def test_out_of_memory_is_said(client: Client, serving: ExecutorApp, kube: FakeKube) -> None:
    kube.images["hungry:1"] = {"oom": True}
    p = await submit(client, execute("echo eating", image="hungry:1"))
    done = await client.wait(p.process_id, timeout=20)
    assert done.state is ProcessState.FAILED
    assert done.errors == [
        "the container was killed for using more memory than its limit (out of memory): eating"
    ]


async def test_an_image_that_cannot_be_pulled_fails_fast(
    client: Client, serving: ExecutorApp, kube: FakeKube
) -> None:
    kube.images["registry.invalid/nothing:1"] = {
        "waiting": "ErrImagePull",
        "message": 'failed to pull image "registry.invalid/nothing:1": not found',
    }
    p = await submit(client, execute("true", image="registry.invalid/nothing:1", max_exec_time=60))
    done = await client.wait(p.process_id, timeout=10)  # well before its maxexectime
    assert done.state is ProcessState.FAILED
    assert done.errors == [
        "the image 'registry.invalid/nothing:1' cannot be pulled (ErrImagePull): "
        'failed to pull image "registry.invalid/nothing:1": not found'
    ]
    assert kube.jobs == {}


async def test_time_limit_is_the_jobs_deadline(
    client: Client, serving: ExecutorApp, kube: FakeKube
) -> None:
    p = await submit(client, execute("sleep 30", conditions=Conditions(walltime=1)))
    done = await client.wait(p.process_id, timeout=20)
    assert done.state is ProcessState.FAILED
    assert done.errors == ["the Job ran past its time limit of 1 s and was stopped"]
    assert kube.running() == []


# -- while it runs -----------------------------------------------------------------------------


async def test_log_lines_come_while_it_runs_and_a_cut_stream_is_followed_again(
    client: Client, serving: ExecutorApp, kube: FakeKube, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    kube.cut_log_after = 1  # the first follow of the log ends after one line, the pod runs on
    p = await submit(
        client,
        execute(f"echo first; echo second; while [ ! -e {gate} ]; do sleep 0.05; done; echo third"),
    )

    async def seen() -> list[str]:
        return await logs_of(client, p.process_id)

    async with asyncio.timeout(15):
        while await seen() != ["[log] first", "[log] second"]:
            await asyncio.sleep(0.05)  # sleep-ok: polling the process log, bounded
    gate.touch()
    done = await client.wait(p.process_id, timeout=20)
    assert done.state is ProcessState.SUCCESS, done.errors
    # Followed again from the second the cut came: no line twice, none lost.
    assert await seen() == ["[log] first", "[log] second", "[log] third"]


async def test_cancel_deletes_the_job_at_once(
    client: Client, serving: ExecutorApp, kube: FakeKube
) -> None:
    p = await submit(client, execute("echo started; sleep 60"))
    await client.wait_for_state(p.process_id, ProcessState.RUNNING, timeout=10)
    await until(lambda: bool(kube.running()), timeout=10)
    await client.cancel(p.process_id)
    await until(lambda: not kube.jobs and not kube.running(), timeout=10)
    assert kube.deletes[-1]["propagationPolicy"] == "Background"


async def test_a_restarted_executor_takes_its_running_job_back(
    client: Client, settings: Settings, kube: FakeKube, tmp_path: Path
) -> None:
    """SIGKILLed while its Job runs: started again from the same state directory, it follows
    that Job (not a new one) and the process completes once."""
    gate = tmp_path / "gate"
    config = kubeconfig(tmp_path / "kubeconfig.json", kube)
    state = tmp_path / "state"
    env = {
        "COLONIES_NATS_URL": settings.nats_url,
        "COLONIES_PREFIX": settings.prefix,
        "COLONIES_COLONY_NAME": settings.colony,
    }
    args = ["executor", "start", "kubernetes", "--type", ETYPE, "--name", "k1"]
    args += ["--kubeconfig", str(config), "--state-dir", str(state)]
    child = Child(args, tmp_path / "child.log", env).start()
    try:
        await said(child, "k1: waiting for work")
        p = await submit(
            client, execute(f"echo before; while [ ! -e {gate} ]; do sleep 0.05; done; echo after")
        )
        await client.wait_for_state(p.process_id, ProcessState.RUNNING, timeout=10)
        await until(lambda: bool(kube.running()), timeout=10)
    finally:
        child.kill()
    assert len(kube.jobs) == 1  # left running
    app = kubernetes.build(
        settings,
        executor_type=ETYPE,
        name="k1",
        kubeconfig=str(config),
        state_dir=state,
        poll_s=0.05,
    )
    app.capabilities = Capabilities(hardware=[Hardware(nodes=1, cpu="8", cores=8, mem="16Gi")])
    task = asyncio.create_task(app.run())
    try:
        await until(lambda: bool(app.running), timeout=15)
        gate.touch()
        done = await client.wait(p.process_id, timeout=20)
    finally:
        app.stop(force=True)
        async with asyncio.timeout(15):
            await task
    assert done.state is ProcessState.SUCCESS, done.errors
    assert done.retries == 0 and done.assignments == 1
    assert len(kube.created) == 1 and kube.jobs == {}
    logs = await logs_of(client, p.process_id)
    assert (
        "[executor] taken back after a restart: following Job "
        + kubejob.job_name(p.process_id, done.attempt)
        in logs
    )
    assert logs[-1] == "[log] after"


async def test_a_job_no_longer_its_own_is_deleted_after_a_restart(
    client: Client, settings: Settings, kube: FakeKube, tmp_path: Path
) -> None:
    """Its process was cancelled while the executor was down: the Job left behind goes."""
    app = executor(settings, kube, tmp_path)
    assert isinstance(app.resumable, kubernetes.Jobs)
    jobs = app.resumable
    p = await submit(client, execute("sleep 60"))
    # What a killed run would leave: its Job, labelled as this executor's.
    call = contract.parse(p)
    await jobs.create(kubejob.manifest(call, jobs.owner, "marker", "dev/k1"))
    assert await jobs.held() == [(p.process_id, p.attempt)]
    await client.cancel(p.process_id)
    task = asyncio.create_task(app.run())
    try:
        await until(lambda: not kube.jobs, timeout=15)
    finally:
        app.stop(force=True)
        async with asyncio.timeout(15):
            await task
    assert kube.running() == []


def test_log_timestamps_sort_in_time_order_whatever_their_fraction() -> None:
    """Kubernetes writes RFC 3339 with trailing zeros dropped: as text, 00.1Z sorts before 00Z."""
    stamps = [
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:00:00.000001Z",
        "2026-01-01T00:00:00.1Z",
        "2026-01-01T00:00:00.123456789Z",
        "2026-01-01T00:00:00.5Z",
        "2026-01-01T00:00:01Z",
    ]
    shuffled = [stamps[i] for i in (3, 0, 5, 2, 4, 1)]
    assert sorted(shuffled, key=kubernetes._ts_key) == stamps


async def test_maxexectime_past_fails_and_deletes_the_job(
    client: Client, serving: ExecutorApp, kube: FakeKube
) -> None:
    """No walltime: maxexectime is the Job's deadline and the broker's; whichever comes first,
    the process fails and its Job is gone."""
    p = await submit(client, execute("sleep 30", max_exec_time=1))
    done = await client.wait(p.process_id, timeout=20)
    assert done.state is ProcessState.FAILED
    assert kube.created[0]["spec"]["activeDeadlineSeconds"] == 1
    await until(lambda: not kube.jobs and not kube.running(), timeout=10)


async def test_a_stop_now_deletes_the_job_and_gives_the_process_back(
    client: Client, settings: Settings, kube: FakeKube, tmp_path: Path
) -> None:
    app = executor(settings, kube, tmp_path)
    task = asyncio.create_task(app.run())
    try:
        p = await submit(client, execute("sleep 60"))
        await until(lambda: bool(kube.running()), timeout=15)
        app.stop(force=True)
        async with asyncio.timeout(15):
            await task
    finally:
        app.stop(force=True)
        if not task.done():
            task.cancel()
    assert kube.jobs == {} and kube.running() == []
    assert (await client.get(p.process_id)).state is ProcessState.WAITING


async def test_a_pod_without_room_is_said_once_while_it_waits(
    client: Client, serving: ExecutorApp, kube: FakeKube
) -> None:
    kube.images["big:1"] = {"unschedulable": "0/3 nodes are available: 3 Insufficient cpu."}
    p = await submit(client, execute("true", image="big:1"))

    async def said() -> bool:
        return bool(await logs_of(client, p.process_id))

    async with asyncio.timeout(15):
        while not await said():
            await asyncio.sleep(0.05)  # sleep-ok: polling the process log, bounded
    await client.cancel(p.process_id)
    await until(lambda: not kube.jobs, timeout=10)
    (line,) = await logs_of(client, p.process_id)
    assert line.startswith("[executor] pod colonies-")
    assert line.endswith(" cannot be scheduled yet: 0/3 nodes are available: 3 Insufficient cpu.")


async def test_the_readmes_container_example_runs_as_a_job(
    client: Client, settings: Settings, kube: FakeKube, tmp_path: Path
) -> None:
    """README: examples/container.json, unchanged, on a Kubernetes executor of type container."""
    raw = json.loads((Path(__file__).parents[2] / "examples" / "container.json").read_text())
    p = await submit(client, msgspec.convert(raw, FunctionSpec))
    app = kubernetes.build(
        settings,
        executor_type="container",
        name="k1",
        kubeconfig=str(kubeconfig(tmp_path / "kubeconfig.json", kube)),
        state_dir=tmp_path / "state",
        poll_s=0.05,
    )
    app.capabilities = Capabilities(hardware=[Hardware(nodes=1, cpu="8", cores=8, mem="16Gi")])
    assert await app.run(burst=True) == 1
    done = await client.wait(p.process_id, timeout=20)
    assert done.state is ProcessState.SUCCESS, done.errors
    assert done.output == [{"greeting": "hello"}]
    assert await logs_of(client, p.process_id) == [f"[log] hello from {p.process_id}"]
