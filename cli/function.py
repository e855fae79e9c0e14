"""``colonies function submit``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from colonyos.models import Process
from colonyos.specs import load_function_spec

from ._common import JSON_OPTION, TIMEOUT_OPTION, connect, load_spec_file, wait_for_process
from ._explain import explaining
from ._output import console, err, print_detail, print_json, process_detail, say
from ._run import Awaiting, announce_wait, exit_code_for_state, run
from .stats import function_stats

app = typer.Typer(help="Submit function specs; statistics per function.", no_args_is_help=True)


@app.command("submit")
def submit(
    ctx: typer.Context,
    spec_file: Path = typer.Option(..., "--spec", help="Function spec file (Colonies JSON)."),
    wait: bool = typer.Option(False, "--wait", help="Wait until the process ends."),
    follow: bool = typer.Option(False, "--follow", help="Stream its log until it ends."),
    strict: bool = typer.Option(False, "--strict", help="Treat unknown keys as errors."),
    as_json: bool = JSON_OPTION,
    timeout: float = TIMEOUT_OPTION,
) -> None:
    """Submit a function spec; prints the process id (or the finished process with --wait).

    With --wait or --follow it names the process first, and the exit code is 0 only if the
    process ended SUCCESS; on a timeout (124) or Ctrl-C (130) it says how to follow it up.
    """
    spec = load_spec_file(load_function_spec, spec_file, strict, kind="function")
    awaiting = Awaiting.of(ctx, "process")

    async def go() -> Process:
        async with await connect(ctx) as client, explaining(client) as slow:
            submitted = await client.submit(spec)
            assert isinstance(submitted, Process)
            if not (wait or follow):
                return submitted
            awaiting.ident = submitted.process_id
            slow.start(submitted.process_id)
            async with asyncio.timeout(timeout):
                if follow:
                    announce_wait(awaiting, to_stderr=as_json)
                    # With --json the log goes to stderr: stdout carries one JSON document.
                    out = err if as_json else console
                    async for line in client.logs(submitted.process_id, follow=True):
                        say(line.message, out)
                return await wait_for_process(
                    client, awaiting, timeout=timeout, to_stderr=as_json, announce=not follow
                )

    process = run(go(), awaiting)
    if as_json:
        print_json(process)
    elif wait or follow:
        print_detail(process_detail(process))
    else:
        say(process.process_id)
    if wait or follow:
        raise typer.Exit(exit_code_for_state(process.state))


app.command("stats")(function_stats)
