"""Helpers shared by the command modules."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import typer

from colonyos.client import Client
from colonyos.config import Settings
from colonyos.errors import ColoniesError

from ._output import err
from ._run import fail

T = TypeVar("T")


def settings_of(ctx: typer.Context) -> Settings:
    settings = ctx.find_root().obj
    assert isinstance(settings, Settings)
    return settings


async def connect(ctx: typer.Context) -> Client:
    return await Client.connect(settings_of(ctx), name="colonies-cli")


def load_spec_file(loader: Callable[..., tuple[T, list[str]]], path: Path, strict: bool) -> T:
    """Read and check a spec or workflow file: one red line for an error, a yellow one for
    each unknown key that is ignored."""
    try:
        loaded, warnings = loader(read_file(path, "spec file"), strict=strict)
    except ColoniesError as e:
        raise fail(f"{path}: {e.message}") from None
    for key in warnings:
        err.print(f"[yellow]warning:[/] unknown key {key} is ignored (--strict rejects it)")
    return loaded


def read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise fail(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise fail(f"{what} {path}: is a directory, not a file") from None
    except PermissionError:
        raise fail(f"{what} {path}: permission denied") from None
