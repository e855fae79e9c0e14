"""The CLI side of capacity: executor flags, and why a process waits."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from colonyos.cli import executor as executor_cli
from colonyos.cli.main import app
from colonyos.config import Settings


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    """`executor start` configures logging for a service (INFO to the console) in this process:
    put back what was there, or later tests' executors log into their processes' output."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def cli(live_system: Settings):  # type: ignore[no-untyped-def]
    runner = CliRunner()
    base = ["--nats", live_system.nats_url, "--prefix", live_system.prefix]

    def invoke(*args: str, code: int | None = 0):  # type: ignore[no-untyped-def]
        result = runner.invoke(app, [*base, *args])
        if code is not None:
            assert result.exit_code == code, (result.output, result.exception)
        return result

    return invoke


def spec_file(tmp_path: Path, executor_type: str, **conditions: object) -> str:
    path = tmp_path / f"{executor_type}.json"
    body = {"funcname": "f", "conditions": {"executortype": executor_type, **conditions}}
    path.write_text(json.dumps(body))
    return str(path)


def test_process_get_says_why_a_process_waits(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tutorial = spec_file(tmp_path, "nobody", nodes=1, cpu="1000m", mem="10Gi")
    pid = cli("function", "submit", "--spec", tutorial).stdout.strip()
    shown = cli("process", "get", "--process", pid).stdout
    assert "waiting because: no executor of type 'nobody' is registered in colony 'dev'" in shown
    as_json = json.loads(cli("process", "get", "--process", pid, "--json").stdout)
    assert as_json["processid"] == pid  # the Colonies JSON, nothing added
    cli("process", "cancel", "--process", pid)
    assert "waiting because" not in cli("process", "get", "--process", pid).stdout


def test_a_long_wait_says_once_why_the_process_waits(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr("colonyos.cli._explain.EXPLAIN_AFTER_S", 0.0)
    big = spec_file(tmp_path, "gpu", gpu={"count": 1})
    pid = cli("function", "submit", "--spec", big).stdout.strip()
    waited = cli("process", "wait", "--process", pid, "--timeout", "2", code=None)
    assert waited.exit_code != 0  # it timed out (the code itself is the CLI's to choose)
    expected = "waiting because: no executor of type 'gpu' is registered in colony 'dev'"
    assert waited.stderr.count(expected) == 1, waited.stderr
    assert expected not in waited.stdout
    submitted = cli("function", "submit", "--spec", big, "--wait", "--timeout", "2", code=None)
    assert submitted.exit_code != 0
    assert submitted.stderr.count(expected) == 1, submitted.stderr


def test_executor_flags_override_the_machine(cli) -> None:  # type: ignore[no-untyped-def]
    flags = ["--cpu", "3", "--mem", "5Gi", "--storage", "7Gi", "--nodes", "2"]
    gpus = ["--gpus", "1", "--gpu-name", "T4", "--gpu-mem", "16Gi"]
    cli("executor", "start", "echo", "--burst", "--name", "flagged", *flags, *gpus)
    cli("executor", "start", "echo", "--burst", "--name", "plain")
    listed = {e["executorname"]: e for e in json.loads(cli("executor", "ls", "--json").stdout)}
    (hw,) = listed["flagged"]["capabilities"]["hardware"]
    assert (hw["cpu"], hw["cores"], hw["mem"], hw["storage"], hw["nodes"]) == (
        "3",
        3,
        "5Gi",
        "7Gi",
        2,
    )
    assert hw["gpu"] == {"name": "T4", "mem": "16Gi", "count": 1, "nodecount": 0}
    assert hw["platform"] and hw["architecture"]
    (described,) = listed["plain"]["capabilities"]["hardware"]  # this machine
    assert described["cpu"] and described["mem"] and described["storage"]
    assert described["nodes"] == 1


def test_bad_executor_flags_are_one_clear_line(cli) -> None:  # type: ignore[no-untyped-def]
    bad = cli("executor", "start", "echo", "--burst", "--cpu", "lots", code=None)
    assert bad.exit_code != 0  # a usage error (its number is the CLI's to choose)
    assert "--cpu: 'lots' is not a cpu quantity" in bad.stderr
    bad = cli("executor", "start", "echo", "--burst", "--gpu-mem", "8 gigs", code=None)
    assert "--gpu-mem: '8 gigs' is not a size" in bad.stderr
    bad = cli(
        "executor", "start", "echo", "--burst", "--gpus", "0", "--gpu-name", "A100", code=None
    )
    assert "--gpus N" in bad.stderr
    bad = cli("executor", "start", "echo", "--burst", "--nodes", "0", code=2)


def test_prefetch_is_on_unless_the_flag_says_no(cli, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    built = []
    real = executor_cli.build_executor

    def recording(*args, **kw):  # type: ignore[no-untyped-def]
        built.append(real(*args, **kw))
        return built[-1]

    monkeypatch.setattr(executor_cli, "build_executor", recording)
    cli("executor", "start", "echo", "--burst", "--name", "ahead")
    cli("executor", "start", "echo", "--burst", "--name", "one-at-a-time", "--no-prefetch")
    assert [app_.prefetch for app_ in built] == [True, False]
