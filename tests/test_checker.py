"""Fault injection: processes through several executors and two brokers, killed at random.

Real processes are SIGKILLed (brokers and executors) while work flows; then the invariants of
the design are checked from the events stream and the KV bucket:

1. every accepted submission ends in exactly one terminal state, and KV agrees;
2. no two overlapping leases: a result always comes from the latest assignment;
3. no state moves backwards except RUNNING -> WAITING (a re-queue: one more retry when it ran
   out of time, or one more executor loss when its executor went away, never both or neither),
   and every assignment counts one more (the attempt token of close, fail and log);
4. every transition is recorded, in revision order, for each process, and the events are the
   KV history exactly: one event per revision, the same process;
5. from the executors' side (tests/checker_tasks.py records every run of `work`): each attempt
   ran once, on the executor it was assigned to; a stored result is the output of the last
   attempt's run; two runs of one process overlap only where the broker could not stop the
   earlier one (see `_check_runs`);
6. outcomes: every short process succeeded; every process built to outlive its maxexectime
   failed, saying it used all its attempts.

The installation is secure, as `colonies server start` runs it: the brokers answer the auth
callout, each executor connects with its key, the checker's client is the server owner. The
checker reads the buckets and streams with the brokers' key.

Seedable and bounded: COLONIES_CHECKER_SEED, COLONIES_CHECKER_PROCESSES and
COLONIES_CHECKER_CHAOS_S (seconds of killing) change the run; `make soak` runs a long one.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import DeliverPolicy

from colonyos.buckets import latest_values
from colonyos.client import Client
from colonyos.config import Settings
from colonyos.errors import BrokerUnavailableError, NotAuthorizedError
from colonyos.messages import ProcessEvent, decode_event
from colonyos.models import Conditions, FunctionSpec, Process, ProcessState
from colonyos.natsserver import NatsServer, packaged_config
from colonyos.security.keys import generate, load_identity, write_seed
from colonyos.security.members import Member, MemberBook
from colonyos.security.permissions import Role
from colonyos.security.serverconf import ServerKeys, secure_config
from colonyos.subjects import SERVER_SCOPE, Subjects

from .procs import Child, free_port

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("COLONIES_CHECKER_SEED", str(random.randrange(1 << 30))))
# make test's run: ten seconds of kills (about nine, brokers and executors alike) while 200
# processes are submitted over the first half and run through all of it, a twentieth of them built
# to outlive their maxexectime. Every kill lands with work in flight, in each of its stages
# (accepted, queued, assigned, running, closing), which is what a lost or doubled process needs;
# more kills find rarer interleavings, and `make soak` runs those at length.
PROCESSES = int(os.environ.get("COLONIES_CHECKER_PROCESSES", "200"))
CHAOS_S = float(os.environ.get("COLONIES_CHECKER_CHAOS_S", "10"))
PREFIX = "checker"
COLONY = "dev"

TASKS = Path(__file__).with_name("checker_tasks.py")
# Short work (0-60 ms) has a maxexectime of 30 s: it must succeed. Long work sleeps until its
# executor stops it, far past its maxexectime of 1 s: it must fail, every attempt spent.
SHORT_EXEC_S = 30
LONG_MS = 30_000
# The brokers' COLONIES_MAX_EXECUTOR_LOSSES (the default): past it a process fails, whatever it is.
MAX_LOSSES = 5

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
    keys = ServerKeys.load_or_create(tmp_path / "keys")
    with packaged_config() as base:
        config = tmp_path / "nats.conf"
        config.write_text(secure_config(base.read_text(), keys))
    s = NatsServer(tmp_path / "js", port=free_port(), config=config).start()
    yield s
    s.stop()


def _spec(rng: random.Random, i: int) -> FunctionSpec:
    if rng.random() < 0.05:
        # Always outlives its maxexectime: re-queued once, then FAILED.
        return FunctionSpec(
            func_name="work",
            args=[i, LONG_MS],
            max_exec_time=1,
            max_retries=1,
            conditions=Conditions(executor_type="work"),
        )
    return FunctionSpec(
        func_name="work",
        args=[i, rng.randint(0, 60)],
        max_exec_time=SHORT_EXEC_S,
        max_retries=rng.choice([-1, -1, -1, 2]),
        conditions=Conditions(executor_type="work"),
    )


async def _until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.25)  # sleep-ok: polling the state under a deadline
    del what


async def _final_states(js, subjects: Subjects) -> dict[str, Process]:  # type: ignore[no-untyped-def]
    kv = await js.key_value(subjects.bucket_processes)
    found: dict[str, Process] = {}
    async for stored in latest_values(js, kv):  # not kv.keys(): see colonyos/buckets.py
        p = msgspec.json.decode(stored.value, type=Process)
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


async def _kv_history(js, subjects: Subjects) -> tuple[dict[str, list[tuple[Process, int]]], int]:  # type: ignore[no-untyped-def]
    """Every revision the processes bucket still holds, per process, and how many it keeps of
    each key (older revisions of a key are dropped past that)."""
    stream = f"KV_{subjects.bucket_processes}"
    info = await js.stream_info(stream)
    last = info.state.last_seq
    sub = await js.subscribe(
        f"$KV.{subjects.bucket_processes}.>",
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
    )
    per: dict[str, list[tuple[Process, int]]] = defaultdict(list)
    seq = 0
    while seq < last:
        msg = await sub.next_msg(timeout=5)
        seq = msg.metadata.sequence.stream
        if msg.headers and msg.headers.get("KV-Operation"):
            continue  # a delete or purge marker: none is written while the checker runs
        p = msgspec.json.decode(msg.data, type=Process)
        per[p.process_id].append((p, seq))
    await sub.unsubscribe()
    return per, info.config.max_msgs_per_subject


def _check_kv(
    events: dict[str, list[tuple[Process, int]]],
    kv: dict[str, list[tuple[Process, int]]],
    keep: int,
) -> list[str]:
    """The events of each process are its KV history: one event per revision, in revision
    order, each the process that revision holds. KV keeps the last ``keep`` revisions of a key;
    a process with fewer has its whole history there, and has exactly those events."""
    problems = []
    for pid in sorted(set(events) | set(kv)):
        stored = kv.get(pid, [])
        seen = events.get(pid, [])
        if len(stored) < keep and len(seen) != len(stored):
            problems.append(f"{pid}: {len(seen)} events for {len(stored)} KV revisions")
        tail = seen[-len(stored) :] if stored else []
        if [r for _, r in tail] != [r for _, r in stored]:
            problems.append(
                f"{pid}: event revisions {[r for _, r in seen]} are not the KV revisions "
                f"{[r for _, r in stored]}"
            )
            continue
        for (event, revision), (value, _) in zip(tail, stored, strict=True):
            if event != value:
                problems.append(f"{pid}: the event of revision {revision} is not what KV holds")
    return problems


@dataclass(frozen=True, slots=True)
class ExecRun:
    """One run of `work` as its executor recorded it; ``how`` it ended: returned, stopped (its
    executor stopped the function), or killed (with its executor: ``end`` is the kill)."""

    process: str
    attempt: int
    executor: str
    pid: int
    start: float
    end: float
    how: str


def _read_runs(path: Path, kills: dict[int, list[float]], stopped_at: float) -> list[ExecRun]:
    """The runs recorded in ``path``. A run without an end line was killed with its executor
    (OS pid): it ended at the first kill of that pid after it started."""
    starts: dict[tuple[str, int, str], dict[str, object]] = {}
    ends: dict[tuple[str, int, str], dict[str, object]] = {}
    runs = []
    lines = path.read_text().splitlines() if path.exists() else []
    for line in lines:
        record = json.loads(line)
        key = (record["process"], record["attempt"], record["executor"])
        if record["at"] == "start":
            if key in starts:  # the same attempt started twice on one executor run
                runs.append(_run(starts.pop(key), ends.pop(key, None), kills, stopped_at))
            starts[key] = record
        else:
            ends[key] = record
    for key, start in starts.items():
        runs.append(_run(start, ends.get(key), kills, stopped_at))
    return runs


def _run(
    start: dict[str, object],
    end: dict[str, object] | None,
    kills: dict[int, list[float]],
    stopped_at: float,
) -> ExecRun:
    t0 = float(start["t"])  # type: ignore[arg-type]
    pid = int(start["pid"])  # type: ignore[call-overload]
    if end is not None:
        t1, how = float(end["t"]), str(end["how"])  # type: ignore[arg-type]
    else:
        after = [k for k in kills.get(pid, []) if k >= t0]
        t1, how = (min(after), "killed") if after else (stopped_at, "unended")
    return ExecRun(
        str(start["process"]),
        int(start["attempt"]),
        str(start["executor"]),
        pid,
        t0,
        t1,
        how,  # type: ignore[call-overload]
    )


def _assigned(history: list[tuple[Process, int]]) -> dict[int, tuple[Process, Process | None]]:
    """Per attempt: the revision that assigned it, and the first that ended it (if any)."""
    found: dict[int, tuple[Process, Process | None]] = {}
    for i, (p, _) in enumerate(history):
        if p.state is not ProcessState.RUNNING or p.attempt in found:
            continue
        after = next(
            (
                q
                for q, _ in history[i + 1 :]
                if q.state is not ProcessState.RUNNING or q.attempt != p.attempt
            ),
            None,
        )
        found[p.attempt] = (p, after)
    return found


def _check_runs(
    runs: list[ExecRun],
    events: dict[str, list[tuple[Process, int]]],
    broker_kills: list[float],
) -> list[str]:
    """What the executors did, against what the broker recorded.

    Provable, and checked strictly: each attempt ran at most once, on the executor run the
    KV history assigned that attempt to (the compare-and-set on assignment, seen from the
    executor side).

    Overlap of two runs of one process: the broker takes a process back by a KV write, then tells
    its executor, which stops the function; it does not wait for that. So a later attempt may
    start before the earlier run has stopped, and that is allowed when the earlier run was
    stopped on being told (``stopped``: it overlapped by the time the message took), or when the
    re-queue counted an executor loss (the broker thought its executor gone: nobody waits for a
    lost executor), or when a broker was killed between the two starts (the message to stop may
    have died with it: it is sent once, after the write). An earlier run that ran to its end
    (``returned``) or until its executor was killed, after its process was re-queued for running
    out of time and the next attempt had started, without a broker kill in between, is a
    violation: its executor was reachable and was not stopped.
    """
    problems = []
    per: dict[str, list[ExecRun]] = defaultdict(list)
    for run in runs:
        per[run.process].append(run)
    for pid, mine in sorted(per.items()):
        assigned = _assigned(events.get(pid, []))
        by_attempt: dict[int, list[ExecRun]] = defaultdict(list)
        for run in mine:
            by_attempt[run.attempt].append(run)
        for attempt, those in sorted(by_attempt.items()):
            if len(those) > 1:
                where = sorted(r.executor[:8] for r in those)
                problems.append(f"{pid}: attempt {attempt} ran {len(those)} times, on {where}")
            if attempt not in assigned:
                problems.append(f"{pid}: attempt {attempt} ran but was never assigned")
            elif any(r.executor != assigned[attempt][0].assigned_executor_id for r in those):
                problems.append(f"{pid}: attempt {attempt} ran on an executor it was not given to")
        ordered = sorted(mine, key=lambda r: r.start)
        for a, b in itertools.combinations(ordered, 2):
            if b.start >= a.end or a.attempt >= b.attempt:
                continue
            ended = assigned.get(a.attempt, (None, None))[1]
            lost = (
                ended is not None and ended.executor_losses > assigned[a.attempt][0].executor_losses
            )
            told = a.how == "stopped"
            broker_died = any(a.start <= k <= b.start for k in broker_kills)
            if not (lost or told or broker_died):
                problems.append(
                    f"{pid}: attempt {a.attempt} ran on ({a.how}) after attempt {b.attempt} "
                    f"started, and its executor was neither lost nor stopped"
                )
    return problems


def _check_outcomes(
    accepted: set[str], final: dict[str, Process], runs: list[ExecRun]
) -> list[str]:
    """Every short process succeeded, with the output of its last attempt's run; every process
    built to outlive its maxexectime failed, its last error saying it used all its attempts.
    Either may instead fail for losing more than MAX_LOSSES executors, saying so."""
    problems = []
    returned = {(r.process, r.attempt, r.executor) for r in runs if r.how == "returned"}
    for pid in sorted(accepted & set(final)):
        p = final[pid]
        error = p.errors[-1] if p.errors else ""
        if p.state is ProcessState.FAILED and p.executor_losses > MAX_LOSSES:
            if f"{p.executor_losses} executors were lost" not in error:
                problems.append(f"{pid}: failed for its losses without saying so: {error!r}")
            continue
        if p.spec.max_exec_time == SHORT_EXEC_S:
            if p.state is not ProcessState.SUCCESS:
                problems.append(f"{pid}: short work ended {p.state.name}: {error!r}")
                continue
            last = (p.spec.args[0], p.attempt, p.assigned_executor_id)
            if p.output != list(last):
                problems.append(f"{pid}: stored output {p.output} is not attempt {p.attempt}'s")
            if (pid, p.attempt, p.assigned_executor_id) not in returned:
                problems.append(f"{pid}: no run of attempt {p.attempt} returned its result")
        else:
            spent = p.spec.max_retries + 1
            if p.state is not ProcessState.FAILED:
                problems.append(f"{pid}: outlived its maxexectime and ended {p.state.name}")
            elif not error.endswith(f"(attempt {spent} of {spent})"):
                problems.append(f"{pid}: failed without its attempt count: {error!r}")
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


def _proc(
    state: ProcessState,
    executor: str = "",
    retries: int = 0,
    n: int = 0,
    lost: int = 0,
    *,
    spec: FunctionSpec | None = None,
    output: list[object] | None = None,
    errors: list[str] | None = None,
) -> Process:
    return Process(
        process_id="p",
        state=state,
        spec=spec or FunctionSpec(func_name="f", conditions=Conditions(executor_type="x")),
        assigned_executor_id=executor,
        retries=retries,
        assignments=n,
        executor_losses=lost,
        output=output or [],
        errors=errors or [],
    )


W, R, OK, KO = ProcessState.WAITING, ProcessState.RUNNING, ProcessState.SUCCESS, ProcessState.FAILED
# Attempt 0 on a runs out of time (a retry), attempt 1 on b loses its executor, 2 on c succeeds.
HISTORY = [
    (_proc(W), 1),
    (_proc(R, "a", n=1), 2),
    (_proc(W, retries=1, n=1), 3),
    (_proc(R, "b", 1, n=2), 4),
    (_proc(W, retries=1, n=2, lost=1), 5),
    (_proc(R, "c", 1, n=3, lost=1), 6),
    (_proc(OK, "c", 1, n=3, lost=1), 7),
]


def test_the_kv_check_finds_violations() -> None:
    assert _check_kv({"p": HISTORY}, {"p": HISTORY}, keep=8) == []
    # KV keeps the last two revisions only: the events before them are not compared.
    assert _check_kv({"p": HISTORY}, {"p": HISTORY[-2:]}, keep=2) == []
    changed = (_proc(OK, "c", 1, n=3, lost=0), 7)
    bad = {
        "an event missing": HISTORY[:3] + HISTORY[4:],
        "an event too many": [*HISTORY[:3], (HISTORY[3][0], 9), *HISTORY[3:]],
        "an event twice": [*HISTORY[:3], HISTORY[3], *HISTORY[3:]],
        "out of order": [*HISTORY[:3], HISTORY[4], HISTORY[3], *HISTORY[5:]],
        "not what KV holds": [*HISTORY[:-1], changed],
        "no events": [],
        "an event before the first revision": [(HISTORY[0][0], 0), *HISTORY],
    }
    for name, events in bad.items():
        assert _check_kv({"p": events}, {"p": HISTORY}, keep=8), name
    assert _check_kv({"p": HISTORY[:-1]}, {"p": HISTORY[-2:]}, keep=2), "the last one missing"


def test_the_run_check_finds_violations() -> None:
    def run(
        attempt: int, executor: str, start: float, end: float, how: str = "returned"
    ) -> ExecRun:
        return ExecRun("p", attempt, executor, 1, start, end, how)

    events = {"p": HISTORY}
    good = [run(0, "a", 0, 1, "stopped"), run(1, "b", 2, 3, "killed"), run(2, "c", 4, 5)]
    assert _check_runs(good, events, []) == []
    allowed = {
        "stopped on being told, after the next started": [
            run(0, "a", 0, 2.5, "stopped"),
            run(1, "b", 2, 3),
        ],
        "its executor was lost": [run(1, "b", 2, 4.5, "returned"), run(2, "c", 4, 5)],
        "a broker died between the starts": [run(0, "a", 0, 2.5), run(1, "b", 2, 3)],
    }
    for name, runs in allowed.items():
        kills = [1.5] if "broker" in name else []
        assert _check_runs(runs, events, kills) == [], name
    bad = {
        "one attempt run twice": [run(0, "a", 0, 1), run(0, "a", 1.5, 1.8), run(2, "c", 4, 5)],
        "on an executor it was not given to": [run(0, "b", 0, 1)],
        "never assigned": [run(5, "c", 6, 7)],
        "ran on after the re-queue": [run(0, "a", 0, 2.5), run(1, "b", 2, 3)],
        "killed after the re-queue": [run(0, "a", 0, 2.5, "killed"), run(1, "b", 2, 3)],
    }
    for name, runs in bad.items():
        assert _check_runs(runs, events, [3.5]), name


def test_the_outcome_check_finds_violations() -> None:
    short = FunctionSpec(func_name="work", args=[7, 10], max_exec_time=SHORT_EXEC_S, max_retries=-1)
    long = FunctionSpec(func_name="work", args=[8, LONG_MS], max_exec_time=1, max_retries=1)
    won = _proc(OK, "c", 1, n=3, spec=short, output=[7, 2, "c"])
    spent = _proc(KO, "b", 1, n=2, spec=long, errors=["ran out of time (attempt 2 of 2)"])
    runs = [ExecRun("p", 2, "c", 1, 4, 5, "returned")]
    assert _check_outcomes({"p"}, {"p": won}, runs) == []
    assert _check_outcomes({"p"}, {"p": spent}, []) == []
    lost = "gone; 6 executors were lost while running this process, more than the 5 allowed"
    too_many = _proc(KO, "b", 0, n=6, lost=6, spec=short, errors=[lost])
    assert _check_outcomes({"p"}, {"p": too_many}, []) == []
    bad = {
        "short work failed": (
            _proc(KO, "c", 1, n=3, spec=short, output=[7, 2, "c"], errors=["x"]),
            runs,
        ),
        "an earlier attempt's output": (
            _proc(OK, "c", 1, n=3, spec=short, output=[7, 1, "b"]),
            runs,
        ),
        "no run returned it": (won, [ExecRun("p", 2, "c", 1, 4, 5, "stopped")]),
        "long work succeeded": (
            _proc(OK, "b", 1, n=2, spec=long, errors=["ran out of time (attempt 2 of 2)"]),
            [],
        ),
        "no attempt count": (_proc(KO, "b", 1, n=2, spec=long, errors=["ran out of time"]), []),
        "count not spent": (_proc(KO, "b", 0, n=1, spec=long, errors=["x (attempt 1 of 2)"]), []),
        "losses unsaid": (_proc(KO, "b", 0, n=6, lost=6, spec=short, errors=["gone"]), []),
    }
    for name, (process, those) in bad.items():
        assert _check_outcomes({"p"}, {"p": process}, those), name


def _children(tmp_path: Path, env: dict[str, str]) -> tuple[list[Child], list[Child]]:
    env = {**env, "COLONIES_CHECKER_RUNS": str(tmp_path / "runs.jsonl")}
    brokers = [
        Child(
            ["broker", "start", "--data-dir", str(tmp_path / f"b{i}")], tmp_path / f"b{i}.log", env
        )
        for i in range(2)
    ]
    module = str(TASKS)
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
        self.keys = ServerKeys.load(tmp_path / "keys")
        for who in ("checker", "executors"):
            write_seed(tmp_path / f"{who}.nk", generate())
        env = {
            "COLONIES_KEYS_DIR": str(tmp_path / "keys"),
            "COLONIES_IDENTITY": str(tmp_path / "executors.nk"),
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
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
        self.settings = Settings(
            nats_url=server.url, colony=COLONY, prefix=PREFIX, identity=tmp_path / "checker.nk"
        )
        self.accepted: set[str] = set()
        self.kills: Counter[str] = Counter()
        self.runs = tmp_path / "runs.jsonl"
        self.killed_at: dict[int, list[float]] = defaultdict(list)  # OS pid -> when
        self.broker_kills: list[float] = []

    async def enrol(self, inspector: NATS) -> None:
        """The checker's client is the server owner (the brokers make the same bucket)."""
        book = MemberBook(inspector.jetstream(), Subjects(PREFIX))
        await book.start()
        owner = load_identity(self.settings.identity).public_key  # type: ignore[arg-type]
        await book.put(
            Member(
                colony_name=SERVER_SCOPE, name="checker", public_key=owner, role=Role.SERVER_OWNER
            )
        )

    async def connected(self, timeout: float) -> Client:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    return await Client.connect(self.settings, caller="checker")
                except (NotAuthorizedError, BrokerUnavailableError):
                    await asyncio.sleep(0.2)  # sleep-ok: waiting for a broker to start

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
            pid = victim.proc.pid if victim.alive and victim.proc is not None else 0
            victim.kill()
            killed = time.time()  # once it is gone: every run it had has ended by now
            self.killed_at[pid].append(killed)
            if victim in self.brokers:
                self.broker_kills.append(killed)
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
    # The checker's own eyes on the buckets and streams: the brokers' key (no member may).
    inspector = await nats.connect(server.url, nkeys_seed_str=run.keys.broker.seed.decode())
    await run.enrol(inspector)
    for child in run.children:
        child.start()
    # A secure server lets a client in once a broker answers its callout.
    client = await run.connected(60)
    try:
        await _until(lambda: run.colony_added(client), 30, "a broker to serve")
        # Rights are decided at connect: now the owner of the colony it made, it may submit.
        await client.aclose()
        client = await run.connected(30)
        await asyncio.gather(run.submit_all(client), run.chaos())
        run.revive()
        js = inspector.jetstream()
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
        kv, keep = await _kv_history(js, Subjects(PREFIX))
        for child in run.executors:  # every process ended: no run is left to record
            child.stop()
        runs = _read_runs(run.runs, run.killed_at, time.time())
        overlaps = sum(
            1
            for a, b in itertools.combinations(runs, 2)
            if a.process == b.process and a.start < b.end and b.start < a.end
        )
        print(f"checker: {len(runs)} runs recorded by the executors, {overlaps} overlapping")
        problems = [
            *_check(run.accepted, events, final),
            *_check_kv(events, kv, keep),
            *_check_runs(runs, events, run.broker_kills),
            *_check_outcomes(run.accepted, final, runs),
        ]
        assert not problems, "\n".join(problems[:50])
        assert len(run.accepted) == PROCESSES
    finally:
        for child in run.children:
            child.stop()
        await client.aclose()
        await inspector.close()
