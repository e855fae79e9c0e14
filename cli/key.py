"""``colonies key generate|show``: this party's own key pair."""

from __future__ import annotations

from pathlib import Path

import typer

from colonyos.errors import IdentityError
from colonyos.security.keys import default_identity_path, generate, load_identity, write_seed

from ._common import JSON_OPTION, settings_of
from ._output import print_json, say
from ._run import ExitCode, fail

app = typer.Typer(
    help="Make and show this party's key (an nkey): its seed stays here, its public key is "
    "what the colony owner adds.",
    no_args_is_help=True,
)


def _identity_file(ctx: typer.Context, out: Path | None) -> Path:
    return out or settings_of(ctx).identity or default_identity_path()


@app.command("generate")
def generate_key(
    ctx: typer.Context,
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Seed file to write (default: --identity, $COLONIES_IDENTITY, "
        "or ~/.config/colonies/identity.nk).",
    ),
    keep: bool = typer.Option(
        False, "--keep", help="A seed already in the file is kept, and its public key printed."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Make a new key pair: write its seed (private, mode 0600; never share it) and print its
    public key. An existing file is never overwritten (with --keep, it is used)."""
    path = _identity_file(ctx, out)
    if keep and path.exists():
        try:
            kept = load_identity(path)
        except IdentityError as err:
            raise fail(err.message, ExitCode.USAGE) from None
        if as_json:
            print_json({"publickey": kept.public_key, "file": str(path)})
            return
        say(f"kept the key already in {path}; its public key:")
        print(kept.public_key)
        return
    identity = generate()
    try:
        write_seed(path, identity)
    except IdentityError as err:
        raise fail(err.message, ExitCode.USAGE) from None
    except OSError as err:
        raise fail(f"cannot write {path}: {err.strerror}", ExitCode.USAGE) from None
    if as_json:
        print_json({"publickey": identity.public_key, "file": str(path)})
        return
    say(f"wrote the seed of a new key to {path} (keep it private; it never leaves this machine)")
    say("its public key, for the colony owner to add:")
    print(identity.public_key)


@app.command("show")
def show(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """Print the public key of this party's identity (never the seed)."""
    path = _identity_file(ctx, None)
    try:
        identity = load_identity(path)
    except IdentityError as err:
        raise fail(err.message, ExitCode.USAGE) from None
    if as_json:
        print_json({"publickey": identity.public_key, "file": str(path)})
    else:
        print(identity.public_key)
