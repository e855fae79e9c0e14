"""``colonies log get``."""

from __future__ import annotations

import msgspec
import typer

from colonyos.models import ZERO_TIME

from ._common import connect
from ._output import err, say, when
from ._run import Awaiting, announce_wait, run

app = typer.Typer(help="Read process logs.", no_args_is_help=True)


@app.command("get")
def get(
    ctx: typer.Context,
    process_id: str = typer.Option(
        ..., "--process", "-p", help="Process id, or a unique prefix of it (12 characters do)."
    ),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep reading until it ends."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per log line."),
) -> None:
    """Print a process's log lines in order.

    With --follow it names the process first (on stderr: stdout carries the log); Ctrl-C
    (exit code 130) stops reading and says how to follow the process up.
    """
    awaiting = Awaiting.of(ctx, "process")

    async def go() -> None:
        async with await connect(ctx) as client:
            pid = await client.resolve(process_id)
            process = await client.get(pid)  # a clear error for an unknown process
            if follow:
                awaiting.ident = pid
                announce_wait(awaiting, to_stderr=True)
            async for line in client.logs(pid, follow=follow):
                if as_json:
                    print(msgspec.json.encode(line).decode(), flush=True)
                else:
                    say(line.message)
            dropped = await client.logs_dropped_before()
            if dropped is not None and ZERO_TIME < process.start_time < dropped:
                err.print(
                    f"[yellow]note:[/] the logs stream has dropped its lines older than "
                    f"{when(dropped)} (its size limit or the retention): earlier lines of this "
                    "process may be gone",
                    highlight=False,
                )

    run(go(), awaiting)
