"""The embedded server: the packaged config wherever it starts, ports that say when they are
busy, and a store directory one server at a time."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from colonyos.cli._run import ExitCode
from colonyos.natsserver import (
    NatsServer,
    NatsServerError,
    PortInUseError,
    StoreInUseError,
    packaged_config,
)

ROOT = Path(__file__).parents[1]
COLONIES = [sys.executable, "-m", "colonyos.cli.main"]
EIGHT_MIB = 8 * 1024 * 1024


def test_the_top_level_nats_conf_is_the_packaged_one() -> None:
    """docker-compose.yml mounts ./nats.conf; `colonies server start` uses the packaged copy.
    They are one configuration: edit colonyos/nats.conf and copy it over."""
    with packaged_config() as packaged:
        assert packaged.read_bytes() == (ROOT / "nats.conf").read_bytes()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "nats.conf" in pyproject["tool"]["setuptools"]["package-data"]["colonyos"]


async def _max_payload(url: str) -> int:
    """From the INFO a server sends every connection before it authenticates (a secure
    server refuses everything after it to a connection without a key)."""
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        async with asyncio.timeout(10):
            info = json.loads((await reader.readline()).split(b" ", 1)[1])
        return int(info["max_payload"])
    finally:
        writer.close()
        await writer.wait_closed()


async def test_the_packaged_config_gives_its_limits_wherever_it_starts(tmp_path: Path) -> None:
    with packaged_config() as conf, NatsServer(tmp_path / "js", port=0, config=conf) as server:
        assert await _max_payload(server.url) == EIGHT_MIB


def _refused(server: NatsServer) -> NatsServerError:
    """Why ``server`` does not start (stopped at once, should it start after all)."""
    try:
        server.start()
    except NatsServerError as err:
        return err
    server.stop()
    pytest.fail(f"a second server started on {server.url}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(tmp_path / "first", port=0, http_port=0) as s:
        yield s


def test_port_zero_picks_free_ports_for_both(server: NatsServer, tmp_path: Path) -> None:
    assert server.port and server.http_port and server.port != server.http_port
    with NatsServer(tmp_path / "second", port=0, http_port=0) as other:
        assert {other.port, other.http_port}.isdisjoint({server.port, server.http_port})


def test_a_busy_client_port_is_named(server: NatsServer, tmp_path: Path) -> None:
    err = _refused(NatsServer(tmp_path / "second", port=server.port))
    assert isinstance(err, PortInUseError)
    assert err.kind == "client" and err.port == server.port
    assert str(err) == f"the NATS client port 127.0.0.1:{server.port} is in use"


def test_a_busy_monitoring_port_is_named(server: NatsServer, tmp_path: Path) -> None:
    assert server.http_port is not None
    err = _refused(NatsServer(tmp_path / "second", port=0, http_port=server.http_port))
    assert isinstance(err, PortInUseError)
    assert err.kind == "monitoring" and err.port == server.http_port


def test_one_store_directory_one_server(server: NatsServer) -> None:
    err = _refused(NatsServer(server.store_dir, port=0))
    # Both named: the nats-server holds the directory still if the process that started it
    # was killed (SIGKILL: it runs in a session of its own), and is the one to stop then.
    assert isinstance(err, StoreInUseError) and server.proc is not None
    assert f"(nats-server pid {server.proc.pid}, started by pid {os.getpid()})" in str(err)
    server.stop()  # released with the server: it starts again on the same directory
    server.start()


def test_any_other_failure_is_one_line(tmp_path: Path) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text("max_payload: 8MB\nno_such_setting: 1\n")
    message = str(_refused(NatsServer(tmp_path / "js", port=0, config=conf)))
    assert "\n" not in message and 'unknown field "no_such_setting"' in message


def _colonies(*args: str, cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [*COLONIES, *args],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "COLUMNS": "80"},
        )


async def _banner_port(proc: subprocess.Popen[bytes], log: Path) -> int:
    async with asyncio.timeout(30):
        while True:
            text = log.read_text()
            m = re.search(r"NATS nats://127\.0\.0\.1:(\d+)", text)
            if m and "Ctrl-C stops everything" in text:
                return int(m[1])
            assert proc.poll() is None, text
            await asyncio.sleep(0.1)  # sleep-ok: polling the banner under a deadline


def _interrupt(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(10)


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_two_dev_servers_outside_the_repository(tmp_path: Path) -> None:
    """Started from a directory with no nats.conf: the packaged limits; a second one with
    --port 0 runs beside the first; one on a busy port says so in one line."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = _colonies("dev", "--port", "0", "--data-dir", "a", cwd=elsewhere, log=first_log)
    second = None
    try:
        port = await _banner_port(first, first_log)
        assert await _max_payload(f"nats://127.0.0.1:{port}") == EIGHT_MIB
        # The banner says where the broker's metrics are, and they are there.
        metrics = re.search(r"metrics (http://127\.0\.0\.1:\d+/metrics)", first_log.read_text())
        assert metrics is not None, first_log.read_text()
        with urllib.request.urlopen(metrics[1], timeout=5) as reply:
            assert b"colonies_broker_leading 1.0" in reply.read()
        second = _colonies("dev", "--port", "0", "--data-dir", "b", cwd=elsewhere, log=second_log)
        assert await _banner_port(second, second_log) != port
        busy = subprocess.run(
            [*COLONIES, "server", "start", "--port", str(port), "--data-dir", "c"],
            cwd=elsewhere,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "80"},
        )
        assert busy.returncode == ExitCode.SYSTEM  # the system could not do it (docs/cli.md)
        lines = [line for line in busy.stderr.splitlines() if line.strip()]
        assert len(lines) <= 2, busy.stderr  # one line, which a terminal may wrap once
        said = " ".join(lines)
        assert f"127.0.0.1:{port} is in use" in said and "--port" in said
        assert "Traceback" not in busy.stderr and "[INF]" not in busy.stderr
    finally:
        codes = [_interrupt(p) for p in (first, second) if p is not None]
    assert codes == [0] * len(codes), first_log.read_text()


def test_a_server_on_another_port_gets_its_monitoring_port_beside_it() -> None:
    from colonyos.cli.server import _http_port

    assert _http_port(4222, None) == 8222
    assert _http_port(4223, None) == 8223  # a second server: no clash on 8222
    assert _http_port(0, None) == 0  # --port 0: free ports for both
    assert _http_port(64000, None) == 0
    assert _http_port(4222, 0) is None  # --http-port 0: none
    assert _http_port(4222, 9000) == 9000


def test_the_first_steps_work_wherever_dev_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside the repository there is no examples/ folder, and on another port the other
    terminal needs the URL: the banner's steps say both, and its spec is a valid one."""
    from colonyos.cli.server import _first_steps
    from colonyos.specs import load_function_spec

    monkeypatch.chdir(tmp_path)
    steps = _first_steps("nats://127.0.0.1:4999")
    assert steps[0] == "export COLONIES_NATS_URL=nats://127.0.0.1:4999"
    subprocess.run(steps[1], shell=True, cwd=tmp_path, check=True)
    spec, warnings = load_function_spec((tmp_path / "hello.json").read_bytes(), strict=True)
    assert spec.conditions.executor_type == "echo" and not warnings
    assert "--spec hello.json" in steps[2]
    assert _first_steps("nats://127.0.0.1:4222")[0].startswith("echo ")


async def test_a_broker_will_not_run_on_a_server_with_no_room_for_records(
    tmp_path: Path,
) -> None:
    """Rather than refuse every spec and output as too large, one at a time."""
    from colonyos.broker import Broker
    from colonyos.config import BrokerSettings
    from colonyos.errors import ServerSetupError

    conf = tmp_path / "small.conf"
    conf.write_text("max_payload: 16KB\n")
    server = NatsServer(tmp_path / "js", port=0, config=conf)
    server.start()
    try:
        broker = Broker(BrokerSettings(nats_url=server.url, prefix="small"))
        with pytest.raises(
            ServerSetupError, match=r"max_payload is 16,384 bytes; .* at least 65,536"
        ):
            async with asyncio.timeout(30):
                await broker.run()
    finally:
        server.stop()
