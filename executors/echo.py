"""The echo executor: every function returns its args (and logs them)."""

from __future__ import annotations

from typing import Any

from colonyos.config import Settings
from colonyos.executor import ExecutorApp, ProcessContext

__all__ = ["build"]


def build(
    settings: Settings | None = None, executor_type: str = "echo", name: str | None = None
) -> ExecutorApp:
    app = ExecutorApp(executor_type, name, settings=settings)

    @app.handler()
    async def echo(ctx: ProcessContext) -> list[Any]:
        spec = ctx.process.spec
        ctx.log(f"{spec.func_name} {' '.join(str(a) for a in spec.args)}".rstrip())
        return list(spec.args)

    return app


def main() -> None:
    """``python -m colonyos.executors.echo``: the smallest start, for edge devices."""
    import asyncio
    import os

    from colonyos.config import Settings

    app = build(
        Settings.from_env(),
        os.environ.get("COLONIES_EXECUTOR_TYPE", "echo"),
        os.environ.get("COLONIES_EXECUTOR_NAME") or None,
    )
    asyncio.run(app.serve())


if __name__ == "__main__":
    main()
