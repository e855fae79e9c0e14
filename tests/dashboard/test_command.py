"""`colonies dashboard` as a user runs it: it says where it listens, reads as that user, warns
when it listens beyond this machine, and Ctrl-C stops it cleanly."""

from __future__ import annotations

import signal
from pathlib import Path

import aiohttp
import pytest

from colonyos.client import Client
from colonyos.config import Settings

from ..helpers import base_args, until
from ..procs import Child, free_port


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
async def test_serves_as_its_user_until_ctrl_c(
    client: Client, settings: Settings, tmp_path: Path, host: str
) -> None:
    port = free_port()
    log = tmp_path / "dashboard.log"
    args = [*base_args(settings), "--as", "tester", "dashboard", "--port", str(port)]
    child = Child([*args, "--host", host], log, {"COLUMNS": "80"}).start()
    assert child.proc is not None
    try:
        await until(lambda: "Ctrl-C stops it" in log.read_text(), timeout=30)
        text = log.read_text()
        assert f"dashboard http://{host}:{port}/" in text
        assert "read as tester" in text
        assert ("anyone who reaches it" in text) is (host == "0.0.0.0"), text
        url = f"http://127.0.0.1:{port}/api/whoami"
        async with aiohttp.ClientSession() as http, http.get(url) as r:
            assert (await r.json())["name"] == "tester"
    finally:
        child.proc.send_signal(signal.SIGINT)
        code = child.proc.wait(30)
    assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text()
