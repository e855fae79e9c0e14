"""``colonies dashboard``: the colony in a web browser, live (also started by ``colonies dev``).

The web server (aiohttp, the ``dashboard`` extra) loads only when a dashboard starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
from collections.abc import AsyncIterator

import typer

from colonyos.client import Client

from .._common import connect
from .._output import console, err
from .._run import fail, run

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "dashboard", "serving"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8100
# How long open pages' streams get to end when the dashboard stops.
_SHUTDOWN_S = 2.0


def _missing() -> typer.Exit:
    return fail(
        "the dashboard needs aiohttp, which this installation lacks: "
        "pip install 'colonyos[dashboard]'",
        3,
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.asynccontextmanager
async def serving(client: Client, host: str, port: int) -> AsyncIterator[str]:
    """The dashboard of ``client``'s colony, listening on ``host``:``port`` (0: a free port)
    while inside; yields its address. Raises ImportError without aiohttp, OSError if it
    cannot listen there."""
    from aiohttp import web

    from .web import HUB, make_app

    app = make_app(client, host=host)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=_SHUTDOWN_S)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        yield f"http://{shown}:{bound}/"
    finally:
        app[HUB].close()
        await runner.cleanup()


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def dashboard(
    ctx: typer.Context,
    port: int = typer.Option(
        DEFAULT_PORT, "--port", min=0, max=65535, help="Port to listen on (0: a free one)."
    ),
    host: str = typer.Option(
        DEFAULT_HOST,
        "--host",
        help="Address to listen on. Anyone who reaches it sees what you may see.",
    ),
) -> None:
    """Serve a live web page of the colony: processes, workflows, executors, logs. It reads
    as you (your key), changes nothing, and listens on 127.0.0.1 unless told."""
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        raise _missing() from None

    async def go() -> None:
        async with await connect(ctx) as client:
            await client.stats()  # no broker, not a member: said now, not in the page
            try:
                async with serving(client, host, port) as url:
                    if not is_loopback(host):
                        err.print(
                            f"[yellow]warning:[/] listening on {host}: anyone who reaches it "
                            f"sees colony {client.colony} as {client.caller} does (it has no "
                            "login of its own)"
                        )
                    console.print(f"[green]dashboard[/] {url}", highlight=False)
                    console.print(
                        f"colony {client.colony}, read as {client.caller}; Ctrl-C stops it"
                    )
                    await _until_signalled()
            except OSError as e:
                why = e.strerror or e
                raise fail(f"dashboard: cannot listen on {host}:{port}: {why}") from None

    run(go())
