"""Arbitrary files given to ``colonies function submit`` and ``colonies workflow submit``: an
answer every time (a process, a graph, or one line saying what is wrong), never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from colonyos.cli.main import app
from colonyos.config import Settings

from .strategies import bodies, spec_like, workflow_like

EXAMPLES = int(os.environ.get("COLONIES_FUZZ_EXAMPLES", "60"))
# The whole run, bounded generously: a loaded machine runs each input slower.
_TEST_S = 120 + EXAMPLES * 2
# The documented exit codes (docs/cli.md).
EXIT_CODES = {0, 1, 2, 3}


@pytest.mark.timeout(_TEST_S)
def test_arbitrary_files_at_both_submit_commands(live_system: Settings, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["--nats", live_system.nats_url, "--prefix", live_system.prefix]
    spec_file = tmp_path / "spec.json"

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=not os.environ.get("COLONIES_FUZZ_RANDOM"),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        command=st.sampled_from(["function", "workflow"]),
        content=st.one_of(bodies(spec_like()), bodies(workflow_like())),
    )
    def one_file(command: str, content: bytes) -> None:
        spec_file.write_bytes(content)
        result = runner.invoke(app, [*base, command, "submit", "--spec", str(spec_file)])
        shown = result.output
        assert "Traceback" not in shown, shown
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            content,
            result.exception,
        )
        assert result.exit_code in EXIT_CODES, (content, result.exit_code, shown)
        if result.exit_code != 0:
            assert "error" in shown.lower(), (content, shown)

    one_file()
