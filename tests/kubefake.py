"""A fake Kubernetes API server, at the HTTP level, for the Kubernetes executor's tests.

No API server can run on the test machines (none is packaged), so this one answers the calls the
executor makes as the real one does: create a Job (201; 409 if it exists; 422 with the reasons if
its manifest breaks the Job schema or the name and label rules), get and list Jobs (by label
selector), list pods by their ``job-name`` label, get a pod, follow a pod's log (chunked, with
timestamps, ``sinceTime`` to the second, ended when the pod ends; 400 while its container waits),
and delete a Job (its pods deleted only with ``propagationPolicy`` Background or Foreground: the
API's default for a Job is to orphan them). Statuses are the API's ``Status`` objects.

Its "kubelet" runs each pod's container command as a local process with the container's
environment only (the ``emptyDir`` mounted at a directory of the pod), stdout and stderr merged
into one log as the real one does. Images named in :attr:`FakeKube.images` behave otherwise: an
image pull error, or an out-of-memory kill once the command ends. ``activeDeadlineSeconds`` fails
the Job with reason DeadlineExceeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

SCHEMA = json.loads((Path(__file__).parent / "data" / "kubernetes" / "job-schema.json").read_text())

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
INT32 = 2**31 - 1


# -- the Job schema and Kubernetes' name rules ------------------------------------------------


def schema_errors(value: Any, schema: dict[str, Any] = SCHEMA, path: str = "") -> list[str]:
    """What in ``value`` breaks ``schema`` (the subset of JSON schema the vendored one uses)."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/definitions/")
        return schema_errors(value, SCHEMA["definitions"][name], path)
    where = path or "."
    kind = schema.get("type")
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
    }
    if kind is not None and not checks[kind](value):
        return [f"{where}: must be {kind}, not {value!r}"]
    errors = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if "pattern" in schema and not re.match(schema["pattern"], value):
        errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if schema.get("format") == "int32" and not -INT32 - 1 <= value <= INT32:
        errors.append(f"{where}: {value} is out of int32's range")
    if kind == "object":
        errors += _object_errors(value, schema, path)
    if kind == "array" and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{path}[{i}]")
    return errors


def _object_errors(value: dict[str, Any], schema: dict[str, Any], path: str) -> list[str]:
    errors = []
    props = schema.get("properties", {})
    for key in schema.get("required", []):
        if key not in value:
            errors.append(f"{path}.{key}: required")
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in props:
            errors += schema_errors(item, props[key], f"{path}.{key}")
        elif extra is False:
            errors.append(f"{path}.{key}: not a field of this object")
        elif isinstance(extra, dict):
            errors += schema_errors(item, extra, f"{path}.{key}")
    return errors


def _key_errors(key: str, where: str) -> list[str]:
    prefix, _, name = key.rpartition("/")
    errors = []
    if prefix and (len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix)):
        errors.append(f"{where}: key {key!r}: its prefix is not a DNS subdomain")
    if not name or len(name) > 63 or not QUALIFIED_NAME.match(name):
        errors.append(f"{where}: key {key!r} is not a qualified name")
    return errors


def meta_errors(meta: dict[str, Any], where: str) -> list[str]:
    errors = []
    for key, value in (meta.get("labels") or {}).items():
        errors += _key_errors(key, f"{where}.labels")
        if len(value) > 63 or not LABEL_VALUE.match(value):
            errors.append(f"{where}.labels[{key}]: {value!r} is not a valid label value")
    for key in meta.get("annotations") or {}:
        errors += _key_errors(key, f"{where}.annotations")
    return errors


def job_errors(job: Any) -> list[str]:
    """Why the API server would refuse ``job`` (422), as far as the executor's fields go."""
    errors = schema_errors(job)
    if errors:
        return errors
    if job.get("apiVersion") != "batch/v1" or job.get("kind") != "Job":
        errors.append("apiVersion/kind: must be batch/v1 Job")
    meta = job.get("metadata", {})
    name = meta.get("name", "")
    # The pods carry the Job's name as their job-name label: 63 characters at most.
    if len(name) > 63 or not DNS_LABEL.match(name):
        errors.append(f"metadata.name: {name!r} must be a DNS label (and a label value)")
    errors += meta_errors(meta, "metadata")
    spec = job["spec"]
    template = spec["template"]
    errors += meta_errors(template.get("metadata", {}), "spec.template.metadata")
    pod = template.get("spec", {})
    if pod.get("restartPolicy") not in ("Never", "OnFailure"):
        errors.append("spec.template.spec.restartPolicy: a Job's must be Never or OnFailure")
    if spec.get("completionMode") == "Indexed" and "completions" not in spec:
        errors.append("spec.completions: required when completionMode is Indexed")
    for n in ("parallelism", "completions", "backoffLimit", "ttlSecondsAfterFinished"):
        if spec.get(n, 0) < 0:
            errors.append(f"spec.{n}: must be greater than or equal to 0")
    if spec.get("activeDeadlineSeconds", 1) <= 0:
        errors.append("spec.activeDeadlineSeconds: must be greater than 0")
    volumes = {v["name"] for v in pod.get("volumes") or []}
    for c in pod.get("containers") or []:
        errors += _container_errors(c, volumes)
    return errors


def _container_errors(c: dict[str, Any], volumes: set[str]) -> list[str]:
    errors = []
    if not DNS_LABEL.match(c["name"]):
        errors.append(f"container name {c['name']!r}: must be a DNS label")
    if not c.get("image"):
        errors.append(f"container {c['name']}: image: required")
    for e in c.get("env") or []:
        if not ENV_NAME.match(e["name"]):
            errors.append(f"container {c['name']}: env name {e['name']!r} is not valid")
    for m in c.get("volumeMounts") or []:
        if m["name"] not in volumes:
            errors.append(f"container {c['name']}: volumeMount {m['name']!r} not found")
    return errors


# -- the fake cluster -------------------------------------------------------------------------


def stamp() -> str:
    """Now, as RFC 3339 with nanoseconds, trailing zeros dropped (as Go's RFC3339Nano)."""
    now = datetime.now(UTC)
    frac = f"{now.microsecond:06d}000".rstrip("0")
    return now.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


@dataclass
class Pod:
    name: str
    job: str
    index: int
    manifest: dict[str, Any]
    lines: list[tuple[str, bytes]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    proc: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = None
    state: dict[str, Any] = field(
        default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}}
    )
    phase: str = "Pending"
    deleted: bool = False
    conditions: list[dict[str, Any]] = field(default_factory=list)

    def poke(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def as_json(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": self.manifest["metadata"],
            "status": {
                "phase": self.phase,
                "conditions": self.conditions,
                "containerStatuses": [{"name": "process", "state": self.state}],
            },
        }

    @property
    def ended(self) -> bool:
        return self.phase in ("Succeeded", "Failed") or self.deleted


class FakeKube:
    """The API server and the kubelet of one namespace-aware fake cluster."""

    def __init__(self, root: Path, token: str = "") -> None:
        self.root = root
        self.token = token
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[str, Pod] = {}
        self.created: list[dict[str, Any]] = []  # every Job created, in order
        self.requests: list[tuple[str, str]] = []
        self.deletes: list[dict[str, Any]] = []  # the DeleteOptions of each delete
        # image -> behaviour: {"waiting": reason} (pull error), {"oom": True}, or
        # {"unschedulable": message} (no node has room: the pod stays Pending).
        self.images: dict[str, dict[str, Any]] = {}
        # End a log stream after this many lines even if the pod runs on (a cut connection).
        self.cut_log_after: int | None = None
        self.url = ""
        self.ca_pem = b""  # the CA of its TLS certificate, when it serves TLS
        self._runner: web.AppRunner | None = None
        self._timers: list[asyncio.Task[None]] = []

    # -- serving --
    async def start(self, tls: ssl.SSLContext | None = None) -> str:
        app = web.Application(middlewares=[self._auth])
        jobs = "/apis/batch/v1/namespaces/{ns}/jobs"
        pods = "/api/v1/namespaces/{ns}/pods"
        app.router.add_post(jobs, self.create_job)
        app.router.add_get(jobs, self.list_jobs)
        app.router.add_get(jobs + "/{name}", self.get_job)
        app.router.add_delete(jobs + "/{name}", self.delete_job)
        app.router.add_get(pods, self.list_pods)
        app.router.add_get(pods + "/{pod}", self.get_pod)
        app.router.add_get(pods + "/{pod}/log", self.pod_log)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        for pod in list(self.pods.values()):
            await self._kill(pod)
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            return status(401, "Unauthorized", "Unauthorized")
        result: web.StreamResponse = await handler(request)
        return result

    # -- Jobs --
    async def create_job(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        job = await request.json()
        errors = job_errors(job)
        name = job.get("metadata", {}).get("name", "")
        if errors:
            return status(422, "Invalid", f'Job.batch "{name}" is invalid: ' + "; ".join(errors))
        if (ns, name) in self.jobs:
            return status(409, "AlreadyExists", f'jobs.batch "{name}" already exists')
        job["metadata"].update(namespace=ns, uid=secrets.token_hex(8), creationTimestamp=stamp())
        job["status"] = {"active": 0, "succeeded": 0, "failed": 0}
        self.jobs[(ns, name)] = job
        self.created.append(job)
        spec = job["spec"]
        for i in range(spec.get("parallelism", 1)):
            self._start_pod(ns, job, i)
        if deadline := spec.get("activeDeadlineSeconds"):
            self._timers.append(asyncio.create_task(self._deadline(ns, name, deadline)))
        return web.json_response(job, status=201)

    async def get_job(self, request: web.Request) -> web.Response:
        job = self.jobs.get((request.match_info["ns"], request.match_info["name"]))
        if job is None:
            return status(404, "NotFound", f'jobs.batch "{request.match_info["name"]}" not found')
        return web.json_response(job)

    async def list_jobs(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        items = [
            j
            for (n, _), j in self.jobs.items()
            if n == ns and selects(request.query.get("labelSelector", ""), j["metadata"])
        ]
        return web.json_response({"kind": "JobList", "apiVersion": "batch/v1", "items": items})

    async def delete_job(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        options = await request.json() if request.can_read_body else {}
        self.deletes.append(options)
        job = self.jobs.pop((ns, name), None)
        if job is None:
            return status(404, "NotFound", f'jobs.batch "{name}" not found')
        if options.get("propagationPolicy") in ("Background", "Foreground"):
            for pod in [p for p in self.pods.values() if p.job == name]:
                await self._kill(pod)
                self.pods.pop(pod.name, None)
        return status(200, "Success", "")

    # -- pods --
    async def list_pods(self, request: web.Request) -> web.Response:
        selector = request.query.get("labelSelector", "")
        items = [
            p.as_json() for p in self.pods.values() if selects(selector, p.manifest["metadata"])
        ]
        return web.json_response({"kind": "PodList", "apiVersion": "v1", "items": items})

    async def get_pod(self, request: web.Request) -> web.Response:
        pod = self.pods.get(request.match_info["pod"])
        if pod is None or pod.deleted:  # deleted with no grace period: gone at once
            return status(404, "NotFound", f'pods "{request.match_info["pod"]}" not found')
        return web.json_response(pod.as_json())

    async def pod_log(self, request: web.Request) -> web.StreamResponse:
        pod = self.pods.get(request.match_info["pod"])
        if pod is None:
            return status(404, "NotFound", f'pods "{request.match_info["pod"]}" not found')
        if "waiting" in pod.state:
            reason = pod.state["waiting"]["reason"]
            return status(
                400,
                "BadRequest",
                f'container "process" in pod "{pod.name}" is waiting to start: {reason}',
            )
        follow = request.query.get("follow") == "true"
        with_stamps = request.query.get("timestamps") == "true"
        since = request.query.get("sinceTime", "")
        since = since[:19] if since else ""  # the API reads sinceTime to the second
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        sent = 0
        i = 0
        while True:
            changed = pod.changed
            while i < len(pod.lines):
                ts, text = pod.lines[i]
                i += 1
                if since and ts[:19] < since:
                    continue
                await response.write(((ts + " ") if with_stamps else "").encode() + text + b"\n")
                sent += 1
                if self.cut_log_after is not None and sent >= self.cut_log_after:
                    self.cut_log_after = None
                    await response.write_eof()
                    return response
            if not follow or pod.ended:
                break
            await changed.wait()
        await response.write_eof()
        return response

    # -- the kubelet --
    def _start_pod(self, ns: str, job: dict[str, Any], index: int) -> None:
        name = job["metadata"]["name"]
        template = job["spec"]["template"]
        indexed = job["spec"].get("completionMode") == "Indexed"
        pod_name = (
            f"{name}-{index}-{secrets.token_hex(3)}"
            if indexed
            else f"{name}-{secrets.token_hex(3)}"
        )
        meta = {
            "name": pod_name,
            "namespace": ns,
            "labels": {**template.get("metadata", {}).get("labels", {}), "job-name": name},
            "annotations": {
                **template.get("metadata", {}).get("annotations", {}),
                **({"batch.kubernetes.io/job-completion-index": str(index)} if indexed else {}),
            },
        }
        pod = Pod(pod_name, name, index, {"metadata": meta, "spec": template["spec"]})
        self.pods[pod_name] = pod
        pod.task = asyncio.create_task(self._run(ns, job, pod))

    @staticmethod
    def _held_back(pod: Pod, behaviour: dict[str, Any]) -> bool:
        """The pod kept from running, as the image's behaviour says (no room, no image)."""
        if "unschedulable" in behaviour:
            pod.conditions = [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": behaviour["unschedulable"],
                }
            ]
            pod.state = {"waiting": {"reason": "ContainerCreating"}}
            pod.poke()
            return True
        if "waiting" in behaviour:
            pod.state = {
                "waiting": {"reason": behaviour["waiting"], "message": behaviour.get("message", "")}
            }
            pod.poke()
            return True
        return False

    async def _run(self, ns: str, job: dict[str, Any], pod: Pod) -> None:
        container = pod.manifest["spec"]["containers"][0]
        behaviour = self.images.get(container["image"], {})
        if self._held_back(pod, behaviour):
            return
        workdir = self.root / pod.name
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        mounts = {m["mountPath"]: workdir / m["name"] for m in container.get("volumeMounts", [])}
        for directory in mounts.values():
            directory.mkdir(parents=True, exist_ok=True)
        self._downward_api(pod, workdir)
        for e in container.get("env", []):
            value = e.get("value", "")
            for mount, directory in mounts.items():
                if value.startswith(mount + "/"):
                    value = str(directory) + value[len(mount) :]
            env[e["name"]] = value
        if job["spec"].get("completionMode") == "Indexed":
            env["JOB_COMPLETION_INDEX"] = str(pod.index)
        argv = [*container.get("command", []), *container.get("args", [])]
        pod.proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,  # one log, as Kubernetes keeps it
            env=env,
            cwd=str(workdir),
            start_new_session=True,
        )
        pod.state = {"running": {"startedAt": stamp()}}
        pod.phase = "Running"
        pod.poke()
        assert pod.proc.stdout is not None
        pending = b""
        while chunk := await pod.proc.stdout.read(4096):
            pending += chunk
            *done, pending = pending.split(b"\n")
            for line in done:
                pod.lines.append((stamp(), line))
            pod.poke()
        if pending:
            pod.lines.append((stamp(), pending))
        code = await pod.proc.wait()
        if pod.deleted:
            return
        reason = "Completed" if code == 0 else "Error"
        if behaviour.get("oom"):
            code, reason = 137, "OOMKilled"
        pod.state = {"terminated": {"exitCode": code, "reason": reason, "finishedAt": stamp()}}
        pod.phase = "Succeeded" if code == 0 else "Failed"
        pod.poke()
        self._settle(ns, pod.job)

    @staticmethod
    def _downward_api(pod: Pod, workdir: Path) -> None:
        """The files of the pod's downwardAPI volumes (annotations only, as the executor uses)."""
        annotations = pod.manifest["metadata"]["annotations"]
        for volume in pod.manifest["spec"].get("volumes", []):
            for item in volume.get("downwardAPI", {}).get("items", []):
                path = item["fieldRef"]["fieldPath"]
                key = re.fullmatch(r"metadata\.annotations\['(.+)'\]", path)
                assert key is not None, f"the fake reads annotations only, not {path}"
                (workdir / volume["name"] / item["path"]).write_text(annotations.get(key[1], ""))

    def _settle(self, ns: str, name: str) -> None:
        """The Job controller: Complete when every pod succeeded, Failed at the first failure
        (backoffLimit 0: the executor's Jobs are never retried)."""
        job = self.jobs.get((ns, name))
        if job is None or job["status"].get("conditions"):
            return
        pods = [p for p in self.pods.values() if p.job == name]
        failed = [p for p in pods if p.phase == "Failed"]
        succeeded = [p for p in pods if p.phase == "Succeeded"]
        job["status"].update(failed=len(failed), succeeded=len(succeeded))
        if failed:
            self._condition(
                job, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"
            )
            for p in pods:
                if not p.ended:
                    self._timers.append(asyncio.create_task(self._kill(p)))
        elif len(succeeded) == job["spec"].get("completions", 1):
            self._condition(job, "Complete", "", "")

    def _condition(self, job: dict[str, Any], kind: str, reason: str, message: str) -> None:
        cond = {"type": kind, "status": "True", "lastTransitionTime": stamp()}
        if reason:
            cond.update(reason=reason, message=message)
        job["status"]["conditions"] = [cond]

    async def _deadline(self, ns: str, name: str, seconds: int) -> None:
        await asyncio.sleep(seconds)  # sleep-ok: the fake's own activeDeadlineSeconds
        job = self.jobs.get((ns, name))
        if job is None or job["status"].get("conditions"):
            return
        self._condition(
            job, "Failed", "DeadlineExceeded", "Job was active longer than specified deadline"
        )
        for pod in [p for p in self.pods.values() if p.job == name]:
            await self._kill(pod)

    async def _kill(self, pod: Pod) -> None:
        """The pod deleted, its process gone at once (terminationGracePeriodSeconds 0)."""
        pod.deleted = True
        if pod.proc is not None and pod.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pod.proc.pid, signal.SIGKILL)
            await pod.proc.wait()
        if pod.task is not None and pod.task is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError):
                await pod.task
        pod.poke()

    def running(self) -> list[Pod]:
        """The pods whose processes run now."""
        return [p for p in self.pods.values() if p.proc is not None and p.proc.returncode is None]


def selects(selector: str, meta: dict[str, Any]) -> bool:
    """An equality-based label selector (``k=v,k2=v2``)."""
    labels = meta.get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value.removeprefix("="):
            return False
    return True


def status(code: int, reason: str, message: str) -> web.Response:
    """The API's Status object."""
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Success" if code < 400 else "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.json_response(body, status=code)
