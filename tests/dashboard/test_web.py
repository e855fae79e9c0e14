"""The dashboard's web server without a browser: what it answers, what it refuses and why."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import aiohttp
import msgspec
import pytest

from colonyos.cli.dashboard import hub as hub_module
from colonyos.cli.dashboard import serving
from colonyos.cli.dashboard.hub import QUEUE_LIMIT, Hub
from colonyos.client import Client
from colonyos.config import Settings
from colonyos.errors import BrokerUnavailableError
from colonyos.models import Conditions, FunctionSpec, Process

from ..conftest import open_colony


@contextlib.asynccontextmanager
async def http(client: Client) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    async with serving(client, "127.0.0.1", 0) as url, aiohttp.ClientSession() as session:
        yield session, url


async def _submit(client: Client) -> Process:
    spec = FunctionSpec(func_name="echo", conditions=Conditions(executor_type="nobody"))
    process = await client.submit(spec)
    assert isinstance(process, Process)
    return process


async def test_answers_only_to_its_own_address(client: Client) -> None:
    async with http(client) as (session, url):
        async with session.get(f"{url}api/stats") as r:
            assert r.status == 200
        port = url.rsplit(":", 1)[1].strip("/")
        async with session.get(f"http://localhost:{port}/api/whoami") as r:
            assert r.status == 200
            assert await r.json() == {"colony": "dev", "name": "tester", "secure": True}
        # A page elsewhere whose name now points at 127.0.0.1 (DNS rebinding) reads nothing.
        headers = {"Host": f"attacker.example:{port}"}
        async with session.get(f"{url}api/processes", headers=headers) as r:
            assert r.status == 421
            assert "attacker.example" in (await r.json())["error"]


async def test_changes_nothing_and_runs_only_its_own_files(client: Client) -> None:
    async with http(client) as (session, url):
        async with session.post(f"{url}api/processes", data=b"{}") as r:
            assert r.status == 405
        async with session.get(url) as r:
            assert r.status == 200
            assert "default-src 'self'" in r.headers["Content-Security-Policy"]
            assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            page = await r.text()
        # Nothing from elsewhere: every script and style is the server's own.
        assert "http" not in page.replace('charset="utf-8"', "")
        async with session.get(f"{url}static/../../web.py") as r:
            assert r.status == 404


async def test_wrong_input_is_named(client: Client) -> None:
    process = await _submit(client)
    async with http(client) as (session, url):
        cases = {
            "api/processes?state=bogus": (400, "unknown process state 'bogus'"),
            "api/processes?limit=0": (400, "limit '0' is not a number from 1"),
            "api/processes/xyz": (400, "not hexadecimal"),
            "api/processes/" + "0" * 64: (404, "0000"),
            # A log stream of no process is an error, not an empty stream.
            "api/processes/" + "0" * 64 + "/logs": (404, "0000"),
            "api/graphs/abc": (404, "abc"),
        }
        for path, (status, says) in cases.items():
            async with session.get(url + path) as r:
                body = await r.json()
                assert (r.status, says in body["error"]) == (status, True), (path, body)
        async with session.get(f"{url}api/processes/{process.process_id[:10]}") as r:
            assert (await r.json())["processid"] == process.process_id
        async with session.get(f"{url}api/processes/{process.process_id[:10]}/explain") as r:
            why = await r.json()
            assert why["state"] == 0 and "nobody" in why["reason"]


async def test_shows_only_what_its_member_may_see(client: Client, settings: Settings) -> None:
    """A dashboard reads as its user, in its colony: another colony's process is not there."""
    ours = await _submit(client)
    await open_colony(settings, "other")
    other = msgspec.structs.replace(settings, colony="other")
    async with (
        await Client.connect(other, caller="tester") as elsewhere,
        http(elsewhere) as (
            session,
            url,
        ),
    ):
        async with session.get(f"{url}api/processes") as r:
            assert await r.json() == []
        async with session.get(f"{url}api/processes/{ours.process_id}") as r:
            assert r.status == 404
            assert ours.process_id[:12] in (await r.json())["error"]


async def test_a_page_that_stops_reading_is_let_go(client: Client) -> None:
    hub = Hub(client)
    slow, fine = hub.join(), hub.join()  # each has the counts first
    assert fine.queue.get_nowait().startswith(b"event: counts\n")  # type: ignore[union-attr]
    for _ in range(QUEUE_LIMIT - 1):
        hub.broadcast(b"x")
        fine.queue.get_nowait()
    assert hub.pages == {slow, fine}
    hub.broadcast(b"one too many")
    assert hub.pages == {fine}
    # The slow page's stream is told to end (its browser reconnects and starts afresh).
    messages = [slow.queue.get_nowait() for _ in range(slow.queue.qsize())]
    assert messages[-1] is None
    assert fine.queue.get_nowait() == b"one too many"


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_loopback_names(host: str) -> None:
    from colonyos.cli.dashboard import is_loopback
    from colonyos.cli.dashboard.web import allowed_hosts

    assert is_loopback(host)
    assert "localhost:8100" in allowed_hosts(host, 8100)
    assert not is_loopback("0.0.0.0")
    assert allowed_hosts("192.0.2.7", 8100) == {"192.0.2.7", "192.0.2.7:8100"}


async def test_a_taken_port_is_refused_and_nothing_is_left_running(client: Client) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="address already in use"):
            async with serving(client, "127.0.0.1", port):
                pass
    # The colony's follower it had started is stopped: the connection holds no subscription
    # but its own replies'.
    assert len(client.nc._subs) <= 1


async def _stops_when_told(hub: Hub, started: asyncio.Event) -> None:
    """Set the hub's stop once ``started``, and see its follower end. Nothing else can end it:
    it waits for the next event with no timeout of its own, and nothing happens in the colony
    meanwhile (the deadline bounds a hang, it measures nothing)."""
    following = asyncio.create_task(hub.run())
    try:
        async with asyncio.timeout(10):
            await started.wait()
        hub.stopping.set()
        async with asyncio.timeout(10):
            await following
    finally:
        following.cancel()


async def test_the_follower_stops_at_once_when_told(client: Client) -> None:
    """Stopping a dashboard does not wait for an event or a poll (it took a second)."""
    hub = Hub(client)
    await _stops_when_told(hub, hub.ready)


class _Unanswered(Hub):
    """A hub that finds no broker each time it follows."""

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self.tried = asyncio.Event()

    async def _follow(self) -> None:
        self.tried.set()
        raise BrokerUnavailableError("no broker is answering")


async def test_the_follower_stops_at_once_while_it_waits_to_try_again(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_module, "RETRY_FIRST_S", 3600.0)  # only the stop ends the wait
    hub = _Unanswered(client)
    await _stops_when_told(hub, hub.tried)
