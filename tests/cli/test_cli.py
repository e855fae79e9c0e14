"""The CLI through typer's CliRunner, against a live broker and nats-server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from colonyos.cli.main import app
from colonyos.config import Settings

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.fixture
def cli(live_system: Settings):  # type: ignore[no-untyped-def]
    runner = CliRunner()
    base = [
        "--nats",
        live_system.nats_url,
        "--prefix",
        live_system.prefix,
        "--colony",
        live_system.colony,
    ]

    def invoke(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, [*base, *args])
        assert result.exit_code == code, (result.output, result.exception)
        return result.output

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


def test_submit_run_and_inspect(cli, echo_executor, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pid = cli("function", "submit", "--spec", str(EXAMPLES / "echo.json")).strip()
    assert len(pid) == 64
    waiting = json.loads(cli("process", "psw", "--json"))
    assert [p["processid"] for p in waiting] == [pid]
    assert "handled 1 processes" in echo_executor()
    process = json.loads(cli("process", "wait", "--process", pid, "--json"))
    assert process["state"] == 2 and process["out"] == ["helloworld"]
    assert [p["processid"] for p in json.loads(cli("process", "pss", "--json"))] == [pid]
    assert "helloworld" in cli("process", "get", "--process", pid)
    assert cli("log", "get", "--process", pid).strip() == "echo helloworld"
    assert "cli-echo" in cli("executor", "ls")
    assert json.loads(cli("process", "ps", "--json")) == []
    cli("process", "remove", "--process", pid)
    assert json.loads(cli("process", "pss", "--json")) == []


def test_submit_wait_json_prints_the_finished_process(cli, live_echo) -> None:  # type: ignore[no-untyped-def]
    text = cli("function", "submit", "--spec", str(EXAMPLES / "echo.json"), "--wait", "--json")
    process = json.loads(text)
    assert process["state"] == 2 and process["out"] == ["helloworld"]


def test_submit_follow_streams_the_log(cli, live_echo) -> None:  # type: ignore[no-untyped-def]
    text = cli("function", "submit", "--spec", str(EXAMPLES / "echo.json"), "--follow")
    assert text.splitlines()[0] == "echo helloworld"
    assert "SUCCESS" in text


def test_warnings_strict_and_bad_files(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec = tmp_path / "typo.json"
    spec.write_text('{"conditions": {"executortype": "echo"}, "funcname": "echo", "maxexectme": 3}')
    out = cli("function", "submit", "--spec", str(spec))
    assert "$.maxexectme" in out
    out = cli("function", "submit", "--spec", str(spec), "--strict", code=1)
    assert "unknown keys" in out and "Traceback" not in out
    out = cli("function", "submit", "--spec", str(tmp_path / "missing.json"), code=1)
    assert "no such file" in out
    bad = tmp_path / "bad.json"
    bad.write_text('{"conditions": {"executortype": "echo"}, "funcname": ')
    assert "malformed JSON" in cli("function", "submit", "--spec", str(bad), code=1)
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"conditions": {"executortype": "echo"}, "funcname": ["x"]}')
    assert "$.funcname" in cli("function", "submit", "--spec", str(wrong), code=1)


def test_user_errors_are_one_red_line(cli) -> None:  # type: ignore[no-untyped-def]
    out = cli("process", "get", "--process", "f" * 64, code=1)
    assert "does not exist" in out and "Traceback" not in out
    out = cli("--colony", "nowhere", "process", "psw", code=1)
    assert "colony 'nowhere' does not exist" in out
    out = cli("executor", "approve", "--name", "ghost", code=1)
    assert "not registered" in out


def test_server_not_running_is_a_clear_error() -> None:
    result = CliRunner().invoke(app, ["--nats", "nats://127.0.0.1:1", "process", "psw"])
    assert result.exit_code == 1
    assert "cannot reach NATS" in result.output and "Traceback" not in result.output


def test_colonies_and_executors(cli, echo_executor) -> None:  # type: ignore[no-untyped-def]
    assert "colony lab added" in cli("colony", "add", "--name", "lab")
    cli("colony", "add", "--name", "lab", code=1)
    names = [c["name"] for c in json.loads(cli("colony", "ls", "--json"))]
    assert names == ["dev", "lab"]
    echo_executor()
    assert "executor cli-echo rejected" in cli("executor", "reject", "--name", "cli-echo")
    assert json.loads(cli("executor", "ls", "--json"))[0]["state"] == 2
    cli("executor", "approve", "--name", "cli-echo")
    cli("executor", "remove", "--name", "cli-echo")
    # Kept for the record, as UNREGISTERED (Colonies' state 3).
    assert [e["state"] for e in json.loads(cli("executor", "ls", "--json"))] == [3]


def test_cancel(cli) -> None:  # type: ignore[no-untyped-def]
    pid = cli("function", "submit", "--spec", str(EXAMPLES / "echo.json")).strip()
    assert "cancelled" in cli("process", "cancel", "--process", pid)
    process = json.loads(cli("process", "get", "--process", pid, "--json"))
    assert process["state"] == 4
    cli("process", "cancel", "--process", pid, code=1)
    cli("process", "wait", "--process", pid, code=1)


def test_workflow_commands(cli, live_echo) -> None:  # type: ignore[no-untyped-def]
    graph = json.loads(
        cli("workflow", "submit", "--spec", str(EXAMPLES / "workflow.json"), "--wait", "--json")
    )
    assert graph["state"] == 2 and len(graph["processids"]) == 4
    gid = graph["processgraphid"]
    shown = json.loads(cli("workflow", "get", "--graph", gid, "--json"))
    by_name = {p["spec"]["nodename"]: p for p in shown["processes"]}
    assert by_name["task_d"]["in"] == ["task_b", "task_c"]
    assert [g["processgraphid"] for g in json.loads(cli("workflow", "ps", "--json"))] == [gid]
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
    out = cli("workflow", "submit", "--spec", str(cyclic), code=1)
    assert "cycle" in out and "Traceback" not in out
    out = cli("workflow", "get", "--graph", "0" * 64, code=1)
    assert "does not exist" in out
    out = cli("events", "--state", "done", code=1)
    assert "unknown process state" in out


def test_workflow_cancel_and_watch_exit_code(cli) -> None:  # type: ignore[no-untyped-def]
    gid = cli("workflow", "submit", "--spec", str(EXAMPLES / "workflow.json")).strip()
    assert "cancelled" in cli("workflow", "cancel", "--graph", gid)
    cli("workflow", "watch", "--graph", gid, code=1)
