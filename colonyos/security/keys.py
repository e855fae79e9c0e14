"""NATS nkeys (Ed25519): making, storing and loading a party's seed, and checking signatures.

A seed is made on the machine of the party it belongs to and never leaves it: only its public
key (``U...`` for people and executors, ``A...`` for the account that signs user JWTs) is
given to anyone. Seed files are written with mode 0600 and refused when others can read them.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.signing
import nkeys

from colonyos.errors import IdentityError

__all__ = [
    "Identity",
    "default_identity_path",
    "generate",
    "load_identity",
    "public_key_kind",
    "verify",
    "write_seed",
]

_KINDS = {
    "user": nkeys.PREFIX_BYTE_USER,
    "account": nkeys.PREFIX_BYTE_ACCOUNT,
    "server": nkeys.PREFIX_BYTE_SERVER,
    "operator": nkeys.PREFIX_BYTE_OPERATOR,
}
_LETTER = {"user": "U", "account": "A", "server": "N", "operator": "O"}


@dataclass(frozen=True, slots=True)
class Identity:
    """A party's key pair, from its seed (``S...``)."""

    seed: bytes

    @property
    def public_key(self) -> str:
        return str(_keypair(self.seed).public_key.decode())

    def sign(self, data: bytes) -> bytes:
        """The raw 64-byte Ed25519 signature of ``data``."""
        return bytes(_keypair(self.seed).sign(data))

    def __repr__(self) -> str:  # never print a seed
        return f"Identity({self.public_key})"


def _keypair(seed: bytes) -> nkeys.KeyPair:
    try:
        return nkeys.from_seed(bytearray(seed))
    except (nkeys.NkeysError, binascii.Error, ValueError) as err:
        raise IdentityError(f"not an nkey seed: {err}") from None


def generate(kind: str = "user") -> Identity:
    """A new key pair; ``kind`` is user, account, server or operator."""
    return Identity(bytes(nkeys.encode_seed(os.urandom(32), _KINDS[kind])))


def public_key_kind(public_key: str) -> str | None:
    """``user``, ``account``, ... for a well-formed public key, None for anything else."""
    raw = _decode_public(public_key)
    if raw is None:
        return None
    return next((k for k, b in _KINDS.items() if b == raw[0]), None)


def _decode_public(public_key: str) -> bytes | None:
    """The prefix byte and the 32 key bytes of an encoded public key, checksum checked."""
    try:
        data = base64.b32decode(public_key + "=" * (-len(public_key) % 8))
    except (binascii.Error, ValueError):
        return None
    if len(data) != 35 or nkeys.crc16(bytearray(data[:-2])).to_bytes(2, "little") != data[-2:]:
        return None
    return data[:-2]


def verify(public_key: str, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is the signature of ``data`` by the key ``public_key``."""
    raw = _decode_public(public_key)
    if raw is None or len(signature) != 64:
        return False
    try:
        nacl.signing.VerifyKey(raw[1:]).verify(data, signature)
    except nacl.exceptions.BadSignatureError:
        return False
    return True


def default_identity_path() -> Path:
    """``$COLONIES_IDENTITY``, else ``$XDG_CONFIG_HOME/colonies/identity.nk`` (by default
    ``~/.config/colonies/identity.nk``)."""
    if named := os.environ.get("COLONIES_IDENTITY"):
        return Path(named).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "colonies" / "identity.nk"


def write_seed(path: Path, identity: Identity, *, overwrite: bool = False) -> None:
    """Write the seed readable by its owner only (0600), creating the directory (0700)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise IdentityError(
            f"{path} already exists: it may be someone's only copy of their key; "
            "choose another file (--out) or remove it first",
            path=str(path),
        ) from None
    with os.fdopen(fd, "wb") as f:
        f.write(identity.seed + b"\n")
    os.chmod(path, 0o600)


def load_identity(path: Path) -> Identity:
    """The identity in a seed file; refused when the file is missing, is not a seed, or can
    be read by others than its owner."""
    try:
        mode = path.stat().st_mode
        text = path.read_bytes()
    except FileNotFoundError:
        raise IdentityError(
            f"no identity at {path}: make one with 'colonies key generate' "
            "(or name yours with --identity or COLONIES_IDENTITY)",
            path=str(path),
        ) from None
    except OSError as err:
        raise IdentityError(
            f"cannot read the identity {path}: {err.strerror}", path=str(path)
        ) from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            f"{path} can be read by others (mode {stat.S_IMODE(mode):o}): it holds a private "
            f"key; make it private with 'chmod 600 {path}'",
            path=str(path),
        )
    seed = text.strip()
    identity = Identity(seed)
    if not seed.startswith(b"S"):
        raise IdentityError(f"{path} does not hold an nkey seed (S...)", path=str(path))
    identity.public_key  # noqa: B018 - decodes the seed: a damaged file fails here, clearly
    return identity


def letter(kind: str) -> str:
    return _LETTER[kind]
