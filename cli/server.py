"""``colonies server start``, ``colonies broker start`` and ``colonies dev``."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import typer

from colonyos.broker import Broker
from colonyos.client import Client
from colonyos.config import BrokerSettings, Settings
from colonyos.errors import ConflictError
from colonyos.executor import ExecutorApp
from colonyos.natsserver import NatsServer, NatsServerError

from ._common import settings_of
from ._executors import build_executor
from ._output import console
from ._run import fail, run

server_app = typer.Typer(help="The embedded NATS server with a broker.", no_args_is_help=True)
broker_app = typer.Typer(help="The broker alone, against a NATS server.", no_args_is_help=True)

_DATA_DIR = typer.Option(
    Path(".colonies"), "--data-dir", envvar="COLONIES_DATA_DIR", help="Where data is kept."
)
_PORT = typer.Option(4222, "--port", help="NATS client port on 127.0.0.1 (0: any free port).")
_CONFIG = typer.Option(
    None, "--config", help="nats-server config file (default: ./nats.conf if present)."
)


def _config(path: Path | None) -> Path | None:
    if path is not None:
        if not path.is_file():
            raise fail(f"config {path}: no such file")
        return path
    default = Path("nats.conf")
    return default if default.is_file() else None


async def _until_signalled(*stoppers: asyncio.Event) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _serve(
    settings: Settings,
    data_dir: Path,
    port: int,
    config: Path | None,
    *,
    dev: bool,
) -> None:
    try:
        server = NatsServer(data_dir / "jetstream", port=port, config=config).start()
    except NatsServerError as err:
        raise fail(str(err)) from None
    settings = Settings(nats_url=server.url, colony=settings.colony, prefix=settings.prefix)
    broker = Broker(
        BrokerSettings.from_env(nats_url=server.url, prefix=settings.prefix, data_dir=data_dir)
    )
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(server.stop)
        broker_task = asyncio.create_task(broker.run())
        stack.push_async_callback(_stop_broker, broker, broker_task)
        await _wait_ready(broker, broker_task, lead=True)
        executor_task = None
        if dev:
            async with await Client.connect(settings, name="colonies-dev") as client:
                with contextlib.suppress(ConflictError):
                    await client.colony_add(settings.colony, auto_approve=True)
            executor = build_executor("echo", settings, "echo", "echo-dev")
            executor_task = asyncio.create_task(executor.run())
            stack.push_async_callback(_stop_executor, executor, executor_task)
            await executor.ready.wait()
        _banner(server, data_dir, settings, dev)
        await _until_signalled()
        console.print("stopping…")


async def _wait_ready(broker: Broker, task: asyncio.Task[None], *, lead: bool = False) -> None:
    """Until the broker stands (as leader or standby), or with ``lead`` until it serves."""
    ready = asyncio.create_task((broker.leading if lead else broker.ready).wait())
    await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()


async def _stop_broker(broker: Broker, task: asyncio.Task[None]) -> None:
    broker.stop()
    await task


async def _stop_executor(executor: ExecutorApp, task: asyncio.Task[int]) -> None:
    executor.stop()
    await task


def _banner(server: NatsServer, data_dir: Path, settings: Settings, dev: bool) -> None:
    console.print(f"[green]NATS[/] {server.url}   data in {data_dir}/   prefix {settings.prefix}")
    console.print("[green]broker[/] ready")
    if dev:
        console.print(f"[green]colony[/] {settings.colony} (executors approved automatically)")
        console.print("[green]executor[/] echo-dev (type echo)")
        console.print("\nIn another terminal, try:")
        console.print("  colonies function submit --spec examples/echo.json --wait")
        console.print("  colonies process pss")
        console.print("  colonies log get --process <process id>")
    console.print("\nCtrl-C stops everything; data is kept for the next start.")


@server_app.command("start")
def server_start(
    ctx: typer.Context,
    data_dir: Path = _DATA_DIR,
    port: int = _PORT,
    config: Path | None = _CONFIG,
) -> None:
    """Start an embedded NATS server (JetStream) and a broker, in the foreground."""
    run(_serve(settings_of(ctx), data_dir, port, _config(config), dev=False))


@broker_app.command("start")
def broker_start(
    ctx: typer.Context,
    data_dir: Path = _DATA_DIR,
) -> None:
    """Start a broker against --nats; run several for fail-over (one leads, others stand by)."""
    settings = settings_of(ctx)

    async def go() -> None:
        broker = Broker(
            BrokerSettings.from_env(
                nats_url=settings.nats_url, prefix=settings.prefix, data_dir=data_dir
            )
        )
        task = asyncio.create_task(broker.run())
        try:
            await _wait_ready(broker, task)
            console.print(f"[green]broker[/] ready on {settings.nats_url}")
            await _until_signalled()
        finally:
            await _stop_broker(broker, task)

    run(go())


def dev(
    ctx: typer.Context,
    data_dir: Path = _DATA_DIR,
    port: int = _PORT,
    config: Path | None = _CONFIG,
) -> None:
    """Everything for development: NATS, a broker, colony 'dev' and an echo executor."""
    run(_serve(settings_of(ctx), data_dir, port, _config(config), dev=True))
