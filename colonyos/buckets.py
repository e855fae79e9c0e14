"""KV buckets: how each is made, and how one is read whole.

Every bucket is opened through :func:`open_bucket`, so that two parts of a broker opening the
same bucket (the store, the member book) ask for the same configuration: JetStream refuses a
second configuration for an existing bucket.

:func:`latest_values` reads a bucket, or the keys under one prefix, once. nats-py's
``KeyValue.keys()`` and watchers decide "nothing more" from the consumer's pending count, which
a fast server brings to zero while the values still wait in the client's buffer: they then
report an empty bucket. Here every message says how many are still pending, so the read ends
exactly after the last one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, KeyValueConfig, StorageType
from nats.js.kv import KeyValue

__all__ = [
    "WRONG_LAST_SEQUENCE",
    "StoredValue",
    "delete_at",
    "latest_values",
    "open_bucket",
    "purge_key",
]

# How long one message of a bucket being read may take to come: the server sends them at once.
_NEXT_TIMEOUT_S = 30.0
# JetStream's error codes for a write whose expected last sequence is not the key's (a lost
# compare-and-set): 10071 names the sequence found; a replicated stream answers 10164 (no
# number) to a loser whose rival is still being replicated (seen on a three-server cluster:
# tests/test_one_write_semantics.py).
WRONG_LAST_SEQUENCE = frozenset({10071, 10164})


@dataclass(frozen=True, slots=True)
class StoredValue:
    key: str
    value: bytes
    revision: int
    created: datetime | None


async def open_bucket(
    js: JetStreamContext,
    name: str,
    *,
    storage: Literal["file", "memory"],
    replicas: int,
    history: int = 1,
) -> KeyValue:
    """Create the bucket ``name`` if it does not exist, and open it."""
    config = KeyValueConfig(
        bucket=name,
        history=history,
        storage=StorageType.MEMORY if storage == "memory" else StorageType.FILE,
        replicas=replicas,
    )
    return await js.create_key_value(config)


async def latest_values(
    js: JetStreamContext, kv: KeyValue, under: str = ""
) -> AsyncIterator[StoredValue]:
    """Every key's latest value (deleted keys left out), read once; only the keys that start
    with ``under`` (a prefix ending in ``.``) if given."""
    bucket = kv._name  # nats-py keeps the bucket's name only there
    stream = f"KV_{bucket}"  # and names its stream so
    head = f"$KV.{bucket}."
    sub = await js.subscribe(
        f"{head}{under}>",
        stream=stream,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
    )
    latest: dict[str, StoredValue] = {}
    try:
        info = await sub.consumer_info()
        # The server's own counters: nothing sent and nothing to send is an empty read.
        if info.num_pending == 0 and not (info.delivered and info.delivered.consumer_seq):
            return
        while True:
            msg = await sub.next_msg(timeout=_NEXT_TIMEOUT_S)
            meta = msg.metadata
            key = msg.subject[len(head) :]
            # Kept by key, the later message winning: after a gap nats-py's ordered consumer
            # starts again from a sequence, delivering every revision from there (a deleted
            # key's older value before its delete marker), and a key written during the read
            # comes twice.
            if msg.data and (msg.headers or {}).get("KV-Operation") not in ("DEL", "PURGE"):
                latest[key] = StoredValue(key, msg.data, int(meta.sequence.stream), meta.timestamp)
            else:
                latest.pop(key, None)
            if meta.num_pending == 0:
                break
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    for stored in latest.values():
        yield stored


async def delete_at(kv: KeyValue, key: str, revision: int) -> bool:
    """Delete ``key`` only if its latest revision is still ``revision`` (a compare-and-set);
    False, and nothing deleted, if it changed. (nats-py maps the refusal of an update to
    KeyWrongLastSequenceError, but that of a delete to a bare BadRequestError.)"""
    try:
        await kv.delete(key, last=revision)
    except nats.js.errors.KeyWrongLastSequenceError:
        return False
    except nats.js.errors.BadRequestError as err:
        if err.err_code in WRONG_LAST_SEQUENCE:
            return False
        raise
    return True


async def purge_key(js: JetStreamContext, kv: KeyValue, key: str) -> None:
    """Remove every message of ``key``, leaving no marker behind (a delete or a KV purge
    leaves one for ever)."""
    bucket = kv._name  # as in latest_values
    await js.purge_stream(f"KV_{bucket}", subject=f"$KV.{bucket}.{key}")
