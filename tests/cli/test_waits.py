"""Every wait names what it waits for first; a timeout (124) or Ctrl-C (130) names it again with
the commands that follow it up, and it goes on. Ctrl-C is a real SIGINT to a real `colonies`
OS process."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from colonyos.cli._run import ColoniesGroup, ExitCode
from colonyos.cli.main import app
from colonyos.config import Settings

from ..helpers import EXAMPLES, base_args
from ..procs import Child

ID = re.compile(r"waiting for (?:process|process graph) ([0-9a-f]{64}) ")
ECHO = str(EXAMPLES / "echo.json")  # nobody serves type echo in these tests: it waits
WORKFLOW = str(EXAMPLES / "workflow.json")


def _run(settings: Settings, *args: str) -> typer.testing.Result:
    return CliRunner().invoke(app, [*base_args(settings), *args])


def _waited_for(text: str) -> str:
    found = ID.search(text)
    assert found, text
    return found[1]


def test_a_timed_out_submit_names_the_process_and_how_to_follow_it(
    live_system: Settings,
) -> None:
    result = _run(live_system, "function", "submit", "--spec", ECHO, "--wait", "--timeout", "0.2")
    assert result.exit_code == ExitCode.TIMEOUT, result.output
    pid = _waited_for(result.stdout.splitlines()[0])  # the id comes first
    short = pid[:12]
    assert f"timed out waiting for process {pid}; it goes on." in result.stderr
    # The follow-up commands repeat the global options typed, and take the short id.
    s = live_system
    prefix = f"colonies --nats {s.nats_url} --colony {s.colony} --prefix {s.prefix}"
    for command in (
        f"{prefix} process wait --process {short}",
        f"{prefix} log get --process {short} --follow",
        f"{prefix} process cancel --process {short}",
    ):
        assert command in result.stderr
    assert "Traceback" not in result.output
    # It goes on, and each follow-up works as printed.
    shown = _run(live_system, "process", "get", "--process", short, "--json")
    assert json.loads(shown.stdout)["state"] == 0
    again = _run(live_system, "process", "wait", "--process", short, "--timeout", "0.2")
    assert again.exit_code == ExitCode.TIMEOUT and _waited_for(again.stdout) == pid
    assert _run(live_system, "process", "cancel", "--process", short).exit_code == 0


def test_with_json_stdout_holds_json_only(live_system: Settings) -> None:
    result = _run(
        live_system, "function", "submit", "--spec", ECHO, "--wait", "--json", "--timeout", "0.2"
    )
    assert result.exit_code == ExitCode.TIMEOUT
    assert result.stdout == ""  # nothing half-written for a script to parse
    pid = _waited_for(result.stderr)
    assert f"process cancel --process {pid[:12]}" in result.stderr


def test_a_timed_out_workflow_names_the_graph(live_system: Settings) -> None:
    result = _run(
        live_system, "workflow", "submit", "--spec", WORKFLOW, "--wait", "--timeout", "0.2"
    )
    assert result.exit_code == ExitCode.TIMEOUT, result.output
    gid = _waited_for(result.stdout.splitlines()[0])
    assert f"timed out waiting for process graph {gid}; it goes on." in result.stderr
    assert f"workflow watch --graph {gid[:12]}" in result.stderr
    assert f"workflow cancel --graph {gid[:12]}" in result.stderr


def test_an_ended_process_exits_by_its_state(live_system: Settings) -> None:
    pid = _run(live_system, "function", "submit", "--spec", ECHO).stdout.strip()
    _run(live_system, "process", "cancel", "--process", pid)
    result = _run(live_system, "process", "wait", "--process", pid[:12])
    assert result.exit_code == ExitCode.ENDED_BADLY
    assert _waited_for(result.stdout) == pid and "CANCELLED" in result.stdout


# -- Ctrl-C: SIGINT to a real OS process ---------------------------------------------------------


def _until(predicate, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)  # sleep-ok: polling another process's output under a deadline


@pytest.mark.parametrize(
    ("command", "kind"),
    [
        (["function", "submit", "--spec", ECHO, "--wait"], "process"),
        (["function", "submit", "--spec", ECHO, "--follow"], "process"),
        (["workflow", "submit", "--spec", WORKFLOW, "--wait"], "process graph"),
        (["process", "wait", "--process", "{pid}"], "process"),
        (["log", "get", "--follow", "--process", "{pid}"], "process"),
        (["workflow", "watch", "--graph", "{gid}"], "process graph"),
    ],
    ids=lambda v: (
        " ".join(v[:2]) + (" " + v[-1] if str(v[-1]).startswith("-") else "")
        if isinstance(v, list)
        else v
    ),
)
def test_ctrl_c_names_what_it_waited_for(
    live_system: Settings, tmp_path: Path, command: list[str], kind: str
) -> None:
    pid = _run(live_system, "function", "submit", "--spec", ECHO).stdout.strip()
    gid = _run(live_system, "workflow", "submit", "--spec", WORKFLOW).stdout.strip()
    args = [a.format(pid=pid[:12], gid=gid[:12]) for a in command]
    log = tmp_path / "out.log"
    child = Child([*base_args(live_system), *args], log, {"COLUMNS": "200"}).start()
    assert child.proc is not None
    try:
        _until(lambda: ID.search(log.read_text()) is not None, "the id line")
        child.proc.send_signal(signal.SIGINT)
        code = child.proc.wait(30)
    finally:
        child.kill()
    text = log.read_text()
    ident = _waited_for(text)
    assert code == ExitCode.INTERRUPTED, text
    assert f"interrupted waiting for {kind} {ident}; it goes on." in text
    # On a line of its own, even after a live table that Ctrl-C stopped.
    assert re.search(f"^interrupted waiting for {kind}", text, re.MULTILINE), text
    follow = "workflow watch --graph" if kind == "process graph" else "process wait --process"
    assert f"{follow} {ident[:12]}" in text
    assert "Traceback" not in text
    # It goes on.
    noun = ["workflow", "get", "--graph"] if kind == "process graph" else ["process", "get", "-p"]
    assert _run(live_system, *noun, ident[:12]).exit_code == 0


# -- the root guard ------------------------------------------------------------------------------


def _buggy_app() -> typer.Typer:
    buggy = typer.Typer(cls=ColoniesGroup)

    @buggy.callback()
    def options(verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
        pass

    @buggy.command("crash")
    def crash() -> None:
        raise KeyError("no such thing")

    @buggy.command("fine")
    def fine() -> None:
        print("fine")

    return buggy


def test_an_unexpected_error_is_one_line_and_v_shows_its_traceback() -> None:
    buggy = _buggy_app()
    result = CliRunner().invoke(buggy, ["crash"])
    assert result.exit_code == ExitCode.SYSTEM
    assert result.output.strip().splitlines() == [
        "error: unexpected KeyError: 'no such thing' (run with -v for the traceback)"
    ]
    verbose = CliRunner().invoke(buggy, ["-v", "crash"])
    assert verbose.exit_code == ExitCode.SYSTEM
    assert "Traceback" in verbose.output and "no such thing" in verbose.output
    assert CliRunner().invoke(buggy, ["fine"]).output == "fine\n"


SWALLOWS_ONE_CANCEL = """
import asyncio
import typer
from colonyos.cli._run import run

async def stubborn():
    # As nats-py's requests may on Python 3.11: the first cancellation is swallowed.
    try:
        await asyncio.sleep(3600)  # sleep-ok: a command waiting, until Ctrl-C cancels it
    except asyncio.CancelledError:
        pass
    print("went on", flush=True)
    await asyncio.sleep(3600)  # sleep-ok: waiting on, until cancelled again

async def main():
    print("ready", flush=True)
    await stubborn()

try:
    run(main())
except typer.Exit as stop:  # as the CLI's entry point turns it into the exit code
    raise SystemExit(stop.exit_code)
"""


def test_ctrl_c_ends_a_command_that_swallowed_the_first_cancellation(tmp_path: Path) -> None:
    """asyncio cancels a command once on Ctrl-C; a library that swallows that cancellation
    must not keep the command waiting: it is cancelled again until it ends."""
    log = tmp_path / "out.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", SWALLOWS_ONE_CANCEL], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _until(lambda: "ready" in log.read_text(), "the command to start")
        proc.send_signal(signal.SIGINT)
        code = proc.wait(20)
    finally:
        proc.kill()
        proc.wait(10)
    assert code == ExitCode.INTERRUPTED, log.read_text()
    assert "went on" in log.read_text()  # the first cancellation was indeed swallowed
