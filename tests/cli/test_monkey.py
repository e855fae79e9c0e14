"""A monkey at the terminal: random `colonies` commands, right and wrong, some interrupted with
Ctrl-C in the middle of a wait, each a real OS process against a live system, two at a time (as
two terminals would; most of a command's time is its start). No traceback may reach the user,
every exit code is a documented one, and the system works at the end.

``COLONIES_MONKEY_COMMANDS`` sets how many commands (``make soak`` runs many more);
``COLONIES_MONKEY_SEED`` replays a run.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from colonyos.config import Settings

from ..procs import COLONIES

EXAMPLES = Path(__file__).parents[2] / "examples"
COMMANDS = int(os.environ.get("COLONIES_MONKEY_COMMANDS", "30"))
# The whole run, bounded generously: a loaded machine runs each command slower.
_TEST_S = 120 + COMMANDS * 10
# The documented exit codes (docs/cli.md).
EXIT_CODES = {0, 1, 2, 3, 124, 130}
_HEX = re.compile(r"\b[0-9a-f]{12,64}\b")
_COMMAND_S = 60.0
_AT_ONCE = 2  # commands running at the same time


class Monkey:
    def __init__(self, live: Settings, tmp: Path, rng: random.Random) -> None:
        self.env = {
            **os.environ,
            "COLONIES_NATS_URL": live.nats_url,
            "COLONIES_PREFIX": live.prefix,
            "COLONIES_COLONY_NAME": live.colony,
            "COLUMNS": str(rng.choice([80, 120])),
        }
        self.tmp = tmp
        self.rng = rng
        self.ids: list[str] = []
        self.log: list[str] = []
        self.never_runs = tmp / "never.json"
        self.never_runs.write_text(
            '{"funcname": "f", "conditions": {"executortype": "nobody-runs-this"}}'
        )
        self.bad = tmp / "bad.json"
        self.bad.write_text('{"funcname": "f", "conditions": {"executortype": ')
        self._outs = itertools.count()

    def some_id(self) -> str:
        choices = [*self.ids, "f" * 64, "0123", "not-an-id", ""]
        pick = self.rng.choice(choices)
        if pick in self.ids and self.rng.random() < 0.5:
            return pick[: self.rng.choice([8, 12, 20])]  # a prefix, as users type them
        return pick

    def commands(self) -> list[Callable[[], list[str]]]:
        echo = str(EXAMPLES / "echo.json")
        workflow = str(EXAMPLES / "workflow.json")
        rng = self.rng
        return [
            lambda: ["function", "submit", "--spec", echo],
            lambda: ["function", "submit", "--spec", echo, "--wait", "--timeout", "20"],
            lambda: ["function", "submit", "--spec", echo, "--follow", "--json"],
            lambda: [
                "function",
                "submit",
                "--spec",
                str(self.never_runs),
                "--wait",
                "--timeout",
                "1",
            ],
            lambda: ["function", "submit", "--spec", str(self.bad)],
            lambda: ["function", "submit", "--spec", workflow],
            lambda: ["function", "submit", "--spec", str(self.tmp / "missing.json")],
            lambda: ["workflow", "submit", "--spec", workflow, "--wait", "--timeout", "20"],
            lambda: ["workflow", "submit", "--spec", echo],
            lambda: [
                "process",
                rng.choice(["ps", "psw", "pss", "psf"]),
                "-n",
                str(rng.randint(-1, 5)),
            ],
            lambda: ["process", "pss", "--json"],
            lambda: ["process", "get", "--process", self.some_id()],
            lambda: ["process", "wait", "--process", self.some_id(), "--timeout", "1"],
            lambda: ["process", "cancel", "--process", self.some_id()],
            lambda: ["process", "remove", "--process", self.some_id()],
            lambda: ["log", "get", "--process", self.some_id()],
            lambda: ["workflow", "ps"],
            lambda: ["workflow", "get", "--graph", self.some_id()],
            lambda: ["events", "--since", "10m", "--count", "2"],
            lambda: ["colony", "ls"],
            lambda: ["executor", "ls"],
            lambda: ["executor", "approve", "--name", rng.choice(["ghost", "live-echo", "x y"])],
            lambda: ["--colony", rng.choice(["nosuch", "bad name"]), "process", "psw"],
            lambda: ["process", "get"],
            lambda: ["nosuchcommand"],
            lambda: [
                "cron",
                "add",
                "--name",
                rng.choice(["nightly", "bad name", ""]),
                "--spec",
                rng.choice([echo, workflow, str(self.bad)]),
                *rng.choice([["--cron", "0 0 3 * * *"], ["--cron", "61 * *"], ["--interval", "0"]]),
            ],
            lambda: [
                "cron",
                rng.choice(["get", "run", "remove"]),
                "--name",
                rng.choice(["nightly", "x y"]),
            ],
            lambda: ["cron", "ls", *rng.choice([[], ["--json"], ["--wide"]])],
            lambda: [
                "generator",
                "add",
                "--name",
                rng.choice(["batch", "bad name", ""]),
                "--spec",
                rng.choice([echo, workflow, str(self.bad)]),
                *rng.choice(
                    [["--trigger", "2"], ["--trigger", "0"], ["--trigger", "2", "--timeout", "1"]]
                ),
            ],
            lambda: [
                "generator",
                "pack",
                "--name",
                rng.choice(["batch", "x y", "nosuch"]),
                *rng.choice([["--arg", "1"], ["--arg", "not json"], ["--arg", "t", "--text"]]),
            ],
            lambda: [
                "generator",
                rng.choice(["get", "remove"]),
                "--name",
                rng.choice(["batch", "x y"]),
            ],
            lambda: ["generator", "ls", *rng.choice([[], ["--json"], ["--wide"]])],
        ]

    def run(self, args: list[str], interrupt: bool = False) -> tuple[int, str]:
        out_path = self.tmp / f"out-{next(self._outs)}.txt"
        with out_path.open("wb") as out:
            proc = subprocess.Popen(
                [*COLONIES, *args], stdout=out, stderr=subprocess.STDOUT, env=self.env
            )
        try:
            if interrupt:
                self._interrupt_once_started(proc, out_path)
            code = proc.wait(_COMMAND_S)
            if interrupt and code == -signal.SIGINT:
                # Ctrl-C while it was already exiting: killed by the signal, which a shell
                # reports as 130, as the command does itself.
                code = 130
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        text = out_path.read_text(errors="replace")
        self.ids.extend(m for m in _HEX.findall(text) if len(m) == 64)
        self.log.append(f"$ colonies {' '.join(args)}{' ^C' if interrupt else ''} -> {code}")
        return code, text

    @staticmethod
    def _interrupt_once_started(proc: subprocess.Popen[bytes], out_path: Path) -> None:
        """Ctrl-C once the command has said something (the id it waits for), or after 5 s."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and proc.poll() is None:
            if out_path.stat().st_size > 0:
                break
            time.sleep(0.05)  # sleep-ok: polling the command's output under a deadline
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)


@pytest.mark.timeout(_TEST_S)
def test_random_commands_never_show_a_traceback(live_echo: Settings, tmp_path: Path) -> None:
    seed = int(os.environ.get("COLONIES_MONKEY_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    monkey = Monkey(live_echo, tmp_path, rng)
    commands = monkey.commands()

    def pick() -> tuple[list[str], bool]:
        """A command, and whether to interrupt it."""
        if rng.random() < 0.15:
            return ["function", "submit", "--spec", str(monkey.never_runs), "--wait"], True
        args = rng.choice(commands)()
        # events follows the stream live (it may wait for events that never come): a user
        # stops it with Ctrl-C, and so does the monkey.
        return args, args[0] == "events"

    with ThreadPoolExecutor(_AT_ONCE) as pool:
        for start in range(0, COMMANDS, _AT_ONCE):
            picked = [pick() for _ in range(min(_AT_ONCE, COMMANDS - start))]
            for code, text in pool.map(lambda p: monkey.run(*p), picked):
                context = f"seed {seed}\n" + "\n".join(monkey.log) + "\n" + text
                assert "Traceback" not in text, context
                assert code in EXIT_CODES, context
    # And the system still works.
    code, text = monkey.run(
        ["function", "submit", "--spec", str(EXAMPLES / "echo.json"), "--wait", "--timeout", "30"]
    )
    assert code == 0, f"seed {seed}\n" + "\n".join(monkey.log) + "\n" + text
