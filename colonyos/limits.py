"""Every bound on a number or a size that enters the system, in one place.

Numbers are bounded where they enter (a spec file, a raw publish, a request), with the field's
path in the error; the values here are what those checks compare against. Sizes follow from
the NATS server's ``max_payload``, read from the connection (never from a config file), since
a process record, an event and a reply each travel as one NATS message.
"""

from __future__ import annotations

from collections.abc import Iterable

from colonyos.errors import RecordTooLargeError, ServerSetupError

__all__ = [
    "ERROR_TEXT_MAX_CHARS",
    "GENERATOR_ARG_MAX_BYTES",
    "HEADROOM_BYTES",
    "LOG_LINE_MAX_CHARS",
    "MAX_ASSIGN_COUNT",
    "MAX_ASSIGN_TIMEOUT_S",
    "MAX_COUNT",
    "MAX_GENERATOR_TRIGGER",
    "MAX_LIST_LIMIT",
    "MAX_RETRIES",
    "MAX_SECONDS",
    "MIN_MAX_PAYLOAD",
    "PRIORITY_MAX",
    "PRIORITY_MIN",
    "SPEC_DELIVERIES",
    "check_record",
    "check_server_payload",
    "generator_batch_limit",
    "json_array_within",
    "record_limit",
    "request_limit",
]

# A priority point is a day of queue age (as in Colonies, which refuses values outside this).
PRIORITY_MIN = -50_000
PRIORITY_MAX = 50_000

# maxwaittime, maxexectime and walltime, in seconds: ten years is more than any deadline needs,
# and keeps every deadline a representable time.
MAX_SECONDS = 10 * 365 * 86_400

# maxretries: -1 means no limit; beyond this a number is a mistake.
MAX_RETRIES = 1_000_000

# Counts in conditions (nodes, processes, processes per node, GPUs, GPU nodes).
MAX_COUNT = 1_000_000

# Requests: the long poll of an assign, how many processes one assign_many may take, and how
# many rows one listing may ask for.
MAX_ASSIGN_TIMEOUT_S = 3_600.0
MAX_ASSIGN_COUNT = 1_000
MAX_LIST_LIMIT = 10_000

# How often the broker is given one submitted spec or workflow: a message its intake failed on
# (NATS trouble, or a broker that died on it) is delivered again, and on this delivery it is
# rejected with the reason instead of tried once more.
SPEC_DELIVERIES = 10

# What a message needs beyond its body: headers (message id, expected revision), an event's
# kind tag, a reply's envelope.
HEADROOM_BYTES = 4_096

# The smallest max_payload a broker runs on. A process record (its spec, output and errors), an
# event and a reply each travel as one message: below this, everyday specs and outputs would be
# refused one by one, each saying it is too large, instead of once, at the start.
MIN_MAX_PAYLOAD = 64 * 1024


def check_server_payload(max_payload: int) -> None:
    """:class:`ServerSetupError` unless a server with this ``max_payload`` leaves room for
    the records a colony stores."""
    if max_payload < MIN_MAX_PAYLOAD:
        raise ServerSetupError(
            f"the NATS server's max_payload is {max_payload:,} bytes; colonyos needs at least "
            f"{MIN_MAX_PAYLOAD:,} (a process record, an event and a reply each travel as one "
            "message): raise max_payload in the server's configuration (NATS' default is 1MB)",
            max_payload=max_payload,
            needed=MIN_MAX_PAYLOAD,
        )


def record_limit(max_payload: int) -> int:
    """The largest process record (its JSON) that a server with this ``max_payload`` can store
    and send on as an event or a reply."""
    return max(0, max_payload - HEADROOM_BYTES)


def check_record(size: int, max_payload: int, what: str = "the process record") -> None:
    """:class:`RecordTooLargeError` (with the size and the limit) unless a record of ``size``
    bytes can be stored on a server with this ``max_payload``."""
    limit = record_limit(max_payload)
    if size > limit:
        raise RecordTooLargeError(what, size, limit, max_payload)


def json_array_within(items: Iterable[bytes], max_bytes: int) -> bytes:
    """A JSON array of ``items`` (each one JSON already), in order, stopping before the first
    that would take it past ``max_bytes``: a listing that fits in one reply."""
    kept: list[bytes] = []
    size = 2  # the brackets
    for item in items:
        size += len(item) + (1 if kept else 0)
        if size > max_bytes:
            break
        kept.append(item)
    return b"[" + b",".join(kept) + b"]"


def request_limit(max_payload: int) -> int:
    """The largest body of one request (an executor's batch of log lines or of results) that a
    server with this ``max_payload`` carries."""
    return max(0, max_payload - HEADROOM_BYTES)


# Executors: a log line longer than this is sent as several lines (and never more than a
# request can carry); an error text longer than this is cut in the process record (the whole
# text and the traceback are in the process log).
LOG_LINE_MAX_CHARS = 16_384
ERROR_TEXT_MAX_CHARS = 2_000


# Generators: one packed argument (its JSON) is at most this big (the stream refuses a larger
# message), and a run takes at most this many arguments.
GENERATOR_ARG_MAX_BYTES = 65_536
MAX_GENERATOR_TRIGGER = 10_000


def generator_batch_limit(max_payload: int) -> int:
    """How many bytes of packed arguments one run's roots may get: half a process record, the
    other half left to the spec itself. A run whose arguments would take more gets fewer (the
    rest go to the next run)."""
    return record_limit(max_payload) // 2
