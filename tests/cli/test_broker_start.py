"""`colonies broker start` says what kind of broker it is at every start."""

from __future__ import annotations

from pathlib import Path

import pytest

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
