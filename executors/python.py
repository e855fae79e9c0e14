"""The python executor: runs the Python functions of a module, one funcname per function.

    colonies executor start python --module mypackage.tasks
    colonies executor start python --module ./tasks.py

Every public function of the module (no leading underscore) is registered under its name.
``print`` inside a function becomes the process's log; the return value its output.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from pathlib import Path
from types import ModuleType

from colonyos.config import Settings
from colonyos.errors import InvalidSpecError
from colonyos.executor import ExecutorApp

__all__ = ["build", "load_module"]


def load_module(ref: str) -> ModuleType:
    """Import ``package.module`` or a ``path/to/file.py``."""
    path = Path(ref)
    if ref.endswith(".py"):
        if not path.is_file():
            raise InvalidSpecError(f"--module {ref}: no such file", field="module")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(ref)
    except ImportError as err:
        raise InvalidSpecError(f"--module {ref}: cannot import it: {err}", field="module") from err


def build(
    settings: Settings | None = None,
    executor_type: str = "python",
    name: str | None = None,
    modules: list[str] | None = None,
) -> ExecutorApp:
    app = ExecutorApp(executor_type, name, settings=settings)
    for ref in modules or []:
        module = load_module(ref)
        for fname, fn in inspect.getmembers(module, inspect.isfunction):
            if not fname.startswith("_") and fn.__module__ == module.__name__:
                app.function(fn, name=fname)
    return app
