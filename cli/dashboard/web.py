"""The dashboard's web server (aiohttp): the page's files, its JSON, and its live streams.

Every answer comes from the broker through one client connected as the user who runs the
dashboard, so the page shows what that member may see and nothing more; the dashboard has no
login of its own and changes nothing (every route is a GET). Requests must name this server
by the address it listens on (the ``Host`` header): a web page elsewhere that points a name of
its own at 127.0.0.1 (DNS rebinding) is refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

import msgspec
from aiohttp import web

from colonyos.client import Client
from colonyos.errors import (
    BrokerUnavailableError,
    ColoniesError,
    InvalidSpecError,
    NotAuthorizedError,
    NotFoundError,
)
from colonyos.limits import MAX_LIST_LIMIT
from colonyos.models import ProcessState

from .hub import Hub, Page, frame

__all__ = ["CLIENT", "HUB", "STATIC_FILES", "make_app"]

CLIENT = web.AppKey("client", Client)
HUB = web.AppKey("hub", Hub)
_HOST = web.AppKey("host", str)

# The page: plain files, served as they are (no build step, nothing fetched from elsewhere).
STATIC_FILES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "graph.js": "text/javascript",
    "style.css": "text/css",
}
_HEADERS = {
    # Only this server's own files run in the page; no other site may frame it.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_STATUS = {
    NotFoundError: 404,
    InvalidSpecError: 400,
    NotAuthorizedError: 403,
    BrokerUnavailableError: 503,
}
_encode = msgspec.json.encode
# Listening on every address: reached by names it cannot know (it warns that anyone who
# reaches it reads as its user).
_ANY = ("", "0.0.0.0", "::")
_STOP_S = 2.0  # how long the hub gets to stop by itself, between cancellations after


def allowed_hosts(host: str, port: int) -> frozenset[str]:
    """The ``Host`` values that name this server: the address it listens on, and localhost's
    names when that is a loopback address."""
    names = {host}
    if host in ("127.0.0.1", "localhost", "::1"):
        names |= {"127.0.0.1", "localhost", "[::1]"}
    if ":" in host and not host.startswith("["):
        names.add(f"[{host}]")
    return frozenset({*names, *(f"{n}:{port}" for n in names)})


@web.middleware
async def _guard(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    host = request.app[_HOST]
    hosts = allowed_hosts(host, _local_port(request)) if host not in _ANY else frozenset()
    if hosts and request.host not in hosts:
        return _error(
            421,
            f"this dashboard answers to {sorted(hosts)[0]}, not to {request.host!r} "
            "(a name pointed at it from elsewhere is refused)",
        )
    try:
        response = await handler(request)
    except ColoniesError as e:
        status = next((s for cls, s in _STATUS.items() if isinstance(e, cls)), 409)
        response = _error(status, e.message)
    response.headers.update(_HEADERS)
    return response


def _local_port(request: web.Request) -> int:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return int(sockname[1]) if sockname else 0


def _error(status: int, message: str) -> web.Response:
    response = web.json_response({"error": message}, status=status)
    response.headers.update(_HEADERS)
    return response


def _json(value: Any) -> web.Response:
    return web.Response(body=_encode(value), content_type="application/json")


async def _file(request: web.Request) -> web.Response:
    name = request.match_info.get("name", "index.html")
    kind = STATIC_FILES.get(name)
    if kind is None:
        raise web.HTTPNotFound(text=f"no file {name!r}")
    body = resources.files(__package__).joinpath("static", name).read_bytes()
    return web.Response(body=body, content_type=kind, charset="utf-8")


async def _whoami(request: web.Request) -> web.Response:
    client = request.app[CLIENT]
    return _json({"colony": client.colony, "name": client.caller, "secure": client.secure})


async def _stats(request: web.Request) -> web.Response:
    return _json(await request.app[CLIENT].stats())


async def _processes(request: web.Request) -> web.Response:
    q = request.query
    state = None
    if q.get("state"):
        try:
            state = ProcessState.parse(q["state"])
        except ValueError as e:
            return _error(400, str(e))
    limit = q.get("limit", "100")
    if not limit.isdigit() or not 1 <= int(limit) <= MAX_LIST_LIMIT:
        return _error(400, f"limit {limit!r} is not a number from 1 to {MAX_LIST_LIMIT}")
    processes = await request.app[CLIENT].list_processes(
        state=state,
        executor_type=q.get("executortype", ""),
        label=q.get("label", ""),
        limit=int(limit),
    )
    return _json(processes)


async def _process_id(request: web.Request) -> str:
    return await request.app[CLIENT].resolve(request.match_info["id"])


async def _process(request: web.Request) -> web.Response:
    return _json(await request.app[CLIENT].get(await _process_id(request)))


async def _explain(request: web.Request) -> web.Response:
    return _json(await request.app[CLIENT].explain(await _process_id(request)))


async def _graphs(request: web.Request) -> web.Response:
    return _json(await request.app[CLIENT].graph_list(limit=50))


async def _graph(request: web.Request) -> web.Response:
    client = request.app[CLIENT]
    graph = await client.graph_get(await client.resolve(request.match_info["id"], graph=True))
    return _json({"graph": graph, "processes": await client.graph_processes(graph)})


async def _executors(request: web.Request) -> web.Response:
    return _json(await request.app[CLIENT].executor_list())


async def _stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
    )
    response.headers.update(_HEADERS)
    await response.prepare(request)
    return response


async def _events(request: web.Request) -> web.StreamResponse:
    """The colony live: the counts first, then every event, heartbeat and count change."""
    hub = request.app[HUB]
    await hub.ready.wait()
    page: Page = hub.join()
    response = await _stream(request)
    try:
        while (message := await page.queue.get()) is not None:
            await response.write(message)
    finally:
        hub.leave(page)
    return response


async def _logs(request: web.Request) -> web.StreamResponse:
    """A process's log lines, then each new one until the process ends, then ``end``."""
    client = request.app[CLIENT]
    process_id = await _process_id(request)
    await client.get(process_id)  # an unknown or hidden process is an error, not a stream
    response = await _stream(request)
    async for entry in client.logs(process_id, follow=True):
        await response.write(frame("log", _encode(entry)))
    await response.write(frame("end", b"{}"))
    return response


def make_app(client: Client, *, host: str = "") -> web.Application:
    """The dashboard for ``client``'s colony. ``host``: the address it listens on, which
    requests must name (any name for every address, 0.0.0.0 or ::)."""
    app = web.Application(middlewares=[_guard])
    app[CLIENT] = client
    app[HUB] = Hub(client)
    app[_HOST] = host
    app.router.add_get("/", _file)
    app.router.add_get("/static/{name}", _file)
    app.router.add_get("/api/whoami", _whoami)
    app.router.add_get("/api/stats", _stats)
    app.router.add_get("/api/processes", _processes)
    app.router.add_get("/api/processes/{id}", _process)
    app.router.add_get("/api/processes/{id}/explain", _explain)
    app.router.add_get("/api/processes/{id}/logs", _logs)
    app.router.add_get("/api/graphs", _graphs)
    app.router.add_get("/api/graphs/{id}", _graph)
    app.router.add_get("/api/executors", _executors)
    app.router.add_get("/api/events", _events)
    app.cleanup_ctx.append(_following)
    return app


async def _following(app: web.Application) -> AsyncIterator[None]:
    """The hub follows the colony while the app runs."""
    hub = app[HUB]
    task = asyncio.create_task(hub.run())
    yield
    hub.stopping.set()
    hub.close()
    # It stops by itself at once (its waits for the next event and for a retry wake on the
    # stop); a wait for a broker's answer is cancelled instead.
    await asyncio.wait({task}, timeout=_STOP_S)
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=_STOP_S)
    if not task.cancelled():
        task.result()
