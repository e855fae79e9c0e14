"""Taking work back after a restart (colonyos/resume.py), with a platform kept in memory: what
an executor does with what its platform says it left running."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from colonyos.client import Client
from colonyos.config import Settings
from colonyos.errors import StateDirInUseError
from colonyos.executor import ExecutorApp, ProcessContext
from colonyos.resume import IdentityFile


class Platform:
    """What a platform still runs, as the executor's Resumable."""

    def __init__(self, held: list[tuple[str, int]] | None = None, broken: bool = False) -> None:
        self.work = list(held or [])
        self.broken = broken
        self.abandoned: list[tuple[str, int]] = []

    async def held(self) -> list[tuple[str, int]]:
        if self.broken:
            raise RuntimeError("the platform does not answer")
        return list(self.work)

    async def abandon(self, process_id: str, attempt: int) -> None:
        self.abandoned.append((process_id, attempt))


def app_on(settings: Settings, tmp_path: Path, platform: Platform) -> ExecutorApp:
    app = ExecutorApp("kept", "kept-1", settings=settings)
    app.identity = IdentityFile(tmp_path / "executor-id")
    app.resumable = platform

    @app.handler("execute")
    async def execute(ctx: ProcessContext) -> list[Any]:
        return []

    return app


async def run_until_ready(app: ExecutorApp) -> asyncio.Task[int]:
    task = asyncio.create_task(app.run())
    async with asyncio.timeout(20):
        await app.ready.wait()
    return task


async def stopped(app: ExecutorApp, task: asyncio.Task[int]) -> None:
    app.stop(force=True)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, 20)


async def test_the_id_is_kept_across_runs_and_work_no_longer_ours_is_stopped(
    client: Client, settings: Settings, tmp_path: Path
) -> None:
    stranger = ("f" * 64, 0)  # no such process: not this executor's any more
    platform = Platform([stranger])
    first = app_on(settings, tmp_path, platform)
    task = await run_until_ready(first)
    kept = first.executor_id
    await stopped(first, task)
    assert platform.abandoned == [stranger]
    again = app_on(settings, tmp_path, Platform())
    task = await run_until_ready(again)
    try:
        assert again.executor_id == kept
    finally:
        await stopped(again, task)


async def test_a_platform_that_does_not_answer_does_not_stop_the_executor(
    client: Client, settings: Settings, tmp_path: Path
) -> None:
    app = app_on(settings, tmp_path, Platform(broken=True))
    task = await run_until_ready(app)
    await stopped(app, task)


async def test_a_removed_registration_starts_afresh(
    client: Client, settings: Settings, tmp_path: Path
) -> None:
    first = app_on(settings, tmp_path, Platform())
    task = await run_until_ready(first)
    kept = first.executor_id
    await client.executor_remove("kept-1")
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, 20)
    again = app_on(settings, tmp_path, Platform())
    task = await run_until_ready(again)
    try:
        assert again.executor_id != kept
        assert (tmp_path / "executor-id").read_text().strip() == again.executor_id
    finally:
        await stopped(again, task)


def test_the_identity_file_is_held_by_one_run_at_a_time(tmp_path: Path) -> None:
    one = IdentityFile(tmp_path / "executor-id")
    kept = one.acquire()
    assert not one.reused
    with pytest.raises(StateDirInUseError, match="another executor runs from"):
        IdentityFile(tmp_path / "executor-id").acquire()
    one.release()
    two = IdentityFile(tmp_path / "executor-id")
    assert two.acquire() == kept and two.reused
    two.release()
