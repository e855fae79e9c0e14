"""Helpers and options shared by the command modules."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import typer

from colonyos.client import Client
from colonyos.config import Settings
from colonyos.errors import ColoniesError
from colonyos.limits import MAX_SECONDS
from colonyos.models import Process, WorkflowSpec
from colonyos.specs import load_function_spec, load_workflow_spec

from ._output import err
from ._run import Awaiting, announce_wait, exit_code_for, fail

T = TypeVar("T")

JSON_OPTION = typer.Option(False, "--json", help="Print JSON (Colonies keys), for scripts.")
WIDE_OPTION = typer.Option(False, "--wide", help="Every column, and whole ids.")


def _positive(value: float) -> float:
    if not value > 0:  # also NaN
        raise typer.BadParameter(f"{value:g} is not a number of seconds more than 0")
    return value


TIMEOUT_OPTION = typer.Option(
    3600.0,
    "--timeout",
    max=MAX_SECONDS,
    callback=_positive,
    help="Stop waiting after this many seconds (exit code 124; what it waits for goes on).",
)

# What each submit command takes, and how to recognise the other's files.
_SUBMITS = {
    "function": ("a function spec (one JSON object)", "colonies function submit"),
    "workflow": ("a workflow (a JSON list of function specs)", "colonies workflow submit"),
}


def settings_of(ctx: typer.Context) -> Settings:
    settings = ctx.find_root().obj
    assert isinstance(settings, Settings)
    return settings


async def connect(ctx: typer.Context) -> Client:
    return await Client.connect(settings_of(ctx), name="colonies-cli")


async def wait_for_process(
    client: Client, awaiting: Awaiting, *, timeout: float, to_stderr: bool, announce: bool = True
) -> Process:
    """The CLI's wait for a process: it names the process first (unless the caller has), then
    waits until it ends (a timeout raises TimeoutError, which :func:`run` reports with
    ``awaiting``)."""
    if announce:
        announce_wait(awaiting, to_stderr=to_stderr)
    return await client.wait(awaiting.ident, timeout=timeout)


def load_spec_file(
    loader: Callable[..., tuple[T, list[str]]], path: Path, strict: bool, *, kind: str
) -> T:
    """Read and check a spec (``kind`` "function") or workflow (``kind`` "workflow") file:
    one red line for an error, a yellow one for each unknown key that is ignored. A file of
    the other kind is named as such, with the command that takes it."""
    data = read_file(path, "spec file")
    other = _kind_of(data)
    if other is not None and other != kind:
        what, command = _SUBMITS[other]
        raise fail(f"{path} is {what}: submit it with '{command} --spec {path}'")
    try:
        loaded, warnings = loader(data, strict=strict)
    except ColoniesError as e:
        raise fail(f"{path}: {e.message}", exit_code_for(e)) from None
    for key in warnings:
        err.print(f"[yellow]warning:[/] unknown key {key} is ignored (--strict rejects it)")
    return loaded


def _kind_of(data: bytes) -> str | None:
    """Which submit a file is for ("function", "workflow"), if it plainly is for one; None
    if not (the loader then says what is wrong)."""
    try:
        obj: Any = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return None
    if isinstance(obj, list) or (isinstance(obj, dict) and "functionspecs" in obj):
        return "workflow"
    if isinstance(obj, dict) and ("funcname" in obj or "conditions" in obj):
        return "function"
    return None


def read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise fail(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise fail(f"{what} {path}: is a directory, not a file") from None
    except PermissionError:
        raise fail(f"{what} {path}: permission denied") from None
    except OSError as e:
        raise fail(f"{what} {path}: {e.strerror or e}") from None


def load_workflow_file(path: Path, strict: bool) -> WorkflowSpec:
    """A workflow file, or a function spec file (a one-node workflow): what a cron or a
    generator runs."""
    data = read_file(path, "spec file")
    try:
        obj: Any = msgspec.json.decode(data)
    except msgspec.DecodeError:
        obj = None
    try:
        if isinstance(obj, dict) and "functionspecs" not in obj:
            spec, warnings = load_function_spec(data, strict=strict)
            node = spec.node_name or spec.func_name
            workflow = WorkflowSpec(function_specs=[msgspec.structs.replace(spec, node_name=node)])
        else:
            workflow, warnings = load_workflow_spec(data, strict=strict)
    except ColoniesError as e:
        raise fail(f"{path}: {e.message}", exit_code_for(e)) from None
    for key in warnings:
        err.print(f"[yellow]warning:[/] unknown key {key} is ignored (--strict rejects it)")
    return workflow
