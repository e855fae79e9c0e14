"""Every error colonyos raises, and how errors cross the wire.

::

    ColoniesError
      ├─ InvalidSpecError          a spec or request that cannot be accepted (.path, .detail)
      │    ├─ InvalidNameError     a colony/executor/type name that cannot be a subject token
      │    ├─ AmbiguousIdError     an id prefix that more than one process (or graph) has
      │    └─ RecordTooLargeError  what it would store exceeds the server's limit (.size, .limit)
      ├─ NotFoundError
      │    ├─ ColonyNotFoundError
      │    ├─ ExecutorNotFoundError
      │    ├─ ProcessNotFoundError
      │    └─ GraphNotFoundError
      ├─ ConflictError             already exists, or an illegal state transition
      │    ├─ ProcessExistsError   a process id submitted again
      │    ├─ ExecutorNameTakenError   a live executor holds the name (start with replace)
      │    ├─ ExecutorReplacedError    this executor's name was taken over (replace)
      │    └─ StateDirInUseError       another executor runs from the same state directory
      ├─ NotAuthorizedError        e.g. a close from an executor the process is not assigned to
      │    └─ ExecutorRemovedError     the colony owner removed this executor
      ├─ BrokerUnavailableError    no broker answered (not started, or NATS unreachable)
      ├─ IdentityError             a seed file that is missing, damaged or readable by others
      ├─ ServerSetupError          a NATS server the broker cannot run on (its max_payload)
      └─ AssignTimeoutError        no work arrived before the assign timeout (also a TimeoutError)

The broker answers a failed request with an :class:`ErrorReply`; the client rebuilds the same
class through :meth:`ColoniesError.from_reply`, so callers catch the same types locally and
remotely. Exceptions are never pickled.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

__all__ = [
    "AmbiguousIdError",
    "AssignTimeoutError",
    "BrokerUnavailableError",
    "ColoniesError",
    "ColonyNotFoundError",
    "ConflictError",
    "ErrorReply",
    "ExecutorNameTakenError",
    "ExecutorNotFoundError",
    "ExecutorRemovedError",
    "ExecutorReplacedError",
    "GeneratorNotFoundError",
    "GraphNotFoundError",
    "IdentityError",
    "InvalidNameError",
    "InvalidSpecError",
    "NotAuthorizedError",
    "NotFoundError",
    "ProcessExistsError",
    "ProcessNotFoundError",
    "RecordTooLargeError",
    "ServerSetupError",
    "StateDirInUseError",
]


class ErrorReply(msgspec.Struct, kw_only=True, frozen=True):
    code: str
    message: str
    detail: dict[str, Any] = msgspec.field(default_factory=dict)


class ColoniesError(Exception):
    """Root of every colonyos error."""

    code: ClassVar[str] = "error"
    _by_code: ClassVar[dict[str, type[ColoniesError]]] = {}

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        ColoniesError._by_code[cls.code] = cls

    def __getattr__(self, name: str) -> Any:
        # Fields such as .process_id or .path live in detail; expose them as attributes.
        detail = self.__dict__.get("detail", {})
        if name in detail:
            return detail[name]
        raise AttributeError(name)

    def to_reply(self) -> ErrorReply:
        return ErrorReply(code=self.code, message=self.message, detail=self.detail)

    @staticmethod
    def from_reply(reply: ErrorReply) -> ColoniesError:
        cls = ColoniesError._by_code.get(reply.code, ColoniesError)
        err = cls.__new__(cls)
        ColoniesError.__init__(err, reply.message, **reply.detail)
        return err


class InvalidSpecError(ColoniesError):
    code = "invalid"


class InvalidNameError(InvalidSpecError):
    code = "invalid_name"


class AmbiguousIdError(InvalidSpecError):
    code = "ambiguous_id"

    def __init__(self, kind: str, prefix: str, candidates: list[str], *, more: bool) -> None:
        shown = ", ".join(candidates) + (", ..." if more else "")
        super().__init__(
            f"{kind} id {prefix!r} is ambiguous, it could be {shown}: type more characters",
            path="$.prefix",
            prefix=prefix,
            candidates=candidates,
        )


class RecordTooLargeError(InvalidSpecError):
    """A record (a process, a process graph) larger than the NATS server can store and send on
    as one message; ``.size``, ``.limit`` and ``.max_payload`` in bytes."""

    code = "too_large"

    def __init__(self, what: str, size: int, limit: int, max_payload: int, **detail: Any) -> None:
        super().__init__(
            f"{what} would be {size:,} bytes; this server stores at most {limit:,} "
            f"(max_payload {max_payload:,})",
            size=size,
            limit=limit,
            max_payload=max_payload,
            **detail,
        )


class NotFoundError(ColoniesError):
    code = "not_found"


class ColonyNotFoundError(NotFoundError):
    code = "colony_not_found"

    def __init__(self, colony_name: str) -> None:
        super().__init__(f"colony {colony_name!r} does not exist", colony_name=colony_name)


class ExecutorNotFoundError(NotFoundError):
    code = "executor_not_found"

    def __init__(self, colony_name: str, executor_name: str) -> None:
        super().__init__(
            f"executor {executor_name!r} is not registered in colony {colony_name!r}",
            colony_name=colony_name,
            executor_name=executor_name,
        )


class ProcessNotFoundError(NotFoundError):
    code = "process_not_found"

    def __init__(self, process_id: str) -> None:
        super().__init__(f"process {process_id} does not exist", process_id=process_id)


class GraphNotFoundError(NotFoundError):
    code = "graph_not_found"

    def __init__(self, graph_id: str) -> None:
        super().__init__(f"process graph {graph_id} does not exist", process_graph_id=graph_id)


class CronNotFoundError(NotFoundError):
    code = "cron_not_found"

    def __init__(self, colony_name: str, cron_name: str) -> None:
        super().__init__(
            f"cron {cron_name!r} does not exist in colony {colony_name!r}",
            colony_name=colony_name,
            cron_name=cron_name,
        )


class GeneratorNotFoundError(NotFoundError):
    code = "generator_not_found"

    def __init__(self, colony_name: str, generator_name: str) -> None:
        super().__init__(
            f"generator {generator_name!r} does not exist in colony {colony_name!r}",
            colony_name=colony_name,
            generator_name=generator_name,
        )


class ConflictError(ColoniesError):
    code = "conflict"


class ProcessExistsError(ConflictError):
    code = "process_exists"

    def __init__(self, process_id: str, state: object = None) -> None:
        name = getattr(state, "name", "")
        super().__init__(
            f"process {process_id} exists already" + (f" ({name})" if name else ""),
            process_id=process_id,
        )


class IdTakenError(ConflictError):
    """A submission asked for a process or graph id that another submission holds. Kept for
    clients that catch it (its code may come from an older broker); brokers no longer raise
    it: ids are unique within a colony, and one id in two colonies is two processes."""

    code = "id_taken"

    def __init__(self, item_id: str) -> None:
        super().__init__(
            f"id {item_id} is taken: submit with a new id (a random one, as the SDK and the "
            "CLI choose when given none)",
            process_id=item_id,
        )


class ExecutorNameTakenError(ConflictError):
    """Registering a name that a live executor holds (.holder_host, .holder_pid, .holder_since)."""

    code = "executor_name_taken"


class ExecutorReplacedError(ConflictError):
    """This executor's name was taken over by another start (.by_host, .by_pid)."""

    code = "executor_replaced"


class StateDirInUseError(ConflictError):
    """Another executor on this machine runs from the same state directory (.path)."""

    code = "state_dir_in_use"


class NotAuthorizedError(ColoniesError):
    code = "not_authorized"


class ExecutorRemovedError(NotAuthorizedError):
    """The colony owner removed this executor; starting it again registers it afresh."""

    code = "executor_removed"

    @classmethod
    def of(cls, colony: str, name: str) -> ExecutorRemovedError:
        """The error for executor ``name``, removed from ``colony``."""
        return cls(
            f"executor {name!r} was removed from colony {colony!r} by its owner; starting it "
            "again registers it afresh",
            executor_name=name,
        )


class BrokerUnavailableError(ColoniesError):
    code = "unavailable"


class IdentityError(ColoniesError):
    """The party's own key cannot be used (missing, not a seed, readable by others)."""

    code = "identity"


class ServerSetupError(ColoniesError):
    """The NATS server is set up in a way the broker cannot run on (.max_payload, .needed)."""

    code = "server_setup"


class AssignTimeoutError(ColoniesError, TimeoutError):
    code = "assign_timeout"
