"""Connecting to NATS: fail fast when nothing answers, then reconnect for ever."""

from __future__ import annotations

import logging

import nats
import nats.errors
from nats.aio.client import Client as NATS

from colonyos.errors import BrokerUnavailableError

__all__ = ["connect_nats"]

logger = logging.getLogger(__name__)

_INITIAL_CONNECT_ATTEMPTS = 3


async def _quiet_error_cb(err: Exception) -> None:
    logger.debug("nats: %s", err)


async def connect_nats(url: str, *, name: str) -> NATS:
    """Connect, failing fast if no server answers; once connected, reconnect forever."""
    try:
        nc = await nats.connect(
            servers=[u.strip() for u in url.split(",") if u.strip()],
            name=name,
            connect_timeout=2,
            allow_reconnect=True,
            max_reconnect_attempts=_INITIAL_CONNECT_ATTEMPTS,
            reconnect_time_wait=0.5,
            error_cb=_quiet_error_cb,
        )
    except (OSError, nats.errors.NoServersError, nats.errors.TimeoutError) as err:
        raise BrokerUnavailableError(
            f"cannot reach NATS at {url}: is the server running? "
            "('colonies dev' or 'colonies server start' starts one)",
            nats_url=url,
        ) from err
    # The server was reachable: from now on, ride out restarts however long they take.
    nc.options["max_reconnect_attempts"] = -1
    return nc
