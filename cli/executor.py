"""``colonies executor ...``: run the shipped executors, and manage registrations."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import typer

from colonyos import machine
from colonyos.executor import ExecutorStatus
from colonyos.messages import ExecutorInfo
from colonyos.models import GPU, Capabilities, Executor, ExecutorState, Hardware
from colonyos.resources import parse_bytes, parse_cpu_millis
from colonyos.security.members import Member

from ._common import JSON_OPTION, connect, settings_of
from ._executors import KINDS, PlatformError, build_executor
from ._output import console, executor_table, print_json
from ._run import fail, run

app = typer.Typer(help="Run executors and manage their registrations.", no_args_is_help=True)

_NAME = typer.Option(..., "--name", help="Executor name.")

# Processes an executor of each kind runs at once unless told: a container executor, one per
# core; the Slurm and Kubernetes executors hand their work to a scheduler that queues it, so
# more. The broker's capacity admission also holds each to the cpu and mem it offers.
_DEFAULT_CONCURRENCY: dict[str, Callable[[], int]] = {
    "container": lambda: os.cpu_count() or 1,
    "slurm": lambda: 32,
    "kubernetes": lambda: 16,
}


@app.command("start")
def start(
    ctx: typer.Context,
    kind: str = typer.Argument(..., help=f"Which shipped executor: {', '.join(KINDS)}."),
    executor_type: str = typer.Option("", "--type", help="Executor type (default: KIND)."),
    name: str = typer.Option("", "--name", help="Executor name (default: TYPE-hostname)."),
    burst: bool = typer.Option(
        False, "--burst", help="Exit once no more work can be assigned; fail fast if none can be."
    ),
    replace: bool = typer.Option(
        False, "--replace", help="Take the name over from a running executor that holds it."
    ),
    allow: list[str] = typer.Option(
        [], "--allow", help="shell: a program it may run (repeat); none by default."
    ),
    module: list[str] = typer.Option(
        [], "--module", help="python: module or file.py whose functions it runs (repeat)."
    ),
    location: str = typer.Option("", "--location", help="Location name, for locationname."),
    cpu: str = typer.Option(
        "", "--cpu", help="CPU it offers, e.g. '4' or '500m' (default: this machine's)."
    ),
    mem: str = typer.Option(
        "", "--mem", help="Memory it offers, e.g. '16Gi' (default: this machine's)."
    ),
    storage: str = typer.Option(
        "", "--storage", help="Storage it offers (default: free space of the working directory)."
    ),
    nodes: int = typer.Option(1, "--nodes", min=1, help="Nodes it spans."),
    gpus: int | None = typer.Option(
        None, "--gpus", min=0, help="GPUs it offers (default: nvidia-smi's count, else 0)."
    ),
    gpu_name: str = typer.Option(
        "", "--gpu-name", help="Name of its GPUs, e.g. 'A100' (default: nvidia-smi's)."
    ),
    gpu_mem: str = typer.Option(
        "", "--gpu-mem", help="Memory of each GPU, e.g. '80Gi' (default: nvidia-smi's)."
    ),
    concurrency: int = typer.Option(
        0,
        "--concurrency",
        "-c",
        help="Processes run at once (default: 1; container: this machine's cores; "
        "slurm: 32; kubernetes: 16).",
        show_default=False,
    ),
    prefetch: bool = typer.Option(
        True,
        "--prefetch/--no-prefetch",
        help="While every slot is busy, take the next process to run when a slot frees (never "
        "one an idle executor could start, nor one with a maxexectime).",
    ),
    runtime: str = typer.Option(
        "podman", "--runtime", help="container: the runtime that runs them, podman or docker."
    ),
    network: str = typer.Option(
        "", "--network", help="container: the network of its containers (default: the runtime's)."
    ),
    namespace: str = typer.Option(
        "", "--namespace", help="kubernetes: its Jobs' namespace (default: the context's)."
    ),
    kubeconfig: str = typer.Option(
        "",
        "--kubeconfig",
        help="kubernetes: its kubeconfig (default: the pod's service account, else "
        "~/.kube/config).",
    ),
    state_dir: Path | None = typer.Option(
        None,
        "--state-dir",
        help="container, kubernetes, slurm: where it keeps what it takes back after a "
        "restart (default: ~/.local/state/colonies/KIND/COLONY/NAME).",
    ),
    partition: str = typer.Option(
        "", "--partition", help="slurm: the partition its jobs go to (default: the cluster's)."
    ),
    account: str = typer.Option(
        "", "--account", help="slurm: the account its jobs are charged to."
    ),
    image_runtime: str = typer.Option(
        "none",
        "--image-runtime",
        help="slurm: what runs each job's image: none (the command on the node), podman, "
        "apptainer or singularity.",
    ),
) -> None:
    """Start a shipped executor in the foreground. Ctrl-C (or SIGTERM) stops it once its running
    processes finish; a second Ctrl-C stops them now and gives them back to the queue."""
    if kind not in KINDS:
        raise fail(f"unknown executor kind {kind!r}; choose one of {', '.join(KINDS)}")
    options: dict[str, Any] = {}
    if kind == "shell":
        options["allow"] = allow
    if kind == "python":
        options["modules"] = module
    if kind == "container":
        options.update(runtime=runtime, network=network, state_dir=state_dir)
    if kind == "kubernetes":
        options.update(
            namespace=namespace or None, kubeconfig=kubeconfig or None, state_dir=state_dir
        )
    if kind == "slurm":
        options.update(
            partition=partition,
            account=account,
            image_runtime=image_runtime,
            state_dir=state_dir,
        )
    if not concurrency:
        concurrency = _DEFAULT_CONCURRENCY.get(kind, lambda: 1)()

    hardware = _hardware(cpu, mem, storage, nodes, gpus, gpu_name, gpu_mem)

    async def go() -> int:
        try:
            app_ = build_executor(
                kind, settings_of(ctx), executor_type or kind, name or None, **options
            )
        except PlatformError as err:
            raise fail(str(err)) from None
        app_.location_name = location
        app_.concurrency = max(1, concurrency)
        app_.prefetch = prefetch
        app_.capabilities = Capabilities(hardware=[hardware])
        app_.replace = replace
        app_.on_status = functools.partial(_print_status, app_.name)
        console.print(
            f"executor [bold]{app_.name}[/] (type {app_.executor_type}) in colony "
            f"{app_.settings.colony}" + (", burst" if burst else ""),
            soft_wrap=True,
        )
        return await app_.serve(burst=burst)

    handled = run(go())
    console.print(f"handled {handled} processes")


def _hardware(
    cpu: str, mem: str, storage: str, nodes: int, gpus: int | None, gpu_name: str, gpu_mem: str
) -> Hardware:
    """This machine's description, with what the flags say instead."""
    for flag, value, parse in (
        ("--cpu", cpu, parse_cpu_millis),
        ("--mem", mem, parse_bytes),
        ("--storage", storage, parse_bytes),
        ("--gpu-mem", gpu_mem, parse_bytes),
    ):
        try:
            parse(value)
        except ValueError as e:
            raise fail(f"{flag}: {e}") from None
    hw = machine.describe()
    gpu = GPU(
        name=gpu_name or hw.gpu.name,
        mem=gpu_mem or hw.gpu.mem,
        count=hw.gpu.count if gpus is None else gpus,
    )
    if (gpu_name or gpu_mem) and not gpu.count:
        raise fail("--gpu-name and --gpu-mem describe GPUs: say how many with --gpus N")
    cores = math.ceil(parse_cpu_millis(cpu) / 1000) if cpu else hw.cores
    return msgspec.structs.replace(
        hw,
        cpu=cpu or hw.cpu,
        cores=cores,
        mem=mem or hw.mem,
        storage=storage or hw.storage,
        nodes=nodes,
        gpu=gpu,
    )


def _print_status(name: str, status: ExecutorStatus) -> None:
    """One line per status, said by the executor when it starts to apply."""
    console.print(f"{name}: {status.message}", markup=False, soft_wrap=True)


@app.command("ls")
def ls(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    everything: bool = typer.Option(
        False, "--all", help="Also the removed (UNREGISTERED) ones, kept for the record."
    ),
) -> None:
    """List the colony's executors: state, online or not (heard from within the broker's
    liveness window), when last heard from, processes running, capabilities."""

    async def go() -> list[ExecutorInfo]:
        async with await connect(ctx) as client:
            return await client.executor_list()

    executors = [e for e in run(go()) if everything or e.state is not ExecutorState.UNREGISTERED]
    if as_json:
        print_json(executors)
    elif not executors:
        console.print("no executors registered")
    else:
        console.print(executor_table(executors), soft_wrap=True)


@app.command("add")
def add(
    ctx: typer.Context,
    name: str = _NAME,
    executor_type: str = typer.Option(..., "--type", help="The type it registers as."),
    key: str = typer.Option(
        ..., "--key", help="Its public key (U..., from 'colonies key generate' on its machine)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Approve an executor ahead of its first start, by its name, type and public key."""

    async def go() -> Member:
        async with await connect(ctx) as client:
            return await client.member_add(name, key, role="executor", executor_type=executor_type)

    member = run(go())
    if as_json:
        print_json(member)
        return
    console.print(f"executor {name} ({executor_type}) added and approved")


@app.command("approve")
def approve(ctx: typer.Context, name: str = _NAME, as_json: bool = JSON_OPTION) -> None:
    """Approve a registered executor, so that it can be assigned work."""

    async def go() -> Executor:
        async with await connect(ctx) as client:
            return await client.executor_approve(name)

    executor = run(go())
    if as_json:
        print_json(executor)
        return
    console.print(f"executor {name} approved")


@app.command("reject")
def reject(ctx: typer.Context, name: str = _NAME, as_json: bool = JSON_OPTION) -> None:
    """Reject a registered executor: it gets no work."""

    async def go() -> Executor:
        async with await connect(ctx) as client:
            return await client.executor_reject(name)

    executor = run(go())
    if as_json:
        print_json(executor)
        return
    console.print(f"executor {name} rejected")


@app.command("remove")
def remove(ctx: typer.Context, name: str = _NAME, as_json: bool = JSON_OPTION) -> None:
    """Remove an executor: it is kept as UNREGISTERED, what it runs is queued again at once, and
    a running executor of that name stops. Starting it again registers it afresh."""

    async def go() -> None:
        async with await connect(ctx) as client:
            await client.executor_remove(name)

    run(go())
    if as_json:
        print_json({"executorname": name, "removed": True})
        return
    console.print(f"executor {name} removed (UNREGISTERED); what it was running is queued again")
