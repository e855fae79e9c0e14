"""Submitting: a function spec or a workflow, checked here first, published to JetStream (the
broker need not be up to accept it), and, if asked, confirmed by the broker's first event."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors

from colonyos import limits
from colonyos.client.connected import new_id
from colonyos.client.reading import Reading
from colonyos.connection import (
    closed_error,
    denied,
    refused_at_once,
)
from colonyos.errors import (
    BrokerUnavailableError,
    ColoniesError,
    ErrorReply,
    InvalidSpecError,
    ProcessExistsError,
)
from colonyos.events import ProcessWatch
from colonyos.graphs import check_workflow, node_process_id
from colonyos.messages import (
    ProcessEvent,
    Rejection,
)
from colonyos.models import (
    FunctionSpec,
    Process,
    ProcessGraph,
    WorkflowSpec,
)
from colonyos.specs import check_function_spec

__all__ = ["Submitting"]

_encode = msgspec.json.Encoder().encode
# A prioritytime as wide as JSON writes one, for the largest a process record can be.
_WIDEST_INT64 = -(2**63)


class Submitting(Reading):
    async def submit(
        self,
        spec: FunctionSpec,
        *,
        process_id: str | None = None,
        confirm: bool = True,
        timeout: float | None = None,
    ) -> Process | str:
        """Submit a function spec; returns the created process (or its id without confirm).

        The target colony is ``spec.conditions.colonyname`` if set, else the client's colony.
        With ``confirm`` the call waits until the broker has created the process, and raises
        the broker's reason if it rejected the spec.
        """
        spec = check_function_spec(spec)
        colony = spec.conditions.colony_name or self.colony
        pid = process_id or new_id()
        self._check_record(self._process_of(spec, pid, colony))
        subject = self.subjects.specs(colony, spec.conditions.executor_type)
        data = _encode(spec)
        if not confirm:
            await self._publish_spec(subject, data, pid, colony)
            return pid
        async with self.watch(pid, colony=colony) as watch:
            ack = await self._publish_spec(subject, data, pid, colony)
            if ack.duplicate:
                return await self.get(pid, colony=colony)
            try:
                async with asyncio.timeout(timeout or self.settings.request_timeout_s * 2):
                    first = await watch.next(None)
                    while not isinstance(first, ProcessEvent | Rejection):
                        first = await watch.next(None)  # not about this submission: skip
            except TimeoutError:
                raise BrokerUnavailableError(
                    f"process {pid} is submitted (JetStream has the spec) but no broker has "
                    "made it a process yet; it will be, once one runs",
                    process_id=pid,
                ) from None
            if isinstance(first, Rejection):
                if first.code == ProcessExistsError.code:
                    return await self.get(pid, colony=colony)  # idempotent: the same process
                raise ColoniesError.from_reply(_rejection_reply(first))
            return first.process()

    async def submit_many(self, specs: list[FunctionSpec]) -> list[str]:
        """Submit many specs at once, pipelined; returns their process ids once JetStream has
        acknowledged every one (the broker makes them processes shortly after)."""
        acks = []
        pids = []
        # Every spec is checked before any is sent: one bad spec refuses them all.
        specs = [check_function_spec(spec, f"$[{i}]") for i, spec in enumerate(specs)]
        planned = [(spec, new_id()) for spec in specs]
        for i, (spec, pid) in enumerate(planned):
            colony = spec.conditions.colony_name or self.colony
            self._check_record(self._process_of(spec, pid, colony), f"$[{i}]: the process record")
        for spec, pid in planned:
            colony = spec.conditions.colony_name or self.colony
            headers = self._submit_headers(pid)
            subject = self.subjects.specs(colony, spec.conditions.executor_type)
            try:
                acks.append(await self.js.publish_async(subject, _encode(spec), headers=headers))
            except nats.errors.MaxPayloadError as err:
                raise InvalidSpecError(f"a spec is too large for the server: {err}") from err
            pids.append(pid)
        try:
            async with asyncio.timeout(self.settings.request_timeout_s * 2):
                await asyncio.gather(*acks)
        except (TimeoutError, nats.errors.Error) as err:
            raise BrokerUnavailableError(
                f"JetStream did not acknowledge every spec: {err}"
            ) from err
        return pids

    def _process_of(self, spec: FunctionSpec, pid: str, colony: str, **graph: Any) -> Process:
        """The process the broker would make of ``spec``, at its largest (the widest priority
        time), to know before sending whether the server could store it."""
        t = datetime.now(UTC)
        cond = msgspec.structs.replace(spec.conditions, colony_name=colony)
        return Process(
            process_id=pid,
            initiator_name=self.caller,
            priority_time=_WIDEST_INT64,
            submission_time=t,
            wait_deadline=t,
            spec=msgspec.structs.replace(spec, conditions=cond),
            **graph,
        )

    def _check_record(self, record: msgspec.Struct, what: str = "the process record") -> None:
        """:class:`RecordTooLargeError`, naming the size and the server's limit, for a record
        the server could not store: refused here rather than rejected by the broker."""
        limits.check_record(len(_encode(record)), self.nc.max_payload, what)

    def _submit_headers(self, item_id: str) -> dict[str, str]:
        """The id makes a re-publication harmless; the initiator is recorded on the process."""
        return {"Nats-Msg-Id": item_id, "Colonies-Initiator": self.caller}

    async def _publish_spec(self, subject: str, data: bytes, pid: str, colony: str) -> Any:
        headers = self._submit_headers(pid)
        try:
            publishing = self.js.publish(subject, data, headers=headers)
            return await refused_at_once(self.nc, subject, publishing)
        except nats.errors.MaxPayloadError as err:
            raise InvalidSpecError(
                f"the spec is {len(data)} bytes, more than the server accepts "
                f"({self.nc.max_payload} bytes)",
                size=len(data),
                max_payload=self.nc.max_payload,
            ) from err
        except nats.js.errors.NoStreamResponseError as err:
            raise BrokerUnavailableError(
                "no JetStream stream takes specs yet: has a broker ever started on this server?"
            ) from err
        except nats.errors.TimeoutError as err:
            if denied(self.nc, subject):
                raise await self._refusal("submit", subject, colony) from err
            raise BrokerUnavailableError("JetStream did not acknowledge the spec in time") from err
        except nats.errors.ConnectionClosedError as err:
            raise closed_error(self.nc) from err  # why the server refused it, if it did

    async def submit_workflow(
        self,
        workflow: WorkflowSpec,
        *,
        graph_id: str | None = None,
        confirm: bool = True,
        timeout: float | None = None,
    ) -> ProcessGraph | str:
        """Submit a workflow; returns its process graph (or the graph id without confirm).

        The workflow is checked here first (each spec as :meth:`submit` checks it, names,
        dependencies, cycles, sizes), so mistakes are reported before anything is sent; the
        broker checks again.
        """
        checked = [check_function_spec(s, f"$[{i}]") for i, s in enumerate(workflow.function_specs)]
        workflow = msgspec.structs.replace(workflow, function_specs=checked)
        check_workflow(workflow)
        colony = workflow.colony_name or self.colony
        gid = graph_id or new_id()
        self._check_workflow_records(workflow, gid, colony)
        subject = self.subjects.workflows(colony)
        data = _encode(msgspec.structs.replace(workflow, colony_name=colony))
        limits.check_record(len(data), self.nc.max_payload, "the workflow")
        if not confirm:
            await self._publish_spec(subject, data, gid, colony)
            return gid
        # Created: the first node's process (or the graph) has an event; refused: the graph
        # id has a rejection.
        async with ProcessWatch(self, colony, node_process_id(gid, 0), gid) as watch:
            ack = await self._publish_spec(subject, data, gid, colony)
            if not ack.duplicate:
                try:
                    async with asyncio.timeout(timeout or self.settings.request_timeout_s * 2):
                        event = await watch.next(None)
                except TimeoutError:
                    raise BrokerUnavailableError(
                        "no broker took the workflow in time", process_graph_id=gid
                    ) from None
                if isinstance(event, Rejection):
                    raise ColoniesError.from_reply(_rejection_reply(event))
        return await self.graph_get(gid, colony=colony)

    def _check_workflow_records(self, workflow: WorkflowSpec, gid: str, colony: str) -> None:
        """Every process record the workflow would become, and its graph, can be stored."""
        specs = workflow.function_specs
        ids = {spec.node_name: node_process_id(gid, i) for i, spec in enumerate(specs)}
        children: dict[str, list[str]] = {pid: [] for pid in ids.values()}
        for spec in specs:
            for dep in spec.conditions.dependencies:
                children[ids[dep]].append(ids[spec.node_name])
        for i, spec in enumerate(specs):
            pid = ids[spec.node_name]
            parents = [ids[d] for d in spec.conditions.dependencies]
            process = self._process_of(
                spec,
                pid,
                colony,
                process_graph_id=gid,
                wait_for_parents=bool(parents),
                parents=parents,
                children=children[pid],
            )
            self._check_record(process, f"$[{i}]: the process record of node {spec.node_name!r}")
        graph = ProcessGraph(
            process_graph_id=gid,
            colony_name=colony,
            root_process_ids=[ids[s.node_name] for s in specs if not s.conditions.dependencies],
            process_ids=list(ids.values()),
            nodes=ids,
            submission_time=datetime.now(UTC),
        )
        self._check_record(graph, "the process graph record")


def _rejection_reply(rejection: Rejection) -> ErrorReply:
    return ErrorReply(
        code=rejection.code,
        message=rejection.error,
        detail={"process_id": rejection.process_id, "path": rejection.path},
    )
