"""The ``colonies`` entry point: Ctrl-C while Python still imports the command line exits with
130 and no traceback, as it does once the command runs; ``import colonyos`` loads nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_INTERRUPTED_IMPORT = """
import sys

class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "colonyos.cli.main":
            raise KeyboardInterrupt  # as Ctrl-C does, in the middle of the import
        return None

sys.meta_path.insert(0, Interrupt())
from colonyos.cli.entry import main
main()
"""


def test_ctrl_c_while_the_command_line_imports_is_quiet() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_IMPORT], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 130
    assert "Traceback" not in done.stderr, done.stderr


def test_importing_colonyos_loads_nothing_until_a_name_is_used() -> None:
    probe = (
        "import sys, colonyos\n"
        "assert 'colonyos.client' not in sys.modules, 'client loaded'\n"
        "assert colonyos.Client.__name__ == 'Client'\n"
        "assert sorted(colonyos.__all__) == sorted(colonyos._HOMES)\n"
        "for name in colonyos.__all__: getattr(colonyos, name)\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)


_AIOHTTP_AFTER = """
import sys
sys.argv = ["colonies", *{args!r}]
from colonyos.cli.entry import main
try:
    main()
except SystemExit:
    pass
print("without" if "aiohttp" in sys.modules and sys.modules["aiohttp"] is None else "with")
"""


def _aiohttp_after(*args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _AIOHTTP_AFTER.format(args=list(args))],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLONIES_NATS_URL": "", **(env or {})},
    )
    return done.stdout.strip().splitlines()[-1]


def test_only_the_dashboard_and_websocket_urls_load_aiohttp() -> None:
    """nats-py imports aiohttp whenever it is installed (0.15-0.2 s of every command's start):
    a command that needs none starts without it."""
    pytest.importorskip("aiohttp")  # the dashboard extra (the development install has it)
    assert _aiohttp_after("--version") == "without"
    assert _aiohttp_after("dashboard", "--help") == "with"
    assert _aiohttp_after("dev", "--help") == "with"
    assert _aiohttp_after("--nats", "ws://127.0.0.1:1", "--version") == "with"
    assert _aiohttp_after("--version", env={"COLONIES_NATS_URL": "wss://example.invalid"}) == "with"
