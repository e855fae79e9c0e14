"""A client's connection to NATS, and how it asks the broker: a request per operation, its
answer or the broker's error, refusals by the server said as such."""

from __future__ import annotations

import contextlib
import secrets
from types import TracebackType
from typing import Any, Self, TypeVar

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from colonyos.config import Settings, default_caller
from colonyos.connection import (
    closed_error,
    connect_nats,
    denied,
    not_allowed,
    refusal,
    refused_at_once,
)
from colonyos.errors import (
    BrokerUnavailableError,
    ColoniesError,
    ColonyNotFoundError,
    InvalidSpecError,
    NotAuthorizedError,
)
from colonyos.messages import Named, Reply
from colonyos.models import Colony
from colonyos.security.claim import ConnectClaim
from colonyos.security.keys import Identity, default_identity_path, load_identity
from colonyos.security.permissions import inbox_prefix, server_inbox_prefix
from colonyos.subjects import SERVER_SCOPE, Subjects, check_name

__all__ = ["Connected", "new_id"]

T = TypeVar("T")

_encode = msgspec.json.Encoder().encode
_reply_decoder = msgspec.json.Decoder(Reply)


def _identity(settings: Settings) -> Identity | None:
    """The seed named by the settings (which must exist), else the default identity file if
    there is one (and the URL names no user of its own); None: connect without an identity."""
    if settings.identity is not None:
        return load_identity(settings.identity)
    if "@" in settings.nats_url:  # credentials in the URL: the server's own users, not keys
        return None
    default = default_identity_path()
    return load_identity(default) if default.exists() else None


def new_id() -> str:
    return secrets.token_hex(32)


def _checked(settings: Settings, caller: str) -> tuple[str, str, Subjects]:
    """The colony, the caller and the subjects, each a valid subject token (else
    :class:`InvalidNameError` naming which)."""
    return (
        check_name("colony", settings.colony),
        check_name("caller", caller),
        Subjects(settings.prefix),
    )


class Connected:
    """One NATS connection, speaking for one caller (a user or an executor) in one colony."""

    def __init__(
        self,
        nc: NATS,
        settings: Settings,
        caller: str,
        identity: Identity | None = None,
        *,
        keep_trying: bool = False,
    ) -> None:
        self.nc = nc
        # Refused by the server, the connection keeps trying (else it is closed).
        self.keep_trying = keep_trying
        self.js = nc.jetstream()
        self.settings = settings
        self.colony, self.caller, self.subjects = _checked(settings, caller)
        # The key this connection proved it holds; its rights were decided when it connected.
        self.identity = identity

    @property
    def secure(self) -> bool:
        """Did the server ask this connection to prove its key (a secure installation)?"""
        info: dict[str, Any] = getattr(self.nc, "_server_info", {}) or {}
        return self.identity is not None and bool(info.get("auth_required"))

    @classmethod
    async def connect(
        cls,
        settings: Settings | None = None,
        *,
        caller: str | None = None,
        name: str = "colonies",
        executor: bool = False,
        keep_trying: bool = False,
    ) -> Self:
        """Connect as ``caller`` (default: the settings' caller, else the login name) in the
        settings' colony. ``executor``: an executor's connection, which on a secure
        installation may take a free name to register under. Should the server later refuse
        the identity (removed, rejected), the connection closes and what is asked next says
        why; ``keep_trying``: it keeps trying instead, slower and slower (an executor)."""
        settings = settings or Settings.from_env()
        caller = caller or settings.caller or default_caller()
        colony, caller, _ = _checked(settings, caller)  # not a subject token: say so first
        identity = _identity(settings)
        claim = ConnectClaim(prefix=settings.prefix, colony=colony, name=caller, executor=executor)
        nc = await connect_nats(
            settings.nats_url,
            name=name,
            seed=identity.seed if identity is not None else None,
            token=claim.token() if identity is not None else None,
            inbox_prefix=inbox_prefix(settings.prefix, colony, caller),
            tls_ca=settings.tls_ca,
            who=f"{caller!r} in colony {colony!r}"
            + (f" (key {identity.public_key})" if identity is not None else ""),
            executor=executor,
            on_refused="back_off" if keep_trying else "stop",
        )
        return cls(nc, settings, caller, identity, keep_trying=keep_trying)

    async def aclose(self) -> None:
        try:
            await self.nc.drain()
        except nats.errors.ConnectionClosedError:
            pass
        except nats.errors.ConnectionReconnectingError:
            # NATS is away: nothing can be drained; stop reconnecting (what was still to be
            # written is lost with the connection).
            with contextlib.suppress(OSError, nats.errors.Error):
                await self.nc.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _refusal(self, what: str, subject: str, colony: str) -> ColoniesError:
        """Why the server refused: no such colony (a server owner may connect), else the role."""
        if colony != SERVER_SCOPE:
            with contextlib.suppress(NotAuthorizedError, BrokerUnavailableError):
                # ColonyNotFoundError says what is wrong.
                await self._must("colony_get", Named(name=colony), Colony, colony=SERVER_SCOPE)
        return not_allowed(what, self.caller, colony, subject)

    async def _unanswered(self, scope: str) -> ColoniesError:
        """Why no broker takes a colony's requests: the colony does not exist (asked of the
        server scope), or it has no leader right now (taken over, or no broker runs)."""
        if scope != SERVER_SCOPE:
            try:
                await self._must("colony_get", Named(name=scope), Colony, colony=SERVER_SCOPE)
            except ColonyNotFoundError as err:
                return err
            except ColoniesError:
                pass  # the server scope cannot say either: no broker, or not allowed to ask
            else:
                return BrokerUnavailableError(
                    f"no broker leads colony {scope!r} right now (one takes it over within a "
                    "lease term): try again"
                )
        return BrokerUnavailableError(
            "no broker is answering: start one with 'colonies server start' or "
            "'colonies broker start'"
        )

    def _unless_refused(self) -> None:
        """Raise why the server refuses this connection, if it does (a removed member) and
        the connection does not keep trying."""
        if not self.keep_trying and refusal(self.nc) is not None:
            raise closed_error(self.nc)

    async def _request(
        self,
        op: str,
        body: msgspec.Struct,
        result_type: type[T],
        *,
        colony: str | None = None,
        timeout: float | None = None,
    ) -> T | None:
        scope = colony or self.colony
        subject = self.subjects.rpc(scope, self.caller, op)
        timeout = timeout or self.settings.request_timeout_s
        try:
            asking = self._ask(scope, subject, _encode(body), timeout)
            msg = await refused_at_once(self.nc, subject, asking)
        except nats.errors.NoRespondersError as err:
            raise await self._unanswered(scope) from err
        except nats.errors.TimeoutError as err:
            if denied(self.nc, subject):
                raise await self._refusal(op, subject, scope) from err
            self._unless_refused()
            raise BrokerUnavailableError(f"the broker did not answer {op!r} in time") from err
        except nats.errors.MaxPayloadError as err:
            raise InvalidSpecError(f"{op} request is too large for the server: {err}") from err
        except nats.errors.ConnectionClosedError as err:
            self._unless_refused()
            raise BrokerUnavailableError("the connection to NATS is closed") from err
        reply = _reply_decoder.decode(msg.data)
        if reply.error is not None:
            raise ColoniesError.from_reply(reply.error)
        if reply.is_empty:
            return None
        return msgspec.json.decode(reply.result, type=result_type)

    async def _ask(self, scope: str, subject: str, data: bytes, timeout: float) -> Msg:
        """One request. A server operation's answer comes in the server owner's inbox on the
        server scope, not in this connection's colony inbox (permissions.server_inbox_prefix)."""
        if scope != SERVER_SCOPE:
            return await self.nc.request(subject, data, timeout=timeout)
        inbox = f"{server_inbox_prefix(self.settings.prefix, self.caller)}.{secrets.token_hex(11)}"
        sub = await self.nc.subscribe(inbox, max_msgs=1)
        try:
            await self.nc.publish(subject, data, reply=inbox)
            msg = await sub.next_msg(timeout=timeout)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        if msg.headers and msg.headers.get("Status") == "503":
            raise nats.errors.NoRespondersError
        return msg

    async def _must(self, op: str, body: msgspec.Struct, result_type: type[T], **kw: Any) -> T:
        result = await self._request(op, body, result_type, **kw)
        if result is None:
            raise ColoniesError(f"the broker sent an empty answer to {op!r}")
        return result
