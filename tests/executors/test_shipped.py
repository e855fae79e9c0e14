"""The shipped executors and the executor base, run in burst mode against a live broker."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest

from colonyos.client import Client
from colonyos.executor import ExecutorApp, ProcessContext
from colonyos.executors import echo, python, shell
from colonyos.models import Conditions, FunctionSpec, Process, ProcessState


def fspec(etype: str, func: str, *args: object, **kwargs: object) -> FunctionSpec:
    return FunctionSpec(
        func_name=func,
        args=list(args),
        kwargs=dict(kwargs),
        conditions=Conditions(executor_type=etype),
    )


async def submit_all(client: Client, *specs: FunctionSpec) -> list[Process]:
    out = []
    for s in specs:
        p = await client.submit(s)
        assert isinstance(p, Process)
        out.append(p)
    return out


async def logs_of(client: Client, pid: str) -> list[str]:
    return [line.message async for line in client.logs(pid)]


async def test_echo_returns_its_args(client: Client, settings) -> None:
    (p,) = await submit_all(client, fspec("echo", "echo", "hello", 2))
    assert await echo.build(settings, name="echo-1").run(burst=True) == 1
    done = await client.wait(p.process_id, timeout=5)
    assert done.state is ProcessState.SUCCESS and done.output == ["hello", 2]
    assert await logs_of(client, p.process_id) == ["echo hello 2"]


async def test_python_functions_output_logs_and_errors(client: Client, settings) -> None:
    app = ExecutorApp("py", "py-1", settings=settings)

    @app.function
    def add(a: int, b: int) -> int:
        print("adding", a, "and", b)
        print("done")
        return a + b

    @app.function
    async def pair(x: str, *, suffix: str = "!") -> tuple[str, str]:
        return x, x + suffix

    @app.function
    def explode() -> None:
        print("about to fail")
        raise ValueError("no such thing")

    ok, tup, bad, missing = await submit_all(
        client,
        fspec("py", "add", 2, 3),
        fspec("py", "pair", "a", suffix="?"),
        fspec("py", "explode"),
        fspec("py", "nosuchfunc"),
    )
    assert await app.run(burst=True) == 4
    done = await client.wait(ok.process_id, timeout=5)
    assert done.output == [5]
    assert await logs_of(client, ok.process_id) == ["adding 2 and 3", "done"]
    assert (await client.wait(tup.process_id, timeout=5)).output == ["a", "a?"]
    failed = await client.wait(bad.process_id, timeout=5)
    assert failed.state is ProcessState.FAILED
    assert failed.errors == ["ValueError: no such thing"]
    # Its print, then its traceback (the function's frames only).
    log = await logs_of(client, bad.process_id)
    assert log[:2] == ["about to fail", "Traceback (most recent call last):"]
    assert log[-1] == "ValueError: no such thing"
    assert any("in explode" in line for line in log)
    assert not any("colonyos/execut" in line for line in log)  # the executor's own frames
    unknown = await client.wait(missing.process_id, timeout=5)
    assert unknown.state is ProcessState.FAILED and "no function 'nosuchfunc'" in unknown.errors[0]


async def test_python_executor_loads_a_module_file(
    client: Client, settings, tmp_path: Path
) -> None:
    module = tmp_path / "tasks.py"
    module.write_text("def double(x):\n    return 2 * x\n\ndef _private():\n    pass\n")
    app = python.build(settings, name="py-2", modules=[str(module)])
    assert set(app.handlers) == {"double"}
    (p,) = await submit_all(client, fspec("python", "double", 21))
    await app.run(burst=True)
    assert (await client.wait(p.process_id, timeout=5)).output == [42]


async def test_shell_runs_allowed_programs_only(client: Client, settings) -> None:
    ok, denied, failing, no_cmd = await submit_all(
        client,
        fspec("shell", "execute", cmd="echo", args=["hello", "world"]),
        fspec("shell", "execute", cmd="rm", args=["-rf", "/nothing"]),
        fspec(
            "shell",
            "execute",
            cmd=sys.executable,
            args=["-c", "import sys; print('oops', file=sys.stderr); sys.exit(3)"],
        ),
        fspec("shell", "execute"),
    )
    app = shell.build(settings, name="sh-1", allow=["echo", sys.executable])
    assert await app.run(burst=True) == 4
    done = await client.wait(ok.process_id, timeout=5)
    assert done.state is ProcessState.SUCCESS and done.output == ["hello world"]
    assert await logs_of(client, ok.process_id) == ["hello world"]
    refused = await client.wait(denied.process_id, timeout=5)
    assert refused.state is ProcessState.FAILED and "'rm' is not allowed" in refused.errors[0]
    failed = await client.wait(failing.process_id, timeout=5)
    assert failed.state is ProcessState.FAILED
    assert "exited with code 3" in failed.errors[0] and "oops" in failed.errors[0]
    missing = await client.wait(no_cmd.process_id, timeout=5)
    assert "kwargs.cmd" in missing.errors[0]


async def test_shell_with_empty_allow_list_runs_nothing(client: Client, settings) -> None:
    (p,) = await submit_all(client, fspec("shell", "execute", cmd="echo"))
    await shell.build(settings, name="sh-2").run(burst=True)
    failed = await client.wait(p.process_id, timeout=5)
    assert "allowed: nothing" in failed.errors[0]


async def test_raw_handler_and_log_order(client: Client, settings) -> None:
    app = ExecutorApp("raw", "raw-1", settings=settings)

    @app.handler("count")
    async def count(ctx: ProcessContext) -> list[object]:
        for i in range(500):
            ctx.log(f"line {i}")
        return [ctx.process.spec.func_name]

    (p,) = await submit_all(client, fspec("raw", "count"))
    await app.run(burst=True)
    assert await logs_of(client, p.process_id) == [f"line {i}" for i in range(500)]


async def test_log_follow_ends_when_the_process_ends(client: Client, settings) -> None:
    import asyncio

    app = ExecutorApp("slow", "slow-1", settings=settings)
    release = asyncio.Event()

    @app.handler("wait")
    async def wait_for_release(ctx: ProcessContext) -> list[object]:
        ctx.log("started")
        await ctx.flush()
        await release.wait()
        ctx.log("finished")
        return []

    (p,) = await submit_all(client, fspec("slow", "wait"))
    runner = asyncio.create_task(app.run(burst=True))
    lines: list[str] = []

    async def follow() -> None:
        async for line in client.logs(p.process_id, follow=True):
            lines.append(line.message)
            if line.message == "started":
                release.set()

    async with asyncio.timeout(10):
        await follow()
        await runner
    assert lines == ["started", "finished"]


async def test_pending_executor_gets_no_work(client: Client, settings, tmp_path) -> None:
    from colonyos.errors import NotAuthorizedError
    from colonyos.security.keys import generate, write_seed

    async with await Client.connect(settings) as owner:
        await owner.colony_add("strict")
    strict = settings.__class__(nats_url=settings.nats_url, colony="strict", prefix=settings.prefix)
    # An executor with its own key (one with an owner's key would be approved as it registers).
    write_seed(tmp_path / "executor.nk", generate())
    own_key = msgspec.structs.replace(strict, identity=tmp_path / "executor.nk")
    app = echo.build(own_key, name="echo-pending")
    with pytest.raises(NotAuthorizedError, match="approve"):
        await app.run(burst=True)
    async with await Client.connect(strict) as owner:
        await owner.submit(fspec("echo", "echo", 1))
        await owner.executor_approve("echo-pending")
        assert [e.state.name for e in await owner.executor_list()] == ["APPROVED"]
    assert await echo.build(own_key, name="echo-pending").run(burst=True) == 1


@pytest.mark.parametrize("kind", ["echo", "python", "shell"])
def test_executors_import_nothing_heavy(kind: str) -> None:
    """Edge executors need nats-py and msgspec only: no sqlite_utils, rich or typer."""
    code = textwrap.dedent(
        f"""
        import sys
        import colonyos.executors.{kind}
        heavy = sorted(m for m in ("sqlite_utils", "rich", "typer", "colonyos.broker", "sqlite3") if m in sys.modules)
        print(",".join(heavy))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


async def test_concurrency_runs_processes_side_by_side(client: Client, settings) -> None:
    import asyncio

    app = ExecutorApp("slots", "slots-1", settings=settings, concurrency=3)
    inside, peak, release = 0, 0, asyncio.Event()

    @app.handler()
    async def hold(ctx: ProcessContext) -> list[object]:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        if peak == 3:
            release.set()  # all three slots are busy at once
        await asyncio.wait_for(release.wait(), timeout=10)
        inside -= 1
        return []

    await submit_all(client, *(fspec("slots", "hold") for _ in range(6)))
    assert await app.run(burst=True) == 6
    assert peak == 3


async def test_slots_are_filled_and_finished_in_shared_requests(
    client: Client, settings, prefix: str
) -> None:
    import asyncio

    requests: dict[str, int] = {"assign_many": 0, "results": 0}

    async def count(msg: object) -> None:
        requests[msg.subject.rsplit(".", 1)[1]] += 1  # type: ignore[attr-defined]

    for op in requests:
        await client.nc.subscribe(f"{prefix}.*.rpc.batch-1.{op}", cb=count)
    app = ExecutorApp("batch", "batch-1", settings=settings, concurrency=4)
    inside, peak = 0, 0

    @app.handler()
    async def quick(ctx: ProcessContext) -> list[object]:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        await asyncio.sleep(0)  # sleep-ok: yields once, so that slots overlap
        inside -= 1
        return [ctx.process.spec.args[0]]

    processes = await submit_all(client, *(fspec("batch", "quick", i) for i in range(40)))
    assert await app.run(burst=True) == 40
    assert peak == 4
    # One request hands out several processes, one request reports several results.
    assert requests["assign_many"] < 40 and requests["results"] < 40, requests
    for p in processes:
        done = await client.get(p.process_id)
        assert done.state is ProcessState.SUCCESS and done.output == p.spec.args
