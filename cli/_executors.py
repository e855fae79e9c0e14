"""The shipped executors, found by kind (they install as ``colonyos.executors``)."""

from __future__ import annotations

import importlib
from typing import Any

from colonyos.executor import ExecutorApp

# Imported by name: the executors install under colonyos.executors from the executors/ folder.
KINDS: tuple[str, ...] = importlib.import_module("colonyos.executors").KINDS
# What an executor of a platform raises when it cannot start (its runtime missing, a bad option).
PlatformError: type[Exception] = importlib.import_module(
    "colonyos.executors.platform"
).PlatformError


def build_executor(kind: str, *args: Any, **options: Any) -> ExecutorApp:
    module = importlib.import_module(f"colonyos.executors.{kind}")
    app = module.build(*args, **options)
    assert isinstance(app, ExecutorApp)
    return app
