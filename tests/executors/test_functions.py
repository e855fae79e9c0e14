"""A function cannot take its executor down: whatever it returns or raises fails its own
process with a clear error (the type, and its traceback in the process log), and the executor
goes on. Sizes follow the NATS server's max_payload: outputs, log lines, log and result
batches."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest

from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.executor import ExecutorApp, ProcessContext
from colonyos.executor.results import ResultSender
from colonyos.messages import Close
from colonyos.models import Conditions, FunctionSpec, Process, ProcessState
from colonyos.natsserver import NatsServer
from colonyos.security.serverconf import ServerKeys, secure_config

from ..conftest import open_colony, roomy_config, running_broker
from ..helpers import executor_client, server_seeds
from ..procs import free_port

SMALL_PAYLOAD = 64 * 1024


def fspec(func: str, etype: str = "fn") -> FunctionSpec:
    return FunctionSpec(func_name=func, conditions=Conditions(executor_type=etype))


async def submit_all(client: Client, *funcs: str, etype: str = "fn") -> dict[str, Process]:
    out = {}
    for func in funcs:
        p = await client.submit(fspec(func, etype))
        assert isinstance(p, Process)
        out[func] = p
    return out


async def logs_of(client: Client, pid: str) -> list[str]:
    return [line.message async for line in client.logs(pid)]


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


class NeedsArguments(Exception):
    def __init__(self, a: int, b: int) -> None:  # `raise NeedsArguments` cannot build it
        super().__init__(a, b)


class NotAnException(BaseException):
    pass


def unencodable() -> object:
    return object()


def self_referencing() -> list[object]:
    loop: list[object] = []
    loop.append(loop)
    return loop


def unprintable() -> None:
    raise Unprintable()


def exits() -> None:
    sys.exit(3)


async def exits_async() -> None:
    sys.exit(4)


async def interrupts() -> None:
    raise KeyboardInterrupt


async def base_exception() -> None:
    raise NotAnException("beyond Exception")


async def cancels_itself() -> None:
    raise asyncio.CancelledError


def broken_constructor() -> None:
    raise NeedsArguments  # type: ignore[call-arg]


def fine() -> str:
    return "fine"


MISBEHAVING = [
    unencodable,
    self_referencing,
    unprintable,
    exits,
    exits_async,
    interrupts,
    base_exception,
    cancels_itself,
    broken_constructor,
]


def functions(app: ExecutorApp) -> None:
    """One function per way of going wrong, and two that go right."""
    for fn in [*MISBEHAVING, fine]:
        app.function(fn)

    @app.handler("returns_none")
    async def returns_none(ctx: ProcessContext) -> list[object]:
        return None  # type: ignore[return-value]


async def test_whatever_a_function_does_fails_only_its_own_process(
    client: Client, settings: Settings
) -> None:
    app = ExecutorApp("fn", "fn-1", settings=settings, concurrency=3)
    functions(app)
    names = [fn.__name__ for fn in MISBEHAVING] + ["returns_none", "fine"]
    ps = await submit_all(client, *names)
    assert await asyncio.wait_for(app.run(burst=True), timeout=20) == len(names)
    done = {name: await client.wait(p.process_id, timeout=10) for name, p in ps.items()}
    failed = {name: p.errors for name, p in done.items() if p.state is ProcessState.FAILED}
    assert set(failed) == set(names) - {"returns_none", "fine"}, failed
    assert done["fine"].output == ["fine"] and done["returns_none"].output == []
    expect = {
        "unencodable": "the output of unencodable cannot be stored as JSON: TypeError",
        "self_referencing": "the output of self_referencing cannot be stored as JSON",
        "unprintable": "Unprintable: <str() of the exception failed: RuntimeError>",
        "exits": "SystemExit: 3",
        "exits_async": "SystemExit: 4",
        "interrupts": "KeyboardInterrupt",
        "base_exception": "NotAnException: beyond Exception",
        "cancels_itself": "CancelledError",
        "broken_constructor": "TypeError: ",
    }
    for name, start in expect.items():
        assert failed[name][0].startswith(start), (name, failed[name])
    # The function's traceback is in its process's log.
    log = await logs_of(client, ps["exits_async"].process_id)
    assert log[0] == "Traceback (most recent call last):" and log[-1] == "SystemExit: 4"
    assert any("in exits_async" in line for line in log)
    log = await logs_of(client, ps["unprintable"].process_id)
    assert any("in unprintable" in line for line in log)


async def test_an_executor_goes_on_after_its_function_misbehaves(
    client: Client, settings: Settings
) -> None:
    """Not in burst mode: after each bad process it keeps taking work."""
    app = ExecutorApp("fn", "fn-2", settings=settings)
    functions(app)
    runner = asyncio.create_task(app.run())
    try:
        for bad in ("exits_async", "interrupts", "unencodable", "cancels_itself"):
            ps = await submit_all(client, bad, "fine")
            assert (await client.wait(ps[bad].process_id, timeout=10)).state is ProcessState.FAILED
            ok = await client.wait(ps["fine"].process_id, timeout=10)
            assert ok.state is ProcessState.SUCCESS
        assert not runner.done()
    finally:
        app.stop()
        await asyncio.wait_for(runner, timeout=10)


# -- sizes, on a server with a small max_payload -----------------------------------------
@pytest.fixture
def small_nats(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A secure nats-server of its own whose max_payload is small: its URL and keys."""
    keys = ServerKeys.load_or_create(tmp_path / "keys")
    config = tmp_path / "small.conf"
    small = re.sub(r"max_payload: \S+", f"max_payload: {SMALL_PAYLOAD}", roomy_config())
    config.write_text(secure_config(small, keys))
    server = NatsServer(tmp_path / "js", port=free_port(), config=config)
    server_seeds[server.url] = keys.broker.seed
    server.start()
    yield server.url, tmp_path / "keys"
    server.stop()


@pytest.fixture
def small_settings(small_nats: tuple[str, Path], settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, nats_url=small_nats[0])


@pytest.fixture
async def small(
    small_nats: tuple[str, Path], small_settings: Settings, prefix: str
) -> AsyncIterator[Client]:
    url, keys_dir = small_nats
    broker = BrokerSettings(nats_url=url, prefix=prefix, storage="memory", keys_dir=keys_dir)
    async with running_broker(broker, owners=True):
        await open_colony(small_settings)
        c = await Client.connect(small_settings, caller="tester")
        assert c.nc.max_payload == SMALL_PAYLOAD
        yield c
        await c.aclose()


async def test_an_output_too_large_for_a_record_fails_with_its_size_and_the_limit(
    small: Client, small_settings: Settings
) -> None:
    app = ExecutorApp("fn", "fn-s", settings=small_settings)

    @app.function
    def big() -> str:
        return "x" * SMALL_PAYLOAD

    @app.function
    def fine() -> str:
        return "fine"

    ps = await submit_all(small, "big", "fine")
    assert await asyncio.wait_for(app.run(burst=True), timeout=20) == 2
    big_p = await small.wait(ps["big"].process_id, timeout=10)
    assert big_p.state is ProcessState.FAILED
    (error,) = big_p.errors
    assert error.startswith("the output of big is too large: the process record with it would be")
    assert f"max_payload of {SMALL_PAYLOAD} bytes" in error
    assert (await small.wait(ps["fine"].process_id, timeout=10)).output == ["fine"]


async def test_long_lines_and_large_logs_are_split_to_fit(
    small: Client, small_settings: Settings
) -> None:
    app = ExecutorApp("fn", "fn-l", settings=small_settings)
    long_line = "".join(chr(ord("a") + i % 26) for i in range(3 * SMALL_PAYLOAD))
    many = [f"line {i:05d} " + "y" * 90 for i in range(2000)]  # 200 KB in one flush

    @app.function
    def chatty() -> str:
        print(long_line)
        print("\n".join(many))
        return "said it all"

    ps = await submit_all(small, "chatty")
    assert await asyncio.wait_for(app.run(burst=True), timeout=20) == 1
    done = await small.wait(ps["chatty"].process_id, timeout=10)
    assert done.state is ProcessState.SUCCESS and done.output == ["said it all"]
    log = await logs_of(small, ps["chatty"].process_id)
    assert log[-2000:] == many
    pieces = log[:-2000]
    assert len(pieces) > 1 and "".join(pieces) == long_line


async def test_result_batches_are_split_to_fit(small: Client, small_settings: Settings) -> None:
    """Results that finish together go in as few requests as fit in max_payload each."""
    ps = await submit_all(small, *(f"f{i}" for i in range(4)))
    async with executor_client(small_settings, "raw", "fn") as raw:
        assigned: list[Process] = []
        async with asyncio.timeout(10):
            while len(assigned) < 4:
                assigned += await raw.assign_many(4 - len(assigned), timeout=2)
        sender = ResultSender(raw)
        third = "z" * (SMALL_PAYLOAD // 3)  # two fit in a request, four do not
        await asyncio.gather(
            *(
                sender.send(Close(process_id=p.process_id, output=[third], attempt=p.attempt))
                for p in assigned
            )
        )
    for p in ps.values():
        done = await small.wait(p.process_id, timeout=10)
        assert done.state is ProcessState.SUCCESS and done.output == [third]


async def test_a_result_refused_for_a_reason_fails_the_process_and_is_not_retried(
    small: Client, small_settings: Settings
) -> None:
    (p,) = (await submit_all(small, "f")).values()
    async with executor_client(small_settings, "raw", "fn") as raw:
        got = await raw.assign(timeout=5)
        assert got is not None
        app = ExecutorApp("fn", "raw", settings=small_settings)
        too_big = Close(process_id=got.process_id, output=["x" * SMALL_PAYLOAD], attempt=0)
        await asyncio.wait_for(app._finish(ResultSender(raw), too_big), timeout=10)
    done = await small.wait(p.process_id, timeout=10)
    assert done.state is ProcessState.FAILED
    assert done.errors[0].startswith("the broker refused the output:")


async def test_a_process_log_holds_what_its_function_says_and_nothing_of_the_executor(
    client: Client, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    console = _ToStdout()  # as the CLI's console handler: it writes to sys.stdout of the moment
    logging.getLogger().addHandler(console)
    app = ExecutorApp("fn", "fn-log", settings=settings)

    @app.function
    def talks() -> None:
        print("printed")
        logging.getLogger("user.code").warning("logged")
        raise ValueError("and failed")

    ps = await submit_all(client, "talks")
    try:
        assert await asyncio.wait_for(app.run(burst=True), timeout=20) == 1
    finally:
        logging.getLogger().removeHandler(console)
    pid = ps["talks"].process_id
    log = await logs_of(client, pid)
    assert log[:2] == ["printed", "logged"] and log[-1] == "ValueError: and failed"
    assert not any(pid in line for line in log)  # the executor's own lines name the process
    said = [(r.name, r.getMessage()) for r in caplog.records]
    assert any(name.startswith("colonyos") and pid in message for name, message in said)
    assert ("user.code", "logged") not in said  # the function's record went to its log only


class _ToStdout(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        sys.stdout.write(self.format(record) + "\n")
