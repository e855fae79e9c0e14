"""Generators from the SDK: ``Generators(client).add(...)``, ``pack``, ``get``, ``list``,
``remove``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
import nats.errors
import nats.js.errors

from colonyos.connection import closed_error, denied, refused_at_once
from colonyos.errors import BrokerUnavailableError, InvalidSpecError
from colonyos.generators.model import (
    NO_TIMEOUT,
    Generator,
    GeneratorAdd,
    GeneratorDefinition,
    check_arg,
)
from colonyos.messages import Empty, Named
from colonyos.models import WorkflowSpec

if TYPE_CHECKING:
    from colonyos.client import Client

__all__ = ["Generators"]


class Generators:
    """The colony's generators, through a connected :class:`Client` (its colony and caller)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._known: set[str] = set()  # generators seen to exist: packed without asking

    async def add(
        self,
        name: str,
        workflow: WorkflowSpec | list[Any] | dict[str, Any] | str,
        *,
        trigger: int,
        timeout: int = NO_TIMEOUT,
    ) -> Generator:
        """Add a generator that runs ``workflow`` (a WorkflowSpec, its JSON text, or the
        decoded JSON) once ``trigger`` arguments are packed, or ``timeout`` seconds after the
        first of fewer."""
        spec: Any = workflow
        if isinstance(workflow, WorkflowSpec):
            spec = {"functionspecs": workflow.function_specs}
        definition = GeneratorDefinition(
            name=name, workflow_spec=spec, trigger=trigger, timeout=timeout
        )
        return await self.add_definition(definition)

    async def add_definition(self, definition: GeneratorDefinition) -> Generator:
        return await self.client._must(
            "generator_add", GeneratorAdd(generator=definition), Generator
        )

    async def get(self, name: str) -> Generator:
        return await self.client._must("generator_get", Named(name=name), Generator)

    async def list(self) -> list[Generator]:
        return await self.client._request("generator_list", Empty(), list[Generator]) or []

    async def remove(self, name: str) -> None:
        self._known.discard(name)
        await self.client._request("generator_remove", Named(name=name), Generator)

    async def pack(self, name: str, arg: Any, *, arg_id: str | None = None) -> int:
        """Pack ``arg`` (any value JSON can hold) into the generator: stored when this returns.
        The stream sequence it got. ``arg_id``: an id of your own for this argument, so that
        packing it again (a retry after "did not acknowledge in time") stores it once, within
        the dedup window (two minutes by default)."""
        try:
            data = msgspec.json.encode(arg)
        except (TypeError, msgspec.EncodeError) as err:
            raise InvalidSpecError(f"$.arg: not a JSON value: {err}", path="$.arg") from None
        return await self.pack_json(name, data, arg_id=arg_id)

    async def pack_json(self, name: str, data: bytes | str, *, arg_id: str | None = None) -> int:
        """Pack an argument given as JSON text, as ``colonies generator pack --arg`` does."""
        raw = data.encode() if isinstance(data, str) else data
        check_arg(raw)
        if name not in self._known:
            await self.get(name)  # GeneratorNotFoundError names it
            self._known.add(name)
        client = self.client
        subject = client.subjects.generator(client.colony, name)
        try:
            headers = {"Nats-Msg-Id": arg_id} if arg_id else None
            publishing = client.js.publish(subject, raw, headers=headers)
            ack = await refused_at_once(client.nc, subject, publishing)
        except nats.js.errors.NoStreamResponseError as err:
            raise BrokerUnavailableError(
                "no JetStream stream takes generator arguments yet: has a broker started?"
            ) from err
        except nats.errors.TimeoutError as err:
            if denied(client.nc, subject):
                raise await client._refusal("generator pack", subject, client.colony) from err
            raise BrokerUnavailableError(
                "JetStream did not acknowledge the argument in time"
            ) from err
        except nats.errors.ConnectionClosedError as err:
            raise closed_error(client.nc) from err  # why the server refused it, if it did
        except nats.js.errors.APIError as err:  # the stream full, or refusing the message
            raise BrokerUnavailableError(
                f"JetStream did not take the argument: {err.description}; runs must use some "
                "of those waiting first",
                subject=subject,
            ) from err
        return int(ack.seq)
