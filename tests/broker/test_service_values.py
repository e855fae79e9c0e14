"""The request path's small decisions, without a server: which requests name a colony that must
exist, the reply's size backstop, a revoke's reason and what made a record too large."""

from __future__ import annotations

import msgspec
import pytest

from colonyos.broker.replies import colony_scoped, reply_body
from colonyos.broker.service import _what_grew, revoke_reason
from colonyos.errors import RecordTooLargeError
from colonyos.models import Process, ProcessState
from colonyos.subjects import SERVER_SCOPE


def _fresh(text: str) -> str:
    """An equal string that is not the same object (as one parsed from a subject is)."""
    return "".join(list(text))


@pytest.mark.parametrize("colony", ["dev", "Dev", "9lives", "~tilde", "_serverx", "a"])
def test_every_colony_but_the_servers_scope_must_exist(colony: str) -> None:
    """Names on both sides of "_server" in byte order: the test is equality, not order."""
    assert colony_scoped(colony, "process_submit")


def test_the_servers_scope_and_making_or_reading_a_colony_name_no_colony_to_check() -> None:
    assert not colony_scoped(_fresh(SERVER_SCOPE), "colony_list")
    assert not colony_scoped(SERVER_SCOPE, "colony_list")
    assert not colony_scoped("dev", "colony_add")
    assert not colony_scoped("dev", "colony_get")


def test_a_reply_of_exactly_one_message_is_sent_and_one_byte_more_is_refused() -> None:
    result = msgspec.Raw(b'"' + b"x" * 1000 + b'"')
    size = len(reply_body("op", result, 1 << 20, 1 << 20))
    assert size == len(b'{"result":') + 1002 + 1
    assert reply_body("op", result, size, size) == b'{"result":"' + b"x" * 1000 + b'"}'
    with pytest.raises(RecordTooLargeError) as refused:
        reply_body("process_get", result, size - 1, size - 1)
    assert "the process_get reply" in str(refused.value)
    assert refused.value.detail["size"] == size


def test_no_result_is_the_no_work_reply() -> None:
    assert reply_body("assign", None, 15, 15) == b'{"result":null}'


def test_a_revoke_tells_the_last_error_the_write_added() -> None:
    after = Process(process_id="p", state=ProcessState.WAITING, errors=["first", "second"])
    assert revoke_reason(after) == "second"


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (ProcessState.WAITING, "taken back and queued again"),
        (ProcessState.RUNNING, "running"),
        (ProcessState.SUCCESS, "success"),
        (ProcessState.FAILED, "failed"),
        (ProcessState.CANCELLED, "cancelled"),
    ],
)
def test_a_revoke_without_an_error_tells_what_became_of_the_process(
    state: ProcessState, reason: str
) -> None:
    assert revoke_reason(Process(process_id="p", state=state)) == reason


BEFORE = Process(process_id="p", input=["b"], output=["b"], errors=["b"])


def _copy(p: Process, **fields: object) -> Process:
    """``p`` decoded afresh: equal values, none of them the same object."""
    fresh = msgspec.json.decode(msgspec.json.encode(p), type=Process)
    return msgspec.structs.replace(fresh, **fields)


@pytest.mark.parametrize("value", [["a"], ["c"], ["b", "c"], []])
def test_what_grew_names_the_output_whichever_way_it_differs(value: list[str]) -> None:
    assert _what_grew(BEFORE, _copy(BEFORE, output=value)) == "its output: with it,"


@pytest.mark.parametrize("value", [["a"], ["c"], ["b", "c"], []])
def test_what_grew_names_the_input_whichever_way_it_differs(value: list[str]) -> None:
    assert _what_grew(BEFORE, _copy(BEFORE, input=value)) == (
        "its input (its parents' outputs): with it,"
    )


@pytest.mark.parametrize("value", [["a"], ["c"], ["b", "c"], []])
def test_what_grew_names_the_errors_whichever_way_they_differ(value: list[str]) -> None:
    assert _what_grew(BEFORE, _copy(BEFORE, errors=value)) == "its errors: with them,"


def test_what_grew_names_no_part_when_only_equal_copies_are_new() -> None:
    assert _what_grew(BEFORE, _copy(BEFORE, state=ProcessState.FAILED)) == "this change:"
