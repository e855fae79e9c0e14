"""What a request's reply holds, and which requests name a colony that must exist."""

from __future__ import annotations

from typing import Any

import msgspec

from colonyos.errors import RecordTooLargeError
from colonyos.subjects import SERVER_SCOPE

__all__ = ["colony_scoped", "reply_body"]

_encode = msgspec.json.Encoder().encode
_NO_WORK = b'{"result":null}'


def colony_scoped(colony: str, op: str) -> bool:
    """Does a request name a colony that must exist (and count as its caller's sign of life)?
    Not the server's own scope, nor the two operations that make or read a colony."""
    return colony != SERVER_SCOPE and op not in ("colony_add", "colony_get")


def reply_body(op: str, result: Any, max_payload: int, reply_limit: int) -> bytes:
    """The reply to a request that succeeded, within one message of ``max_payload`` bytes."""
    body = _NO_WORK if result is None else b'{"result":' + _result_bytes(result) + b"}"
    if len(body) > max_payload:
        # The backstop: listings are cut to fit, and any other reply that outgrew one message
        # says so, rather than leave its caller waiting for it.
        raise RecordTooLargeError(f"the {op} reply", len(body), reply_limit, max_payload)
    return body


def _result_bytes(result: Any) -> bytes:
    if isinstance(result, msgspec.Raw):
        return bytes(result)
    return _encode(result)
