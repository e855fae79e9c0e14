"""The async client used by the CLI, by executors and by user code.

    async with await Client.connect(Settings.from_env()) as client:
        process = await client.submit(spec)
        done = await client.wait(process.process_id, timeout=30)

Submitting publishes the spec to JetStream (the broker need not be up to accept it); every
other operation is a request to the broker. nats-py errors never leak out of this module: they
become :mod:`colonyos.errors` classes.
"""

from __future__ import annotations

from colonyos.client.admin import Administering
from colonyos.client.executor_calls import ExecutorCalls
from colonyos.client.statistics import Statistics
from colonyos.client.submitting import Submitting

__all__ = ["Client"]


class Client(Submitting, Administering, ExecutorCalls, Statistics):
    """One NATS connection, speaking for one caller (a user or an executor) in one colony:
    connecting and asking (``connected``), reading and waiting (``reading``), submitting
    (``submitting``), an owner's requests (``admin``), an executor's (``executor_calls``) and
    statistics (``statistics``)."""
