"""Connecting to NATS: fail fast when nothing answers, then reconnect for ever."""

from __future__ import annotations

import logging

import nats
import nats.errors
from nats.aio.client import Client as NATS

from colonyos.errors import BrokerUnavailableError

__all__ = ["client_inbox_prefix", "connect_nats"]

logger = logging.getLogger(__name__)

_INITIAL_CONNECT_ATTEMPTS = 3


async def _quiet_error_cb(err: Exception) -> None:
    logger.debug("nats: %s", err)


def client_inbox_prefix(colony: str, caller: str) -> str:
    """Where a client of ``colony`` speaking as ``caller`` gets its replies and consumer
    deliveries: a member may subscribe to ``_INBOX.<colony>.<caller>.>`` only, so no one
    reads another's replies."""
    return f"_INBOX.{colony}.{caller}"


async def connect_nats(url: str, *, name: str, inbox_prefix: str = "_INBOX") -> NATS:
    """Connect, failing fast if no server answers; once connected, reconnect forever.
    ``inbox_prefix``: a client's comes from :func:`client_inbox_prefix`; brokers keep nats-py's."""
    try:
        nc = await nats.connect(
            servers=[u.strip() for u in url.split(",") if u.strip()],
            name=name,
            connect_timeout=2,
            allow_reconnect=True,
            max_reconnect_attempts=_INITIAL_CONNECT_ATTEMPTS,
            reconnect_time_wait=0.5,
            error_cb=_quiet_error_cb,
            inbox_prefix=inbox_prefix,
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
