"""`colonies executor start` as a real OS process: it says what it waits for, once, and SIGINT
or SIGTERM stops it at every stage (connecting, registering, pending approval, idle, running).

The broker's liveness window is a minute here, so a process that comes back within a test's
deadline came back because it was given back, not because its executor was presumed lost.

It runs on an insecure server (see the nats_url fixture): on a secure one the stages are said in
other words and pending approval needs an executor with a key of its own, not yet written here.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.models import Conditions, FunctionSpec, Process, ProcessState
from colonyos.natsserver import NatsServer
from colonyos.subjects import Subjects

from .procs import Child, free_port

SIGNALS = [signal.SIGINT, signal.SIGTERM]

TASKS = """
import os
import time


def hold(path):
    open(path + ".started", "w").close()  # the function runs: the executor holds it
    print("holding until", path, "exists")
    while not os.path.exists(path):
        time.sleep(0.05)  # sleep-ok: the function's own work
    return "done"
"""


# What an executor says at each stage on an insecure server: on a secure one, an executor of a
# colony that does not exist, or before any broker runs, is not let in at all, and says so in
# other words (not yet covered here).
@pytest.fixture
def nats_url(insecure_nats_url: str) -> str:
    return insecure_nats_url


@pytest.fixture
def broker_settings(broker_settings: BrokerSettings) -> BrokerSettings:
    return msgspec.structs.replace(broker_settings, executor_liveness_s=60.0, keys_dir=None)


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.kill()


@pytest.fixture
def start(children: list[Child], settings: Settings, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Start `colonies ARGS...` against the test's NATS server and prefix."""

    def go(*args: str, nats: str | None = None) -> Child:
        env = {
            "COLONIES_NATS_URL": nats or settings.nats_url,
            "COLONIES_PREFIX": settings.prefix,
            "COLONIES_COLONY_NAME": settings.colony,
        }
        child = Child(list(args), tmp_path / f"child-{len(children)}.log", env).start()
        children.append(child)
        return child

    return go


def output(child: Child) -> str:
    return child.log.read_text() if child.log.exists() else ""


async def said(child: Child, text: str, timeout: float = 20.0) -> str:
    """Until the child's output holds ``text``; its output."""
    try:
        async with asyncio.timeout(timeout):
            while text not in output(child):
                if not child.alive and text not in output(child):
                    raise AssertionError(f"it exited without saying {text!r}")
                await asyncio.sleep(0.05)  # sleep-ok: polling the child's output, bounded
    except (TimeoutError, AssertionError) as err:
        raise AssertionError(f"{err or 'timed out'}; it said:\n{output(child)}") from None
    return output(child)


async def exit_code(child: Child, timeout: float = 10.0) -> int:
    """Until the child exits (within ``timeout``: an executor stops promptly)."""
    try:
        async with asyncio.timeout(timeout):
            while child.alive:
                await asyncio.sleep(0.05)  # sleep-ok: polling for the exit, bounded
    except TimeoutError:
        message = f"still running {timeout} s after the signal:\n{output(child)}"
        raise AssertionError(message) from None
    assert child.proc is not None
    return child.proc.returncode


def send(child: Child, sig: signal.Signals) -> None:
    assert child.proc is not None
    child.proc.send_signal(sig)


def hold_spec(path: Path) -> FunctionSpec:
    return FunctionSpec(
        func_name="hold", args=[str(path)], conditions=Conditions(executor_type="python")
    )


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
async def test_an_unknown_colony_is_said_once_and_a_signal_stops_it(
    client: Client, start, sig: signal.Signals
) -> None:  # type: ignore[no-untyped-def]
    # Count its registration attempts as they reach NATS, to know that it has retried.
    subject = Subjects(client.settings.prefix).rpc("nosuch", "echo-x", "register")
    attempts = await client.nc.subscribe(subject)
    child = start("--colony", "nosuch", "executor", "start", "echo", "--name", "echo-x")
    line = "colony 'nosuch' does not exist (create it with 'colonies colony add --name nosuch')"
    await said(child, line)
    async with asyncio.timeout(20):
        for _ in range(3):
            await attempts.next_msg(timeout=20)
    send(child, sig)
    assert await exit_code(child) == 0
    out = output(child)
    assert out.count(line) == 1, out
    assert "waiting for work" not in out
    assert out.rstrip().endswith("handled 0 processes")


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
async def test_unreachable_nats_is_said_once_and_a_signal_stops_it(
    start, sig: signal.Signals
) -> None:  # type: ignore[no-untyped-def]
    # A port that accepts and hangs up: not NATS. Its connections show the retries.
    tries = asyncio.Queue[None]()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tries.put_nowait(None)
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"nats://127.0.0.1:{port}"
    async with server:
        child = start("executor", "start", "echo", nats=url)
        line = f"cannot reach NATS at {url}; trying again until it answers"
        await said(child, line)
        async with asyncio.timeout(20):
            for _ in range(6):  # each try connects up to three times
                await tries.get()
        send(child, sig)
        assert await exit_code(child) == 0
    out = output(child)
    assert out.count(line) == 1, out
    assert "waiting for work" not in out


async def test_no_broker_is_said_and_a_signal_stops_it(start, nats_url: str) -> None:  # type: ignore[no-untyped-def]
    child = start("executor", "start", "echo")  # NATS answers; no broker serves this prefix
    await said(child, "no broker is answering")
    send(child, signal.SIGTERM)
    assert await exit_code(child) == 0
    assert "waiting for work" not in output(child)


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
async def test_pending_approval_is_said_then_approval_is_learned(
    client: Client, start, sig: signal.Signals
) -> None:  # type: ignore[no-untyped-def]
    await client.colony_add("lab")  # not auto-approve: the owner approves each executor
    child = start("--colony", "lab", "executor", "start", "echo", "--name", "ed")
    pending = "pending approval by the colony owner: colonies executor approve --name ed"
    await said(child, pending)
    assert "waiting for work" not in output(child)
    lab = Settings(nats_url=client.settings.nats_url, colony="lab", prefix=client.settings.prefix)
    async with await Client.connect(lab) as owner:
        await owner.executor_approve("ed")
    await said(child, "ed: waiting for work")
    send(child, sig)
    assert await exit_code(child) == 0
    assert output(child).count(pending) == 1


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
async def test_a_signal_stops_it_pending(client: Client, start, sig: signal.Signals) -> None:  # type: ignore[no-untyped-def]
    await client.colony_add("lab")
    child = start("--colony", "lab", "executor", "start", "echo", "--name", "ed")
    await said(child, "pending approval by the colony owner")
    send(child, sig)
    assert await exit_code(child) == 0
    assert "waiting for work" not in output(child)


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
async def test_an_idle_executor_stops_at_once(client: Client, start, sig: signal.Signals) -> None:  # type: ignore[no-untyped-def]
    child = start("executor", "start", "echo", "--name", "idle")
    await said(child, "idle: waiting for work")
    send(child, sig)
    assert await exit_code(child) == 0
    out = output(child)
    assert "idle: stopping" in out and "idle: stopped" in out


@pytest.fixture
def tasks(tmp_path: Path) -> str:
    path = tmp_path / "tasks.py"
    path.write_text(TASKS)
    return str(path)


async def running(client: Client, spec: FunctionSpec) -> Process:
    """Submitted, and its function started: RUNNING for the broker is not enough, the
    executor may not hold it yet when a signal comes."""
    p = await client.submit(spec)
    assert isinstance(p, Process)
    started = Path(f"{spec.args[0]}.started")
    p = await client.wait_for_state(p.process_id, ProcessState.RUNNING, timeout=20)
    async with asyncio.timeout(20):
        while not started.exists():
            await asyncio.sleep(0.02)  # sleep-ok: polling the function's marker under a deadline
    return p


async def test_first_signal_lets_the_running_process_finish(
    client: Client, start, tasks: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    child = start("executor", "start", "python", "--module", tasks, "--name", "py")
    await said(child, "py: waiting for work")
    release = tmp_path / "release"
    p = await running(client, hold_spec(release))
    send(child, signal.SIGTERM)
    await said(child, "py: stopping after 1 running process finishes; Ctrl-C again to stop now")
    assert child.alive
    assert (await client.get(p.process_id)).state is ProcessState.RUNNING
    release.touch()
    done = await client.wait(p.process_id, timeout=20)
    assert done.state is ProcessState.SUCCESS and done.output == ["done"]
    assert await exit_code(child) == 0


async def test_second_signal_gives_the_running_process_back_at_once(
    client: Client, start, tasks: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    child = start("executor", "start", "python", "--module", tasks, "--name", "py")
    await said(child, "py: waiting for work")
    p = await running(client, hold_spec(tmp_path / "never"))
    send(child, signal.SIGINT)
    await said(child, "py: stopping after 1 running process finishes; Ctrl-C again to stop now")
    send(child, signal.SIGINT)
    assert await exit_code(child) == 0
    assert "py: stopping now: 1 running process given back to the broker" in output(child)
    # Queued again at once (the liveness window is a minute), without spending a retry.
    back = await client.wait_for_state(p.process_id, ProcessState.WAITING, timeout=10)
    assert back.retries == 0 and back.executor_losses == 1 and not back.is_assigned


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--colony", "nosuch"], "colony 'nosuch' does not exist"),
        (["--colony", "lab"], "approve it with 'colonies executor approve --name b'"),
    ],
    ids=["unknown-colony", "pending"],
)
async def test_burst_fails_fast_with_the_reason(
    client: Client, start, args: list[str], reason: str
) -> None:  # type: ignore[no-untyped-def]
    await client.colony_add("lab")
    child = start(*args, "executor", "start", "echo", "--name", "b", "--burst")
    assert await exit_code(child, timeout=20) != 0
    assert reason in output(child)
    assert "waiting for work" not in output(child)


async def test_burst_fails_fast_when_nats_is_unreachable(start) -> None:  # type: ignore[no-untyped-def]
    url = f"nats://127.0.0.1:{free_port()}"
    child = start("executor", "start", "echo", "--burst", nats=url)
    assert await exit_code(child, timeout=20) != 0
    assert f"cannot reach NATS at {url}" in output(child)


async def test_a_client_closes_at_once_when_nats_went_away(tmp_path: Path) -> None:
    """What an executor does last when stopped while NATS is away: close without a hang or a
    traceback (draining a connection that is reconnecting raised)."""
    server = NatsServer(tmp_path / "js", port=free_port()).start()
    try:
        client = await Client.connect(Settings(nats_url=server.url))
        await client.nc.subscribe("anything")
    finally:
        server.stop()
    async with asyncio.timeout(10):
        while not client.nc.is_reconnecting:
            await asyncio.sleep(0.02)  # sleep-ok: polling the connection's state, bounded
        await client.aclose()
    assert client.nc.is_closed
