"""What the executors that hand work to a platform (a container runtime, Slurm, Kubernetes)
share: running the platform's commands, cleaning up even while being cancelled, and where they
keep what must survive a restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from colonyos.execution import ProcessFailure

__all__ = [
    "Completed",
    "PlatformError",
    "command",
    "default_state_dir",
    "finish_anyway",
    "need",
    "remove_tree",
]

T = TypeVar("T")


class PlatformError(ProcessFailure):
    """The platform refused or failed a step: the message says which and why."""


@dataclass(frozen=True, slots=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str

    def why(self) -> str:
        """What the command said about its failure (its stderr, else its stdout)."""
        return (self.stderr.strip() or self.stdout.strip() or f"exit code {self.returncode}")[
            -2000:
        ]


async def command(
    *argv: str, cwd: str | None = None, env: dict[str, str] | None = None
) -> Completed:
    """Run a platform command to its end, its output captured."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=env,
    )
    try:
        out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Completed(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


async def finish_anyway(step: Awaitable[T]) -> T:
    """Await ``step`` to its end even if the caller is cancelled meanwhile (stopping a
    container or a job must not be cut short by the cancellation that asked for it); the
    cancellation is raised again afterwards."""
    task: asyncio.Future[T] = asyncio.ensure_future(step)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


def need(program: str, what: str) -> str:
    """The path of ``program``, or a PlatformError saying the executor needs it."""
    path = shutil.which(program)
    if path is None:
        raise PlatformError(f"{program!r} is not found on PATH: {what}")
    return path


def default_state_dir(kind: str, colony: str, name: str) -> Path:
    """Where an executor keeps what must survive a restart (its registration id, what it
    started): ``$XDG_STATE_HOME/colonies/<kind>/<colony>/<name>``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(base) / "colonies" / kind / colony / name


def remove_tree(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)
