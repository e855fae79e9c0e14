"""`colonies broker start` says what kind of broker it is at every start."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from colonyos.cli.main import app
from colonyos.natsserver import NatsServer
from tests.helpers import until
from tests.procs import Child

pytestmark = pytest.mark.timeout(60)


async def test_a_broker_without_keys_says_it_is_insecure(tmp_path: Path) -> None:
    log = tmp_path / "broker.log"
    with NatsServer(tmp_path / "jetstream", port=0) as server:
        broker = Child(
            ["broker", "start", "--data-dir", str(tmp_path / "data")],
            log,
            {"COLONIES_NATS_URL": server.url, "COLUMNS": "200"},
        ).start()
        try:
            await until(lambda: "ready on" in log.read_text(), timeout=30)
        finally:
            broker.stop()
    text = log.read_text()
    assert "insecure:" in text and "serves anyone who reaches NATS" in text, text


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("COLONIES_LEASE_TTL", "abc", "COLONIES_LEASE_TTL: 'abc' is not a number"),
        ("COLONIES_REPLICAS", "three", "COLONIES_REPLICAS: 'three' is not a whole number"),
        ("COLONIES_RETENTION", "soon", "COLONIES_RETENTION: 'soon' is not a duration"),
        ("COLONIES_SHARDED", "maybe", "COLONIES_SHARDED"),
    ],
)
@pytest.mark.parametrize("command", [["broker", "start"], ["server", "start", "--insecure"]])
def test_a_variable_that_cannot_be_read_is_a_usage_error_that_names_it(
    tmp_path: Path, command: list[str], variable: str, value: str, said: str
) -> None:
    """Not "unexpected ValueError" (exit code 3, a bug): exit code 2, naming the variable.
    ``--nats`` points nowhere: nothing is reached before the settings are read (server start
    runs its own NATS on a free port, and stops it)."""
    args = ["--nats", "nats://127.0.0.1:1", *command, "--data-dir", str(tmp_path)]
    if command[0] == "server":
        args += ["--port", "0", "--http-port", "0"]
    result = CliRunner().invoke(app, args, env={variable: value, "COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert said in result.output and "unexpected" not in result.output, result.output


def test_server_start_takes_sharded_as_broker_start_does() -> None:
    """Its broker must share the colonies out as those started beside it with --sharded do."""
    for command in (["server", "start"], ["broker", "start"]):
        result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0 and "--sharded" in result.output, result.output
