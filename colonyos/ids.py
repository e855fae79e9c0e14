"""Process and graph ids, whole and abbreviated.

An id is 64 lowercase hexadecimal characters, as in Colonies. People read and type a short
form, the first :data:`SHORT_ID_LENGTH` characters, and every command that takes an id accepts
any unique prefix of it: the broker completes a prefix from its index (the ``resolve``
operation) and refuses an ambiguous one, listing the candidates.
"""

from __future__ import annotations

from colonyos.errors import InvalidSpecError

__all__ = ["ID_LENGTH", "SHORT_ID_LENGTH", "check_id_prefix", "is_full_id", "short_id"]

ID_LENGTH = 64
# 48 bits: two ids of a colony share a prefix this long about once in 10^14 pairs.
SHORT_ID_LENGTH = 12

_HEX = frozenset("0123456789abcdef")


def short_id(ident: str) -> str:
    return ident[:SHORT_ID_LENGTH]


def is_full_id(text: str) -> bool:
    return len(text) == ID_LENGTH and set(text) <= _HEX


def check_id_prefix(text: str, kind: str = "process") -> str:
    """A whole id or a prefix of one, lowercased; anything else is an :class:`InvalidSpecError`
    naming what is wrong."""
    prefix = text.strip().lower()
    if not prefix:
        raise InvalidSpecError(f"a {kind} id is required", path="$.prefix", reason="empty")
    if len(prefix) > ID_LENGTH:
        raise InvalidSpecError(
            f"{kind} id {text!r} is {len(prefix)} characters; an id has {ID_LENGTH}",
            path="$.prefix",
            reason="too long",
        )
    if not set(prefix) <= _HEX:
        raise InvalidSpecError(
            f"{kind} id {text!r} is not hexadecimal (an id has only 0-9 and a-f)",
            path="$.prefix",
            reason="not hexadecimal",
        )
    return prefix


def distinct_length(ids: list[str]) -> int:
    """The shortest length, at least :data:`SHORT_ID_LENGTH`, at which the ids all differ."""
    for length in range(SHORT_ID_LENGTH, ID_LENGTH):
        if len({i[:length] for i in ids}) == len(ids):
            return length
    return ID_LENGTH
