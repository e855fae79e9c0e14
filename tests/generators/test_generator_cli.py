"""``colonies generator`` as a user meets it: Colonies' example file, arguments as JSON or
text, errors naming the field, a table at 80 columns, JSON for scripts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from colonyos.cli.main import app
from colonyos.config import Settings

COLONIES_GENERATORS = Path(__file__).parents[1] / "data" / "colonies-examples" / "generators"
EXAMPLE = str(COLONIES_GENERATORS / "generator_workflow.json")


@pytest.fixture
def generator_cli(live_system: Settings):  # type: ignore[no-untyped-def]
    runner = CliRunner()
    base = [
        "--nats", live_system.nats_url, "--prefix", live_system.prefix,
        "--colony", live_system.colony,
    ]  # fmt: skip

    def invoke(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, [*base, "generator", *args], env={"COLUMNS": "80"})
        assert result.exit_code == code, (result.output, result.exception)
        return result.output

    return invoke


def test_add_pack_ls_get_remove_with_colonies_example(generator_cli) -> None:  # type: ignore[no-untyped-def]
    added = generator_cli("add", "--name", "testgenerator", "--spec", EXAMPLE, "--trigger", "5")
    assert "generator testgenerator added: a run per 5 args" in added
    assert "packed into testgenerator (stream sequence 1)" in generator_cli(
        "pack", "--name", "testgenerator", "--arg", "hello1", "--text"
    )
    packed = json.loads(
        generator_cli("pack", "--name", "testgenerator", "--arg", '{"n": 2}', "--json")
    )
    assert packed["name"] == "testgenerator" and packed["seq"] > 0
    table = generator_cli("ls")
    assert "testgenerator" in table and "5 args" in table and "never" in table
    assert all(len(line) <= 80 for line in table.splitlines())
    got = json.loads(generator_cli("get", "--name", "testgenerator", "--json"))
    nodes = [s["nodename"] for s in json.loads(got["workflowspec"])["functionspecs"]]
    assert nodes == ["generator_example"] and got["trigger"] == 5 and got["timeout"] == -1
    detail = generator_cli("get", "--name", "testgenerator")
    assert "runs at" in detail and "generator_example" in detail
    listed = json.loads(generator_cli("ls", "--json"))
    assert [g["name"] for g in listed] == ["testgenerator"]
    assert json.loads(generator_cli("remove", "--name", "testgenerator", "--json")) == {
        "name": "testgenerator",
        "removed": True,
    }
    assert "no generators" in generator_cli("ls")
    gone = generator_cli("pack", "--name", "testgenerator", "--arg", "1", code=2)
    assert "generator 'testgenerator' does not exist in colony 'dev'" in gone


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--arg", "hello1"], "$.arg: 'hello1' is not JSON: write a string in quotes"),
        (["--arg", '"' + "x" * 70_000 + '"'], "$.arg: 70002 bytes, more than the 65536"),
    ],
)
def test_a_wrong_argument_is_one_line_naming_the_field(  # type: ignore[no-untyped-def]
    generator_cli, options: list[str], message: str
) -> None:
    generator_cli("add", "--name", "g", "--spec", EXAMPLE, "--trigger", "2")
    output = generator_cli("pack", "--name", "g", *options, code=2)
    assert message in output and "Traceback" not in output
    assert len(output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--trigger", "0"], "--trigger"),
        (["--trigger", "20000"], "$.trigger: 20000: give how many arguments start a run"),
        (["--trigger", "2", "--timeout", "0"], "--timeout"),
    ],
)
def test_a_wrong_definition_is_refused_naming_the_field(  # type: ignore[no-untyped-def]
    generator_cli, options: list[str], message: str
) -> None:
    output = generator_cli("add", "--name", "g", "--spec", EXAMPLE, *options, code=2)
    assert message in output and "Traceback" not in output


def test_a_run_shows_in_the_events_with_its_generator(  # type: ignore[no-untyped-def]
    generator_cli, live_system: Settings
) -> None:
    generator_cli("add", "--name", "one", "--spec", EXAMPLE, "--trigger", "1")
    generator_cli("pack", "--name", "one", "--arg", "1")
    base = ["--nats", live_system.nats_url, "--prefix", live_system.prefix]
    events = CliRunner().invoke(
        app, [*base, "events", "--type", "_graph", "--since", "5m", "--count", "1"]
    )
    assert events.exit_code == 0, events.output
    assert "waiting" in events.output and "1 processes, generator one" in events.output
