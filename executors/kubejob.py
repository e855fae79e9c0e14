"""The Kubernetes Job of one ``execute`` process, and what its pods say: pure, no I/O.

One batch/v1 Job per attempt of a process, named ``colonies-<first 12 of the process id>-<attempt>``
(a Job's name is held to 63 characters by the ``job-name`` label Kubernetes puts on its pods). The
full process id is in an annotation; a label tells the executor's Jobs from everyone else's.

``$COLONIES_OUTPUT`` names a file on an ``emptyDir`` volume of the pod, which the executor cannot
read. The container's command is wrapped: once the process's script has ended, the wrapper prints
a marker line (a random value kept in an annotation of the Job) and then the file's content; the
executor cuts what follows the marker out of the pod's log and takes it as the output. No sidecar,
no volume the executor must reach, and it works with any image that has ``/bin/sh`` (which the
contract needs anyway).

``$COLONIES_INPUT`` names a file of a ``downwardAPI`` volume: the process's input, kept in an
annotation of the pod template, which Kubernetes writes into the file. No object beside the Job,
nothing for the executor to clean up; the price is the annotations' size limit (256 KiB in all),
so a larger input fails the process saying so.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from . import contract

__all__ = [
    "ATTEMPT_LABEL",
    "CONTAINER",
    "MARKER_ANNOTATION",
    "OUTPUT_DIR",
    "OWNER_LABEL",
    "PROCESS_ANNOTATION",
    "PULL_ERRORS",
    "job_name",
    "manifest",
    "output_of",
    "owner_label",
]

# The label selecting an executor's Jobs, and the annotations naming each Job's process.
OWNER_LABEL = "colonies.executor"
ATTEMPT_LABEL = "colonies.attempt"
PROCESS_ANNOTATION = "colonies.process"
INPUT_ANNOTATION = "colonies.input"
MARKER_ANNOTATION = "colonies.output-marker"
EXECUTOR_ANNOTATION = "colonies.executor"
# The one container of each pod, and where the output file is.
CONTAINER = "process"
OUTPUT_DIR = "/colonies/out"
OUTPUT_FILE = "output.json"
INPUT_DIR = "/colonies/in"
INPUT_FILE = "input.json"
# What Kubernetes allows an object's annotations in all, less room for the executor's own.
MAX_INPUT_BYTES = 256 * 1024 - 4096
# How long an ended Job stays if the executor could not delete it (it deletes it itself).
TTL_AFTER_FINISHED_S = 3600
# A pod's waiting reasons that mean its image will not run.
PULL_ERRORS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)

# The script in the image runs first; the wrapper then prints the marker and the output file
# (the marker may end a line the script left unfinished: the executor looks for it at the end).
_WRAPPER = (
    '/bin/sh -c "$0"; code=$?; '
    'if [ -s "$COLONIES_OUTPUT" ]; then echo "$1"; cat "$COLONIES_OUTPUT"; fi; '
    "exit $code"
)
# A label value: at most 63 characters, alphanumerics at both ends, '-', '_' and '.' inside.
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# A DNS label (RFC 1123), what a Job name must be to name its pods.
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def job_name(process_id: str, attempt: int) -> str:
    """``colonies-<first 12 of the process id>-<attempt>``: a DNS label within 63 characters."""
    return f"colonies-{process_id[:12].lower()}-{attempt}"


def owner_label(colony: str, name: str) -> str:
    """The label value of one executor's Jobs: ``<colony>.<name>`` when that is a valid label
    value, else a digest of it (label values are held to 63 characters of a few kinds)."""
    value = f"{colony}.{name}"
    if len(value) <= 63 and LABEL_VALUE.match(value):
        return value
    return "sha256-" + hashlib.sha256(value.encode()).hexdigest()[:56]


def _quantity_cpu(millis: int) -> str:
    return f"{millis // 1000}" if millis % 1000 == 0 else f"{millis}m"


def resources(limits: contract.Limits) -> dict[str, Any]:
    """The container's requests and limits: cpu and memory as asked (requests equal to limits,
    so the scheduler reserves what the process may use), GPUs as ``nvidia.com/gpu``."""
    amounts: dict[str, str] = {}
    if limits.cpu_millis:
        amounts["cpu"] = _quantity_cpu(limits.cpu_millis)
    if limits.mem_bytes:
        amounts["memory"] = str(limits.mem_bytes)
    gpu = {"nvidia.com/gpu": str(limits.gpus)} if limits.gpus else {}
    out: dict[str, Any] = {}
    if amounts:
        out["requests"] = dict(amounts)
    if amounts or gpu:
        out["limits"] = {**amounts, **gpu}
    return out


def manifest(call: contract.Execute, owner: str, marker: str, executor: str) -> dict[str, Any]:
    """The batch/v1 Job that runs ``call``.

    ``owner``: the executor's label value (:func:`owner_label`); ``marker``: the line that
    announces the output in the log; ``executor``: ``<colony>/<name>``, for people reading it.
    """
    limits = call.limits
    pods = max(limits.nodes, 1)
    env = call.environment(f"{OUTPUT_DIR}/{OUTPUT_FILE}", f"{INPUT_DIR}/{INPUT_FILE}")
    input_json = call.input_json().decode()
    if len(input_json.encode()) > MAX_INPUT_BYTES:
        raise contract.ContractError(
            f"the input is {len(input_json.encode())} bytes; a Kubernetes Job carries at most "
            f"{MAX_INPUT_BYTES} (it travels in an annotation, whose size Kubernetes limits)"
        )
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": call.image,
        "command": ["/bin/sh", "-c", _WRAPPER, call.script, marker],
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "volumeMounts": [
            {"name": "output", "mountPath": OUTPUT_DIR},
            {"name": "input", "mountPath": INPUT_DIR, "readOnly": True},
        ],
    }
    res = resources(limits)
    if res:
        container["resources"] = res
    labels = {OWNER_LABEL: owner, ATTEMPT_LABEL: str(call.attempt)}
    spec: dict[str, Any] = {
        # The broker retries (maxretries): Kubernetes must not run a failed process again.
        "backoffLimit": 0,
        "parallelism": pods,
        "completions": pods,
        "ttlSecondsAfterFinished": TTL_AFTER_FINISHED_S,
        "template": {
            "metadata": {"labels": labels, "annotations": {INPUT_ANNOTATION: input_json}},
            "spec": {
                "restartPolicy": "Never",
                # A cancel stops the process at once, as the container executor does.
                "terminationGracePeriodSeconds": 0,
                "automountServiceAccountToken": False,
                "containers": [container],
                "volumes": [
                    {"name": "output", "emptyDir": {}},
                    {
                        "name": "input",
                        "downwardAPI": {
                            "items": [
                                {
                                    "path": INPUT_FILE,
                                    "fieldRef": {
                                        "fieldPath": f"metadata.annotations['{INPUT_ANNOTATION}']"
                                    },
                                }
                            ]
                        },
                    },
                ],
            },
        },
    }
    if pods > 1:
        # Each pod knows which it is ($JOB_COMPLETION_INDEX); the output is pod 0's.
        spec["completionMode"] = "Indexed"
    if limits.time_limit_s:
        spec["activeDeadlineSeconds"] = limits.time_limit_s
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(call.process_id, call.attempt),
            "labels": labels,
            "annotations": {
                PROCESS_ANNOTATION: call.process_id,
                MARKER_ANNOTATION: marker,
                EXECUTOR_ANNOTATION: executor,
            },
        },
        "spec": spec,
    }


def output_of(text: str, max_bytes: int) -> list[Any]:
    """The process output from what the wrapper printed after the marker (as
    :func:`contract.read_output` reads a file)."""
    data = text.encode()
    if len(data) > max_bytes:
        raise contract.ContractError(
            f"${contract.OUTPUT_ENV}: the output file is larger than the {max_bytes} bytes an "
            "output may have"
        )
    if not text.strip():
        return []
    try:
        value = json.loads(text)
    except ValueError as err:
        raise contract.ContractError(
            f"${contract.OUTPUT_ENV}: the output file is not JSON: {err}"
        ) from None
    return value if isinstance(value, list) else [value]
