"""``colonies function submit``."""

from __future__ import annotations

from pathlib import Path

import typer

from colonyos.models import Process, ProcessState
from colonyos.specs import load_function_spec

from ._common import connect, load_spec_file
from ._explain import explaining
from ._output import console, print_json, process_detail
from ._run import run

app = typer.Typer(help="Submit function specs.", no_args_is_help=True)


@app.command("submit")
def submit(
    ctx: typer.Context,
    spec_file: Path = typer.Option(..., "--spec", help="Function spec file (Colonies JSON)."),
    wait: bool = typer.Option(False, "--wait", help="Wait until the process ends."),
    follow: bool = typer.Option(False, "--follow", help="Stream its log until it ends."),
    strict: bool = typer.Option(False, "--strict", help="Treat unknown keys as errors."),
    as_json: bool = typer.Option(False, "--json", help="Print the process as JSON."),
    timeout: float = typer.Option(3600.0, "--timeout", help="Seconds to wait with --wait."),
) -> None:
    """Submit a function spec; prints the process id (or the finished process with --wait).

    With --wait the exit code is 0 only if the process ended SUCCESS.
    """
    spec = load_spec_file(load_function_spec, spec_file, strict)

    async def go() -> Process:
        async with await connect(ctx) as client, explaining(client) as slow:
            submitted = await client.submit(spec)
            assert isinstance(submitted, Process)
            if wait or follow:
                slow.start(submitted.process_id)
            if follow:
                async for line in client.logs(submitted.process_id, follow=True):
                    console.print(line.message, markup=False)
            if wait or follow:
                return await client.wait(submitted.process_id, timeout=timeout)
            return submitted

    process = run(go())
    if as_json:
        print_json(process)
    elif wait or follow:
        console.print(process_detail(process))
    else:
        console.print(process.process_id)
    if (wait or follow) and process.state is not ProcessState.SUCCESS:
        raise typer.Exit(code=1)
