"""Connecting to NATS: fail fast when nothing answers, then reconnect for ever.

On a secure installation a connection proves who it is with an nkey (its seed never leaves
this process) and says which colony and name it acts as (:class:`ConnectClaim`); the server
asks the brokers' auth callout, which grants exactly that role's subjects.
"""

from __future__ import annotations

import contextlib
import logging
import re
import weakref
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS

from colonyos.errors import BrokerUnavailableError, NotAuthorizedError

__all__ = ["connect_nats", "denied", "shown_url"]

logger = logging.getLogger(__name__)

_INITIAL_CONNECT_ATTEMPTS = 3
# 'Permissions Violation for Publish to "colonies.b.specs.echo"' (nats-py lowercases it).
_VIOLATION = re.compile(r'permissions violation for (publish|subscription) to "([^"]+)"', re.I)
# What the server refused each connection, by subject: nats-py reports a refusal only to the
# error callback, and the request itself then just times out.
_denials: weakref.WeakKeyDictionary[NATS, dict[str, str]] = weakref.WeakKeyDictionary()


def shown_url(url: str) -> str:
    """A server URL (or a comma-separated list) fit for a log: no user or password."""
    return ",".join(re.sub(r"//[^/@]*@", "//", u) for u in url.split(","))


def denied(nc: NATS, subject: str) -> str | None:
    """``publish`` or ``subscription`` if the server refused ``subject`` to this connection."""
    return _denials.get(nc, {}).get(subject)


async def connect_nats(
    url: str,
    *,
    name: str,
    seed: bytes | None = None,
    token: str | None = None,
    inbox_prefix: str | None = None,
    who: str = "",
) -> NATS:
    """Connect, failing fast if no server answers; once connected, reconnect forever.

    ``seed`` signs the server's nonce; ``token`` is the identity claim a member sends beside
    it; ``who`` names the identity in a refusal ("alice in colony dev (key U...)")."""
    errors: list[Exception] = []
    refused: dict[str, str] = {}

    async def error_cb(err: Exception) -> None:
        if m := _VIOLATION.search(str(err)):
            refused[m[2]] = m[1].lower()
            if len(refused) > 1000:  # a long-lived connection refused many subjects
                refused.pop(next(iter(refused)))
        else:
            errors.append(err)
        logger.debug("nats: %s", err)

    options: dict[str, Any] = {}
    if seed is not None:
        options["nkeys_seed_str"] = seed.decode()
    if token is not None:
        options["token"] = token
    if inbox_prefix is not None:
        options["inbox_prefix"] = inbox_prefix
    nc = NATS()
    try:
        await nc.connect(
            servers=[u.strip() for u in url.split(",") if u.strip()],
            name=name,
            connect_timeout=2,
            allow_reconnect=True,
            max_reconnect_attempts=_INITIAL_CONNECT_ATTEMPTS,
            reconnect_time_wait=0.5,  # type: ignore[arg-type]  # annotated int; a float works
            error_cb=error_cb,
            **options,
        )
    except (OSError, nats.errors.Error) as err:
        with contextlib.suppress(Exception):
            await nc.close()  # a refused connection leaves its socket open otherwise
        if any("authorization violation" in str(e).lower() for e in [*errors, err]):
            raise _refused(shown_url(url), who, seed is not None) from err
        if isinstance(err, OSError | nats.errors.NoServersError | nats.errors.TimeoutError):
            raise BrokerUnavailableError(
                f"cannot reach NATS at {shown_url(url)}: is the server running? "
                "('colonies dev' or 'colonies server start' starts one)",
                nats_url=shown_url(url),
            ) from err
        raise
    # The server was reachable: from now on, ride out restarts however long they take.
    nc.options["max_reconnect_attempts"] = -1
    _denials[nc] = refused
    return nc


def _refused(url: str, who: str, with_key: bool) -> NotAuthorizedError:
    if not with_key:
        return NotAuthorizedError(
            f"not allowed: the NATS server at {url} is secure and this connection has no "
            "identity; name your key with --identity or COLONIES_IDENTITY "
            "(make one with 'colonies key generate')",
            nats_url=url,
        )
    return NotAuthorizedError(
        f"not allowed: the NATS server at {url} refused {who or 'this identity'}: the colony "
        "does not exist, the name belongs to another key, or the key is not a member; the "
        "colony owner adds it with 'colonies user add --name NAME --key PUBLIC_KEY'",
        nats_url=url,
    )
