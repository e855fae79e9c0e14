"""Real OS processes for fault tests: nats-server, brokers and executors that can be SIGKILLed."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from colonyos.errors import BrokerUnavailableError

T = TypeVar("T")

COLONIES = [sys.executable, "-m", "colonyos.cli.main"]


async def until_served(
    call: Callable[[], Awaitable[T]],
    *,
    errors: tuple[type[BaseException], ...] = (BrokerUnavailableError,),
    timeout: float = 30.0,
    every: float = 0.1,
) -> T:
    """Call until it stops raising ``errors`` (a broker starting, a cluster settling)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                return await call()
            except errors:
                await asyncio.sleep(every)  # sleep-ok: polling for a service under a deadline


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child:
    """A `colonies ...` command in its own process group, with its output in a file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]) -> None:
        self.args = args
        self.log = log
        self.env = {**os.environ, **env}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [*COLONIES, *self.args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        out.close()
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup, as a crash or a power cut of that process."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


# A module of functions for `colonies executor start python --module`: ``hold(path)`` holds its
# executor until ``path`` exists (and says it started, in ``path + ".started"``).
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
