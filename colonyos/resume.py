"""Taking work back after a restart, for executors whose processes outlive them.

A container, a Slurm job or a Kubernetes Job goes on running when the executor that started it
is killed. Such an executor keeps its registration id in a file (:class:`IdentityFile`): started
again, it registers under the same id, which the broker treats as the same run coming back, so
its processes stay assigned to it. It then asks its platform what it left running
(:class:`Resumable`), follows what is still its own and stops the rest (cancelled, or queued
again while it was away and perhaps running elsewhere now): nothing is lost or run twice.

The file is locked while a run uses it: a second start from the same state directory is
refused, rather than two runs sharing one registration.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from pathlib import Path
from typing import IO, Protocol

from colonyos.errors import StateDirInUseError

__all__ = ["IdentityFile", "Resumable"]


class Resumable(Protocol):
    """What an executor's platform still runs for it."""

    async def held(self) -> list[tuple[str, int]]:
        """(process id, attempt) of each piece of work an earlier run left on the platform."""
        ...

    async def abandon(self, process_id: str, attempt: int) -> None:
        """Stop and forget the work of an assignment that is no longer this executor's."""
        ...


class IdentityFile:
    """A registration id kept in ``path`` across restarts, locked while a run holds it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock: IO[str] | None = None
        self.reused = False

    def acquire(self) -> str:
        """The id kept in the file (a new one, written, if there is none). Raises
        :class:`StateDirInUseError` while another run holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = open(self.path.with_suffix(".lock"), "a+")  # noqa: SIM115 - held for the run
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise StateDirInUseError(
                f"another executor runs from {self.path.parent} (it holds {self.path.name}): "
                "stop it, or give this one another --state-dir",
                path=str(self.path.parent),
            ) from None
        self._lock = lock
        try:
            kept = self.path.read_text().strip()
        except FileNotFoundError:
            kept = ""
        if len(kept) == 64 and all(c in "0123456789abcdef" for c in kept):
            self.reused = True
            return kept
        return self.renew()

    def release(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def renew(self) -> str:
        """A new id, written (the kept one was removed by the colony's owner)."""
        new = secrets.token_hex(32)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(new + "\n")
        os.replace(tmp, self.path)
        self.reused = False
        return new
