"""`colonies executor start` as a real OS process on the secure server: it says what it waits
for, once, and SIGINT or SIGTERM stops it at every stage (not let in, registering, pending
approval, idle, running).

The executors run with the session's key, which owns colony dev (approved as they register), as
its owner would run them; the one waiting for approval has a key of its own, made with
`colonies key generate`. An executor of a colony that does not exist, or started before any
broker runs, is refused by the server (which does not say why): it names what may apply.

The broker's liveness window is a minute here, so a process that comes back within a test's
deadline came back because it was given back, not because its executor was presumed lost.

Both signals reach the one handler, which ``ExecutorApp.serve`` installs for both before the
first stage: each stage is stopped by one of them, SIGINT and SIGTERM in turn from stage to
stage (both at the first), so that each signal stops the executor at several stages.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.models import Conditions, FunctionSpec, Process, ProcessState
from colonyos.natsserver import NatsServer
from colonyos.security.serverconf import ServerKeys, secure_config

from .conftest import roomy_config
from .helpers import until
from .procs import TASKS, Child, free_port, output, said


@pytest.fixture
def broker_settings(broker_settings: BrokerSettings) -> BrokerSettings:
    return msgspec.structs.replace(broker_settings, executor_liveness_s=60.0)


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
        # The key is the session's (COLONIES_IDENTITY), unless the arguments name another.
        env = {
            "COLONIES_NATS_URL": nats or settings.nats_url,
            "COLONIES_PREFIX": settings.prefix,
            "COLONIES_COLONY_NAME": settings.colony,
        }
        child = Child(list(args), tmp_path / f"child-{len(children)}.log", env).start()
        children.append(child)
        return child

    return go


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


def refused(url: str, name: str, colony: str) -> str:
    """What an executor says when the server does not let it in (it does not say why)."""
    return f"{name}: not allowed: the NATS server at {url} refused {name!r} in colony {colony!r}"


def refusals(caplog: pytest.LogCaptureFixture, name: str, colony: str) -> int:
    """How often the broker's callout refused ``name`` in ``colony`` (it logs each)."""
    head = f"refused {name} in {colony}: "
    return sum(r.getMessage().startswith(head) for r in caplog.records)


# Refused once (the signal comes as the first refusal is said), or over three connects (the
# second and third said too, were it said more than once): at least once by each signal.
@pytest.mark.parametrize(
    ("sig", "connects"), [(signal.SIGINT, 3), (signal.SIGTERM, 1)], ids=["SIGINT", "SIGTERM"]
)
async def test_an_unknown_colony_is_said_once_and_a_signal_stops_it(
    client: Client, start, sig: signal.Signals, connects: int, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="colonyos.broker.callout")
    child = start("--colony", "nosuch", "executor", "start", "echo", "--name", "echo-x")
    line = refused(client.settings.nats_url, "echo-x", "nosuch")
    out = await said(child, line)
    assert "the colony does not exist (create it with 'colonies colony add')" in out
    # The callout logs each refusal. A connect is refused ``per_connect`` times (the client's
    # attempts) before the line is said; it connects again after 1 s, then 2 s: a refusal
    # past ``connects - 1`` connects' means those connects have all been said.
    per_connect = refusals(caplog, "echo-x", "nosuch")
    assert per_connect > 0
    past = (connects - 1) * per_connect
    await until(lambda: refusals(caplog, "echo-x", "nosuch") > past, timeout=20)
    assert any("there is no colony 'nosuch'" in r.getMessage() for r in caplog.records)
    send(child, sig)
    assert await exit_code(child) == 0
    out = output(child)
    assert out.count(line) == 1, out
    assert "waiting for work" not in out and "cannot reach NATS" not in out
    assert out.rstrip().endswith("handled 0 processes")


@pytest.mark.parametrize("sig", [signal.SIGINT], ids=lambda s: s.name)
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


@pytest.fixture
def patient_nats_url(tmp_path: Path) -> Iterator[str]:
    """A secure nats-server of its own, configured as ``colonies server config`` writes it but
    giving the callout 5 s to answer (its auth timeout; 2 s by default), longer than a client
    waits for its connect to be answered. No broker runs for it."""
    keys = ServerKeys.load_or_create(tmp_path / "keys")
    config = tmp_path / "nats.conf"
    text = secure_config(roomy_config(), keys)
    config.write_text(text.replace("auth_callout {", "timeout: 5\n  auth_callout {", 1))
    server = NatsServer(tmp_path / "js", port=0, config=config).start()
    yield server.url
    # Killed: it keeps nothing, and its graceful stop took about 3 s.
    server.kill()


async def test_no_broker_is_said_and_a_signal_stops_it(start, patient_nats_url: str) -> None:  # type: ignore[no-untyped-def]
    # NATS answers (and asks for a key); no broker answers its callout, so the server lets no
    # one in. Its refusal comes after its auth timeout, here later than the client gives up
    # on the connect: that is still "not let in", not "cannot reach NATS", which would send
    # the user to look for a server that runs.
    child = start("executor", "start", "echo", "--name", "early", nats=patient_nats_url)
    line = refused(patient_nats_url, "early", "dev")
    out = await said(child, line, timeout=30)
    assert "no broker is running to let it in" in out
    send(child, signal.SIGTERM)
    assert await exit_code(child) == 0
    out = output(child)
    assert out.count(line) == 1, out
    assert "waiting for work" not in out and "cannot reach NATS" not in out


@pytest.fixture(scope="module")
def own_key(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A key of the executor's own, made as its user makes one (``colonies key generate``): not
    a colony owner's, so its executor waits for approval. The seed file's path. One for the
    module: each test has a prefix (an installation) of its own, where the key is new."""
    home = tmp_path_factory.mktemp("own-key")
    path = home / "worker.nk"
    child = Child(["key", "generate", "--out", str(path)], home / "key.log", {}).start()
    assert child.proc is not None
    assert child.proc.wait(20) == 0, output(child)
    assert output(child).split()[-1].startswith("U"), output(child)  # its public key, last
    return str(path)


async def approve(settings: Settings, colony: str, name: str) -> None:
    """The colony's owner (the session's key, as tester) approves ``name``."""
    lab = msgspec.structs.replace(settings, colony=colony)
    async with await Client.connect(lab, caller="tester") as owner:
        await owner.executor_approve(name)


@pytest.mark.parametrize("sig", [signal.SIGTERM], ids=lambda s: s.name)
async def test_pending_approval_is_said_then_approval_is_learned(
    client: Client, settings: Settings, start, own_key: str, sig: signal.Signals
) -> None:  # type: ignore[no-untyped-def]
    await client.colony_add("lab")  # not auto-approve: the owner approves each executor
    args = ("--identity", own_key, "--colony", "lab", "executor", "start", "echo", "--name", "ed")
    child = start(*args)
    pending = "pending approval by the colony owner: colonies executor approve --name ed"
    await said(child, pending)
    assert "waiting for work" not in output(child)
    await approve(settings, "lab", "ed")
    await said(child, "ed: waiting for work")
    send(child, sig)
    assert await exit_code(child) == 0
    assert output(child).count(pending) == 1


@pytest.mark.parametrize("sig", [signal.SIGINT], ids=lambda s: s.name)
async def test_a_signal_stops_it_pending(
    client: Client, start, own_key: str, sig: signal.Signals
) -> None:  # type: ignore[no-untyped-def]
    await client.colony_add("lab")
    args = ("--identity", own_key, "--colony", "lab", "executor", "start", "echo", "--name", "ed")
    child = start(*args)
    await said(child, "pending approval by the colony owner")
    send(child, sig)
    assert await exit_code(child) == 0
    assert "waiting for work" not in output(child)


@pytest.mark.parametrize("sig", [signal.SIGTERM], ids=lambda s: s.name)
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
        (["--colony", "nosuch"], "refused 'b' in colony 'nosuch'"),
        (["--colony", "lab"], "approve it with 'colonies executor approve --name b'"),
    ],
    ids=["unknown-colony", "pending"],
)
async def test_burst_fails_fast_with_the_reason(
    client: Client, start, own_key: str, args: list[str], reason: str
) -> None:  # type: ignore[no-untyped-def]
    await client.colony_add("lab")
    child = start(
        "--identity", own_key, *args, "executor", "start", "echo", "--name", "b", "--burst"
    )
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
    traceback (draining a connection that is reconnecting raised).

    Its own server, insecure: the server is gone by the time the client closes, so what it
    checks is the client's close path alone, which no auth takes part in; a secure server would
    add a broker of its own to let the client in, and a broker to stop with NATS away."""
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
