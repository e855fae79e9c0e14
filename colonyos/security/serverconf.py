"""The keys of an installation and the nats-server configuration that makes it secure.

Four key pairs, made on first start under ``<data dir>/keys`` (mode 0700, each seed 0600):

- ``issuer`` (an account key): signs the user JWTs the brokers hand out through the callout;
- ``broker``: the brokers' own connections, in account ``COLONIES`` (JetStream, every stream
  and bucket), which skip the callout;
- ``callout``: the brokers' connections that answer the callout, in account ``AUTH``;
- ``system``: the system account, used to cut the connection of a removed member.

Every other connection is sent by the server to the callout, which answers with a user JWT for
account ``COLONIES`` naming exactly the subjects its role may use (see permissions.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from colonyos.security.keys import Identity, generate, load_identity, write_seed
from colonyos.security.permissions import MAX_SUBSCRIPTIONS

__all__ = [
    "ACCOUNT",
    "ACCOUNT_MAX_SUBSCRIPTIONS",
    "AUTH_ACCOUNT",
    "ServerKeys",
    "secure_config",
    "tls_config",
]

# The account that holds every stream and bucket, and every member's connection.
ACCOUNT = "COLONIES"
AUTH_ACCOUNT = "AUTH"
SYSTEM_ACCOUNT = "SYS"

_ROLES = {"issuer": "account", "broker": "user", "callout": "user", "system": "user"}
# Subscriptions one connection of the account may hold at once. nats-server applies only the
# permissions of a callout's user JWT, not its limits (``subs`` there is not enforced), so the
# bound it enforces is the account's, per connection: the most any role needs (a broker's
# connection holds a handful).
ACCOUNT_MAX_SUBSCRIPTIONS = max(MAX_SUBSCRIPTIONS.values())


@dataclass(frozen=True, slots=True)
class ServerKeys:
    issuer: Identity
    broker: Identity
    callout: Identity
    system: Identity

    @classmethod
    def load(cls, keys_dir: Path) -> ServerKeys:
        return cls(**{name: load_identity(keys_dir / f"{name}.nk") for name in _ROLES})

    @classmethod
    def load_or_create(cls, keys_dir: Path) -> ServerKeys:
        """The installation's keys, made on first use."""
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name, kind in _ROLES.items():
            path = keys_dir / f"{name}.nk"
            if not path.exists():
                write_seed(path, generate(kind))
        return cls.load(keys_dir)


def secure_config(base: str, keys: ServerKeys) -> str:
    """``base`` (the packaged nats.conf) with the accounts and the callout. The callout block
    cannot be changed by a reload: it is written before the server starts."""
    broker, callout, system = (k.public_key for k in (keys.broker, keys.callout, keys.system))
    return f"""{base.rstrip()}

# ---- written by colonyos: members connect through the brokers' auth callout ----
accounts {{
  {AUTH_ACCOUNT}: {{ users: [ {{ nkey: {callout} }} ] }}
  {ACCOUNT}: {{
    jetstream: enabled
    users: [ {{ nkey: {broker} }} ]
    limits: {{ max_subscriptions: {ACCOUNT_MAX_SUBSCRIPTIONS} }}
  }}
  {SYSTEM_ACCOUNT}: {{ users: [ {{ nkey: {system} }} ] }}
}}
system_account: {SYSTEM_ACCOUNT}
authorization {{
  auth_callout {{
    issuer: {keys.issuer.public_key}
    account: {AUTH_ACCOUNT}
    auth_users: [ {callout}, {broker}, {system} ]
  }}
}}
"""


def tls_config(base: str, cert: Path, key: Path) -> str:
    """``base`` with TLS required of every client connection (brokers included)."""
    return f"""{base.rstrip()}

# ---- written by colonyos: clients connect with TLS ----
tls {{
  cert_file: "{cert.resolve()}"
  key_file: "{key.resolve()}"
  timeout: 2
}}
"""
