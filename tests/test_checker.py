"""Fault injection: processes through several executors and two brokers, killed at random.

Real processes are SIGKILLed (brokers and executors) while work flows; then the invariants of
the design are checked from the events stream and the KV bucket:

1. every accepted submission ends in exactly one terminal state, and KV agrees;
2. no two overlapping leases: a result always comes from the latest assignment;
3. no state moves backwards except RUNNING -> WAITING (a re-queue: one more retry when it ran
   out of time, or one more executor loss when its executor went away, never both or neither),
   and every assignment counts one more (the attempt token of close, fail and log);
4. every transition is recorded, in revision order, for each process.

Seedable and bounded: COLONIES_CHECKER_SEED, COLONIES_CHECKER_PROCESSES and
COLONIES_CHECKER_CHAOS_S (seconds of killing) change the run; `make soak` runs a long one.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import msgspec
import nats
import pytest
from nats.js.api import DeliverPolicy

from colonyos.client import Client
from colonyos.config import Settings
from colonyos.errors import BrokerUnavailableError
from colonyos.messages import ProcessEvent, decode_event
from colonyos.models import Conditions, FunctionSpec, Process, ProcessState
from colonyos.natsserver import NatsServer
from colonyos.subjects import Subjects

from .procs import Child, free_port

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("COLONIES_CHECKER_SEED", str(random.randrange(1 << 30))))
PROCESSES = int(os.environ.get("COLONIES_CHECKER_PROCESSES", "300"))
CHAOS_S = float(os.environ.get("COLONIES_CHECKER_CHAOS_S", "15"))
PREFIX = "checker"
COLONY = "dev"

TASKS = """
import time

def work(i, ms):
    time.sleep(ms / 1000)  # sleep-ok: the work the executors do
    return i
"""

ALLOWED = {
    ProcessState.WAITING: {ProcessState.RUNNING, ProcessState.FAILED, ProcessState.CANCELLED},
    ProcessState.RUNNING: {
        ProcessState.WAITING,
        ProcessState.SUCCESS,
        ProcessState.FAILED,
        ProcessState.CANCELLED,
    },
}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    s = NatsServer(tmp_path / "js", port=free_port()).start()
    yield s
    s.stop()


def _spec(rng: random.Random, i: int) -> FunctionSpec:
    if rng.random() < 0.05:
        # Always outlives its maxexectime: re-queued once, then FAILED.
        return FunctionSpec(
            func_name="work",
            args=[i, rng.randint(1200, 1500)],
            max_exec_time=1,
            max_retries=1,
            conditions=Conditions(executor_type="work"),
        )
    return FunctionSpec(
        func_name="work",
        args=[i, rng.randint(0, 60)],
        max_exec_time=30,
        max_retries=rng.choice([-1, -1, -1, 2]),
        conditions=Conditions(executor_type="work"),
    )


async def _until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(1.0)  # sleep-ok: polling the state under a deadline
    del what


async def _final_states(js, subjects: Subjects) -> dict[str, Process]:  # type: ignore[no-untyped-def]
    kv = await js.key_value(subjects.bucket_processes)
    found: dict[str, Process] = {}
    try:
        keys = await kv.keys()
    except Exception:  # no keys yet
        return found
    for key in keys:
        entry = await kv.get(key)
        p = msgspec.json.decode(entry.value, type=Process)
        found[p.process_id] = p
    return found


async def _events(js, subjects: Subjects) -> dict[str, list[tuple[Process, int]]]:  # type: ignore[no-untyped-def]
    info = await js.stream_info(subjects.stream_events)
    last = info.state.last_seq
    sub = await js.subscribe(
        subjects.events_filter(colony=COLONY),
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
    )
    per: dict[str, list[tuple[Process, int]]] = defaultdict(list)
    seq = 0
    while seq < last:
        try:
            msg = await sub.next_msg(timeout=5)
        except nats.errors.TimeoutError:
            break  # the rest are rejections or other colonies' events
        seq = msg.metadata.sequence.stream
        event = decode_event(msg.subject, msg.data)
        if not isinstance(event, ProcessEvent):
            continue  # rejections and graph events: the checks are about processes
        p = event.process()
        per[p.process_id].append((p, int(msg.headers["Nats-Msg-Id"].rsplit(".", 1)[1])))
    await sub.unsubscribe()
    return per


def _check_history(pid: str, history: list[tuple[Process, int]]) -> list[str]:
    problems = []
    states = [p.state for p, _ in history]
    if states[0] is not ProcessState.WAITING:
        problems.append(f"{pid}: first event is {states[0].name}")
    revisions = [r for _, r in history]
    if revisions != sorted(set(revisions)):
        problems.append(f"{pid}: events out of revision order {revisions}")
    for (a, _), (b, _) in itertools.pairwise(history):
        if b.state not in ALLOWED.get(a.state, set()):
            problems.append(f"{pid}: {a.state.name} -> {b.state.name}")
        requeued = a.state is ProcessState.RUNNING and b.state is ProcessState.WAITING
        counted = (b.retries - a.retries, b.executor_losses - a.executor_losses)
        if requeued and counted not in ((1, 0), (0, 1)):
            problems.append(f"{pid}: re-queue counted {counted} (retries, losses), not one")
        if not requeued and counted != (0, 0) and not b.state.is_terminal:
            problems.append(f"{pid}: {a.state.name} -> {b.state.name} changed the counts")
        assigned = a.state is ProcessState.WAITING and b.state is ProcessState.RUNNING
        if assigned and b.assignments != a.assignments + 1:
            problems.append(f"{pid}: assignment did not count (attempt token unchanged)")
        if not assigned and b.assignments != a.assignments:
            problems.append(f"{pid}: {a.state.name} -> {b.state.name} changed the assignments")
        closed = a.state is ProcessState.RUNNING and b.state is ProcessState.SUCCESS
        if closed and (b.assigned_executor_id, b.assignments) != (
            a.assigned_executor_id,
            a.assignments,
        ):
            problems.append(f"{pid}: closed by an executor that did not hold the lease")
    terminal = [s for s in states if s.is_terminal]
    if len(terminal) != 1 or not states[-1].is_terminal:
        problems.append(f"{pid}: terminal states {[s.name for s in terminal]}")
    return problems


def _check(
    accepted: set[str], events: dict[str, list[tuple[Process, int]]], final: dict[str, Process]
) -> list[str]:
    problems = []
    for pid in sorted(accepted):
        history = events.get(pid, [])
        if not history:
            problems.append(f"{pid}: no events at all")
            continue
        problems.extend(_check_history(pid, history))
        if pid not in final:
            problems.append(f"{pid}: missing from KV")
        elif final[pid].state is not history[-1][0].state:
            problems.append(f"{pid}: KV says {final[pid].state.name}, events say otherwise")
    return problems


def test_the_checker_finds_violations() -> None:
    """The invariant check itself must be able to fail."""
    spec = FunctionSpec(func_name="f", conditions=Conditions(executor_type="x"))

    def p(
        state: ProcessState, executor: str = "", retries: int = 0, n: int = 0, lost: int = 0
    ) -> Process:
        return Process(
            process_id="p",
            state=state,
            spec=spec,
            assigned_executor_id=executor,
            retries=retries,
            assignments=n,
            executor_losses=lost,
        )

    w, r, ok = ProcessState.WAITING, ProcessState.RUNNING, ProcessState.SUCCESS
    good = [
        (p(w), 1),
        (p(r, "a", n=1), 2),
        (p(w, retries=1, n=1), 3),  # ran out of time: a retry
        (p(r, "b", 1, n=2), 4),
        (p(w, retries=1, n=2, lost=1), 5),  # its executor was lost: no retry
        (p(r, "c", 1, n=3, lost=1), 6),
        (p(ok, "c", 1, n=3, lost=1), 7),
    ]
    assert _check({"p"}, {"p": good}, {"p": good[-1][0]}) == []
    bad = {
        "stolen close": [(p(w), 1), (p(r, "a", n=1), 2), (p(ok, "b", n=1), 3)],
        "earlier attempt": [(p(w), 1), (p(r, "a", n=2), 2), (p(ok, "a", n=1), 3)],
        "two ends": [(p(w), 1), (p(r, "a", n=1), 2), (p(ok, "a", n=1), 3), (p(ok, "a", n=1), 4)],
        "backwards": [(p(w), 1), (p(r, "a", n=1), 2), (p(ok, "a", n=1), 3), (p(r, "a", n=1), 4)],
        "reordered": [(p(w), 1), (p(r, "a", n=1), 3), (p(ok, "a", n=1), 2)],
        "nothing counted": [
            (p(w), 1),
            (p(r, "a", n=1), 2),
            (p(w, n=1), 3),
            (p(r, "a", n=2), 4),
            (p(ok, "a", n=2), 5),
        ],
        "both counted": [
            (p(w), 1),
            (p(r, "a", n=1), 2),
            (p(w, retries=1, n=1, lost=1), 3),
            (p(r, "a", 1, n=2, lost=1), 4),
            (p(ok, "a", 1, n=2, lost=1), 5),
        ],
        "same token twice": [
            (p(w), 1),
            (p(r, "a", n=1), 2),
            (p(w, n=1, lost=1), 3),
            (p(r, "a", n=1, lost=1), 4),
            (p(ok, "a", n=1, lost=1), 5),
        ],
        "never ends": [(p(w), 1), (p(r, "a", n=1), 2)],
    }
    for name, history in bad.items():
        assert _check({"p"}, {"p": history}, {"p": history[-1][0]}), name
    assert _check({"p", "q"}, {"p": good}, {"p": good[-1][0]})  # q was lost


def _children(tmp_path: Path, env: dict[str, str]) -> tuple[list[Child], list[Child]]:
    brokers = [
        Child(
            ["broker", "start", "--data-dir", str(tmp_path / f"b{i}")], tmp_path / f"b{i}.log", env
        )
        for i in range(2)
    ]
    module = str(tmp_path / "tasks.py")
    executors = [
        Child(
            [
                "executor",
                "start",
                "python",
                "--type",
                "work",
                "--name",
                f"ex{i}",
                "--module",
                module,
            ],
            tmp_path / f"ex{i}.log",
            env,
        )
        for i in range(3)
    ]
    return brokers, executors


class Run:
    """One checker run: the children, the submissions and the kills."""

    def __init__(self, server: NatsServer, tmp_path: Path, rng: random.Random) -> None:
        self.rng = rng
        (tmp_path / "tasks.py").write_text(TASKS)
        env = {
            "COLONIES_NATS_URL": server.url,
            "COLONIES_PREFIX": PREFIX,
            "COLONIES_COLONY_NAME": COLONY,
            "COLONIES_LEASE_TTL": "1",
            "COLONIES_EXECUTOR_LIVENESS": "1.5",
            "COLONIES_SWEEP_INTERVAL": "0.1",
            "COLONIES_HEARTBEAT": "0.2",
        }
        self.brokers, self.executors = _children(tmp_path, env)
        self.children = self.brokers + self.executors
        self.settings = Settings(nats_url=server.url, colony=COLONY, prefix=PREFIX)
        self.accepted: set[str] = set()
        self.kills: Counter[str] = Counter()

    async def colony_added(self, client: Client) -> bool:
        try:
            await client.colony_add(COLONY, auto_approve=True)
        except BrokerUnavailableError:
            return False
        return True

    async def submit_all(self, client: Client) -> None:
        for i in range(PROCESSES):
            while True:
                try:
                    pid = await client.submit(_spec(self.rng, i), confirm=False)
                    break
                except BrokerUnavailableError:
                    await asyncio.sleep(0.05)  # sleep-ok: JetStream briefly unavailable
            self.accepted.add(str(pid))
            if i % 20 == 0:
                await asyncio.sleep(CHAOS_S / PROCESSES * 10)  # sleep-ok: pacing the load

    async def chaos(self) -> None:
        end = time.monotonic() + CHAOS_S
        while time.monotonic() < end:
            await asyncio.sleep(self.rng.uniform(0.3, 1.2))  # sleep-ok: random fault timing
            victim = self.rng.choice(self.children)
            victim.kill()
            self.kills["broker" if victim in self.brokers else "executor"] += 1
            await asyncio.sleep(self.rng.uniform(0.0, 0.6))  # sleep-ok: random down time
            victim.start()

    def revive(self) -> None:
        for child in self.children:  # one that exited by itself is a finding, but go on
            if not child.alive:
                print(f"checker: {child.log.name} had exited; starting it again")
                child.start()

    async def all_ended(self, js, since: float) -> bool:  # type: ignore[no-untyped-def]
        final = await _final_states(js, Subjects(PREFIX))
        ended = sum(1 for pid in self.accepted if pid in final and final[pid].state.is_terminal)
        print(f"checker: {time.monotonic() - since:5.1f} s after the kills: {ended} ended")
        self.revive()
        return ended == len(self.accepted)


@pytest.mark.timeout(240)
async def test_killing_brokers_and_executors_loses_nothing(
    server: NatsServer, tmp_path: Path
) -> None:
    print(f"\nchecker: seed {SEED}, {PROCESSES} processes, {CHAOS_S:g} s of kills")
    run = Run(server, tmp_path, random.Random(SEED))
    client = await Client.connect(run.settings, caller="checker")
    try:
        for child in run.children:
            child.start()
        await _until(lambda: run.colony_added(client), 30, "a broker to serve")
        await asyncio.gather(run.submit_all(client), run.chaos())
        run.revive()
        js = client.nc.jetstream()
        since = time.monotonic()
        # A twentieth of the processes hold an executor for a second, twice (they outlive their
        # maxexectime): with three executors, that alone is a second per 30 processes.
        drain_s = 90 + PROCESSES / 20
        await _until(lambda: run.all_ended(js, since), drain_s, "every process to end")
        final = await _final_states(js, Subjects(PREFIX))
        events = await _events(js, Subjects(PREFIX))
        outcome = Counter(final[pid].state.name for pid in run.accepted)
        retries = sum(final[pid].retries for pid in run.accepted)
        losses = sum(final[pid].executor_losses for pid in run.accepted)
        print(
            f"checker: kills {dict(run.kills)}; outcomes {dict(outcome)}; {retries} retries, "
            f"{losses} executor losses"
        )
        problems = _check(run.accepted, events, final)
        assert not problems, "\n".join(problems[:50])
        assert len(run.accepted) == PROCESSES
        assert outcome["SUCCESS"] > 0
    finally:
        for child in run.children:
            child.stop()
        await client.aclose()
