"""A broker's process runs the cyclic garbage collector less often (colonyos.broker.collector)."""

from __future__ import annotations

import subprocess
import sys

_PROBE = (
    "import gc; from colonyos.broker.collector import collect_less_often; "
    "collect_less_often(); print(*gc.get_threshold(), gc.get_freeze_count())"
)


def test_the_collector_runs_less_often_and_skips_what_was_loaded() -> None:
    # In a process of its own: the thresholds are the whole process's.
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    first, second, third, frozen = map(int, out)
    assert (first, second, third) == (10_000, 10, 100)
    assert frozen > 1000  # the modules and objects loaded so far are out of every pass
