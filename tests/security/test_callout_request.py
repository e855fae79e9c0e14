"""What the callout checks of the server's authorization request before it reads it: the
signature of the server that sends it, and that it is current."""

from __future__ import annotations

import time
from typing import Any

import pytest

from colonyos.broker.callout import _read
from colonyos.security import jwt
from colonyos.security.keys import Identity, generate

NOW = 1_800_000_000


def _request(signer: Identity, *, server_id: str | None = None, **claims: Any) -> bytes:
    body = {
        "aud": "nats-authorization-request",
        "iat": NOW,
        "exp": NOW + 2,
        "nats": {
            "user_nkey": generate().public_key,
            "server_id": {"id": server_id or signer.public_key},
            "client_info": {"host": "127.0.0.1", "nonce": "n"},
            "connect_opts": {"nkey": "U", "sig": "s", "auth_token": "t"},
        },
        **claims,
    }
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, signer).encode()


def test_a_current_request_signed_by_the_server_it_names_is_read() -> None:
    server = generate("server")
    request = _read(_request(server), now=NOW + 1)
    assert request.server_id == server.public_key and request.token == "t"


@pytest.mark.parametrize(
    ("why", "signer", "claims", "now"),
    [
        ("a user key", "user", {}, NOW),
        ("another server's name", "other", {}, NOW),
        ("expired", "server", {}, NOW + 2 + 31),
        ("issued in the future", "server", {"iat": NOW + 31}, NOW),
        ("valid too long", "server", {"exp": NOW + 3600}, NOW),
        ("no exp", "server", {"exp": None}, NOW),
    ],
)
def test_a_request_not_current_or_not_the_servers_is_not_read(
    why: str, signer: str, claims: dict[str, Any], now: int
) -> None:
    key = generate("user" if signer == "user" else "server")
    server_id = generate("server").public_key if signer == "other" else None
    with pytest.raises(ValueError):
        _read(_request(key, server_id=server_id, **claims), now=now)


def test_the_clock_defaults_to_now() -> None:
    server = generate("server")
    now = int(time.time())
    assert _read(_request(server, iat=now, exp=now + 2)).server_id == server.public_key
