"""Client and broker settings, read from ``COLONIES_*`` environment variables when not given.

See docs/configuration.md for the table of variables.
"""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, TypeVar

import msgspec

__all__ = ["DEFAULT_NATS_URL", "BrokerSettings", "Settings", "default_caller", "parse_duration"]

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_COLONY = "dev"
DEFAULT_PREFIX = "colonies"
DEFAULT_RETENTION_S = 7 * 86_400.0

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_duration(text: str, what: str = "duration") -> float:
    """Seconds from ``"3600"``, ``"90s"``, ``"15m"``, ``"12h"`` or ``"7d"``."""
    value = text.strip()
    unit = _DURATION_UNITS.get(value[-1:], 0) if value else 0
    number = value[:-1] if unit else value
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        raise ValueError(
            f"{what}: {text!r} is not a duration such as 3600, 90s, 15m, 12h or 7d"
        ) from None
    if not seconds > 0:
        raise ValueError(f"{what}: {text!r} must be more than zero")
    return seconds


N = TypeVar("N", int, float)


def _number(kind: type[N], text: str, what: str) -> N:
    """A number from a variable, or an error that names the variable."""
    try:
        return kind(text)
    except ValueError:
        noun = "a whole number" if kind is int else "a number"
        raise ValueError(f"{what}: {text!r} is not {noun}") from None


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def parse_flag(text: str, what: str) -> bool:
    """An on/off setting: 1, true, yes, on (or 0, false, no, off), in any case."""
    if text.strip().lower() in _TRUE:
        return True
    if text.strip().lower() in _FALSE:
        return False
    raise ValueError(f"{what}: {text!r} is neither on (1, true, yes) nor off (0, false, no)")


def default_caller() -> str:
    """A subject-safe name for the user at this terminal."""
    try:
        name = getpass.getuser()
    except Exception:  # no user database entry (containers): any name will do
        name = "user"
    return re.sub(r"[^A-Za-z0-9_\-]", "_", name) or "user"


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Where a client (CLI, SDK, executor) finds the colony."""

    nats_url: str = DEFAULT_NATS_URL
    colony: str = DEFAULT_COLONY
    prefix: str = DEFAULT_PREFIX
    request_timeout_s: float = 5.0
    # The seed file of this party's nkey (colonies key generate); None: $COLONIES_IDENTITY,
    # else the default identity file when it exists, else no identity (insecure servers).
    identity: Path | None = None
    # The name a user acts under (the rpc caller token); None: the login name. Executors act
    # under their own names.
    caller: str | None = None
    # The certificate authority of the server's TLS certificate; None: the system's (and no
    # TLS unless the URL says tls:// or the server asks for it).
    tls_ca: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, object] = {
            "nats_url": env.get("COLONIES_NATS_URL", DEFAULT_NATS_URL),
            "colony": env.get("COLONIES_COLONY_NAME", DEFAULT_COLONY),
            "prefix": env.get("COLONIES_PREFIX", DEFAULT_PREFIX),
        }
        if "COLONIES_REQUEST_TIMEOUT" in env:
            values["request_timeout_s"] = float(env["COLONIES_REQUEST_TIMEOUT"])
        if "COLONIES_IDENTITY" in env:
            values["identity"] = Path(env["COLONIES_IDENTITY"]).expanduser()
        if "COLONIES_USER" in env:
            values["caller"] = env["COLONIES_USER"]
        if "COLONIES_TLS_CA" in env:
            values["tls_ca"] = Path(env["COLONIES_TLS_CA"]).expanduser()
        values.update({k: v for k, v in overrides.items() if v is not None})
        return msgspec.convert(values, cls, strict=False)


class BrokerSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How a broker stores what it is given."""

    nats_url: str = DEFAULT_NATS_URL
    prefix: str = DEFAULT_PREFIX
    # Directory for the SQLite index; None keeps the index in memory (rebuilt at start anyway).
    data_dir: Path | None = None
    # JetStream storage for streams and buckets the broker creates.
    storage: Literal["file", "memory"] = "file"
    # Window in which a re-published spec with the same process id is dropped by JetStream.
    dedup_window_s: float = 120.0
    # JetStream replicas for the streams and buckets it creates (3 on a 3-server cluster).
    replicas: int = 1
    # How many specs the broker takes from the stream at once.
    fetch_batch: int = 256
    # An executor silent (no heartbeat, no request) this long is lost: its processes re-queue.
    executor_liveness_s: float = 30.0
    # A process whose executor is lost (or removed, replaced, restarted, stopped) is queued
    # again without spending a retry; after this many such losses it fails instead, so that a
    # process that takes down every executor that runs it does not go round for ever.
    max_executor_losses: int = 5
    # How often the leader checks deadlines and liveness.
    sweep_interval_s: float = 0.5
    # The leases' term; a scope led by a broker that dies is taken over within it.
    lease_ttl_s: float = 5.0
    # Share the colonies out among the brokers (each colony led by one of them, by rendezvous
    # hashing), rather than one broker leading them all while the others stand by.
    sharded: bool = False
    # How long what has ended is kept: finished processes (with their logs), finished graphs,
    # and the messages of the events and logs streams.
    retention_s: float = DEFAULT_RETENTION_S
    # How often the leader removes what has been kept longer.
    retention_sweep_s: float = 60.0
    # The installation's keys (colonyos.security.serverconf): set on a secure installation,
    # where the broker connects with its own key and answers the server's auth callout.
    keys_dir: Path | None = None
    # The certificate authority of the server's TLS certificate (see Settings.tls_ca).
    tls_ca: Path | None = None
    # Where /metrics is served (Prometheus); None: not at all. Port 0 takes a free port.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> BrokerSettings:
        env = os.environ if env is None else env
        values: dict[str, object] = {
            "nats_url": env.get("COLONIES_NATS_URL", DEFAULT_NATS_URL),
            "prefix": env.get("COLONIES_PREFIX", DEFAULT_PREFIX),
        }
        if "COLONIES_DATA_DIR" in env:
            values["data_dir"] = Path(env["COLONIES_DATA_DIR"])
        if "COLONIES_KEYS_DIR" in env:
            values["keys_dir"] = Path(env["COLONIES_KEYS_DIR"])
        if "COLONIES_TLS_CA" in env:
            values["tls_ca"] = Path(env["COLONIES_TLS_CA"]).expanduser()
        if "COLONIES_STORAGE" in env:
            values["storage"] = env["COLONIES_STORAGE"]
        for var, key in (
            ("COLONIES_EXECUTOR_LIVENESS", "executor_liveness_s"),
            ("COLONIES_SWEEP_INTERVAL", "sweep_interval_s"),
            ("COLONIES_LEASE_TTL", "lease_ttl_s"),
        ):
            if var in env:
                values[key] = _number(float, env[var], var)
        if "COLONIES_RETENTION" in env:
            values["retention_s"] = parse_duration(env["COLONIES_RETENTION"], "COLONIES_RETENTION")
        if "COLONIES_SHARDED" in env:
            values["sharded"] = parse_flag(env["COLONIES_SHARDED"], "COLONIES_SHARDED")
        if "COLONIES_REPLICAS" in env:
            values["replicas"] = _number(int, env["COLONIES_REPLICAS"], "COLONIES_REPLICAS")
        if "COLONIES_MAX_EXECUTOR_LOSSES" in env:
            losses = env["COLONIES_MAX_EXECUTOR_LOSSES"]
            values["max_executor_losses"] = _number(int, losses, "COLONIES_MAX_EXECUTOR_LOSSES")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return msgspec.convert(values, cls, strict=False)
