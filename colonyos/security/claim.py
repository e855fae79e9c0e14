"""What a member's connection says it is: the installation (prefix), the colony and the name it
acts as. It travels in the CONNECT's ``auth_token`` beside the nkey and its signature of the
server's nonce; the callout checks the key holds the name before it grants anything."""

from __future__ import annotations

import msgspec

__all__ = ["ConnectClaim"]


class ConnectClaim(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    prefix: str
    colony: str
    name: str
    # An executor may take a free name (it then registers, pending approval); a user's
    # connection under a name that is not a member's is refused.
    executor: bool = False

    def token(self) -> str:
        return msgspec.json.encode(self).decode()

    @classmethod
    def parse(cls, token: str) -> ConnectClaim:
        """Raises msgspec.DecodeError / ValidationError for anything else."""
        return msgspec.json.decode(token, type=cls)
