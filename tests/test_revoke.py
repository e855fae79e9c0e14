"""A revoke (the broker took a process away) that reaches the executor before the function has
started still keeps it from starting; it names the attempt it takes away, so that a later
attempt of the same process runs.

The race is made deterministic by an executor that holds its first assignment once the assign
reply is in hand (as if the reply were still in flight) until the test lets it go, and that
says when it has handled each control message.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from colonyos.client import Client
from colonyos.config import Settings
from colonyos.execution import EarlyRevokes
from colonyos.executor import ExecutorApp, ProcessContext
from colonyos.messages import Control, Revoke
from colonyos.models import Executor, Process, ProcessState

from .helpers import executor_client, raw_nats, submitted

_controls: msgspec.json.Decoder[Control] = msgspec.json.Decoder(Control)


class HeldExecutor(ExecutorApp):
    """Holds its first assignment before starting it (unless not ``hold``), until ``let_go``
    is set (then starts it, or with ``lose_held`` never gets it, as if its reply was lost, and
    asks again); ``revokes`` are the revokes it has handled."""

    def __init__(
        self, *args: Any, hold: bool = True, lose_held: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.hold = hold
        self.lose_held = lose_held
        self.holding = asyncio.Event()
        self.let_go = asyncio.Event()
        self.held: list[Process] = []
        self.revokes: list[Revoke] = []
        self.revoked = asyncio.Event()

    async def _next(self, client: Client, burst: bool, count: int) -> list[Process]:
        processes = await super()._next(client, burst, count)
        if processes and self.hold and not self.holding.is_set():
            self.held = processes
            self.holding.set()
            await self.let_go.wait()
            if self.lose_held:
                return await super()._next(client, burst, count)
        return processes

    async def _on_control(self, msg: Any) -> None:
        await super()._on_control(msg)
        message = _controls.decode(msg.data)
        if isinstance(message, Revoke):
            self.revokes.append(message)
            self.revoked.set()


async def test_a_cancel_before_the_function_starts_keeps_it_from_starting(
    client: Client, settings: Settings
) -> None:
    app = HeldExecutor("echo", "held", settings=settings, heartbeat_s=0.05)
    calls: list[int] = []

    @app.handler()
    async def record(ctx: ProcessContext) -> list[object]:
        calls.append(ctx.process.attempt)
        return ["ran"]

    p = await submitted(client)
    runner = asyncio.create_task(app.run(burst=True))
    async with asyncio.timeout(10):
        await app.holding.wait()
        assert [h.process_id for h in app.held] == [p.process_id]
        cancelled = await client.cancel(p.process_id)
        assert cancelled.state is ProcessState.CANCELLED
        await app.revoked.wait()
        app.let_go.set()
        await runner
    assert calls == []  # the function never started
    assert [(r.process_id, r.attempt) for r in app.revokes] == [(p.process_id, 0)]
    assert (await client.get(p.process_id)).state is ProcessState.CANCELLED


@pytest.mark.parametrize("first", ["arrives late", "never arrives"])
async def test_a_revoke_before_the_start_does_not_stop_the_next_attempt(
    client: Client, settings: Settings, first: str
) -> None:
    """The first assignment is taken back (queued again) before it starts: it never starts,
    whether it reaches the executor after the revoke or never does, and the second assignment
    of the same process, to the same executor, runs."""
    app = HeldExecutor(
        "echo", "held", settings=settings, heartbeat_s=0.05, lose_held=first == "never arrives"
    )
    calls: list[int] = []

    @app.handler()
    async def record(ctx: ProcessContext) -> list[object]:
        calls.append(ctx.process.attempt)
        return ["ran"]

    p = await submitted(client)
    runner = asyncio.create_task(app.run(burst=True))
    async with asyncio.timeout(10):
        await app.holding.wait()
        async with executor_client(settings, app.name, register=False) as same_name:
            assert await same_name.release(app.executor_id, reason="taken back") == 1
        await app.revoked.wait()
        app.let_go.set()
        processed = await runner
    assert calls == [1]  # only the second attempt ran
    assert processed == 1
    assert [(r.process_id, r.attempt) for r in app.revokes] == [(p.process_id, 0)]
    done = await client.get(p.process_id)
    assert done.state is ProcessState.SUCCESS and done.output == ["ran"]
    assert done.attempt == 1 and done.retries == 0


async def test_a_late_revoke_of_an_earlier_attempt_does_not_stop_the_running_one(
    client: Client, settings: Settings
) -> None:
    """The revoke of attempt 0 reaches the executor only while it runs attempt 1 of the same
    process: attempt 1 runs on, to its end."""
    p = await submitted(client)
    async with executor_client(settings, "first", register=False) as pending:
        registered = await pending.register(Executor(executor_name="first", executor_type="echo"))
    # Approved (auto-approve): on a secure server its rights come with the next connection.
    async with executor_client(settings, "first", register=False) as first:
        got = await first.assign(timeout=5)
        assert got is not None and got.attempt == 0
        assert await first.release(registered.executor_id) == 1
    app = HeldExecutor("echo", "second", settings=settings, heartbeat_s=0.05, hold=False)
    started, finish = asyncio.Event(), asyncio.Event()
    calls: list[int] = []

    @app.handler()
    async def record(ctx: ProcessContext) -> list[object]:
        calls.append(ctx.process.attempt)
        started.set()
        await finish.wait()
        return ["ran"]

    runner = asyncio.create_task(app.run(burst=True))
    late = Revoke(process_id=p.process_id, state=ProcessState.WAITING, reason="late", attempt=0)
    async with asyncio.timeout(10):
        await started.wait()
        subject = client.subjects.control(client.colony, app.name)
        broker_side = await raw_nats(settings.nats_url)  # only brokers tell executors
        await broker_side.publish(subject, msgspec.json.encode(late))
        await broker_side.close()
        await app.revoked.wait()
        finish.set()
        assert await runner == 1
    assert calls == [1]
    done = await client.get(p.process_id)
    assert done.state is ProcessState.SUCCESS and done.output == ["ran"]


async def test_a_revoke_without_an_attempt_still_stops_the_running_function(
    client: Client, settings: Settings
) -> None:
    """A broker from before revokes named their attempt: its revoke decodes, and stops the
    function running under that process id, as it always did."""
    app = ExecutorApp("echo", "older-broker", settings=settings, heartbeat_s=0.05)
    started, stopped = asyncio.Event(), asyncio.Event()

    @app.handler()
    async def forever(ctx: ProcessContext) -> list[object]:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()
        return []

    p = await submitted(client)
    runner = asyncio.create_task(app.run(burst=True))
    old = b'{"kind":"revoke","processid":"%s","state":4,"reason":"cancelled"}' % (
        p.process_id.encode()
    )
    assert msgspec.json.decode(old, type=Control) == Revoke(
        process_id=p.process_id, state=ProcessState.CANCELLED, reason="cancelled"
    )
    try:
        async with asyncio.timeout(10):
            await started.wait()
            broker_side = await raw_nats(settings.nats_url)  # only brokers tell executors
            await broker_side.publish(client.subjects.control(client.colony, app.name), old)
            await broker_side.close()
            await stopped.wait()
    finally:
        app.stop(force=True)
        await asyncio.wait_for(runner, 10)


def test_early_revokes_are_kept_per_attempt_for_a_while_and_bounded() -> None:
    t = [0.0]
    early = EarlyRevokes(keep_s=60.0, limit=3, clock=lambda: t[0])
    early.remember("p", 0, "cancelled: cancelled")
    assert early.take("p", 1) is None  # another attempt of the same process
    assert early.take("q", 0) is None
    assert early.take("p", 0) == "cancelled: cancelled"
    assert early.take("p", 0) is None  # told once

    for n in range(5):  # the newest three are kept
        early.remember("p", n, f"r{n}")
    assert len(early) == 3
    assert [early.take("p", n) for n in range(5)] == [None, None, "r2", "r3", "r4"]

    early.remember("old", 0, "waiting: taken back")
    t[0] = 61.0
    assert early.take("old", 0) is None  # too old to be the assignment still on its way
    early.remember("a", 0, "a")
    t[0] = 122.0
    early.remember("b", 0, "b")  # remembering forgets what is too old
    assert len(early) == 1 and early.take("b", 0) == "b"
