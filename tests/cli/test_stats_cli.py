"""``colony stats``, ``function stats`` and ``server status`` as a user runs them: at 80
columns in a pipe (CliRunner's output is one), with --json for scripts, and with no broker."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from colonyos.cli.main import app
from colonyos.cli.stats import function_stats_table, seconds_text, size_text
from colonyos.config import Settings
from colonyos.statistics import FunctionStats

from ..helpers import EXAMPLES, base_args

pytestmark = pytest.mark.timeout(60)


def _run(settings: Settings, *args: str, columns: int = 80, code: int = 0) -> str:
    result = CliRunner().invoke(app, [*base_args(settings), *args], env={"COLUMNS": str(columns)})
    assert result.exit_code == code, result.output
    return result.output


@pytest.fixture
def busy(live_echo: Settings) -> Settings:
    """Three echo processes done, one failed (a spec for a function echo does not have
    would wait: the failed one is cancelled instead), and a workflow."""
    for _ in range(3):
        _run(live_echo, "function", "submit", "--spec", str(EXAMPLES / "echo.json"), "--wait")
    _run(live_echo, "workflow", "submit", "--spec", str(EXAMPLES / "workflow.json"), "--wait")
    return live_echo


def _fits(text: str, columns: int = 80) -> None:
    too_long = [line for line in text.splitlines() if len(line) > columns]
    assert not too_long, too_long


def test_colony_stats_at_80_columns_and_as_json(busy: Settings) -> None:
    text = _run(busy, "colony", "stats")
    _fits(text)
    assert f"colony {busy.colony}" in text
    processes = next(line for line in text.splitlines() if line.startswith("processes"))
    assert processes.split()[1:] == ["0", "0", "7", "0", "0"]  # 3 + the workflow's 4
    workflows = next(line for line in text.splitlines() if line.startswith("workflows"))
    assert workflows.split()[1:] == ["0", "0", "1", "0", "0"]
    assert "1 online" in text
    doc = json.loads(_run(busy, "colony", "stats", "--json"))
    assert doc["colonyname"] == busy.colony
    assert (doc["successfulprocesses"], doc["successfulworkflows"]) == (7, 1)
    assert (doc["activeexecutors"], doc["offlineexecutors"]) == (1, 0)


def test_function_stats_at_80_columns_and_as_json(busy: Settings) -> None:
    text = _run(busy, "function", "stats")
    _fits(text)
    header = text.splitlines()[1]
    for column in ("func", "executor type", "count", "failed", "wait p50", "exec p50", "max"):
        assert column in header, header
    row = next(line for line in text.splitlines() if line.startswith("echo "))
    assert row.split()[2:4] == ["7", "0"]  # every process of the examples runs echo
    (doc,) = json.loads(_run(busy, "function", "stats", "--json"))
    assert (doc["funcname"], doc["executortype"], doc["counter"]) == ("echo", "echo", 7)
    assert doc["failed"] == 0 and doc["maxexectime"] >= doc["p95exectime"] >= doc["p50exectime"]


def test_function_stats_with_nothing_yet(live_system: Settings) -> None:
    assert "no processes yet" in _run(live_system, "function", "stats")
    assert json.loads(_run(live_system, "function", "stats", "--json")) == []


def test_server_status_at_80_columns_and_as_json(live_system: Settings) -> None:
    text = _run(live_system, "server", "status")
    _fits(text)
    for key in ("version", "uptime", "leading broker", "standbys", "nats server", "jetstream"):
        assert key in text, text
    # Which colonies the broker leads, not only how many.
    assert re.search(rf"leads +1 colony: {live_system.colony}\n", text), text
    assert f"{live_system.prefix.upper()}_EVENTS" in text
    doc = json.loads(_run(live_system, "server", "status", "--json"))
    assert doc["leader"]["leading"] is True and doc["standbys"] == []
    assert doc["leader"]["colonynames"] == [live_system.colony]
    assert doc["nats"]["jetstream"] is True and doc["nats"]["servers"]
    assert doc["messages"] == sum(s["messages"] for s in doc["streams"])


@pytest.mark.parametrize(
    "command", [["colony", "stats"], ["function", "stats"], ["server", "status"]]
)
def test_no_broker_is_one_clear_line(
    command: list[str], insecure_nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from colonyos import connection

    monkeypatch.setattr(connection, "_INITIAL_CONNECT_ATTEMPTS", 1)
    args = ["--nats", insecure_nats_url, "--prefix", "tnobroker", *command]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "80"})
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output
    assert "broker" in result.output.lower(), result.output


def test_durations_and_sizes_read_short() -> None:
    assert [seconds_text(s) for s in (0.0123, 3.42, 185, 7620, 273600)] == [
        "12ms",
        "3.4s",
        "3m05s",
        "2h07m",
        "3d04h",
    ]
    assert [size_text(n) for n in (512, 3482, 12 * 1024 * 1024, 5 * 1024**4)] == [
        "512 B",
        "3.4 KiB",
        "12.0 MiB",
        "5120.0 GiB",
    ]


def test_times_no_process_has_yet_are_dashes(live_system: Settings, tmp_path: Path) -> None:
    """A function whose processes all wait has no waiting or execution time: '-', not 0ms."""
    path = tmp_path / "later.json"
    path.write_text('{"funcname": "later", "conditions": {"executortype": "nobody"}}')
    _run(live_system, "function", "submit", "--spec", str(path))
    row = next(
        line for line in _run(live_system, "function", "stats").splitlines() if "later" in line
    )
    assert row.split() == ["later", "nobody", "1", "0", *["-"] * 6]
    (doc,) = json.loads(_run(live_system, "function", "stats", "--json"))
    assert (doc["waitsamples"], doc["execsamples"], doc["maxwaittime"]) == (0, 0, 0.0)


def test_times_from_a_broker_that_sends_no_sample_counts_still_show() -> None:
    old = FunctionStats(
        func_name="f", executor_type="e", counter=1, max_wait_time=0.5, max_exec_time=2.0
    )
    out = io.StringIO()
    Console(width=80, file=out).print(function_stats_table([old]))
    row = next(line for line in out.getvalue().splitlines() if line.startswith("f "))
    assert row.split()[-6:] == ["0ms", "0ms", "500ms", "0ms", "0ms", "2.0s"]
