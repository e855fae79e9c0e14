"""``colonies log get``."""

from __future__ import annotations

import typer

from ._common import connect
from ._output import console
from ._run import run

app = typer.Typer(help="Read process logs.", no_args_is_help=True)


@app.command("get")
def get(
    ctx: typer.Context,
    process_id: str = typer.Option(..., "--process", "-p", help="Process id."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep reading until it ends."),
) -> None:
    """Print a process's log lines in order."""

    async def go() -> None:
        async with await connect(ctx) as client:
            await client.get(process_id)  # a clear error for an unknown process
            async for line in client.logs(process_id, follow=follow):
                console.print(line.message, markup=False)

    run(go())
