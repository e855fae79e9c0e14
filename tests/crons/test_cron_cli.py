"""``colonies cron`` as a user meets it: Colonies' example files, errors naming the field,
tables at 80 columns, JSON for scripts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from colonyos.cli.cron import countdown, cron_table, short_time
from colonyos.cli.main import app
from colonyos.config import Settings
from colonyos.crons.model import Cron
from colonyos.models import ZERO_TIME

COLONIES_CRONS = Path(__file__).parents[1] / "data" / "colonies-examples" / "cron"
ONE_SPEC = '{"funcname": "echo", "args": ["tick"], "conditions": {"executortype": "echo"}}'


@pytest.fixture
def cron_cli(live_system: Settings):  # type: ignore[no-untyped-def]
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
        result = runner.invoke(app, [*base, "cron", *args], env={"COLUMNS": "80"})
        assert result.exit_code == code, (result.output, result.exception)
        return result.output

    invoke.base = base  # type: ignore[attr-defined]
    return invoke


def test_colonies_cron_example_runs_and_the_broken_one_is_refused(cron_cli) -> None:  # type: ignore[no-untyped-def]
    examples = COLONIES_CRONS
    added = cron_cli(
        "add", "--name", "dates", "--spec", str(examples / "cron_workflow.json"), "--cron",
        "0 0 3 * * *",
    )  # fmt: skip
    assert "cron dates added (0 0 3 * * *); next run" in added
    broken = cron_cli(
        "add", "--name", "xmas", "--spec", str(examples / "christmas_workflow.json"),
        "--cron", "0 0 0 24 12 *", code=2,
    )  # fmt: skip
    assert "christmas_workflow.json: $: malformed JSON at line 6, column 16" in broken
    # Obsolete keys (name, func) are refused, naming the key to use.
    old = cron_cli(
        "add", "--name", "old", "--spec", str(examples / "cron_maxwaittime_workflow.json"),
        "--interval", "10", code=2,
    )  # fmt: skip
    assert "$[0].funcname: required field is missing or empty (the legacy key 'func'" in old
    got = json.loads(cron_cli("get", "--name", "dates", "--json"))
    nodes = [s["nodename"] for s in json.loads(got["workflowspec"])["functionspecs"]]
    assert nodes == ["generate_date", "print_date"] and got["cronexpression"] == "0 0 3 * * *"


def test_add_ls_get_run_remove(cron_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec = tmp_path / "one.json"
    spec.write_text(ONE_SPEC)
    cron_cli("add", "--name", "hourly", "--spec", str(spec), "--interval", "3600", "--waitprevious")
    table = cron_cli("ls")
    assert "every 3600 s, waits" in table and "never" in table
    assert all(len(line) <= 80 for line in table.splitlines())
    graph_id = cron_cli("run", "--name", "hourly").strip()
    assert len(graph_id) == 64
    # The run is a tick on the events stream, with the cron's name.
    runner = CliRunner()
    base = cron_cli.base  # type: ignore[attr-defined]
    events = runner.invoke(
        app, [*base, "events", "--type", "_graph", "--since", "5m", "--count", "1"]
    )
    assert graph_id[:12] in events.output and "cron hourly" in events.output
    detail = cron_cli("get", "--name", "hourly")
    assert f"last graph         {graph_id}" in detail and "next runs" in detail
    # Whole ids stay whole for copying; every other line fits 80 columns.
    assert all(
        len(line) <= 80
        for line in detail.splitlines()
        if graph_id[:12] not in line and "cron id" not in line
    )
    listed = json.loads(cron_cli("ls", "--json"))
    assert [c["name"] for c in listed] == ["hourly"]
    assert listed[0]["prevprocessgraphid"] == graph_id
    assert json.loads(cron_cli("remove", "--name", "hourly", "--json")) == {
        "name": "hourly",
        "removed": True,
    }
    assert "no crons" in cron_cli("ls")
    assert "cron 'hourly' does not exist in colony 'dev'" in cron_cli(
        "get", "--name", "hourly", code=2
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--cron", "0/5 * * *"], "$.cronexpression: '0/5 * * *' has 4 fields"),
        (["--cron", "* * * * *", "--timezone", "Mars/Base"], "$.timezone: unknown time zone"),
        (["--cron", "* * * * *", "--random"], "$.random: a random moment needs an interval"),
        ([], "give either --cron EXPRESSION or --interval SECONDS"),
        (["--cron", "* * * * *", "--interval", "5"], "give either --cron"),
    ],
)
def test_wrong_input_is_one_line_naming_the_field(  # type: ignore[no-untyped-def]
    cron_cli, tmp_path: Path, options: list[str], message: str
) -> None:
    spec = tmp_path / "one.json"
    spec.write_text(ONE_SPEC)
    output = cron_cli("add", "--name", "c", "--spec", str(spec), *options, code=2)
    assert message in output and "Traceback" not in output
    assert len(output.strip().splitlines()) == 1


def test_the_watch_counts_down_to_each_next_run() -> None:
    at = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    assert [countdown(timedelta(seconds=s)) for s in (-3, 0, 0.2, 59, 61, 3599, 7260, 90000)] == [
        "0s", "0s", "1s", "59s", "1m01s", "59m59s", "2h01m", "1d",
    ]  # fmt: skip
    cron = Cron(name="c", cron_expression="0/5 * * * * *", next_run=at + timedelta(seconds=4))
    table = cron_table([cron], at=at)
    assert [c.header for c in table.columns] == [
        "name", "schedule", "next run", "in", "last run", "last graph",
    ]  # fmt: skip
    assert list(table.columns[3].cells) == ["4s"]
    assert list(table.columns[4].cells) == ["never"]


def test_times_in_the_table_are_short_today_and_dated_otherwise() -> None:
    t = datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC)
    local = t.astimezone()
    assert short_time(t, local.date()) == local.strftime("%H:%M:%S")
    assert short_time(t, local.date() - timedelta(days=1)) == local.strftime("%b %d %H:%M")
    assert short_time(ZERO_TIME, local.date()) == ""


def test_watch_has_no_json(cron_cli) -> None:  # type: ignore[no-untyped-def]
    assert "--watch shows a live table" in cron_cli("ls", "--watch", "--json", code=2)
