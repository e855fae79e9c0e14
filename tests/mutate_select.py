"""Run, for a mutant, only the tests that execute the line it changed, fastest first.

``make mutate`` first maps the broker's lines to the tests that run them (one run of the suite
under coverage, each line's contexts being the tests that executed it, with their durations)::

    python tests/mutate_select.py map colonyos/broker .mutate/map.json -- TESTS...

and then gives cosmic-ray this as its test command::

    python tests/mutate_select.py run colonyos/broker/service.py .mutate/map.json HOME-TESTS...

cosmic-ray changes the module in place; ``git diff`` says which lines of it changed, the map which
tests run them: the module's own tests first, then the others, each fastest first, as many as fit
in ``MUTATE_BUDGET_S`` seconds of mapped test time (20 by default; a confirming run of the
survivors can give more). A mutant on a line that no test runs survives without a test run: no test could
notice it. A line run only outside any test (a ``def`` and its defaults, a constant: run at import) takes
the module's home set: which tests read a constant, coverage cannot say. Without this every mutant paid for the slowest tests of the set (the timer tests
of the lifecycle), even one that a fast test kills or that no test reaches.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

from coverage import CoverageData

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? ", re.MULTILINE)
# Seconds of mapped test time a mutant may spend: a line that every test runs (the broker's
# start) would otherwise run the whole suite for each of its mutants that survives.
BUDGET_S = 20.0
_PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]


def build_map(package: Path, out: Path, tests: list[str]) -> None:
    """Map every line of the package's modules to the tests that run it."""
    with tempfile.TemporaryDirectory() as scratch:
        data_file = Path(scratch) / ".coverage"
        junit = Path(scratch) / "junit.xml"
        failed = subprocess.run(
            [
                *_PYTEST,
                f"--cov={package}",
                "--cov-context=test",
                "--cov-report=",
                f"--junitxml={junit}",
                "-o",
                "junit_family=xunit1",
                *tests,
            ],
            env={**os.environ, "COVERAGE_FILE": str(data_file)},
        ).returncode
        data = CoverageData(basename=str(data_file))
        data.read()
        files: dict[str, dict[int, list[str]]] = {}
        for measured in data.measured_files():
            lines = files.setdefault(str(Path(measured).resolve().relative_to(Path.cwd())), {})
            for line, contexts in data.contexts_by_lineno(measured).items():
                lines[line] = sorted({c.split("|")[0] for c in contexts})
        durations = _durations(junit)
    out.write_text(json.dumps({"tests": tests, "durations": durations, "files": files}))
    print(f"{package}: {len(files)} modules run by {len(durations)} tests")
    if failed:
        # The lines a failing test ran are still its; the mutants it could kill it will be run on.
        print(f"warning: the map's test run ended with {failed}: some tests failed")


def _durations(junit: Path) -> dict[str, float]:
    """Each test's time, by pytest node id (xunit1 gives the file of every case)."""
    durations: dict[str, float] = {}
    for case in ElementTree.parse(junit).iter("testcase"):
        node = f"{case.get('file')}::{case.get('name')}"
        durations[node] = float(case.get("time") or 0)
    return durations


def changed_lines(module: Path) -> set[int]:
    """The lines of the committed module that the working copy changes."""
    diff = subprocess.run(
        ["git", "diff", "-U0", "--", str(module)], check=True, capture_output=True, text=True
    ).stdout
    lines: set[int] = set()
    for match in _HUNK.finditer(diff):
        start, count = int(match[1]), int(match[2] or 1)
        lines.update(range(start, start + max(count, 1)))
    return lines


def select(
    mapping: dict[str, Any], module: Path, lines: set[int], home: list[str], budget_s: float
) -> tuple[list[str], bool]:
    """The tests that run the lines, the module's own (home) tests first, each group fastest
    first, as many as fit in the budget of mapped seconds (at least one); and whether a line was
    run outside any test (at import: a ``def``, a default, a constant)."""
    by_line: dict[str, list[str]] = mapping["files"].get(str(module), {})
    durations: dict[str, float] = mapping["durations"]
    chosen: set[str] = set()
    at_import = False
    for line in lines:
        ids = by_line.get(str(line), [])
        at_import |= "" in ids
        chosen.update(node for node in ids if node)

    def order(node: str) -> tuple[bool, float, str]:
        own = any(
            node == h or node.startswith(h.rstrip("/") + ("::" if h.endswith(".py") else "/"))
            for h in home
        )
        return not own, durations.get(node, 0.0), node

    picked: list[str] = []
    spent = 0.0
    for node in sorted(chosen, key=order):
        if picked and spent + durations.get(node, 0.0) > budget_s:
            break
        picked.append(node)
        spent += durations.get(node, 0.0)
    return picked, at_import


def run(module: Path, map_file: Path, home: list[str]) -> int:
    """Run the tests of the changed lines; for a line run only at import, the module's home set
    (which tests read a constant, coverage cannot say)."""
    mapping = json.loads(map_file.read_text())
    lines = changed_lines(module)
    budget_s = float(os.environ.get("MUTATE_BUDGET_S", BUDGET_S))
    chosen, at_import = select(mapping, module, lines, home, budget_s)
    if not lines or (not chosen and at_import):
        chosen = home  # no change: cosmic-ray's baseline
    if not chosen:
        print(f"no test runs lines {sorted(lines)} of {module}")
        return 0
    return subprocess.run([*_PYTEST, "-x", *chosen]).returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    mapping = commands.add_parser("map", help="map the package's lines to the tests that run them")
    mapping.add_argument("package", type=Path)
    mapping.add_argument("out", type=Path)
    mapping.add_argument("tests", nargs="+")
    running = commands.add_parser("run", help="run the tests of the lines a mutant changed")
    running.add_argument("module", type=Path)
    running.add_argument("map", type=Path)
    running.add_argument("home", nargs="+", help="the tests for lines run only at import")
    args = parser.parse_args()
    if args.command == "map":
        build_map(args.package, args.out, args.tests)
    else:
        sys.exit(run(args.module, args.map, args.home))


if __name__ == "__main__":
    main()
