"""The NATS server's auth callout, answered by every broker (leader and standbys).

nats-server sends each connection that is not a broker's to ``$SYS.REQ.USER.AUTH`` as an
authorization request (a JWT signed by the server). The answer is a user JWT, signed by the
installation's issuer key, naming exactly the subjects the member may use, or the reason it
is refused. The server itself then refuses everything else: isolation does not depend on the
broker handling each request correctly.

The server does not check the client's nkey signature in callout mode: this does, over the
nonce the server sent it. Requests for another installation (another prefix on the same
server) are left to that installation's brokers.

Under a flood of connections the callout stays quick for members: it answers up to
:data:`MAX_AT_ONCE` requests at once (each waits on a few KV reads), and a client host refused
too often (:attr:`Callout.refusals`) is refused at once, without reading the book, unless the
key it connects with is a member's. What is cached for that is only the set of members' public
keys, from the book's mirror of the members bucket (MemberBook.follow: updated within
milliseconds of a change); every decision to let a connection in still reads the book, so a
removal takes effect at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from pathlib import Path

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from colonyos.connection import connect_nats
from colonyos.security import jwt
from colonyos.security.claim import ConnectClaim
from colonyos.security.keys import public_key_kind, verify
from colonyos.security.members import MemberBook, Refused
from colonyos.security.permissions import grants, jwt_user_name
from colonyos.security.serverconf import ACCOUNT, ServerKeys
from colonyos.security.throttle import Throttle
from colonyos.subjects import Subjects, check_name

__all__ = ["MAX_AT_ONCE", "Callout"]

logger = logging.getLogger(__name__)

AUTH_SUBJECT = "$SYS.REQ.USER.AUTH"
_REQUEST_AUDIENCE = "nats-authorization-request"
# A member's JWT lasts this long; a member removed while connected is cut at once, this is the
# backstop. The client reconnects through the callout when it expires.
USER_JWT_TTL_S = 3600.0
# How far the clocks of the servers and of this broker may differ.
_CLOCK_SKEW_S = 30
# The longest a server gives the callout to answer (its auth_timeout; 2 s unless configured).
_MAX_AUTH_TIMEOUT_S = 60
# Requests answered at once, and waiting beyond those (more are dropped: the server refuses the
# connection when its auth_timeout passes).
MAX_AT_ONCE = 32
_MAX_WAITING = 1000


class _Request(msgspec.Struct):
    user_nkey: str
    server_id: str
    host: str
    nonce: str
    key: str
    signature: str
    token: str


class Callout:
    def __init__(
        self,
        nats_url: str,
        subjects: Subjects,
        keys: ServerKeys,
        book: MemberBook,
        *,
        tls_ca: Path | None = None,
    ) -> None:
        self.nats_url = nats_url
        self.tls_ca = tls_ca
        self.subjects = subjects
        self.keys = keys
        self.book = book
        self._nc: NATS | None = None
        # Refusals per client host: 20 at once, then one a second; beyond, a host's requests
        # with keys no member holds are refused without reading the book.
        self.refusals = Throttle(burst=20, per_s=1.0)
        self._slots = asyncio.Semaphore(MAX_AT_ONCE)
        self._answering: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.book.follow()  # the members' keys, in memory (is_member_key)
        self._nc = await connect_nats(
            self.nats_url, name="colonies-callout", seed=self.keys.callout.seed, tls_ca=self.tls_ca
        )
        await self._nc.subscribe(
            AUTH_SUBJECT, queue=f"{self.subjects.prefix}-callout", cb=self._on_request
        )
        await self._nc.flush()

    async def stop(self) -> None:
        if self._nc is not None:
            try:
                await self._nc.drain()
            except nats.errors.Error:
                await self._nc.close()
            self._nc = None
        for task in list(self._answering):
            task.cancel()
        await asyncio.gather(*self._answering, return_exceptions=True)

    def is_member_key(self, public_key: str) -> bool:
        """Does a member (not removed) hold this key, as far as the book has followed?"""
        return self.book.is_member_key(public_key)

    async def _on_request(self, msg: Msg) -> None:
        """nats-py calls this for one message at a time: hand each to its own task."""
        if len(self._answering) >= _MAX_WAITING:
            logger.warning("dropped an authorization request: %d waiting", len(self._answering))
            return
        task = asyncio.create_task(self._answer_request(msg))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _answer_request(self, msg: Msg) -> None:
        async with self._slots:
            await self._handle(msg)

    async def _handle(self, msg: Msg) -> None:
        try:
            request = _read(msg.data)
        except (jwt.JwtError, KeyError, TypeError, ValueError) as err:
            logger.warning("ignored an authorization request: %s", err)
            return
        try:
            claim = ConnectClaim.parse(request.token)
        except msgspec.MsgspecError:
            await self._answer(msg, request, error="no colonies identity claim in auth_token")
            return
        if claim.prefix != self.subjects.prefix:
            return  # another installation's brokers answer it
        host = request.host
        if (wait := self.refusals.wait_s(host)) > 0 and not self.is_member_key(request.key):
            error = f"too many refused connections from {host}; try again in {wait:.0f} s"
            await self._answer(msg, request, error=error)
            return
        try:
            jwt_ = await self._decide(request, claim)
        except Refused as refused:
            logger.info("refused %s in %s: %s (from %s)", claim.name, claim.colony, refused, host)
            self.refusals.allow(host)  # one refusal more for this host
            await self._answer(msg, request, error=str(refused))
            return
        await self._answer(msg, request, user_jwt=jwt_)

    async def _decide(self, request: _Request, claim: ConnectClaim) -> str:
        try:
            check_name("colony", claim.colony)
            check_name("name", claim.name)
        except ValueError as err:
            raise Refused(str(err)) from None
        if public_key_kind(request.key) != "user":
            raise Refused("connect with a user nkey (colonies key generate)")
        if not _signed(request):
            raise Refused("the nkey's signature of the server's nonce is wrong")
        roles = await self.book.roles_of(
            claim.colony, claim.name, request.key, executor=claim.executor
        )
        granted = grants(self.subjects, claim.colony, claim.name, roles)
        logger.debug("granted %s in %s as %s", claim.name, claim.colony, roles)
        return jwt.user_jwt(
            user_nkey=request.user_nkey,
            name=jwt_user_name(claim.prefix, claim.colony, claim.name),
            account=ACCOUNT,
            issuer=self.keys.issuer,
            publish=list(granted.publish),
            subscribe=list(granted.subscribe),
            subscriptions=granted.subscriptions,
            expires_s=USER_JWT_TTL_S,
        )

    async def _answer(
        self, msg: Msg, request: _Request, *, user_jwt: str = "", error: str = ""
    ) -> None:
        response = jwt.authorization_response(
            user_nkey=request.user_nkey,
            server_id=request.server_id,
            issuer=self.keys.issuer,
            jwt=user_jwt,
            error=error,
        )
        try:
            await msg.respond(response.encode())
        except nats.errors.Error as err:
            logger.warning("could not answer an authorization request: %s", err)


def _read(data: bytes, now: float | None = None) -> _Request:
    """The parts of the server's request the decision needs, once checked: signed by the
    server that sends it (its ID is its public nkey, made afresh at each start, so there is
    no lasting key to pin), and current (``iat`` not in the future, ``exp`` not past nor
    further than a server waits for an answer)."""
    claims = jwt.decode(data.decode())
    if claims.get("aud") != _REQUEST_AUDIENCE or public_key_kind(claims["iss"]) != "server":
        raise ValueError("not an authorization request signed by a server")
    body = claims["nats"]
    if body["server_id"]["id"] != claims["iss"]:
        raise ValueError(f"signed by {claims['iss']}, not by the server it names")
    _check_times(claims, time.time() if now is None else now)
    opts = body.get("connect_opts") or {}
    return _Request(
        user_nkey=body["user_nkey"],
        server_id=body["server_id"]["id"],
        host=str(body["client_info"].get("host", "")),
        nonce=body["client_info"].get("nonce", ""),
        key=opts.get("nkey", ""),
        signature=opts.get("sig", ""),
        token=opts.get("auth_token", ""),
    )


def _check_times(claims: dict[str, object], now: float) -> None:
    issued, expires = claims.get("iat"), claims.get("exp")
    if not isinstance(issued, int) or not isinstance(expires, int):
        raise ValueError("an authorization request without iat and exp")
    if issued > now + _CLOCK_SKEW_S:
        raise ValueError(f"an authorization request issued in the future ({issued})")
    if expires < now - _CLOCK_SKEW_S:
        raise ValueError(f"an authorization request expired at {expires}")
    if expires > now + _MAX_AUTH_TIMEOUT_S + _CLOCK_SKEW_S:
        raise ValueError(f"an authorization request valid for too long (until {expires})")


def _signed(request: _Request) -> bool:
    if not request.nonce or not request.signature:
        return False
    # Standard base64 with padding (nats-py), or the URL-safe form other clients send.
    sig = request.signature.replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(sig + "=" * (-len(sig) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return verify(request.key, request.nonce.encode(), raw)
