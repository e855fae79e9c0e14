"""The ``colonies`` entry point: the command line is imported under a guard, so that Ctrl-C in
its first instant (while Python imports it) exits quietly with code 130, as it does later."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from .main import main as run_cli
    except KeyboardInterrupt:
        sys.exit(130)
    run_cli()
