"""Running a command: the exit codes, the root guard, and what a wait says when it stops early.

Every command runs its coroutine through :func:`run`; every error ends as one red line on
stderr and one of these exit codes (the same table is in docs/cli.md):

==== =====================================================================================
0    success
1    the process or workflow ended FAILED or CANCELLED
2    usage error: a bad option, a missing or bad file or spec, an invalid name, an unknown
     process, graph, colony or executor id, an ambiguous id prefix
3    the system could not do it: NATS or the broker unavailable, a conflict, not authorized;
     also an unexpected error (a bug: ``-v`` shows its traceback)
124  timed out waiting (the process or workflow goes on)
130  interrupted (Ctrl-C)
141  the reader of the output went away (``| head``), as for any program killed by SIGPIPE
==== =====================================================================================
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import os
import signal
import sys
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import typer
from typer.core import TyperGroup, TyperOption
from typer.exceptions import Abort, Exit, TyperException

from colonyos.errors import (
    BrokerUnavailableError,
    ColoniesError,
    ConflictError,
    InvalidSpecError,
    NotAuthorizedError,
    NotFoundError,
)
from colonyos.ids import short_id
from colonyos.models import ProcessState

from ._output import console, err

T = TypeVar("T")


class ExitCode(enum.IntEnum):
    SUCCESS = 0
    ENDED_BADLY = 1
    USAGE = 2
    SYSTEM = 3
    TIMEOUT = 124
    INTERRUPTED = 130
    BROKEN_PIPE = 141  # 128 + SIGPIPE, as the shell reports a reader that went away


# The one mapping from errors to exit codes: the first class in an error's MRO listed here.
_ERROR_CODES: dict[type[ColoniesError], ExitCode] = {
    InvalidSpecError: ExitCode.USAGE,  # also InvalidNameError and AmbiguousIdError
    NotFoundError: ExitCode.USAGE,  # colony, executor, process or graph
    ConflictError: ExitCode.SYSTEM,
    NotAuthorizedError: ExitCode.SYSTEM,
    BrokerUnavailableError: ExitCode.SYSTEM,
    ColoniesError: ExitCode.SYSTEM,
}


def exit_code_for(error: ColoniesError) -> ExitCode:
    for cls in type(error).__mro__:
        code = _ERROR_CODES.get(cls)
        if code is not None:
            return code
    return ExitCode.SYSTEM  # pragma: no cover (ColoniesError is in the table)


def exit_code_for_state(state: ProcessState) -> ExitCode:
    """How a command that waited for a process or workflow exits: 0 only for SUCCESS."""
    return ExitCode.SUCCESS if state is ProcessState.SUCCESS else ExitCode.ENDED_BADLY


def fail(message: str, code: int = ExitCode.USAGE) -> typer.Exit:
    """One red line on stderr; returns the exit to raise (a usage error unless told)."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(code=code)


# -- what a wait says when it stops early ------------------------------------------------------

_GLOBAL_OPTIONS = (("nats", "--nats"), ("colony_name", "--colony"), ("prefix", "--prefix"))


@dataclass
class Awaiting:
    """What a command is waiting for. On a timeout or Ctrl-C, :func:`run` names it and the
    commands that follow it up; until ``ident`` is set (before the submission is confirmed)
    there is nothing to name."""

    kind: str = "process"  # or "graph"
    options: list[str] = field(default_factory=list)  # global options the user typed
    ident: str = ""

    @classmethod
    def of(cls, ctx: typer.Context, kind: str, ident: str = "") -> Awaiting:
        """For a command of ``ctx``: the follow-up commands repeat the global options given on
        the command line (those from the environment apply again by themselves)."""
        root = ctx.find_root()
        options: list[str] = []
        for name, flag in _GLOBAL_OPTIONS:
            source = root.get_parameter_source(name)
            if source is not None and source.name == "COMMANDLINE":
                options += [flag, str(root.params[name])]
        return cls(kind, options, ident)

    def follow_up(self) -> list[tuple[str, str]]:
        """(what, command) pairs, with the id shortened: commands accept unique prefixes."""
        base = " ".join(["colonies", *self.options])
        sid = short_id(self.ident)
        if self.kind == "graph":
            return [
                ("follow it", f"{base} workflow watch --graph {sid}"),
                ("cancel it", f"{base} workflow cancel --graph {sid}"),
            ]
        return [
            ("follow it", f"{base} process wait --process {sid}"),
            ("its log", f"{base} log get --process {sid} --follow"),
            ("cancel it", f"{base} process cancel --process {sid}"),
        ]

    def stopped(self, why: str) -> None:
        """Say on stderr that the wait stopped (and why), what goes on, and what to type.
        Before anything is named, a timeout says so and Ctrl-C says nothing (it is how a
        stream such as ``events`` is stopped; the exit code tells)."""
        if not self.ident:
            if why != "interrupted":
                err.print(f"[bold red]{why}[/]", highlight=False)
            return
        noun = "process graph" if self.kind == "graph" else "process"
        err.print(
            f"[bold red]{why}[/] waiting for {noun} {self.ident}; it goes on.",
            highlight=False,
            soft_wrap=True,
        )
        for what, command in self.follow_up():
            err.print(f"  {what + ':':<11}{command}", markup=False, highlight=False, soft_wrap=True)


def announce_wait(awaiting: Awaiting, *, to_stderr: bool) -> None:
    """The first line of every wait: the id, so that a user can always find what it waits for
    (on stderr when stdout carries data for a program, such as JSON)."""
    noun = "process graph" if awaiting.kind == "graph" else "process"
    out = err if to_stderr else console
    out.print(
        f"waiting for {noun} {awaiting.ident} (Ctrl-C stops waiting; it goes on)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def run(coro: Coroutine[Any, Any, T], awaiting: Awaiting | None = None) -> T:
    """Run a command's coroutine; errors become one red line and their exit code.

    ``awaiting``: what the coroutine waits for (it sets the id once it knows it), named with
    its follow-up commands if the wait times out (124) or is interrupted (130).
    """
    try:
        return asyncio.run(_interruptible(coro))
    except ColoniesError as e:
        raise fail(e.message, exit_code_for(e)) from None
    except TimeoutError:
        (awaiting or Awaiting()).stopped("timed out")
        raise typer.Exit(code=ExitCode.TIMEOUT) from None
    except KeyboardInterrupt:
        (awaiting or Awaiting()).stopped("interrupted")
        raise typer.Exit(code=ExitCode.INTERRUPTED) from None


# Between two cancellations of a command that Ctrl-C stopped and that has not ended yet.
_CANCEL_AGAIN_S = 0.2


def _quiet_about_cancellations(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio's report of a future whose exception no one read, unless that exception is a
    cancellation: after a Ctrl-C, nats-py's close can leave a gathered drain cancelled with no
    one to read it, and asyncio printed that (with a traceback) as an error at exit."""
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


async def _interruptible(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro``; Ctrl-C cancels it, and cancels it again until it ends. asyncio cancels
    once, and on Python 3.11 ``asyncio.wait_for`` (which nats-py's requests use) swallows a
    cancellation that arrives with the answer: the command then went on waiting after the
    user's Ctrl-C. A command that handles SIGINT itself (an executor, a server) installs its
    own handler, which replaces this one while it runs."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_about_cancellations)
    task = asyncio.ensure_future(coro)
    interrupted = False

    def cancel() -> None:
        nonlocal interrupted
        interrupted = True
        if not task.done():
            task.cancel()
            loop.call_later(_CANCEL_AGAIN_S, cancel)

    try:
        loop.add_signal_handler(signal.SIGINT, cancel)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
        return await task
    try:
        return await task
    except asyncio.CancelledError:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGINT)


# -- the root guard --------------------------------------------------------------------------


class ColoniesGroup(TyperGroup):
    """The root command group: nothing but one red line reaches the user.

    A :class:`ColoniesError` anywhere is mapped through the table above; any other exception
    is a bug, shown as one line (``-v`` shows the traceback) with exit code 3. Usage errors
    and exits of the command-line parser pass through (exit code 2, or the exit's own).
    """

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        # Here, not in __init__: typer adds the completion options after building the group.
        _tidy_help(self)
        return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:  # typer's vendored click Context
        try:
            return super().invoke(ctx)
        except (TyperException, Exit, Abort):
            raise
        except KeyboardInterrupt:
            Awaiting().stopped("interrupted")
            raise typer.Exit(code=ExitCode.INTERRUPTED) from None
        except BrokenPipeError:
            # The reader went away (``| head``): stop quietly, as a program killed by SIGPIPE.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(code=ExitCode.BROKEN_PIPE) from None
        except ColoniesError as e:
            raise fail(e.message, exit_code_for(e)) from None
        except Exception as e:
            if ctx.params.get("verbose"):
                err.print_exception(show_locals=False)
                raise typer.Exit(code=ExitCode.SYSTEM) from None
            what = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            raise fail(
                f"unexpected {what} (run with -v for the traceback)", ExitCode.SYSTEM
            ) from None


def _tidy_help(command: Any) -> None:
    """Help that reads well, for every command at once: no ``<bool>`` after flags (this typer
    shows every option's type, flags included; an empty metavar shows nothing), and
    docstring paragraphs flowed to the terminal's width (this typer keeps the line breaks of
    every paragraph after the first)."""
    for param in [*command.params, command.get_help_option(typer.Context(command))]:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    if command.help:
        paragraphs = inspect.cleandoc(command.help).split("\n\n")
        command.help = "\n\n".join(
            p if p.startswith("\b") else " ".join(p.split("\n")) for p in paragraphs
        )
    for sub in getattr(command, "commands", {}).values():
        _tidy_help(sub)
