"""Every command, found by walking the app's command tree (a new command is covered without
touching this file), meets bad input: missing options, wrong files, malformed JSON, unknown
and malformed ids, a wrong colony, no server, negative numbers. None prints a traceback, and
each exits with the documented code (cli/_run.py, docs/cli.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from colonyos import connection
from colonyos.cli._run import ExitCode
from colonyos.cli.main import app
from colonyos.config import Settings
from colonyos.security.keys import generate

from ..helpers import EXAMPLES, base_args

USAGE, SYSTEM = ExitCode.USAGE, ExitCode.SYSTEM


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    subcommands = getattr(command, "commands", None)
    if subcommands:
        for name, sub in subcommands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield " ".join(path), command


COMMANDS = dict(_commands(typer.main.get_command(app)))

# Commands that run until they are stopped: they get only the cases that must fail before
# they start running (a wrong file, a malformed id, a bad number, no server where they need
# one), never a valid-looking invocation that would rightly run for ever.
RUNS_UNTIL_STOPPED = {
    "dev",
    "server start",
    "broker start",
    "executor start",
    "events",
    "dashboard",
}
# Commands that write files here (keys, a server config): they reach no server, so no server
# case applies.
LOCAL = {"key generate", "key show", "server config"}

# Cases left out, each with its reason (a defect owned elsewhere, or a case that cannot apply).
SKIPPED: dict[tuple[str, str], str] = {
    ("dev", "no server"): "starts its own server",
    ("server start", "no server"): "starts its own server",
    ("dev", "--port -1"): "nats-server takes -1 as 'any free port': starts a server",
    ("server start", "--port -1"): "nats-server takes -1 as 'any free port': starts a server",
    ("executor start", "no server"): "retries for ever today (issue 9, defect 5)",
    ("executor start", "--gpus -1"): "starts the executor today (capacity flags)",
    ("executor start", "--concurrency -1"): "starts the executor today (read as 1)",
    ("broker start", "no server"): "waits for NATS by design (a broker outlives NATS restarts)",
    ("broker start", "no broker"): "is the broker",
    ("server start", "no broker"): "starts its own broker",
    ("dev", "no broker"): "starts its own broker",
    ("executor start", "no broker"): "retries for ever today (issue 9, defect 5)",
    ("process wait", "no broker"): "waits for a broker by design (rides out a fail-over)",
    ("events", "no broker"): "listens to events by design, whether or not a broker runs",
    ("events", "--count -1"): "runs for ever today (cli/events.py is reworked elsewhere)",
    ("cron add", "--spec of the other submit"): "a cron runs a workflow or one function spec",
    ("generator add", "--spec of the other submit"): "a generator runs a workflow or one spec",
}


@dataclass
class Case:
    name: str
    args: list[str]  # before the command: global options
    options: list[str]  # after the command
    code: int


@pytest.fixture
def fixtures(live_system: Settings, tmp_path: Path, insecure_nats_url: str) -> dict[str, str]:
    """Real ids and files, so that each case changes one thing only."""
    runner = CliRunner()
    base = base_args(live_system)

    def out(*args: str) -> str:
        result = runner.invoke(app, [*base, *args])
        assert result.exit_code == 0, result.output
        return result.stdout.strip()

    files = {
        "missing": str(tmp_path / "missing.json"),
        "directory": str(tmp_path),
        "malformed": _write(
            tmp_path / "malformed.json", '{"funcname": "echo",\n  "args": [1,, 2]}'
        ),
        "empty": _write(tmp_path / "empty.json", ""),
        "not a spec": _write(tmp_path / "string.json", '"just a string"'),
        "wrong type": _write(tmp_path / "wrong.json", '{"funcname": 7, "conditions": {}}'),
    }
    return {
        "process": out("function", "submit", "--spec", str(EXAMPLES / "echo.json")),
        "graph": out("workflow", "submit", "--spec", str(EXAMPLES / "workflow.json")),
        "insecure": insecure_nats_url,
        **files,
    }


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# Required options that any command takes with the same valid value.
_PLAIN = {"--state": "success", "--type": "echo", "--trigger": "3", "--arg": '"a.csv"'}


def _valid(name: str, command: Any, fx: dict[str, str]) -> dict[str, list[str]]:
    """A valid value for each required parameter (by option, or "" for arguments)."""
    values: dict[str, list[str]] = {}
    for param in command.params:
        if not param.required:
            continue
        flag = param.opts[0]
        if flag == "--spec":
            spec = "workflow.json" if name.startswith("workflow") else "echo.json"
            values[flag] = [flag, str(EXAMPLES / spec)]
        elif flag == "--process":
            values[flag] = [flag, fx["process"]]
        elif flag == "--graph":
            values[flag] = [flag, fx["graph"]]
        elif flag == "--name":
            # Removing a colony needs one that exists; the others take any name.
            values[flag] = [flag, "dev" if name == "colony remove" else "lab"]
        elif flag in _PLAIN:
            values[flag] = [flag, _PLAIN[flag]]
        elif flag == "kind":
            values[flag] = ["echo"]
        elif flag == "--key":
            values[flag] = [flag, generate().public_key]
        else:
            raise AssertionError(f"{name}: give {flag} a valid value in this test")
    if name == "cron add":  # one of --cron and --interval is needed
        values["--interval"] = ["--interval", "3600"]
    return values


def _cases(name: str, command: Any, fx: dict[str, str]) -> Iterator[Case]:
    valid = _valid(name, command, fx)
    everything = [v for vs in valid.values() for v in vs]
    if valid:
        yield Case("missing options", [], [], USAGE)
    for param in command.params:
        flag, kind = param.opts[0], param.type_descriptor.annotation
        if not flag.startswith("--"):
            continue
        rest = [v for f, vs in valid.items() if f != flag for v in vs]
        if kind is Path and flag == "--spec":
            for what in ("missing", "directory", "malformed", "empty", "not a spec", "wrong type"):
                yield Case(f"--spec {what}", [], [*rest, flag, fx[what]], USAGE)
            other = "echo.json" if name.startswith("workflow") else "workflow.json"
            yield Case(
                "--spec of the other submit", [], [*rest, flag, str(EXAMPLES / other)], USAGE
            )
        elif kind is Path and flag == "--config":
            for what in ("missing", "directory"):
                yield Case(f"--config {what}", [], [*rest, flag, fx[what]], USAGE)
        elif flag in ("--process", "--graph") and param.required:
            for what, value in (
                ("unknown", "f" * 64),
                ("unknown prefix", "fffff0"),
                ("not hex", "zz"),
            ):
                yield Case(f"{flag} {what}", [], [*rest, flag, value], USAGE)
        elif kind in (int, float):
            yield Case(f"{flag} -1", [], [*everything, flag, "-1"], USAGE)
            yield Case(f"{flag} not a number", [], [*everything, flag, "lots"], USAGE)
    if name not in LOCAL:
        yield from _server_cases(name, everything, fx["insecure"])


def _server_cases(name: str, everything: list[str], insecure: str) -> Iterator[Case]:
    if name not in RUNS_UNTIL_STOPPED:
        # Colonies are the server's; so is its status. A colony's statistics are the colony's.
        server_scope = name.startswith("colony ") and name != "colony stats"
        server_scope |= name == "server status"
        yield Case("wrong colony", ["--colony", "nosuch"], everything, 0 if server_scope else USAGE)
    yield Case("no server", ["--nats", "nats://127.0.0.1:1"], everything, SYSTEM)
    # A NATS server that no broker serves (here: a prefix no broker uses). An insecure one: on
    # a secure server nothing answers the callout, and each connection is refused only after
    # the server's callout timeout, three times over.
    no_broker = ["--nats", insecure, "--prefix", "tnobroker"]
    yield Case("no broker", no_broker, everything, SYSTEM)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_bad_input_is_one_line_and_the_documented_exit_code(
    name: str, live_system: Settings, fixtures: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where no server listens, one attempt says so as three do (in use, two more ride out a
    # server's restart), and without the half second nats-py waits before trying the same
    # server again: a second and a half per command saved.
    monkeypatch.setattr(connection, "_INITIAL_CONNECT_ATTEMPTS", 1)
    monkeypatch.setattr(connection, "_RECONNECT_WAIT_S", 0.0)
    runner = CliRunner()
    command = COMMANDS[name]
    failures = []
    for case in _cases(name, command, fixtures):
        if (name, case.name) in SKIPPED:
            continue
        base = base_args(live_system)
        if case.args:  # a global option replaced: drop its default from the base
            drop = base.index(case.args[0])
            base = base[:drop] + base[drop + 2 :]
        args = [*base, *case.args, *name.split(), *case.options]
        print("case:", case.name, json.dumps(args))  # shown if the test times out
        result = runner.invoke(app, args)
        output = result.output
        problems = []
        unexpected = result.exception is not None and not isinstance(result.exception, SystemExit)
        if "Traceback" in output or unexpected:
            problems.append(f"traceback or exception {result.exception!r}")
        if result.exit_code != case.code:
            problems.append(f"exit code {result.exit_code}, documented {case.code}")
        if case.code and "unexpected" in output:
            problems.append("an unexpected error: a bug the guard caught")
        if problems:
            failures.append(f"{case.name}: {'; '.join(problems)}\n    {output.strip()[:400]}")
    assert not failures, f"colonies {name}:\n" + "\n".join(failures)


def test_every_command_that_prints_has_json() -> None:
    """Scripts never scrape tables: each command that prints something has --json (live
    views and servers excepted: they print for people, as they happen)."""
    live = {"process watch", "workflow watch", "dev", "server start", "broker start", "dashboard"}
    owned_elsewhere = {"executor start"}
    missing = [
        name
        for name, command in COMMANDS.items()
        if name not in live | owned_elsewhere
        and "--json" not in [o for p in command.params for o in p.opts]
    ]
    assert missing == []


def test_help_has_no_bool_marks_and_offers_completion() -> None:
    runner = CliRunner()
    for name in ["", *COMMANDS]:
        result = runner.invoke(app, [*name.split(), "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "<bool>" not in result.output, name
    top = runner.invoke(app, ["--help"]).output
    assert "--install-completion" in top and "--show-completion" in top


def test_shell_completion_completes_commands_and_options() -> None:
    def complete(words: str) -> list[str]:
        env = {
            "_COLONIES_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split()) - 1),
        }
        result = CliRunner().invoke(app, [], env=env, prog_name="colonies")
        assert result.exit_code == 0, result.output
        return result.stdout.split()

    assert complete("colonies proc") == ["process"]
    assert complete("colonies process ps") == ["ps", "psw", "pss", "psf", "psc"]
    assert complete("colonies process pss --w") == ["--watch", "--wide"]
