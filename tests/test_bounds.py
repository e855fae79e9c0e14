"""Every number is bounded where it enters: a spec (file, SDK, raw publish) or a request."""

from __future__ import annotations

import msgspec
import pytest

from colonyos import limits
from colonyos.client import Client
from colonyos.errors import InvalidSpecError
from colonyos.messages import Rejection
from colonyos.models import Conditions, FunctionSpec, Process, ProcessState, WorkflowSpec
from colonyos.specs import check_function_spec, decode_function_spec, load_workflow_spec
from colonyos.subjects import Subjects

from .conftest import COLONY
from .helpers import connect_executor, raw_nats, spec, specs_drained

BASE = {"funcname": "f", "conditions": {"executortype": "echo"}}


def _with(path: str, value: object) -> dict[str, object]:
    """The base spec with ``value`` at ``path`` (``conditions.gpu.count``)."""
    obj: dict[str, object] = msgspec.json.decode(msgspec.json.encode(BASE))
    *parents, last = path.split(".")
    node = obj
    for key in parents:
        node = node.setdefault(key, {})  # type: ignore[assignment]
    node[last] = value
    return obj


OUT_OF_RANGE = [
    ("priority", limits.PRIORITY_MAX + 1, "a priority is between -50000 and 50000"),
    ("priority", 200_000, "a priority is between -50000 and 50000"),
    ("priority", limits.PRIORITY_MIN - 1, "a priority is between"),
    ("maxwaittime", 10**13, "maxwaittime is -1 (no limit) or 0 to"),
    ("maxexectime", 10**15, "maxexectime is -1 (no limit) or 0 to"),
    ("maxexectime", limits.MAX_SECONDS + 1, "maxexectime is -1"),
    ("maxretries", 10**30, "maxretries is -1 (no limit) or 0 to 1000000"),
    ("conditions.walltime", limits.MAX_SECONDS + 1, "walltime is 0 to"),
    ("conditions.nodes", limits.MAX_COUNT + 1, "a count is between 0 and 1000000"),
    ("conditions.processes", 10**20, "a count is between"),
    ("conditions.processespernode", 10**7, "a count is between"),
    ("conditions.gpu.count", 10**9, "a count is between"),
    ("conditions.gpu.nodecount", 10**9, "a count is between"),
]


@pytest.mark.parametrize(("key", "value", "meaning"), OUT_OF_RANGE)
def test_a_number_out_of_range_names_its_path_and_its_bounds(
    key: str, value: int, meaning: str
) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        decode_function_spec(msgspec.json.encode(_with(key, value)))
    assert caught.value.message.startswith(f"$.{key}: {value} is out of range; {meaning}")
    assert caught.value.detail["path"] == f"$.{key}"


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("priority", True, "expected `int`, got `bool`"),
        ("priority", 1.5, "expected `int`, got `float`"),
        ("maxexectime", 1e15, "expected `int`, got `float`"),
        ("conditions.nodes", -1, "expected `int` >= 0"),
        ("maxretries", -2, "expected `int` >= -1"),
    ],
)
def test_wrong_kinds_of_number_in_a_file_name_their_path(
    key: str, value: object, expected: str
) -> None:
    with pytest.raises(InvalidSpecError, match=rf"^\$\.{key}: {expected}"):
        decode_function_spec(msgspec.json.encode(_with(key, value)))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("priority", True, "$.priority: expected an integer, got bool True"),
        ("max_exec_time", 2.5, "$.maxexectime: expected an integer, got float 2.5"),
        ("max_retries", -5, "$.maxretries: -5 is out of range"),
        ("priority", 10**6, "$.priority: 1000000 is out of range"),
    ],
)
def test_numbers_set_from_python_are_checked_too(field: str, value: object, message: str) -> None:
    s = FunctionSpec(func_name="f", conditions=Conditions(executor_type="e"))
    s = msgspec.structs.replace(s, **{field: value})
    with pytest.raises(InvalidSpecError) as caught:
        check_function_spec(s)
    assert caught.value.message.startswith(message)
    negative = FunctionSpec(func_name="f", conditions=Conditions(executor_type="e", nodes=-1))
    with pytest.raises(InvalidSpecError, match=r"^\$\.conditions\.nodes: -1 is out of range"):
        check_function_spec(negative)


def test_the_bounds_themselves_are_accepted() -> None:
    edge = _with("priority", limits.PRIORITY_MIN)
    edge.update(maxwaittime=limits.MAX_SECONDS, maxexectime=-1, maxretries=limits.MAX_RETRIES)
    edge["conditions"] = {"executortype": "echo", "nodes": limits.MAX_COUNT, "walltime": 0}
    got = decode_function_spec(msgspec.json.encode(edge))
    assert got.priority == limits.PRIORITY_MIN and got.max_wait_time == limits.MAX_SECONDS
    zero = decode_function_spec(msgspec.json.encode(_with("maxexectime", 0)))
    assert zero.max_exec_time == -1  # 0 still means "no limit"


def test_a_workflow_names_the_spec_with_the_bad_number() -> None:
    workflow = [
        {"nodename": "a", **BASE},
        {"nodename": "b", **_with("priority", 99_999), "conditions": {"executortype": "echo"}},
    ]
    with pytest.raises(InvalidSpecError, match=r"^\$\[1\]\.priority: 99999 is out of range"):
        load_workflow_spec(msgspec.json.encode(workflow))


async def test_the_sdk_refuses_an_out_of_range_spec_before_sending_it(client: Client) -> None:
    async with client.subscribe() as events:
        with pytest.raises(InvalidSpecError, match=r"\$\.priority: 200000 is out of range"):
            await client.submit(spec(priority=200_000))
        with pytest.raises(InvalidSpecError, match=r"^\$\[1\]\.maxexectime"):
            await client.submit_many([spec(), spec(max_exec_time=10**15)])
        nodes = [spec(node_name="a"), spec(node_name="b", priority=-(10**6))]
        with pytest.raises(InvalidSpecError, match=r"^\$\[1\]\.priority: -1000000 is out"):
            await client.submit_workflow(WorkflowSpec(function_specs=nodes))
        ok = await client.submit(spec())
        assert isinstance(ok, Process)
        first = await events.next()
        assert isinstance(first, Process) and first.process_id == ok.process_id  # nothing before


@pytest.mark.parametrize(
    ("key", "value", "path"),
    [
        ("priority", 200_000, "$.priority"),
        ("maxexectime", 10**15, "$.maxexectime"),
        ("maxwaittime", 10**13, "$.maxwaittime"),
        ("maxretries", 10**25, "$.maxretries"),
        ("conditions.nodes", 10**19, "$.conditions.nodes"),
    ],
)
async def test_a_raw_spec_out_of_range_is_rejected_once_and_the_broker_goes_on(
    client: Client, settings, key: str, value: int, path: str
) -> None:
    """Before: the queue's encoding overflowed, the spec was delivered again and again."""
    subjects = Subjects(settings.prefix)
    nc = await raw_nats(settings.nats_url)
    try:
        events = await nc.subscribe(subjects.events_filter(colony=COLONY))
        await nc.jetstream().publish(
            subjects.specs(COLONY, "echo"), msgspec.json.encode(_with(key, value))
        )
        msg = await events.next_msg(timeout=5)
        assert ".rejected." in msg.subject
        rejection = msgspec.json.decode(msg.data, type=Rejection)
        assert rejection.path == path and "out of range" in rejection.error
        # Acked with its rejection: never delivered again.
        assert await specs_drained(nc.jetstream(), subjects)
        # Nothing was made of it, and a good spec still runs.
        assert await client.list_processes() == []
        ok = await client.submit(spec(args=["after"]))
        assert isinstance(ok, Process)
        ex = await connect_executor(settings, "e1")
        got = await ex.assign(timeout=2)
        assert got is not None and got.process_id == ok.process_id
        await ex.close(got.process_id, ["after"])
        assert (await client.wait(ok.process_id, timeout=5)).state is ProcessState.SUCCESS
        await ex.aclose()
    finally:
        await nc.close()


@pytest.mark.parametrize(
    ("op", "body", "path", "reason"),
    [
        ("assign", b'{"timeout": 1e12}', "$.timeout", "<= 3600"),
        ("assign", b'{"timeout": -1}', "$.timeout", ">= 0"),
        ("assign_many", b'{"timeout": 0, "count": 0}', "$.count", ">= 1"),
        ("assign_many", b'{"timeout": 0, "count": 100000000}', "$.count", "<= 1000"),
        ("list", b'{"limit": 100000000}', "$.limit", "<= 10000"),
        ("list", b'{"limit": -3}', "$.limit", ">= 0"),
        ("graph_list", b'{"limit": 100000000}', "$.limit", "<= 10000"),
        ("close", b'{"processid": "x", "attempt": -1}', "$.attempt", ">= 0"),
        ("fail", b'{"processid": "x", "attempt": 10000000000}', "$.attempt", "<= 1000000"),
        ("log", b'{"processid": "x", "lines": [], "attempt": true}', "$.attempt", "got `bool`"),
    ],
)
async def test_request_numbers_out_of_range_are_refused_naming_the_field(
    client: Client, settings, op: str, body: bytes, path: str, reason: str
) -> None:
    ex = await connect_executor(settings, "e1")
    try:
        subject = Subjects(settings.prefix).rpc(COLONY, "e1", op)
        reply = await ex.nc.request(subject, body, timeout=5)
        error = msgspec.json.decode(reply.data)["error"]
        assert error["code"] == "invalid"
        assert error["message"].startswith(f"bad {op} request: {path}: "), error
        assert reason in error["message"] and error["detail"]["path"] == path
    finally:
        await ex.aclose()


async def test_the_sdk_keeps_its_assign_requests_within_the_bounds(
    client: Client, settings
) -> None:
    ex = await connect_executor(settings, "e1")
    try:
        await client.submit(spec())
        got = await ex.assign_many(count=10**6, timeout=0)
        assert len(got) == 1
    finally:
        await ex.aclose()
