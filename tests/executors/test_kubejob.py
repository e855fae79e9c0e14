"""The Job manifest of the Kubernetes executor, checked against the batch/v1 Job schema (trimmed
from Kubernetes' OpenAPI definitions: tests/data/kubernetes/job-schema.json) and Kubernetes' name
and label rules, without a cluster."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import pytest

from colonyos.executors import contract, kubejob
from colonyos.models import GPU, Conditions, FunctionSpec, Process
from tests.kubefake import LABEL_VALUE, job_errors, schema_errors

PID = "0123456789abcdef" * 4
CASES = Path("/work/shared/colonies-tutorial-cases")


def call_of(spec: FunctionSpec, attempt: int = 1, **process: Any) -> contract.Execute:
    return contract.parse(Process(process_id=PID, spec=spec, assignments=attempt + 1, **process))


def spec(cmd: str = "echo hi", **kw: Any) -> FunctionSpec:
    return FunctionSpec(func_name="execute", kwargs={"docker-image": "busybox", "cmd": cmd}, **kw)


def job(call: contract.Execute, owner: str = "dev.k1") -> dict[str, Any]:
    return kubejob.manifest(call, owner, "colonies-output-abc", "dev/k1")


def test_colonies_kube_example_makes_a_valid_job() -> None:
    raw = json.loads((CASES / "embedded/executors__kube__README__01.json").read_text())
    manifest = job(call_of(msgspec.convert(raw, FunctionSpec)))
    assert job_errors(manifest) == []
    spec_ = manifest["spec"]
    assert spec_["parallelism"] == spec_["completions"] == 2
    assert spec_["completionMode"] == "Indexed"
    assert spec_["activeDeadlineSeconds"] == 90  # walltime before maxexectime (80)
    assert spec_["backoffLimit"] == 0  # the broker retries, not Kubernetes
    assert spec_["ttlSecondsAfterFinished"] == kubejob.TTL_AFTER_FINISHED_S
    pod = spec_["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["terminationGracePeriodSeconds"] == 0
    (container,) = pod["containers"]
    assert container["command"][3] == "echo Hello, World!"
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": str(2**30)}


def test_every_field_used_is_valid_together() -> None:
    conditions = Conditions(
        cpu="2", mem="512Mi", gpu=GPU(count=2), nodes=3, processes_per_node=4, walltime=600
    )
    call = call_of(
        FunctionSpec(
            func_name="execute",
            kwargs={
                "docker-image": "registry.example.org:5000/team/img:2.1",
                "cmd": "train --id {processid}",
                "init-cmd": "prepare",
            },
            conditions=conditions,
            env={"A_B": "x y", "lower.case": "1"},
        ),
        attempt=12345,
        input=[{"x": 1}, "two"],
    )
    manifest = job(call)
    assert job_errors(manifest) == []
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": str(512 * 2**20)},
        "limits": {"cpu": "2", "memory": str(512 * 2**20), "nvidia.com/gpu": "2"},
    }
    template = manifest["spec"]["template"]["metadata"]
    assert json.loads(template["annotations"][kubejob.INPUT_ANNOTATION]) == [{"x": 1}, "two"]
    assert manifest["metadata"]["annotations"][kubejob.PROCESS_ANNOTATION] == PID


def test_no_limits_asked_no_limits_written() -> None:
    manifest = job(call_of(spec()))
    assert job_errors(manifest) == []
    assert "resources" not in manifest["spec"]["template"]["spec"]["containers"][0]
    assert "activeDeadlineSeconds" not in manifest["spec"]
    assert "completionMode" not in manifest["spec"]
    assert manifest["spec"]["parallelism"] == manifest["spec"]["completions"] == 1


def test_the_validator_is_not_blind() -> None:
    """What the fake API refuses with 422: a misspelt field, a name too long for a label, a label
    value with a slash, a quantity not in Kubernetes' grammar."""
    good = job(call_of(spec()))
    misspelt = json.loads(json.dumps(good))
    misspelt["spec"]["backofLimit"] = misspelt["spec"].pop("backoffLimit")
    assert schema_errors(misspelt) == [".spec.backofLimit: not a field of this object"]
    long_name = json.loads(json.dumps(good))
    long_name["metadata"]["name"] = f"colonies-{PID}-1"
    assert "must be a DNS label" in job_errors(long_name)[0]
    slash = json.loads(json.dumps(good))
    slash["metadata"]["labels"][kubejob.OWNER_LABEL] = "dev/k1"
    assert "is not a valid label value" in job_errors(slash)[0]
    quantity = json.loads(json.dumps(good))
    quantity["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "limits": {"cpu": "1 core"}
    }
    assert "does not match" in schema_errors(quantity)[0]


@pytest.mark.parametrize("attempt", [0, 1, 10**9])
def test_job_names_are_dns_labels_the_pods_can_carry(attempt: int) -> None:
    name = kubejob.job_name(PID, attempt)
    assert name == f"colonies-{PID[:12]}-{attempt}"
    assert len(name) <= 63 and kubejob.DNS_LABEL.match(name)


@pytest.mark.parametrize(
    ("colony", "name", "readable"),
    [
        ("dev", "k1", True),
        ("lab", "kube-executor_2.a", True),
        ("dev", "x" * 70, False),  # too long for a label value
        ("dev", "k1-", False),  # must end alphanumeric
        ("démo", "k1", False),
    ],
)
def test_owner_labels_are_valid_label_values(colony: str, name: str, readable: bool) -> None:
    value = kubejob.owner_label(colony, name)
    assert len(value) <= 63 and LABEL_VALUE.match(value)
    assert (value == f"{colony}.{name}") is readable
    assert value == kubejob.owner_label(colony, name)  # the same after a restart
    assert value != kubejob.owner_label(colony, name + "x")


def test_an_input_too_large_for_an_annotation_is_refused() -> None:
    call = call_of(spec(), input=["x" * kubejob.MAX_INPUT_BYTES])
    with pytest.raises(contract.ContractError, match=r"the input is \d+ bytes; a Kubernetes Job"):
        job(call)


def test_the_wrapper_prints_the_output_after_the_marker_and_keeps_the_exit_code(
    tmp_path: Path,
) -> None:
    """The container's command, run by a local /bin/sh: the output file behind the marker, the
    script's own exit code, and nothing after the marker when no file was written."""
    out = tmp_path / "output.json"
    command = job(call_of(spec('printf "[1, 2]" > $COLONIES_OUTPUT; echo hi; exit 4')))["spec"][
        "template"
    ]["spec"]["containers"][0]["command"]
    env = {"COLONIES_OUTPUT": str(out), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=10)
    assert done.returncode == 4
    assert done.stdout == "hi\ncolonies-output-abc\n[1, 2]"
    out.unlink()
    command[3] = "echo quiet"
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=10)
    assert (done.returncode, done.stdout) == (0, "quiet\n")


@pytest.mark.parametrize(
    ("text", "output"),
    [("", []), ("  \n", []), ('{"a": 1}', [{"a": 1}]), ("[1, 2]", [1, 2]), ("7\n", [7])],
)
def test_output_text_as_the_output_file(text: str, output: list[Any]) -> None:
    assert kubejob.output_of(text, 100) == output


def test_output_text_not_json_or_too_large_fails_saying_so() -> None:
    with pytest.raises(
        contract.ContractError, match=r"\$COLONIES_OUTPUT: the output file is not JSON"
    ):
        kubejob.output_of("{nope", 100)
    with pytest.raises(contract.ContractError, match="larger than the 4 bytes"):
        kubejob.output_of("12345", 4)


def test_the_documented_deployment_grants_what_the_executor_calls() -> None:
    """docs/executors.md's manifests parse, and its Role allows the calls the executor makes
    (jobs: create, get, list, delete; pods: get, list; pods/log: get) and no more."""
    yaml = pytest.importorskip("yaml")
    text = (Path(__file__).parents[2] / "docs" / "executors.md").read_text()
    block = (
        text.split("**Deploy in the cluster.**", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    )
    docs = {d["kind"]: d for d in yaml.safe_load_all(block)}
    grants = {
        (r, v) for rule in docs["Role"]["rules"] for r in rule["resources"] for v in rule["verbs"]
    }
    assert grants == {
        ("jobs", "create"),
        ("jobs", "get"),
        ("jobs", "list"),
        ("jobs", "delete"),
        ("pods", "get"),
        ("pods", "list"),
        ("pods/log", "get"),
    }
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    command = pod["containers"][0]["command"]
    assert command[:4] == ["colonies", "executor", "start", "kubernetes"]
    state = command[command.index("--state-dir") + 1]
    assert {"name": "state", "mountPath": state} in pod["containers"][0]["volumeMounts"]
