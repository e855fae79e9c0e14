"""Spec files as Colonies users bring them: every real example loads, or fails for its reason."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from colonyos.errors import InvalidSpecError
from colonyos.models import FunctionSpec, Process, ProcessState
from colonyos.specs import decode_function_spec, load_function_spec, load_workflow_spec

from .helpers import DATA

# Files that Colonies itself cannot run either, with the error we must name.
EXPECTED_ERRORS = {
    "christmas_workflow.json": "$: malformed JSON",
    "cron_maxwaittime_workflow.json": "$[0].funcname",
    "colonies__docs__Executor__01.json": "$.funcname",
    "colonies__docs__Executor__02.json": "$.funcname",
    "colonies__docs__Executor__03.json": "$.funcname",
    "colonies__docs__Generators__01.json": "$[0].funcname",
    "colonies__docs__GettingStarted__02.json": "$.funcname",
    "workflow.json@colonyos+demos": "$[0].funcname",
    "borg_classifier.json": "$.fs",
    "borg_helloworld.json": "$.fs",
    "cineca_classifier.json": "$.fs",
    "cineca_helloworld.json": "$.fs",
    "sleep_workflow.json": "$[0].fs",
}


def _spec_files() -> list[Path]:
    files = []
    for path in sorted(DATA.rglob("*.json")):
        try:
            obj = json.loads(path.read_bytes())
        except json.JSONDecodeError:
            files.append(path)
            continue
        if isinstance(obj, list) or (
            isinstance(obj, dict)
            and ({"funcname", "func", "conditions", "functionspecs"} & set(obj))
        ):
            files.append(path)
    return files


def _expected_error(path: Path) -> str | None:
    if "colonyos+demos" in str(path):
        return EXPECTED_ERRORS.get(f"{path.name}@colonyos+demos")
    return EXPECTED_ERRORS.get(path.name)


def _load(path: Path) -> object:
    raw = path.read_bytes()
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError:
        obj = None
    if isinstance(obj, list) or (isinstance(obj, dict) and "functionspecs" in obj):
        return load_workflow_spec(raw)
    return load_function_spec(raw)


SPEC_FILES = _spec_files()


def test_the_example_corpus_is_there() -> None:
    assert len(SPEC_FILES) > 60


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: str(p.relative_to(DATA)))
def test_colonies_spec_files_load_or_fail_for_their_reason(path: Path) -> None:
    expected = _expected_error(path)
    if expected is None:
        _load(path)
    else:
        with pytest.raises(InvalidSpecError) as info:
            _load(path)
        assert info.value.message.startswith(expected)


def test_echo_example_loads_unchanged() -> None:
    raw = b'{"conditions": {"executortype": "echo_executor"}, "funcname": "echo", "args": ["helloworld"]}'
    spec, warnings = load_function_spec(raw)
    assert warnings == []
    assert spec.func_name == "echo" and spec.args == ["helloworld"]
    assert spec.conditions.executor_type == "echo_executor"
    assert spec.max_exec_time == -1 and spec.max_wait_time == -1 and spec.max_retries == 0


def test_legacy_func_key_gets_a_hint() -> None:
    with pytest.raises(InvalidSpecError) as info:
        load_function_spec(b'{"conditions": {"executortype": "cli"}, "func": "echo"}')
    assert "$.funcname" in info.value.message and "'func'" in info.value.message


def test_unknown_keys_are_warnings_by_path_and_errors_when_strict() -> None:
    raw = b"""{"conditions": {"executortype": "x", "processes-per-node": 2},
               "funcname": "f", "maxexectme": 5, "desc": "typo"}"""
    spec, warnings = load_function_spec(raw)
    assert warnings == ["$.conditions.processes-per-node", "$.maxexectme", "$.desc"]
    assert spec.max_exec_time == -1
    with pytest.raises(InvalidSpecError) as info:
        load_function_spec(raw, strict=True)
    assert "$.maxexectme" in info.value.message


@pytest.mark.parametrize(
    ("raw", "path", "reason"),
    [
        (b'{"conditions": {"executortype": "x"}}', "$.funcname", "required"),
        (b'{"funcname": "f"}', "$.conditions.executortype", "required"),
        (b'{"funcname": 5, "conditions": {"executortype": "x"}}', "$.funcname", "expected `str`"),
        (
            b'{"funcname": "f", "conditions": {"executortype": "x"}, "priority": "high"}',
            "$.priority",
            "expected `int`",
        ),
        (
            b'{"funcname": "f", "conditions": {"executortype": "x"}, "maxretries": -5}',
            "$.maxretries",
            ">= -1",
        ),
        (
            b'{"funcname": "f", "conditions": {"executortype": "x", "cpu": "lots"}}',
            "$.conditions.cpu",
            "not a cpu quantity",
        ),
        (
            b'{"funcname": "f", "conditions": {"executortype": "x", "mem": "1 parsec"}}',
            "$.conditions.mem",
            "not a size",
        ),
        (
            b'{"funcname": "f", "conditions": {"executortype": "a.b"}}',
            "$.conditions.executortype",
            "valid name",
        ),
        (b"[1, 2", "$", "malformed JSON"),
        (b'"just a string"', "$", "expected a JSON object"),
    ],
)
def test_bad_specs_name_the_field_and_the_reason(raw: bytes, path: str, reason: str) -> None:
    with pytest.raises(InvalidSpecError) as info:
        load_function_spec(raw)
    assert info.value.message.startswith(path), info.value.message
    assert reason in info.value.message
    # The broker's fast path gives the same verdict.
    with pytest.raises(InvalidSpecError) as again:
        decode_function_spec(raw)
    assert again.value.message.startswith(path)


def test_zero_limits_mean_no_limit() -> None:
    spec, _ = load_function_spec(
        b'{"funcname": "f", "conditions": {"executortype": "x"}, "maxwaittime": 0, "maxexectime": 0}'
    )
    assert spec.max_wait_time == -1 and spec.max_exec_time == -1


def test_null_members_read_as_go_does() -> None:
    spec = decode_function_spec(
        b'{"funcname": "f", "args": null, "conditions": {"executortype": "x", "dependencies": null}}'
    )
    assert spec.args == [] and spec.conditions.dependencies == []


def test_workflow_forms() -> None:
    bare = b'[{"nodename": "a", "funcname": "f", "conditions": {"executortype": "x"}}]'
    wrapped = b'{"colonyname": "c", "functionspecs": [{"nodename": "a", "funcname": "f", "conditions": {"executortype": "x"}}]}'
    wf, _ = load_workflow_spec(bare)
    assert [s.node_name for s in wf.function_specs] == ["a"]
    wf, _ = load_workflow_spec(wrapped)
    assert wf.colony_name == "c"
    with pytest.raises(InvalidSpecError, match=r"\$\[1\]\.funcname"):
        load_workflow_spec(
            b'[{"funcname": "f", "conditions": {"executortype": "x"}}, {"conditions": {"executortype": "x"}}]'
        )


def test_process_json_uses_colonies_keys() -> None:
    p = Process(process_id="a" * 64, spec=FunctionSpec(func_name="f"), output=[1], input=[2])
    wire = msgspec.json.decode(msgspec.json.encode(p))
    for key in (
        "processid",
        "assignedexecutorid",
        "isassigned",
        "prioritytime",
        "submissiontime",
        "waitforparents",
        "processgraphid",
        "in",
        "out",
        "errors",
    ):
        assert key in wire
    assert wire["state"] == 0 and wire["in"] == [2] and wire["out"] == [1]
    assert wire["starttime"] == "0001-01-01T00:00:00Z"
    assert wire["spec"]["conditions"]["executortype"] == ""
    assert msgspec.json.decode(msgspec.json.encode(p), type=Process) == p


def test_state_names_and_numbers() -> None:
    assert ProcessState.parse("failed") is ProcessState.FAILED
    assert ProcessState.parse("2") is ProcessState.SUCCESS
    with pytest.raises(ValueError, match="expected one of"):
        ProcessState.parse("done")
