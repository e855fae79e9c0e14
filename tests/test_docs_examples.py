"""The runnable files under docs/examples and examples/ keep working."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from colonyos.client import Client
from colonyos.executors import python
from colonyos.models import Process, ProcessState
from colonyos.specs import load_function_spec

ROOT = Path(__file__).parents[1]


def _load(path: Path):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_edge_executor_example(client: Client, settings) -> None:
    module = _load(ROOT / "docs" / "examples" / "edge_executor.py")
    app = module.app
    app.settings = settings
    spec, warnings = load_function_spec((ROOT / "examples" / "edge.json").read_bytes())
    assert warnings == []
    read = await client.submit(spec)
    blink = await client.submit(
        load_function_spec(
            b'{"conditions": {"executortype": "edge"}, "funcname": "blink", "kwargs": {"times": 2}}'
        )[0]
    )
    assert isinstance(read, Process) and isinstance(blink, Process)
    assert await app.run(burst=True) == 2
    done = await client.wait(read.process_id, timeout=5)
    assert done.state is ProcessState.SUCCESS and list(done.output[0]) == ["humidity"]
    assert [line.message async for line in client.logs(blink.process_id)] == [
        "blink 1/2",
        "blink 2/2",
    ]


async def test_python_example_module(client: Client, settings) -> None:
    app = python.build(settings, name="py-ex", modules=[str(ROOT / "examples" / "tasks.py")])
    spec, _ = load_function_spec((ROOT / "examples" / "python.json").read_bytes())
    p = await client.submit(spec)
    assert isinstance(p, Process)
    await app.run(burst=True)
    assert (await client.wait(p.process_id, timeout=5)).output == [5]


def test_every_example_spec_is_valid() -> None:
    from colonyos.graphs import check_workflow
    from colonyos.specs import load_workflow_spec

    for path in (ROOT / "examples").glob("*.json"):
        obj = json.loads(path.read_bytes())
        if isinstance(obj, list):
            check_workflow(load_workflow_spec(path.read_bytes(), strict=True)[0])
        else:
            load_function_spec(path.read_bytes(), strict=True)
