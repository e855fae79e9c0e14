"""NATS JWTs, as far as the auth callout needs them: the server's authorization request (read
and checked), the user JWT and the authorization response (made and signed).

No maintained Python library encodes NATS JWTs; the format is small: ``b64url(header)`` ``.``
``b64url(claims)`` ``.`` ``b64url(ed25519 signature of the first two parts)``, the header
``{"typ":"JWT","alg":"ed25519-nkey"}``, ``iss`` the public nkey that signed. Every claim here is
checked against the real nats-server by tests/security.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from typing import Any

import msgspec

from colonyos.security import permissions
from colonyos.security.keys import Identity, verify

__all__ = ["JwtError", "authorization_response", "decode", "encode", "user_jwt"]

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
_encoder = msgspec.json.Encoder()


class JwtError(ValueError):
    """A token that is not a well-formed JWT signed by its issuer."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode(claims: dict[str, Any], signer: Identity) -> str:
    """Sign ``claims`` with ``signer``, which becomes ``iss``; ``jti`` is the hash of the
    claims, as nats-server's own library makes it."""
    claims = {**claims, "iss": signer.public_key, "iat": claims.get("iat", int(time.time()))}
    claims.pop("jti", None)
    digest = hashlib.sha256(_encoder.encode(claims)).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    head = _b64(_encoder.encode(_HEADER)) + "." + _b64(_encoder.encode(claims))
    return head + "." + _b64(signer.sign(head.encode()))


def decode(token: str) -> dict[str, Any]:
    """The claims of a token whose signature by its ``iss`` checks out."""
    try:
        head, body, sig = token.split(".")
        header = msgspec.json.decode(_unb64(head))
        claims = msgspec.json.decode(_unb64(body))
        signature = _unb64(sig)
    except (ValueError, binascii.Error, msgspec.DecodeError) as err:
        raise JwtError(f"not a JWT: {err}") from None
    if not isinstance(header, dict) or header.get("alg") != _HEADER["alg"]:
        raise JwtError("not an nkey-signed JWT")
    if not isinstance(claims, dict) or not isinstance(claims.get("iss"), str):
        raise JwtError("the JWT names no issuer")
    if not verify(claims["iss"], f"{head}.{body}".encode(), signature):
        raise JwtError("the JWT's signature is not its issuer's")
    return claims


def user_jwt(
    *,
    user_nkey: str,
    name: str,
    account: str,
    issuer: Identity,
    publish: list[str],
    subscribe: list[str],
    subscriptions: int,
    expires_s: float,
) -> str:
    """A user JWT for the account ``account``, allowing exactly ``publish`` and ``subscribe``
    (and one reply to each message received, for acks and flow control, within
    :data:`~colonyos.security.permissions.RESPONSE_TTL_S`), with at most ``subscriptions``
    subscriptions at once."""
    if subscriptions < 1:
        raise ValueError("a user JWT needs room for at least one subscription")
    now = int(time.time())
    return encode(
        {
            "sub": user_nkey,
            "name": name,
            "aud": account,
            "iat": now,
            "exp": now + int(expires_s),
            "nats": {
                "pub": {"allow": publish},
                "sub": {"allow": subscribe},
                "resp": {"max": 1, "ttl": int(permissions.RESPONSE_TTL_S * 1e9)},  # ns
                "subs": subscriptions,
                "data": -1,
                "payload": -1,
                "type": "user",
                "version": 2,
            },
        },
        issuer,
    )


def authorization_response(
    *, user_nkey: str, server_id: str, issuer: Identity, jwt: str = "", error: str = ""
) -> str:
    """The callout's answer to the server: the user JWT, or the reason for refusing."""
    nats: dict[str, Any] = {"type": "authorization_response", "version": 2}
    if error:
        nats["error"] = error
    else:
        nats["jwt"] = jwt
    return encode({"sub": user_nkey, "aud": server_id, "nats": nats}, issuer)
