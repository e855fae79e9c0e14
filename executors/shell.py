"""The shell executor: funcname ``execute`` runs ``kwargs.cmd`` with ``kwargs.args``.

As Colonies' container executors do, but without a container and without a shell: the
program must be on the allow-list given when the executor starts (empty allows nothing).
stdout and stderr become the process's log, and stdout is also the output (one string);
a non-zero exit fails the process with the exit
code and the last lines of stderr.

    colonies executor start shell --allow echo --allow python3
"""

from __future__ import annotations

import asyncio
import collections
import os
import shlex
import shutil
from typing import Any

from colonyos.config import Settings
from colonyos.executor import ExecutorApp, ProcessContext

__all__ = ["ShellError", "build"]

_STDERR_TAIL = 10


class ShellError(Exception):
    pass


def _command(ctx: ProcessContext, allow: frozenset[str]) -> list[str]:
    kwargs = ctx.process.spec.kwargs
    cmd = kwargs.get("cmd")
    if not isinstance(cmd, str) or not cmd.strip():
        raise ShellError("kwargs.cmd: required, the program to run (a string)")
    extra = kwargs.get("args", [])
    if not isinstance(extra, list):
        raise ShellError("kwargs.args: must be a list of arguments")
    argv = [*shlex.split(cmd), *(str(a) for a in extra)]
    program = argv[0]
    if program not in allow and os.path.basename(program) not in allow:
        allowed = ", ".join(sorted(allow)) or "nothing (start it with --allow PROGRAM)"
        raise ShellError(f"program {program!r} is not allowed on this executor; allowed: {allowed}")
    if shutil.which(program) is None:
        raise ShellError(f"program {program!r} is not found on this executor")
    return [a.replace("{processid}", ctx.process.process_id) for a in argv]


async def _pump(stream: asyncio.StreamReader, ctx: ProcessContext, tail: Any) -> None:
    async for raw in stream:
        line = raw.decode(errors="replace").rstrip("\n")
        ctx.log(line)
        tail.append(line)


def build(
    settings: Settings | None = None,
    executor_type: str = "shell",
    name: str | None = None,
    allow: list[str] | None = None,
) -> ExecutorApp:
    app = ExecutorApp(executor_type, name, settings=settings)
    allowed = frozenset(allow or [])

    @app.handler("execute")
    async def execute(ctx: ProcessContext) -> list[Any]:
        argv = _command(ctx, allowed)
        env = {**os.environ, **ctx.process.spec.env}
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        assert proc.stdout is not None and proc.stderr is not None
        tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL)
        stdout: list[str] = []
        try:
            await asyncio.gather(_pump(proc.stdout, ctx, stdout), _pump(proc.stderr, ctx, tail))
            code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if code != 0:
            raise ShellError(f"{argv[0]} exited with code {code}: " + " | ".join(tail))
        return ["\n".join(stdout)]

    return app
