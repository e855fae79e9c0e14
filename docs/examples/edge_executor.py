"""A complete edge executor: reads a (pretend) sensor and answers `read` and `blink`.

Run it against a colony:  python docs/examples/edge_executor.py
Then submit work to it:   colonies function submit --spec examples/edge.json --wait
"""

from __future__ import annotations

import asyncio
import random

from colonyos import ExecutorApp, ProcessContext, Settings

app = ExecutorApp("edge", "edge-sensor-1", settings=Settings.from_env(), location_name="greenhouse")


@app.function
def read(sensor: str = "temperature") -> dict[str, float]:
    """Return a reading; what it prints becomes the process's log."""
    value = round(random.uniform(18.0, 24.0), 1)
    print(f"{sensor} is {value}")
    return {sensor: value}


@app.handler("blink")
async def blink(ctx: ProcessContext) -> list[object]:
    """A raw handler sees the whole process (args, kwargs, env) and logs directly."""
    times = int(ctx.process.spec.kwargs.get("times", 3))
    for i in range(times):
        ctx.log(f"blink {i + 1}/{times}")
    return [times]


if __name__ == "__main__":
    asyncio.run(app.serve())  # Ctrl-C: finish what runs, then stop (twice: stop now)
