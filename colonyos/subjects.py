"""Every NATS subject, stream, consumer and KV bucket name. Nothing else builds these strings.

All names derive from a *prefix* (default ``colonies``) so that one NATS server can host
several installations, and every test its own.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from colonyos.errors import InvalidNameError

__all__ = ["GRAPH_TOKEN", "REJECTED_TOKEN", "SERVER_SCOPE", "Subjects", "check_name"]

_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,127}$")

# The executor-type token of events about a whole process graph (its state, or a rejected
# workflow).
GRAPH_TOKEN = "_graph"

# The state token of events about a submission that did not become a process (or graph).
REJECTED_TOKEN = "rejected"

# The rpc "colony" token for requests that concern the whole server (colony add/list).
SERVER_SCOPE = "_server"


def check_name(kind: str, name: str) -> str:
    """Validate a colony, executor or executor type name once, where it enters the system."""
    if not _TOKEN.match(name):
        raise InvalidNameError(
            f"{kind} {name!r} is not a valid name: use 1-128 letters, digits, '_' or '-', "
            "starting with a letter or digit",
            field=kind,
            value=name,
        )
    return name


@dataclass(frozen=True, slots=True)
class Subjects:
    prefix: str = "colonies"

    def __post_init__(self) -> None:
        check_name("prefix", self.prefix)

    # -- submissions ------------------------------------------------------------------
    def specs(self, colony: str, executor_type: str) -> str:
        return f"{self.prefix}.{colony}.specs.{executor_type}"

    def workflows(self, colony: str) -> str:
        return f"{self.prefix}.{colony}.workflows"

    @property
    def specs_filter(self) -> str:
        return f"{self.prefix}.*.specs.*"

    @property
    def workflows_filter(self) -> str:
        return f"{self.prefix}.*.workflows"

    @property
    def stream_specs(self) -> str:
        return f"{self._upper}_SPECS"

    @property
    def consumer_specs(self) -> str:
        """The one consumer over the whole specs stream of earlier versions: deleted when a
        broker that reads each colony on its own starts leading."""
        return "broker"

    def intake_filters(self, colony: str) -> list[str]:
        """What a colony's intake consumer reads: its specs and its workflows."""
        return [f"{self.prefix}.{colony}.specs.>", self.workflows(colony)]

    def consumer_intake(self, colony: str) -> str:
        """The durable consumer of one colony's submissions. A name that is no valid colony
        name (submissions to a subject no colony could have) is named by its digest, since
        a consumer name may not hold every character a subject token may."""
        if _TOKEN.match(colony):
            return f"intake-{colony}"
        return f"intake-x{hashlib.sha256(colony.encode()).hexdigest()[:32]}"

    @staticmethod
    def submission_colony(subject: str) -> str:
        """``<prefix>.<colony>.specs.<type>`` or ``<prefix>.<colony>.workflows`` -> colony."""
        return subject.split(".")[1]  # a prefix is one token

    # -- lifecycle events -------------------------------------------------------------
    def event(self, colony: str, executor_type: str, state: str, process_id: str) -> str:
        return f"{self.prefix}.{colony}.events.{executor_type}.{state}.{process_id}"

    def events_filter(
        self,
        colony: str = "*",
        executor_type: str = "*",
        state: str = "*",
        process_id: str = "*",
    ) -> str:
        return self.event(colony, executor_type, state, process_id)

    @staticmethod
    def event_tokens(subject: str) -> tuple[str, str, str]:
        """``<prefix>.<colony>.events.<type>.<state>.<id>`` -> (type, state, id); empty
        strings for a subject too short to have them."""
        parts = subject.split(".")
        if len(parts) < 6:
            return "", "", ""
        return parts[-3], parts[-2], parts[-1]

    @property
    def events_all(self) -> str:
        return f"{self.prefix}.*.events.>"

    @property
    def stream_events(self) -> str:
        return f"{self._upper}_EVENTS"

    # -- logs -------------------------------------------------------------------------
    def logs(self, colony: str, process_id: str) -> str:
        return f"{self.prefix}.{colony}.logs.{process_id}"

    @property
    def logs_all(self) -> str:
        return f"{self.prefix}.*.logs.*"

    @property
    def stream_logs(self) -> str:
        return f"{self._upper}_LOGS"

    # -- arguments packed into generators ---------------------------------------------
    def generator(self, colony: str, generator_name: str) -> str:
        """Where an argument is packed into a generator: one message, its JSON."""
        return f"{self.prefix}.{colony}.generators.{generator_name}"

    @property
    def generators_all(self) -> str:
        return f"{self.prefix}.*.generators.*"

    @staticmethod
    def parse_generator(subject: str) -> tuple[str, str]:
        """``<prefix>.<colony>.generators.<name>`` -> (colony, name)."""
        parts = subject.split(".")
        return parts[-3], parts[-1]

    @property
    def stream_generators(self) -> str:
        return f"{self._upper}_GENERATORS"

    # -- requests to the broker -------------------------------------------------------
    def rpc(self, colony: str, caller: str, op: str) -> str:
        return f"{self.prefix}.{colony}.rpc.{caller}.{op}"

    @property
    def rpc_all(self) -> str:
        return f"{self.prefix}.*.rpc.*.*"

    def rpc_scope(self, scope: str) -> str:
        """Every request to one colony (or to the server scope): what its leader takes."""
        return f"{self.prefix}.{scope}.rpc.*.*"

    @property
    def rpc_queue_group(self) -> str:
        return f"{self.prefix}-brokers"

    def parse_rpc(self, subject: str) -> tuple[str, str, str]:
        """``<prefix>.<colony>.rpc.<caller>.<op>`` -> (colony, caller, op)."""
        parts = subject.split(".")
        return parts[-4], parts[-2], parts[-1]

    # -- executor heartbeats (core NATS, not stored) ----------------------------------
    def heartbeat(self, colony: str, executor_name: str) -> str:
        return f"{self.prefix}.{colony}.heartbeats.{executor_name}"

    @staticmethod
    def parse_heartbeat(subject: str) -> tuple[str, str]:
        """``<prefix>.<colony>.heartbeats.<name>`` -> (colony, name)."""
        parts = subject.split(".")
        return parts[-3], parts[-1]

    @property
    def heartbeats_all(self) -> str:
        return f"{self.prefix}.*.heartbeats.*"

    def heartbeats(self, colony: str) -> str:
        return f"{self.prefix}.{colony}.heartbeats.*"

    # -- broker to executor (core NATS) --------------------------------------------------
    def leader(self, colony: str) -> str:
        """Where a broker that starts leading a colony says so (its executors then ask it at
        once)."""
        return f"{self.prefix}.{colony}.leader"

    # -- broker to broker (core NATS; no member may publish on the server scope but its
    # own requests) --------------------------------------------------------------------------
    def handover(self, colony: str) -> str:
        """Where the leader of the server scope asks a colony's leader to clear the colony
        before it is removed (a request; the reply is the colony's ``Removed``)."""
        return f"{self.prefix}.{SERVER_SCOPE}.handover.{colony}"

    @property
    def steer(self) -> str:
        """Where a broker says the colonies changed (one was added): every broker looks at
        once at which it should lead."""
        return f"{self.prefix}.{SERVER_SCOPE}.steer"

    @property
    def brokers(self) -> str:
        """Where a broker standing by says it is there (core NATS, every third of a lease
        term): the leader's ``server_status`` lists them."""
        return f"{self.prefix}.{SERVER_SCOPE}.brokers"

    @property
    def leaving(self) -> str:
        """Where a broker that stops says so (its id): the others count it gone at once, and
        the sharded ones take its colonies without waiting a lease term."""
        return f"{self.prefix}.{SERVER_SCOPE}.leaving"

    def control(self, colony: str, executor_name: str) -> str:
        return f"{self.prefix}.{colony}.control.{executor_name}"

    # -- KV buckets -------------------------------------------------------------------
    @property
    def bucket_processes(self) -> str:
        return f"{self.prefix}-processes"

    @property
    def bucket_executors(self) -> str:
        return f"{self.prefix}-executors"

    @property
    def bucket_colonies(self) -> str:
        return f"{self.prefix}-colonies"

    @property
    def bucket_members(self) -> str:
        """Who may connect: each member's public key and role, by colony and name."""
        return f"{self.prefix}-members"

    @property
    def bucket_graphs(self) -> str:
        return f"{self.prefix}-graphs"

    @property
    def bucket_crons(self) -> str:
        """Cron definitions with their last run, by colony and cron name."""
        return f"{self.prefix}-crons"

    @property
    def bucket_generators(self) -> str:
        """Generator definitions with their cursor in the packed arguments, by colony and
        name."""
        return f"{self.prefix}-generators"

    @property
    def bucket_leases(self) -> str:
        return f"{self.prefix}-leases"

    @staticmethod
    def pull_next(stream: str, consumer: str) -> str:
        """Where a pull consumer is asked for its next messages (JetStream's API)."""
        return f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"

    @staticmethod
    def kv_stream(bucket: str) -> str:
        """The stream that holds a KV bucket (JetStream's naming)."""
        return f"KV_{bucket}"

    @staticmethod
    def kv_subject(bucket: str, key: str) -> str:
        """The subject a write to ``key`` of ``bucket`` is published on (JetStream's naming)."""
        return f"$KV.{bucket}.{key}"

    @staticmethod
    def process_key(colony: str, process_id: str) -> str:
        return f"{colony}.{process_id}"

    @staticmethod
    def member_key(colony: str, name: str) -> str:
        return f"{colony}.{name}"

    @staticmethod
    def cron_key(colony: str, cron_name: str) -> str:
        return f"{colony}.{cron_name}"

    @staticmethod
    def generator_key(colony: str, generator_name: str) -> str:
        return f"{colony}.{generator_name}"

    @staticmethod
    def executor_key(colony: str, executor_name: str) -> str:
        return f"{colony}.{executor_name}"

    @property
    def streams(self) -> tuple[str, ...]:
        """Every stream of the installation, KV buckets' included."""
        buckets = (
            self.bucket_processes,
            self.bucket_executors,
            self.bucket_colonies,
            self.bucket_members,
            self.bucket_graphs,
            self.bucket_crons,
            self.bucket_generators,
            self.bucket_leases,
        )
        plain = (self.stream_specs, self.stream_events, self.stream_logs, self.stream_generators)
        return plain + tuple(self.kv_stream(b) for b in buckets)

    @property
    def _upper(self) -> str:
        return self.prefix.upper().replace("-", "_")
