"""Run a coroutine for a command, turning user errors into one red line and exit code 1."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import typer

from colonyos.errors import ColoniesError

from ._output import err

T = TypeVar("T")


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(code=code)


def run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except ColoniesError as e:
        raise fail(e.message) from None
    except KeyboardInterrupt:
        raise typer.Exit(code=130) from None
