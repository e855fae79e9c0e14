"""A no-op executor for benchmarks: returns the time it received the process (ns), no logs;
a process whose first arg is a number waits that many seconds first (work that costs no CPU).

python -m bench.noop_executor NAME [CONCURRENCY [EXECUTOR_TYPE [prefetch|no-prefetch]]]
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from colonyos.config import Settings
from colonyos.executor import ExecutorApp, ProcessContext


def main() -> None:
    name = sys.argv[1]

    async def run() -> None:
        slots = int(sys.argv[2]) if len(sys.argv) > 2 else 1
        executor_type = sys.argv[3] if len(sys.argv) > 3 else "noop"
        prefetch = sys.argv[4] != "no-prefetch" if len(sys.argv) > 4 else True
        app = ExecutorApp(
            executor_type,
            name,
            settings=Settings.from_env(),
            assign_timeout_s=5,
            concurrency=slots,
            prefetch=prefetch,
        )

        @app.handler()
        async def noop(ctx: ProcessContext) -> list[Any]:
            received = time.time_ns()
            if ctx.process.spec.args:
                await asyncio.sleep(float(ctx.process.spec.args[0]))
            return [received]

        await app.serve()

    asyncio.run(run())


if __name__ == "__main__":
    main()
