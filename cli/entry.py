"""The ``colonies`` entry point: the command line is imported under a guard, so that Ctrl-C in
its first instant (while Python imports it) exits quietly with code 130, as it does later.

nats-py imports aiohttp whenever it is installed (for ``ws://`` servers), which costs every
command 0.15-0.2 s of its start on the machines of the benchmarks; only the dashboard (``colonies
dashboard``, and ``colonies dev``, which starts it) and websocket URLs need it. Other commands
start without it."""

from __future__ import annotations

import os
import sys

# Commands that serve the dashboard, which is built on aiohttp.
_WEB_COMMANDS = frozenset({"dashboard", "dev"})


def needs_aiohttp(argv: list[str], env: dict[str, str] | os._Environ[str]) -> bool:
    """Might this command line use aiohttp? (A false yes only costs the import.)"""
    urls = [*argv, env.get("COLONIES_NATS_URL", "")]
    return bool(_WEB_COMMANDS.intersection(argv)) or any(
        "ws://" in u or "wss://" in u for u in urls
    )


def main() -> None:
    if "aiohttp" not in sys.modules and not needs_aiohttp(sys.argv[1:], os.environ):
        sys.modules["aiohttp"] = None  # type: ignore[assignment]  # nats-py then does without
    try:
        from .main import main as run_cli
    except KeyboardInterrupt:
        sys.exit(130)
    run_cli()
