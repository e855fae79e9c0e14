"""Connecting to NATS: fail fast when nothing answers, then reconnect for ever, unless the
server refuses this identity.

On a secure installation a connection proves who it is with an nkey (its seed never leaves
this process) and says which colony and name it acts as (:class:`ConnectClaim`); the server
asks the brokers' auth callout, which grants exactly that role's subjects.

A connection the server cuts and then refuses (its member was removed, its executor rejected)
would otherwise reconnect twice a second for ever, each attempt a callout request. What it does
instead is the caller's choice (``on_refused``). Either way, what it is asked while refused
fails at once with the reason (:func:`refusal`). ``"stop"`` (the SDK, the CLI) keeps trying
every second or two for a short while, since a restarted NATS server or a broker fail-over
refuses everyone until a broker answers the callout again, and then closes it for good;
``"back_off"`` (an executor, which should outlive any of that) keeps trying, waiting twice as
long after each refusal, up to a minute, and saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
import weakref
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Literal, TypeVar

import nats.errors
from nats.aio.client import Client as NATS

from colonyos.errors import BrokerUnavailableError, NotAuthorizedError
from colonyos.subjects import SERVER_SCOPE

__all__ = [
    "REFUSED_RETRY_MAX_S",
    "closed_error",
    "connect_nats",
    "denied",
    "not_allowed",
    "refusal",
    "refused_at_once",
    "shown_url",
]

logger = logging.getLogger(__name__)

_INITIAL_CONNECT_ATTEMPTS = 3
_RECONNECT_WAIT_S = 0.5
_EXPIRED = "user authentication expired"
# The longest a refused connection waits before trying again (``on_refused="back_off"``).
REFUSED_RETRY_MAX_S = 60.0
# How long a refused connection keeps trying before it closes (``on_refused="stop"``), and how
# long it waits between attempts: longer than a NATS restart or a broker fail-over takes to be
# answered again, short enough that a removed member's client does not knock for long.
REFUSED_STOP_AFTER_S = 15.0
_REFUSED_STOP_WAIT_S = 2.0
# 'Permissions Violation for Publish to "colonies.b.specs.echo"' (nats-py lowercases it).
_VIOLATION = re.compile(r'permissions violation for (publish|subscription) to "([^"]+)"', re.I)
# What the server refused each connection, by subject: nats-py reports a refusal only to the
# error callback, and the request itself then just times out.
_denials: weakref.WeakKeyDictionary[NATS, _Heard] = weakref.WeakKeyDictionary()
# Why the server last refused each connection to reconnect (until it lets it in again).
_refusals: weakref.WeakKeyDictionary[NATS, str] = weakref.WeakKeyDictionary()
T = TypeVar("T")


def shown_url(url: str) -> str:
    """A server URL (or a comma-separated list) fit for a log: no user or password."""
    return ",".join(re.sub(r"//[^/@]*@", "//", u) for u in url.split(","))


def denied(nc: NATS, subject: str) -> str | None:
    """``publish`` or ``subscription`` if the server refused ``subject`` to this connection."""
    heard = _denials.get(nc)
    return heard.refused.get(subject) if heard is not None else None


async def refused_at_once(nc: NATS, subject: str, asking: Awaitable[T]) -> T:
    """Await a request (or a JetStream publish) to ``subject``, but give up at once when the
    answer can no longer come, rather than wait the whole timeout to say why: nats-py's
    timeout when the server refuses the subject to this connection ("not allowed"), and
    ConnectionClosedError when the connection is closed, or refused by the server and not
    keeping on trying (``on_refused="stop"``: cut as its member was removed; :func:`refusal`
    says why). nats-py by itself leaves a request waiting on a closed or refused connection."""
    heard = _denials.get(nc)
    task = asyncio.ensure_future(asking)
    if heard is None:
        return await task
    refused, lost = asyncio.Event(), asyncio.Event()
    heard.watchers.setdefault(subject, []).append(refused)
    heard.losers.add(lost)
    if subject in heard.refused:
        refused.set()
    if heard.lost():
        lost.set()
    waiting = [asyncio.ensure_future(refused.wait()), asyncio.ensure_future(lost.wait())]
    try:
        await asyncio.wait({task, *waiting}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        # Given up by its caller (an executor's parked request when its colony's leader
        # changes): the request goes too, rather than time out later with no one to read it.
        task.cancel()
        task.add_done_callback(_read)
        raise
    finally:
        for w in waiting:
            w.cancel()
        heard.losers.discard(lost)
        with contextlib.suppress(ValueError, KeyError):
            heard.watchers[subject].remove(refused)
            if not heard.watchers[subject]:
                del heard.watchers[subject]
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        if refused.is_set():
            raise nats.errors.TimeoutError
        raise nats.errors.ConnectionClosedError
    return task.result()


def _read(task: asyncio.Future[Any]) -> None:
    """Read how a request given up on ended, so that asyncio does not report it unread."""
    if not task.cancelled():
        task.exception()


def not_allowed(what: str, caller: str, colony: str, subject: str) -> NotAuthorizedError:
    """The error for a request the server refused to ``caller`` in ``colony`` (the server
    scope's requests are its owners': no colony owner can grant them)."""
    if colony == SERVER_SCOPE:
        where = "on the server scope"
        who = f"only the server's owners may ask it, and {caller!r} is not one"
    else:
        where, who = f"in colony {colony!r}", "the colony owner decides who may do what"
    return NotAuthorizedError(
        f"not allowed: the server refused {what!r} to {caller!r} {where} (it may not publish "
        f"to {subject}): {who}; a new role takes effect on the next connection",
        subject=subject,
    )


class _Connection(NATS):
    """nats-py closes a connection for good when the server says its user JWT expired (the
    callout's last an hour): reconnect instead, through the callout, which hands out a new one
    (or refuses, if the member was removed meanwhile)."""

    async def _process_err(self, err_msg: str) -> None:
        if _EXPIRED in err_msg.lower() and self.options["allow_reconnect"]:
            await self._process_op_err(nats.errors.Error(f"nats: {err_msg.strip()}"))
            return
        await super()._process_err(err_msg)


def refusal(nc: NATS) -> str | None:
    """Why the server refuses this connection now ("not allowed: ..."), if it does."""
    return _refusals.get(nc)


def closed_error(nc: NATS) -> NotAuthorizedError | BrokerUnavailableError:
    """What to raise about a closed connection: why the server refused it, if it did."""
    if (why := refusal(nc)) is not None:
        return NotAuthorizedError(why)
    return BrokerUnavailableError("the connection to NATS is closed")


class _Heard:
    """What nats-py tells only the error callback of a connection: errors while connecting
    (a refusal, TLS failing) and, later, the subjects the server refused it and the
    reconnects it refused."""

    def __init__(self, on_refused: Literal["stop", "back_off"], why: str) -> None:
        self.errors: list[Exception] = []
        self.refused: dict[str, str] = {}
        # Requests waiting on a subject (refused_at_once): told when it is refused.
        self.watchers: dict[str, list[asyncio.Event]] = {}
        # Requests waiting for an answer (refused_at_once): told when it can no longer come.
        self.losers: set[asyncio.Event] = set()
        self.tls_failed = asyncio.Event()
        self.on_refused = on_refused
        self.why = why  # what to say when the server refuses this connection
        self.nc: NATS | None = None  # once connected
        self._closing: asyncio.Task[None] | None = None
        self._refused_since: float | None = None  # monotonic, while refused

    async def error_cb(self, err: Exception) -> None:
        logger.debug("nats: %s", err)
        if isinstance(err, ssl.SSLError):
            self.tls_failed.set()
        if m := _VIOLATION.search(str(err)):
            self.refused[m[2]] = m[1].lower()
            for waiting in self.watchers.get(m[2], []):
                waiting.set()
            if len(self.refused) > 1000:  # a long-lived connection refused many subjects
                self.refused.pop(next(iter(self.refused)))
        elif self.nc is None:
            self.errors.append(err)
        elif _is_refusal(err):
            self._refused_again(self.nc)
        if self.nc is not None and (self.nc.is_connecting or self.nc.is_reconnecting):
            _close_failed_attempt(self.nc)

    def lost(self) -> bool:
        """Can no answer reach a request any more: the connection closed, or the server
        refuses it and it is one that stops when refused (``"stop"``: the SDK, the CLI; its
        member removed, or no broker lets anyone in for now)? An executor's (``"back_off"``)
        waits on: its long poll may be answered once it is let in again."""
        nc = self.nc
        if nc is None:
            return False
        return nc.is_closed or (self.on_refused == "stop" and nc in _refusals)

    def _tell_lost(self) -> None:
        if self.lost():
            for lost in self.losers:
                lost.set()

    async def closed_cb(self) -> None:
        self._tell_lost()

    def _refused_again(self, nc: NATS) -> None:
        _refusals[nc] = self.why
        self._tell_lost()
        mono_now = time.monotonic()
        if self._refused_since is None:
            self._refused_since = mono_now
        if self.on_refused == "stop" and mono_now - self._refused_since < REFUSED_STOP_AFTER_S:
            nc.options["reconnect_time_wait"] = _REFUSED_STOP_WAIT_S
            logger.info("%s; trying again in %.0f s", self.why, _REFUSED_STOP_WAIT_S)
            return
        if self.on_refused == "stop":
            logger.info("%s; closing the connection", self.why)  # the next request says it
            if self._closing is None:
                # Not awaited here: nats-py calls this from its reconnect task, which the
                # close cancels.
                self._closing = asyncio.ensure_future(nc.close())
            return
        wait = min(max(nc.options["reconnect_time_wait"] * 2, 1.0), REFUSED_RETRY_MAX_S)
        nc.options["reconnect_time_wait"] = wait
        logger.warning("%s; trying again in %.0f s", self.why, wait)

    async def reconnected_cb(self) -> None:
        self._refused_since = None
        if self.nc is not None:
            _refusals.pop(self.nc, None)
            self.nc.options["reconnect_time_wait"] = _RECONNECT_WAIT_S


def _close_failed_attempt(nc: NATS) -> None:
    """nats-py leaves open the socket of a reconnect attempt that failed after connecting (the
    server hung up during CONNECT: a restarted secure server whose callout no broker answers
    yet), one per attempt until it succeeds: close it (the next attempt opens its own)."""
    transport = nc._transport
    if transport is not None:
        transport.close()  # type: ignore[no-untyped-call]  # nats-py leaves it unannotated


def _is_refusal(err: Exception) -> bool:
    return "authorization violation" in str(err).lower()


async def connect_nats(
    url: str,
    *,
    name: str,
    seed: bytes | None = None,
    token: str | None = None,
    inbox_prefix: str | None = None,
    tls_ca: Path | None = None,
    who: str = "",
    executor: bool = False,
    on_refused: Literal["stop", "back_off"] = "stop",
) -> NATS:
    """Connect, failing fast if no server answers; once connected, reconnect forever, unless
    the server refuses the identity (``on_refused``: see the module's doc).

    ``seed`` signs the server's nonce; ``token`` is the identity claim a member sends beside
    it; ``tls_ca``: the certificate authority that signed the server's TLS certificate (else
    the system's); ``who`` names the identity in a refusal ("alice in colony dev (key U...)");
    ``executor``: an executor's connection, refused for an executor's reasons.
    """
    shown = shown_url(url)
    heard = _Heard(on_refused, str(_refused(shown, who, seed is not None, executor)))
    options: dict[str, Any] = {}
    if seed is not None:
        options["nkeys_seed_str"] = seed.decode()
    if token is not None:
        options["token"] = token
    if inbox_prefix is not None:
        options["inbox_prefix"] = inbox_prefix
    if tls_ca is not None or url.startswith("tls://"):
        options["tls"] = _tls_context(tls_ca)
    nc = _Connection()
    connecting = nc.connect(
        servers=[u.strip() for u in url.split(",") if u.strip()],
        name=name,
        connect_timeout=2,
        allow_reconnect=True,
        max_reconnect_attempts=_INITIAL_CONNECT_ATTEMPTS,
        reconnect_time_wait=_RECONNECT_WAIT_S,  # type: ignore[arg-type]  # annotated int
        error_cb=heard.error_cb,
        reconnected_cb=heard.reconnected_cb,
        closed_cb=heard.closed_cb,
        **options,
    )
    try:
        await _unless_tls_fails(connecting, heard.tls_failed)
    except (OSError, nats.errors.Error) as err:
        with contextlib.suppress(Exception):
            await nc.close()  # a refused connection leaves its socket open otherwise
        # A secure server that greeted it (its INFO asks for credentials) is reachable: when
        # the connect then times out, its auth callout did not answer in time (no broker
        # serves it), which is a refusal, not an unreachable server. Its own refusal comes
        # after the same two seconds, so which of the two is seen first is chance.
        asked_auth = bool(nc._server_info.get("auth_required"))
        raise _why_not(
            err,
            heard.errors,
            url,
            who,
            with_key=seed is not None,
            executor=executor,
            asked_auth=asked_auth,
        ) from err
    # The server was reachable: from now on, ride out restarts however long they take.
    nc.options["max_reconnect_attempts"] = -1
    _denials[nc] = heard
    heard.nc = nc
    return nc


def _why_not(
    err: Exception,
    errors: list[Exception],
    url: str,
    who: str,
    *,
    with_key: bool,
    executor: bool = False,
    asked_auth: bool = False,
) -> Exception:
    """What to tell about a connection that failed: refused, TLS, no server, or as it is.
    ``asked_auth``: the server answered and asked for credentials, so a timeout is its auth
    not letting it in (in time), not a server out of reach."""
    shown = shown_url(url)
    # Timed out, or hung up on (the server closes a connection its callout did not let in).
    gave_up = isinstance(
        err, TimeoutError | OSError | nats.errors.NoServersError | nats.errors.TimeoutError
    )
    if any(_is_refusal(e) for e in [*errors, err]) or (asked_auth and gave_up):
        return _refused(shown, who, with_key, executor)
    if bad_tls := next((e for e in [*errors, err] if isinstance(e, ssl.SSLError)), None):
        return BrokerUnavailableError(
            f"TLS with the NATS server at {shown} failed: {bad_tls}; name the authority that "
            "signed its certificate with --tls-ca or COLONIES_TLS_CA",
            nats_url=shown,
        )
    if isinstance(err, OSError | nats.errors.NoServersError | nats.errors.TimeoutError):
        return BrokerUnavailableError(
            f"cannot reach NATS at {shown}: is the server running? "
            "('colonies dev' or 'colonies server start' starts one)",
            nats_url=shown,
        )
    return err


async def _unless_tls_fails(connecting: Awaitable[None], tls_failed: asyncio.Event) -> None:
    """Await the connect, but give up at once when TLS fails: nats-py then reports the error
    to the error callback and waits for ever."""
    task = asyncio.ensure_future(connecting)
    failed = asyncio.ensure_future(tls_failed.wait())
    try:
        await asyncio.wait({task, failed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        failed.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise nats.errors.Error("TLS failed")
    task.result()


def _tls_context(ca: Path | None) -> ssl.SSLContext:
    """Verify the server's certificate and name (the system's authorities unless ``ca``)."""
    try:
        return ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    except (OSError, ssl.SSLError) as err:
        raise BrokerUnavailableError(f"cannot use the TLS authority {ca}: {err}") from None


def _refused(url: str, who: str, with_key: bool, executor: bool = False) -> NotAuthorizedError:
    """The one wording of a refusal. The server does not pass the callout's reason on, so it
    names those that may apply: an executor takes a free name, so it is never refused for not
    being a member, but may be for the colony's executors waiting for approval, or once its
    owner removed or rejected it."""
    if not with_key:
        return NotAuthorizedError(
            f"not allowed: the NATS server at {url} is secure and this connection has no "
            "identity; name your key with --identity or COLONIES_IDENTITY "
            "(make one with 'colonies key generate')",
            nats_url=url,
        )
    if executor:
        return NotAuthorizedError(
            f"not allowed: the NATS server at {url} refused {who or 'this executor'}: no broker "
            "is running to let it in, the colony does not exist (create it with 'colonies "
            "colony add'), it has too many executors waiting for approval, the name belongs "
            "to another key, or the colony owner removed or rejected it (the broker's log says "
            "which)",
            nats_url=url,
        )
    return NotAuthorizedError(
        f"not allowed: the NATS server at {url} refused {who or 'this identity'}: no broker "
        "is running to let it in, the colony does not exist, the name belongs to another key, "
        "or the key is not a member; the colony owner adds it with 'colonies user add --name "
        "NAME --key PUBLIC_KEY'",
        nats_url=url,
    )
