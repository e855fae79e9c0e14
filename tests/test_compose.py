"""docker-compose.yml, run as it says with local processes (Docker's engine need not be here):
its services' commands in its order, then the steps its header gives a newcomer, ending with
one spec submitted and its result back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from colonyos.natsserver import find_nats_server
from tests.helpers import until

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).parents[1]
COMPOSE = ROOT / "docker-compose.yml"
BIN = Path(sys.executable).parent
STEP = 60.0  # the most any one command or wait may take


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def _order(services: dict[str, Any]) -> list[str]:
    """Services in the order compose starts them: after what each depends on, else as listed."""
    done: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"depends_on cycle: {path}"
        if name in done:
            return
        for dep in services[name].get("depends_on", {}):
            visit(dep, (*path, name))
        done.append(name)

    for name in services:
        visit(name, ())
    return done


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


_VARIABLE = re.compile(r"\$\{(\w+)(?::?[-?][^}]*)?\}")


@dataclass
class Machine:
    """Containers as local processes: named volumes as directories under ``root``, each
    container's own files under a directory of its own, the host names of services as
    127.0.0.1."""

    root: Path
    env: dict[str, str]  # the shell's that runs `docker compose up` (and the user's steps)
    base: dict[str, str]  # what any process here needs (PATH): all a container gets besides
    hosts: dict[str, str] = field(default_factory=dict)  # "nats:4222" -> "127.0.0.1:PORT"
    running: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    ups: int = 0  # `docker compose up` so far: `down` then `up` makes new containers

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def _mounts(self, service: dict[str, Any]) -> list[tuple[str, Path]]:
        mounts = []
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            host = ROOT if source == "." else self.root / "volumes" / source
            host.mkdir(parents=True, exist_ok=True)
            mounts.append((target, host))
        return sorted(mounts, key=lambda m: -len(m[0]))

    def _path(self, arg: str, mounts: list[tuple[str, Path]], own: Path) -> str:
        if not arg.startswith("/"):
            return arg
        for target, host in mounts:
            if arg == target or arg.startswith(target + "/"):
                return str(host) + arg[len(target) :]
        return str(own) + arg  # the container's own files

    def _value(self, text: str) -> str:
        text = _VARIABLE.sub(lambda m: self.env[m[1]], str(text)).replace("$$", "$")
        for address, local in self.hosts.items():
            text = text.replace(f"//{address}", f"//{local}")
        return text

    def command(
        self, name: str, service: dict[str, Any], own: Path
    ) -> tuple[list[str], dict[str, str]]:
        mounts = self._mounts(service)
        argv = [self._path(self._value(a), mounts, own) for a in service["command"]]
        # Nothing of the host's user in a container: no home, no key.
        env = {**self.base, "HOME": str(own), "XDG_CONFIG_HOME": str(own / ".config")}
        for key, value in service.get("environment", {}).items():
            env[key] = self._path(self._value(value), mounts, own)
        if argv[0] == "colonies":
            argv[0] = str(BIN / "colonies")
        return argv, env

    def start(self, name: str, argv: list[str], env: dict[str, str], own: Path) -> None:
        own.mkdir(parents=True, exist_ok=True)
        self.log(name).parent.mkdir(parents=True, exist_ok=True)
        with self.log(name).open("wb") as out:
            proc = subprocess.Popen(argv, env=env, cwd=own, stdout=out, stderr=subprocess.STDOUT)
        self.running.append((name, proc))

    def stop(self) -> None:
        """`docker compose down`, without -v: the volumes stay."""
        for _, proc in reversed(self.running):
            proc.terminate()
        for _, proc in reversed(self.running):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.running.clear()

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')}"
            for p in sorted(self.log("x").parent.glob("*.log"))
        )


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, timeout=STEP, check=False)
    out = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, f"{shlex.join(argv)} exited {done.returncode}:\n{out}"
    return done.stdout.decode()


def _header_steps() -> list[str]:
    """The newcomer's steps in the file's header: ``#   command   # comment`` lines."""
    steps = []
    for line in COMPOSE.read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("#   "):
            steps.append(line[4:].split("  #")[0].strip())
    return steps


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[Machine]:
    home = tmp_path / "home"
    home.mkdir()
    base = {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "LANG": "C.UTF-8"}
    env = {**base, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    m = Machine(tmp_path, env, base)
    try:
        yield m
    finally:
        m.stop()


async def _up(m: Machine) -> None:
    """`docker compose up -d`: each service in order, waiting as its dependants ask."""
    services = _compose()["services"]
    m.ups += 1
    for name in _order(services):
        service = services[name]
        for dep, how in service.get("depends_on", {}).items():
            assert how["condition"] in {
                "service_completed_successfully",
                "service_healthy",
                "service_started",
            }, (name, dep, how)
        replicas = service.get("deploy", {}).get("replicas", 1)
        for i in range(replicas):
            own = m.root / "containers" / f"{name}-{i}.{m.ups}"
            own.mkdir(parents=True, exist_ok=True)
            if service.get("image", "").startswith("nats:"):
                await _start_nats(m, name, service, own)
                continue
            argv, env = m.command(name, service, own)
            if "restart" in service or "deploy" in service:  # a long-running service
                m.start(own.name, argv, env, own)
                if argv[1:3] == ["broker", "start"]:
                    log = m.log(own.name)
                    await until(lambda log=log: "ready on" in log.read_text(), timeout=STEP)
            else:
                _run(argv, env, own)
    # A broker stands once "ready"; one of them serves requests once it leads (as a newcomer
    # finds when the first command says no broker is answering yet).
    logs = [m.log(name) for name, _ in m.running if name.startswith("broker-")]
    await until(lambda: any(" leads" in log.read_text() for log in logs), timeout=STEP)


async def _start_nats(m: Machine, name: str, service: dict[str, Any], own: Path) -> None:
    """The nats image runs ``nats-server`` with the service's command; the compose file's
    port (4222) and monitoring port (8222) become free ones here, and its health check is
    polled."""
    argv, _ = m.command(name, service, own)
    port, monitor = _free_port(), _free_port()
    for flag, value in (("-a", "127.0.0.1"), ("-m", str(monitor))):
        argv[argv.index(flag) + 1] = value
    m.start(own.name, [find_nats_server(), *argv, "-p", str(port)], m.base, own)
    m.hosts[f"{name}:4222"] = f"127.0.0.1:{port}"
    check = service["healthcheck"]["test"]
    assert "http://127.0.0.1:8222/healthz" in check, check

    def healthy() -> bool:
        url = f"http://127.0.0.1:{monitor}/healthz"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
            return bool(r.status == 200)
        return False

    await until(healthy, timeout=STEP)


async def _submitted(m: Machine, step: str) -> None:
    """A submit step, run: its process ends SUCCESS with the echo's output."""
    argv = shlex.split(step)
    env = {**m.env, "COLONIES_NATS_URL": f"nats://{m.hosts['nats:4222']}"}
    out = _run([str(BIN / "colonies"), *argv[1:]], env, ROOT)
    shown = dict(line.split(None, 1) for line in out.splitlines()[1:] if " " in line)
    assert (shown.get("state"), shown.get("output")) == ("SUCCESS", "helloworld"), out + m.logs()


async def _follow_header(machine: Machine) -> None:
    steps = _header_steps()
    assert any(s.startswith("colonies function submit") for s in steps), steps
    for step in steps:
        if step.startswith("docker compose up"):
            await _up(machine)
        elif step.startswith("export "):
            variable = step.removeprefix("export ").split("=", 1)[0]
            script = f'{step}; printf %s "${variable}"'
            machine.env[variable] = _run(["bash", "-c", script], machine.env, ROOT)
        elif step.startswith("colonies function submit"):
            await _submitted(machine, step)
        else:
            argv = shlex.split(step)
            assert argv[0] == "colonies", step
            env = machine.env
            if machine.hosts:
                env = {**env, "COLONIES_NATS_URL": f"nats://{machine.hosts['nats:4222']}"}
            _run([str(BIN / "colonies"), *argv[1:]], env, ROOT)
    # Secure, as `colonies server start` is: the server asks every connection for a key.
    host, port = machine.hosts["nats:4222"].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        async with asyncio.timeout(STEP):
            info = json.loads((await reader.readline()).split(b" ", 1)[1])
    finally:
        writer.close()
        await writer.wait_closed()
    assert info.get("auth_required") is True, info


async def test_the_compose_file_runs_as_its_header_says_then_down_and_up_again_keeps_it(
    machine: Machine,
) -> None:
    """The header's steps work as written; then the second `docker compose up` finds the keys,
    the executor's key, the colony and its members in the volumes, and works as the first did.
    (One test: the second half starts where the first ends, and the header's run is the
    slowest part of either.)"""
    steps = _header_steps()
    await _follow_header(machine)
    machine.stop()
    await _up(machine)
    await _submitted(machine, next(s for s in steps if s.startswith("colonies function submit")))
