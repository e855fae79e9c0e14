"""``colonies``: submit function specs, follow processes, run executors and servers."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.logging import RichHandler

from colonyos.config import DEFAULT_COLONY, DEFAULT_NATS_URL, DEFAULT_PREFIX, Settings

from . import (
    colony,
    cron,
    dashboard,
    events,
    executor,
    function,
    generator,
    key,
    log,
    process,
    server,
    user,
    workflow,
)
from ._output import err
from ._run import ColoniesGroup

app = typer.Typer(
    name="colonies",
    cls=ColoniesGroup,  # the root guard: one red line, never a traceback (see _run.py)
    help="ColonyOS on NATS JetStream: run function specs on executors anywhere.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def main_options(
    ctx: typer.Context,
    nats: str = typer.Option(
        DEFAULT_NATS_URL, "--nats", envvar="COLONIES_NATS_URL", help="NATS server URL."
    ),
    colony_name: str = typer.Option(
        DEFAULT_COLONY, "--colony", envvar="COLONIES_COLONY_NAME", help="Colony to act in."
    ),
    prefix: str = typer.Option(
        DEFAULT_PREFIX,
        "--prefix",
        envvar="COLONIES_PREFIX",
        help="Subject prefix of the installation (one NATS server can host several).",
    ),
    identity: Path | None = typer.Option(
        None,
        "--identity",
        envvar="COLONIES_IDENTITY",
        help="Seed file of your key (default: ~/.config/colonies/identity.nk, if it exists).",
    ),
    caller: str | None = typer.Option(
        None,
        "--as",
        envvar="COLONIES_USER",
        help="The name you act under in the colony (default: your login name).",
    ),
    tls_ca: Path | None = typer.Option(
        None,
        "--tls-ca",
        envvar="COLONIES_TLS_CA",
        help="Certificate authority of the server's TLS certificate (connects with TLS).",
    ),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Log what happens (debug); show tracebacks of bugs."
    ),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO if _is_service(ctx) else logging.WARNING,
        format="%(message)s",
        # On stderr: stdout carries what a command prints (JSON for scripts).
        handlers=[RichHandler(console=err, show_path=False, rich_tracebacks=True)],
        force=True,
    )
    if not verbose:
        logging.getLogger("nats").setLevel(logging.CRITICAL)
    ctx.obj = Settings(
        nats_url=nats,
        colony=colony_name,
        prefix=prefix,
        identity=identity,
        caller=caller,
        tls_ca=tls_ca,
    )


def _is_service(ctx: typer.Context) -> bool:
    return ctx.invoked_subcommand in ("server", "broker", "dev", "executor", "dashboard")


app.add_typer(function.app, name="function")
app.add_typer(process.app, name="process")
app.add_typer(workflow.app, name="workflow")
app.add_typer(cron.app, name="cron")
app.add_typer(generator.app, name="generator")
app.add_typer(log.app, name="log")
app.add_typer(colony.app, name="colony")
app.add_typer(executor.app, name="executor")
app.add_typer(user.app, name="user")
app.add_typer(key.app, name="key")
app.add_typer(server.server_app, name="server")
app.add_typer(server.broker_app, name="broker")
app.command("dev")(server.dev)
app.command("events")(events.events)
app.command("dashboard")(dashboard.dashboard)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
