"""Colonies' ``execute`` contract, checked without a platform: what each executor runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from colonyos.executors import contract
from colonyos.models import GPU, Conditions, FunctionSpec, Process

PID = "a" * 64


def process(kwargs: dict[str, object], **spec: object) -> Process:
    return Process(process_id=PID, spec=FunctionSpec(func_name="execute", kwargs=kwargs, **spec))


def test_cmd_and_args_make_one_shell_line_with_the_process_id() -> None:
    call = contract.parse(
        process(
            {"docker-image": "ubuntu:20.04", "cmd": "echo", "args": ["hello", 2, "{processid}"]},
            env={"GREETING": "hi"},
        )
    )
    assert call.image == "ubuntu:20.04"
    assert call.argv == ["/bin/sh", "-c", f"echo hello 2 {PID}"]
    assert call.environment("/colonies/output.json", "/colonies/input.json") == {
        "GREETING": "hi",
        "COLONIES_PROCESS_ID": PID,
        "COLONIES_INPUT": "/colonies/input.json",
        "COLONIES_OUTPUT": "/colonies/output.json",
    }


def test_init_cmd_runs_first_and_stops_the_command_when_it_fails() -> None:
    call = contract.parse(
        process({"docker-image": "img", "cmd": "run {processid}", "init-cmd": "prepare"})
    )
    assert call.script == f"prepare || exit $?\nrun {PID}"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"cmd": "ls"}, "kwargs.docker-image: required"),
        ({"docker-image": "img"}, "kwargs.cmd: required"),
        ({"docker-image": "img", "cmd": ""}, "kwargs.cmd: must be"),
        ({"docker-image": 3, "cmd": "ls"}, "kwargs.docker-image: must be"),
        ({"docker-image": "a b", "cmd": "ls"}, "kwargs.docker-image: 'a b' is not an image"),
        ({"docker-image": "img", "cmd": "ls", "args": "-l"}, "kwargs.args: must be a list"),
        ({"docker-image": "img", "cmd": "ls", "args": [{"a": 1}]}, "kwargs.args: must be"),
        ({"docker-image": "img", "cmd": "ls", "init-cmd": 5}, "kwargs.init-cmd: must be"),
    ],
)
def test_a_spec_off_the_contract_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(contract.ContractError, match=field.replace("$", r"\$")):
        contract.parse(process(kwargs))


def test_conditions_become_limits_with_walltime_before_maxexectime() -> None:
    conditions = Conditions(
        cpu="500m", mem="1Gi", gpu=GPU(count=2), nodes=3, processes_per_node=4, walltime=60
    )
    kwargs = {"docker-image": "img", "cmd": "ls"}
    limits = contract.parse(process(kwargs, conditions=conditions, max_exec_time=100)).limits
    assert limits == contract.Limits(
        cpu_millis=500,
        mem_bytes=2**30,
        gpus=2,
        nodes=3,
        processes_per_node=4,
        time_limit_s=60,
    )
    assert contract.parse(process(kwargs, max_exec_time=100)).limits.time_limit_s == 100
    assert contract.parse(process(kwargs)).limits.time_limit_s == 0


def test_the_output_file_is_the_output(tmp_path: Path) -> None:
    path = tmp_path / "output.json"
    assert contract.read_output(str(path), 100) == []  # none written
    path.write_text("")
    assert contract.read_output(str(path), 100) == []
    path.write_text(json.dumps([1, "two"]))
    assert contract.read_output(str(path), 100) == [1, "two"]
    path.write_text(json.dumps({"celsius": 21}))
    assert contract.read_output(str(path), 100) == [{"celsius": 21}]
    path.write_text("{not json")
    with pytest.raises(contract.ContractError, match=r"\$COLONIES_OUTPUT: .* not JSON"):
        contract.read_output(str(path), 100)
    path.write_text(json.dumps(["x" * 200]))
    with pytest.raises(contract.ContractError, match="larger than the 100 bytes"):
        contract.read_output(str(path), 100)


def test_a_failure_quotes_the_exit_code_and_the_last_lines_of_stderr() -> None:
    tail = contract.LogTail(size=2)
    tail.lines.extend(["one", "two", "three"])
    assert contract.failure(3, tail) == "the command exited with code 3: two | three"
    assert "out of memory" in contract.failure(137, tail, oom=True)
    assert contract.failure(1, contract.LogTail()) == "the command exited with code 1"
