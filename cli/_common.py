"""Helpers shared by the command modules."""

from __future__ import annotations

from pathlib import Path

import typer

from colonyos.client import Client
from colonyos.config import Settings

from ._run import fail


def settings_of(ctx: typer.Context) -> Settings:
    settings = ctx.find_root().obj
    assert isinstance(settings, Settings)
    return settings


async def connect(ctx: typer.Context) -> Client:
    return await Client.connect(settings_of(ctx), name="colonies-cli")


def read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise fail(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise fail(f"{what} {path}: is a directory, not a file") from None
    except PermissionError:
        raise fail(f"{what} {path}: permission denied") from None
