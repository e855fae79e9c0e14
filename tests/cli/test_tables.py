"""Tables stay readable at 80 columns and in pipes (CliRunner's output is a pipe): short ids
that commands take back, no column squeezed to nothing; at 120 columns nothing is cut; --wide
shows every column and whole ids."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from colonyos.cli.main import app
from colonyos.config import Settings

from ..helpers import EXAMPLES, base_args

CUT = "…"


@pytest.fixture
def colony(live_echo: Settings) -> dict[str, object]:
    """Two finished processes (one with a long argument) and a finished workflow."""
    runner = CliRunner()
    base = base_args(live_echo)

    def out(*args: str) -> str:
        result = runner.invoke(app, [*base, *args])
        assert result.exit_code == 0, result.output
        return result.stdout

    pids = [
        json.loads(
            out("function", "submit", "--spec", str(EXAMPLES / "echo.json"), "--wait", "--json")
        )["processid"]
        for _ in range(2)
    ]
    graph = json.loads(
        out("workflow", "submit", "--spec", str(EXAMPLES / "workflow.json"), "--wait", "--json")
    )
    return {"settings": live_echo, "pids": pids, "graph": graph}


def _show(settings: Settings, columns: int, *args: str) -> str:
    result = CliRunner().invoke(app, [*base_args(settings), *args], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.stdout


def _rows(text: str, ident: str) -> list[str]:
    return [line for line in text.splitlines() if ident in line]


@pytest.mark.parametrize("columns", [80, 120])
def test_process_listing(colony: dict[str, object], columns: int) -> None:
    settings = colony["settings"]
    assert isinstance(settings, Settings)
    text = _show(settings, columns, "process", "pss")
    header = text.splitlines()[1]
    for column in ("process id", "func", "executor type", "state", "submitted", "duration"):
        assert column in header, header
    assert all(len(line.rstrip()) <= columns for line in text.splitlines())
    for pid in colony["pids"]:  # type: ignore[attr-defined]
        (row,) = _rows(text, pid[:12])
        assert pid not in row  # short
        assert " echo " in row and " SUCCESS " in row
        assert any(part.count(":") == 2 for part in row.split("  "))  # a whole time
    if columns >= 120:
        assert CUT not in text


@pytest.mark.parametrize("columns", [80, 120])
def test_graph_listing_and_graph(colony: dict[str, object], columns: int) -> None:
    settings, graph = colony["settings"], colony["graph"]
    assert isinstance(settings, Settings) and isinstance(graph, dict)
    gid = graph["processgraphid"]
    text = _show(settings, columns, "workflow", "ps")
    (row,) = _rows(text, gid[:12])
    assert gid not in row and " SUCCESS " in row and " 4 " in row
    assert all(len(line.rstrip()) <= columns for line in text.splitlines())
    shown = _show(settings, columns, "workflow", "get", "--graph", gid[:12])
    nodes = [line.split()[0] for line in shown.splitlines()[2:] if line.strip()]
    assert nodes == ["task_a", "task_b", "task_c", "task_d"]  # dependency order
    for name, pid in graph["nodes"].items():
        (row,) = _rows(shown, pid[:12])
        assert row.startswith(name) and pid not in row and "SUCCESS" in row
    assert all(len(line.rstrip()) <= columns for line in shown.splitlines())
    if columns >= 120:
        assert CUT not in text + shown


def test_wide_shows_whole_ids_and_every_column(colony: dict[str, object]) -> None:
    settings, graph = colony["settings"], colony["graph"]
    assert isinstance(settings, Settings) and isinstance(graph, dict)
    text = _show(settings, 80, "process", "pss", "--wide")
    header = text.splitlines()[1]
    for column in ("args", "started", "ended"):
        assert column in header
    for pid in colony["pids"]:  # type: ignore[attr-defined]
        (row,) = _rows(text, pid)
        assert "helloworld" in row and CUT not in row
    shown = _show(settings, 80, "workflow", "get", "--graph", graph["processgraphid"], "--wide")
    for pid in graph["nodes"].values():
        assert len(_rows(shown, pid)) == 1
    assert graph["processgraphid"] in _show(settings, 80, "workflow", "ps", "--wide")


def test_one_process_keeps_its_ids_whole(colony: dict[str, object]) -> None:
    settings = colony["settings"]
    assert isinstance(settings, Settings)
    pid = colony["pids"][0]  # type: ignore[index]
    text = _show(settings, 80, "process", "get", "--process", pid[:12])
    assert f"process id         {pid}" in text.splitlines()  # one line, whole, for copying
    assert "SUCCESS" in text and "helloworld" in text
