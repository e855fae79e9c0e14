"""The checker's executor module (`--module tests/checker_tasks.py`): `work` records each run.

Every run appends two JSON lines to the file named by ``COLONIES_CHECKER_RUNS``: one when it
starts and one when it ends, saying how (``returned``, or ``stopped`` when its executor stopped
the function: the broker took the process away). Each line is one ``write`` to a file opened
with ``O_APPEND``, so an executor SIGKILLed between lines leaves whole lines; a run that has a
start and no end was killed with its executor, and the checker ends it at that kill.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from colonyos.execution import current


def _record(line: dict[str, Any]) -> None:
    data = (json.dumps(line) + "\n").encode()
    fd = os.open(os.environ["COLONIES_CHECKER_RUNS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


async def work(i: int, ms: int) -> tuple[int, int, str]:
    """Run for ``ms`` milliseconds; the output says which attempt, on which executor run."""
    ctx = current.get()
    assert ctx is not None, "work runs inside an executor"
    process = ctx.process
    run = {
        "process": process.process_id,
        "attempt": process.attempt,
        "executor": process.assigned_executor_id,
        "pid": os.getpid(),
    }
    _record({**run, "at": "start", "t": time.time()})
    how = "stopped"
    try:
        await asyncio.sleep(ms / 1000)  # sleep-ok: the work the executors do
        how = "returned"
        return i, process.attempt, process.assigned_executor_id
    finally:
        _record({**run, "at": "end", "how": how, "t": time.time()})
