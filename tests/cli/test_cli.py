"""The CLI through typer's CliRunner, against a live broker and nats-server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from colonyos.cli.main import app
from colonyos.config import Settings

from ..helpers import EXAMPLES, base_args, raw_nats


@pytest.fixture
def cli(live_system: Settings):  # type: ignore[no-untyped-def]
    """Run a command; returns what it printed (stdout and stderr), after checking its exit code."""
    runner = CliRunner()
    base = base_args(live_system)

    def invoke(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, [*base, *args])
        assert result.exit_code == code, (result.output, result.exception)
        return result.output

    return invoke


@pytest.fixture
def cli_json(live_system: Settings):  # type: ignore[no-untyped-def]
    """Run a command with --json; returns the one JSON document on its stdout."""
    runner = CliRunner()
    base = base_args(live_system)

    def invoke(*args: str, code: int = 0) -> object:
        result = runner.invoke(app, [*base, *args, "--json"])
        assert result.exit_code == code, (result.output, result.exception)
        return json.loads(result.stdout)

    return invoke


@pytest.fixture
def echo_executor(live_system: Settings):  # type: ignore[no-untyped-def]
    """An echo executor in burst mode, run on demand from the test thread."""
    runner = CliRunner()
    base = ["--nats", live_system.nats_url, "--prefix", live_system.prefix]

    def run_burst() -> str:
        result = runner.invoke(
            app, [*base, "executor", "start", "echo", "--burst", "--name", "cli-echo"]
        )
        assert result.exit_code == 0, result.output
        return result.output

    return run_burst


def test_help_on_every_command() -> None:
    runner = CliRunner()
    for args in (
        [],
        ["function", "submit"],
        ["process", "ps"],
        ["process", "get"],
        ["log", "get"],
        ["colony", "add"],
        ["executor", "start"],
        ["server", "start"],
        ["broker", "start"],
        ["dev"],
    ):
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0, (args, result.output)
        assert "Usage" in result.output


def test_submit_run_and_inspect(cli, cli_json, echo_executor, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pid = cli("function", "submit", "--spec", str(EXAMPLES / "echo.json")).strip()
    assert len(pid) == 64
    waiting = cli_json("process", "psw")
    assert [p["processid"] for p in waiting] == [pid]
    assert "handled 1 processes" in echo_executor()
    process = cli_json("process", "wait", "--process", pid)
    assert process["state"] == 2 and process["out"] == ["helloworld"]
    assert [p["processid"] for p in cli_json("process", "pss")] == [pid]
    assert "helloworld" in cli("process", "get", "--process", pid)
    assert cli("log", "get", "--process", pid).strip() == "echo helloworld"
    assert "cli-echo" in cli("executor", "ls")
    assert cli_json("process", "ps") == []
    cli("process", "remove", "--process", pid)
    assert cli_json("process", "pss") == []


def test_submit_wait_json_prints_the_finished_process(cli_json, live_echo) -> None:  # type: ignore[no-untyped-def]
    process = cli_json("function", "submit", "--spec", str(EXAMPLES / "echo.json"), "--wait")
    assert process["state"] == 2 and process["out"] == ["helloworld"]


def test_submit_follow_streams_the_log(cli, live_echo) -> None:  # type: ignore[no-untyped-def]
    text = cli("function", "submit", "--spec", str(EXAMPLES / "echo.json"), "--follow")
    first, log = text.splitlines()[:2]
    assert first.startswith("waiting for process ")  # the id comes first
    assert log == "echo helloworld"
    assert "SUCCESS" in text


def test_warnings_strict_and_bad_files(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec = tmp_path / "typo.json"
    spec.write_text('{"conditions": {"executortype": "echo"}, "funcname": "echo", "maxexectme": 3}')
    out = cli("function", "submit", "--spec", str(spec))
    assert "$.maxexectme" in out
    out = cli("function", "submit", "--spec", str(spec), "--strict", code=2)
    assert "unknown keys" in out and "Traceback" not in out
    out = cli("function", "submit", "--spec", str(tmp_path / "missing.json"), code=2)
    assert "no such file" in out
    bad = tmp_path / "bad.json"
    bad.write_text('{"conditions": {"executortype": "echo"},\n "funcname": ')
    out = cli("function", "submit", "--spec", str(bad), code=2)
    assert "malformed JSON at line 2, column 13" in out
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"conditions": {"executortype": "echo"}, "funcname": ["x"]}')
    assert "$.funcname" in cli("function", "submit", "--spec", str(wrong), code=2)


def test_user_errors_are_one_red_line(cli) -> None:  # type: ignore[no-untyped-def]
    out = cli("process", "get", "--process", "f" * 64, code=2)
    assert "does not exist" in out and "Traceback" not in out
    out = cli("--colony", "nowhere", "process", "psw", code=2)
    assert "colony 'nowhere' does not exist" in out
    out = cli("executor", "approve", "--name", "ghost", code=2)
    assert "not registered" in out


def test_server_not_running_is_a_clear_error() -> None:
    result = CliRunner().invoke(app, ["--nats", "nats://127.0.0.1:1", "process", "psw"])
    assert result.exit_code == 3
    assert "cannot reach NATS" in result.output and "Traceback" not in result.output


def test_colonies_and_executors(cli, cli_json, echo_executor) -> None:  # type: ignore[no-untyped-def]
    assert "colony lab added" in cli("colony", "add", "--name", "lab")
    cli("colony", "add", "--name", "lab", code=3)  # a conflict
    assert cli_json("colony", "add", "--name", "lab2")["name"] == "lab2"
    names = [c["name"] for c in cli_json("colony", "ls")]
    assert names == ["dev", "lab", "lab2"]
    echo_executor()
    assert "executor cli-echo rejected" in cli("executor", "reject", "--name", "cli-echo")
    assert cli_json("executor", "ls")[0]["state"] == 2
    assert cli_json("executor", "approve", "--name", "cli-echo")["state"] == 1
    assert cli_json("executor", "reject", "--name", "cli-echo")["state"] == 2
    assert cli_json("executor", "remove", "--name", "cli-echo") == {
        "executorname": "cli-echo",
        "removed": True,
    }
    # Kept for the record, as UNREGISTERED (Colonies' state 3).
    removed = cli_json("executor", "ls", "--all")
    assert [(e["state"], e["online"]) for e in removed] == [(3, False)]
    assert cli_json("executor", "ls") == []  # as Colonies: removed ones only with --all


def test_cancel(cli, cli_json) -> None:  # type: ignore[no-untyped-def]
    pid = cli("function", "submit", "--spec", str(EXAMPLES / "echo.json")).strip()
    assert f"process {pid} cancelled" in cli("process", "cancel", "--process", pid[:12])
    process = cli_json("process", "get", "--process", pid)
    assert process["state"] == 4
    assert [p["processid"] for p in cli_json("process", "psc")] == [pid]
    cli("process", "cancel", "--process", pid, code=3)  # a conflict: it ended
    cli("process", "wait", "--process", pid, code=1)  # it ended CANCELLED
    assert cli_json("process", "remove", "--process", pid[:12]) == {
        "processid": pid,
        "removed": True,
    }


def test_workflow_commands(cli, cli_json, live_echo) -> None:  # type: ignore[no-untyped-def]
    graph = cli_json("workflow", "submit", "--spec", str(EXAMPLES / "workflow.json"), "--wait")
    assert graph["state"] == 2 and len(graph["processids"]) == 4
    gid = graph["processgraphid"]
    shown = cli_json("workflow", "get", "--graph", gid[:12])
    by_name = {p["spec"]["nodename"]: p for p in shown["processes"]}
    assert by_name["task_d"]["in"] == ["task_b", "task_c"]
    # In dependency order: a first, d last (b and c in the workflow's order between).
    assert [p["spec"]["nodename"] for p in shown["processes"]] == [
        "task_a",
        "task_b",
        "task_c",
        "task_d",
    ]
    assert [g["processgraphid"] for g in cli_json("workflow", "ps")] == [gid]
    assert "graph id" in cli("workflow", "ps")
    cli("workflow", "watch", "--graph", gid)  # ended already: shows it and exits 0
    assert "task_d" in cli("workflow", "get", "--graph", gid)
    # Replay this graph's first events from the stream.
    lines = cli("events", "--since", "5m", "--count", "3", "--json").splitlines()
    events = [json.loads(line) for line in lines]
    assert len(events) == 3 and {e["processgraphid"] for e in events} == {gid}
    assert events[0]["state"] == 0 and events[0]["spec"]["nodename"] == "task_a"


def test_workflow_errors(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cyclic = tmp_path / "cycle.json"
    cyclic.write_text(
        '[{"nodename": "a", "funcname": "f", "conditions": {"executortype": "x", "dependencies": ["b"]}},'
        ' {"nodename": "b", "funcname": "f", "conditions": {"executortype": "x", "dependencies": ["a"]}}]'
    )
    out = cli("workflow", "submit", "--spec", str(cyclic), code=2)
    assert "cycle" in out and "Traceback" not in out
    out = cli("workflow", "get", "--graph", "0" * 64, code=2)
    assert "does not exist" in out
    out = cli("events", "--state", "done", code=2)
    assert "unknown process state" in out


def test_workflow_cancel_and_watch_exit_code(cli, cli_json) -> None:  # type: ignore[no-untyped-def]
    gid = cli("workflow", "submit", "--spec", str(EXAMPLES / "workflow.json")).strip()
    assert cli_json("workflow", "cancel", "--graph", gid[:12])["state"] == 4
    assert "cancelled" in cli("workflow", "cancel", "--graph", gid)
    cli("workflow", "watch", "--graph", gid, code=1)


def test_each_submit_names_the_other_for_its_files(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    workflow = str(EXAMPLES / "workflow.json")
    out = cli("function", "submit", "--spec", workflow, code=2)
    assert (
        f"is a workflow (a JSON list of function specs): submit it with 'colonies workflow submit --spec {workflow}'"
        in out
    )
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text('{"colonyname": "dev", "functionspecs": []}')
    assert "colonies workflow submit" in cli("function", "submit", "--spec", str(wrapped), code=2)
    spec = str(EXAMPLES / "echo.json")
    out = cli("workflow", "submit", "--spec", spec, code=2)
    assert (
        f"is a function spec (one JSON object): submit it with 'colonies function submit --spec {spec}'"
        in out
    )


def test_log_get_json(cli, cli_json, live_echo) -> None:  # type: ignore[no-untyped-def]
    pid = cli_json("function", "submit", "--spec", str(EXAMPLES / "echo.json"), "--wait")[
        "processid"
    ]
    lines = [json.loads(line) for line in cli("log", "get", "-p", pid[:12], "--json").splitlines()]
    assert [(line["processid"], line["message"]) for line in lines] == [(pid, "echo helloworld")]


def test_removal_commands(cli, cli_json, live_echo) -> None:  # type: ignore[no-untyped-def]
    cli("function", "submit", "--spec", str(EXAMPLES / "echo.json"), "--wait")
    assert "removed 1 success processes" in cli("process", "removeall", "--state", "success")
    out = cli("process", "removeall", "--state", "running", code=2)
    assert "cancel them first" in out and "Traceback" not in out
    graph = cli_json("workflow", "submit", "--spec", str(EXAMPLES / "workflow.json"), "--wait")
    gid = graph["processgraphid"]
    assert "with its 4 processes" in cli("workflow", "remove", "--graph", gid[:12])
    cli("workflow", "get", "--graph", gid, code=2)
    cli("colony", "add", "--name", "lab")
    assert "colony lab removed" in cli("colony", "remove", "--name", "lab")
    cli("colony", "remove", "--name", "lab", code=2)


def test_log_get_says_when_older_lines_are_gone(cli, cli_json, live_echo) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from colonyos.subjects import Subjects

    first = cli_json("function", "submit", "--spec", str(EXAMPLES / "echo.json"), "--wait")
    assert "note:" not in cli("log", "get", "--process", first["processid"])

    async def drop_old_lines() -> None:  # as the stream's size limit would
        nc = await raw_nats(live_echo.nats_url)
        await nc.jetstream().purge_stream(Subjects(live_echo.prefix).stream_logs)
        await nc.close()

    asyncio.run(drop_old_lines())
    cli("function", "submit", "--spec", str(EXAMPLES / "echo.json"), "--wait")
    out = cli("log", "get", "--process", first["processid"])
    assert "earlier lines of this process may be gone" in out


def test_events_of_one_process_by_a_short_id(cli, cli_json, live_echo) -> None:  # type: ignore[no-untyped-def]
    pid = cli_json("function", "submit", "--spec", str(EXAMPLES / "echo.json"), "--wait")[
        "processid"
    ]
    out = cli("events", "--process", pid[:12], "--since", "5m", "--count", "3", "--json")
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(e["processid"], e["state"]) for e in events] == [(pid, 0), (pid, 1), (pid, 2)]


def test_a_colony_name_that_cannot_be_a_subject_token_is_named_not_no_broker(cli) -> None:  # type: ignore[no-untyped-def]
    for bad in ("bad.name", "two words", "star*"):
        out = cli("--colony", bad, "process", "psw", code=2)
        assert f"colony {bad!r} is not a valid name" in out, out
    out = cli("colony", "remove", "--name", ">", code=2)  # as add says, not "does not exist"
    assert "colony '>' is not a valid name" in out, out


def test_the_cli_loads_no_broker_until_a_command_runs_one() -> None:
    """Every command but those that run a broker starts without it and its SQLite index
    (a quarter of the CLI's start-up time)."""
    code = (
        "import sys, colonyos.cli.main\n"
        "print(','.join(m for m in ('colonyos.broker', 'sqlite_utils') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
