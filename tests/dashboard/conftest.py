"""The dashboard under test: served on the live system's loop (a broker on its own thread), and
one headless Chromium for the whole session, driven by Playwright's synchronous API."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from colonyos.client import Client
from colonyos.config import Settings

from ..conftest import live_loops

T = TypeVar("T")

CHROMIUM = Path(os.environ.get("COLONIES_CHROMIUM", "/usr/bin/chromium"))
# Where the screenshots of docs/dashboard.md are written too, when set (docs/images).
SHOTS_FOR_DOCS = os.environ.get("COLONIES_DASHBOARD_SHOTS", "")
# How long the page may take to show what the colony did (a deadline, not a measure).
SHOW_MS = 20_000


class Chromium:
    """One headless Chromium (Debian's package) on a thread of its own: Playwright's
    synchronous API keeps an event loop marked running on the thread that drives it, which
    would stop the tests' own loops on the main thread. ``run`` calls a function there."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="chromium")
        self.run(self._start)

    def _start(self) -> None:
        from playwright.sync_api import sync_playwright

        self.playwright = sync_playwright().start()
        self.browser = self.playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)

    def run(self, fn: Callable[[], T], timeout: float = 120) -> T:
        return self.pool.submit(fn).result(timeout)

    def stop(self) -> None:
        def stop() -> None:
            self.browser.close()
            self.playwright.stop()

        try:
            self.run(stop)
        finally:
            self.pool.shutdown()


@pytest.fixture(scope="session")
def chromium() -> Iterator[Chromium]:
    """The session's browser; skipped without Chromium or Playwright."""
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian's chromium; .ci/install-platforms)")
    pytest.importorskip("playwright.sync_api")
    browser = Chromium()
    yield browser
    browser.stop()


def on_loop(settings: Settings, coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
    """Run ``coro`` on the live system's loop (where its broker runs) and wait for it."""
    return asyncio.run_coroutine_threadsafe(coro, live_loops[settings.prefix]).result(timeout)


class Dashboard:
    """The dashboard of the live system's colony as ``tester`` (its owner), at ``url``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stack = contextlib.AsyncExitStack()
        self.url = ""
        self.client: Client | None = None

    async def start(self) -> None:
        from colonyos.cli.dashboard import serving

        self.client = await self.stack.enter_async_context(
            await Client.connect(self.settings, caller="tester")
        )
        self.url = await self.stack.enter_async_context(serving(self.client, "127.0.0.1", 0))

    async def stop(self) -> None:
        await self.stack.aclose()


@pytest.fixture
def dashboard(live_system: Settings) -> Iterator[Dashboard]:
    board = Dashboard(live_system)
    on_loop(live_system, board.start())
    yield board
    on_loop(live_system, board.stop())


@pytest.fixture
def page(chromium: Chromium, dashboard: Dashboard) -> Iterator[Any]:
    """A new page (its own context: nothing kept from another test), failing the test on any
    error in the page's JavaScript. Use it inside ``chromium.run``."""
    errors: list[str] = []

    def new_page() -> tuple[Any, Any]:
        context = chromium.browser.new_context(viewport={"width": 1000, "height": 640})
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        return context, page

    context, page = chromium.run(new_page)
    yield page
    chromium.run(context.close)
    assert errors == [], errors


def screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    """A screenshot under the test's output (and for the docs, when asked)."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path))
    if SHOTS_FOR_DOCS:
        Path(SHOTS_FOR_DOCS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SHOTS_FOR_DOCS) / f"dashboard-{name}.png")
    return path
