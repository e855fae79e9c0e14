"""`colonies dev` as a newcomer runs it: everything up, a spec runs, Ctrl-C stops it all."""

from __future__ import annotations

import signal
from pathlib import Path

import aiohttp
import pytest

from colonyos.client import Client
from colonyos.config import Settings
from colonyos.models import Process, ProcessState
from colonyos.specs import load_function_spec

from ..helpers import until, wait_created
from ..procs import Child, free_port

EXAMPLES = Path(__file__).parents[2] / "examples"

pytestmark = pytest.mark.slow


async def test_dev_runs_a_spec_and_stops_cleanly(tmp_path: Path) -> None:
    port, board = free_port(), free_port()
    args = ["dev", "--port", str(port), "--data-dir", str(tmp_path / "data")]
    dev = Child([*args, "--dashboard-port", str(board)], tmp_path / "dev.log", {})
    dev.start()
    settings = Settings(nats_url=f"nats://127.0.0.1:{port}", colony="dev")
    log = tmp_path / "dev.log"
    try:
        # As a newcomer does: wait for the banner, then use the colony.
        await until(lambda: "Ctrl-C stops everything" in log.read_text(), timeout=60)
        client = await Client.connect(settings)
        # Secure: dev approves no stranger by itself; its echo executor runs with your key.
        assert not (await client.colony_get("dev")).auto_approve
        spec, _ = load_function_spec((EXAMPLES / "echo.json").read_bytes())
        pid = await client.submit(spec, confirm=False)
        await wait_created(client, str(pid))
        done = await client.wait(str(pid), timeout=20)
        assert isinstance(done, Process) and done.state is ProcessState.SUCCESS
        assert done.output == ["helloworld"]
        await client.aclose()
        # The banner's dashboard answers, as the one who started dev.
        url = f"http://127.0.0.1:{board}/"
        assert f"dashboard {url}" in log.read_text()
        async with aiohttp.ClientSession() as http, http.get(f"{url}api/stats") as r:
            assert r.status == 200 and (await r.json())["states"]["success"] >= 1
    finally:
        assert dev.proc is not None
        dev.proc.send_signal(signal.SIGINT)
        code = dev.proc.wait(30)
    text = log.read_text()
    assert code == 0, text
    assert "Ctrl-C stops everything" in text and "Traceback" not in text
