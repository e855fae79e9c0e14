"""The Kubernetes executor: each ``execute`` process runs as a batch/v1 Job.

    colonies executor start kubernetes [--namespace N] [--kubeconfig F] [--state-dir D] [-c 8]

It follows Colonies' ``execute`` contract (see :mod:`colonyos.executors.contract`), so Colonies'
specs run unchanged, through the API server's REST API (:mod:`colonyos.executors.kubeapi`, the
standard library only):

* each attempt of a process is one Job (see :mod:`colonyos.executors.kubejob` for its manifest:
  nodes as parallelism and completions, cpu, memory and GPUs as the container's requests and
  limits, the time limit as ``activeDeadlineSeconds``, no retry by Kubernetes: the broker retries);
* the executor polls the Job and its pods, and follows each pod's log into the process log as it
  comes. Kubernetes keeps one log per container, stdout and stderr merged: its lines are marked
  ``[log]`` (a failure quotes the last of them). The exit code is the container's, an
  out-of-memory kill is said as such, and an image that cannot be pulled fails the process as
  soon as a pod says so;
* the Job is deleted (its pods with it) when the process ends, is cancelled, passes its
  ``maxexectime``, or the executor is stopped now;
* killed outright, the executor leaves its Jobs running; started again from the same state
  directory (where its registration id is kept) it follows those still its own and deletes the
  rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import urllib.parse
from pathlib import Path
from typing import Any

from colonyos.config import Settings
from colonyos.executor import ExecutorApp, ProcessContext
from colonyos.limits import request_limit
from colonyos.resume import IdentityFile

from . import contract, kubejob
from .kubeapi import ApiError, KubeAPI, load_cluster
from .platform import PlatformError, default_state_dir, finish_anyway

__all__ = ["LOG_MARK", "Jobs", "build"]

logger = logging.getLogger(__name__)

# Kubernetes merges a container's stdout and stderr into one log.
LOG_MARK = "[log] "
_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
# How long the logs may take to reach their end once the Job has ended.
_LOG_DRAIN_S = 10.0
_DELETE = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


class Jobs:
    """One executor's Jobs in one namespace, as colonyos.resume asks for them."""

    def __init__(self, api: KubeAPI, namespace: str, owner: str, poll_s: float = 1.0) -> None:
        self.api = api
        self.namespace = namespace
        self.owner = owner
        self.poll_s = poll_s
        self._jobs = f"/apis/batch/v1/namespaces/{_q(namespace)}/jobs"
        self._pods = f"/api/v1/namespaces/{_q(namespace)}/pods"

    async def get(self, name: str) -> dict[str, Any] | None:
        try:
            job: dict[str, Any] = await self.api.request("GET", f"{self._jobs}/{name}")
        except ApiError as err:
            if err.status == 404:
                return None
            raise
        return job

    async def create(self, manifest: dict[str, Any]) -> None:
        try:
            await self.api.request("POST", self._jobs, manifest)
        except ApiError as err:
            raise PlatformError(
                f"the Job {manifest['metadata']['name']} could not be created: {err}"
            ) from None

    async def delete(self, name: str) -> None:
        """Gone with its pods (in the background: the call does not wait for them)."""
        try:
            await self.api.request("DELETE", f"{self._jobs}/{name}", _DELETE)
        except ApiError as err:
            if err.status != 404:
                raise

    async def pods(self, name: str) -> list[dict[str, Any]]:
        selector = _q(f"job-name={name}")
        reply = await self.api.request("GET", f"{self._pods}?labelSelector={selector}")
        items: list[dict[str, Any]] = reply.get("items") or []
        return items

    def log_path(self, pod: str, since: str = "") -> str:
        path = (
            f"{self._pods}/{_q(pod)}/log?container={kubejob.CONTAINER}&follow=true&timestamps=true"
        )
        return path + (f"&sinceTime={_q(since)}" if since else "")

    async def pod_ended(self, pod: str) -> bool:
        """Has the pod ended (or gone)?"""
        try:
            status = (await self.api.request("GET", f"{self._pods}/{_q(pod)}")).get("status", {})
        except ApiError as err:
            if err.status == 404:
                return True
            raise
        return status.get("phase") in ("Succeeded", "Failed")

    async def held(self) -> list[tuple[str, int]]:
        selector = _q(f"{kubejob.OWNER_LABEL}={self.owner}")
        reply = await self.api.request("GET", f"{self._jobs}?labelSelector={selector}")
        out = []
        for job in reply.get("items") or []:
            meta = job.get("metadata", {})
            pid = (meta.get("annotations") or {}).get(kubejob.PROCESS_ANNOTATION, "")
            attempt = (meta.get("labels") or {}).get(kubejob.ATTEMPT_LABEL, "")
            if pid and attempt.isdigit():
                out.append((pid, int(attempt)))
        return out

    async def abandon(self, process_id: str, attempt: int) -> None:
        name = kubejob.job_name(process_id, attempt)
        job = await self.get(name)
        if job is not None and _process_of(job) == process_id:
            await self.delete(name)


def _process_of(job: dict[str, Any]) -> str:
    annotations = job.get("metadata", {}).get("annotations") or {}
    return str(annotations.get(kubejob.PROCESS_ANNOTATION, ""))


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        if status.get("name") == kubejob.CONTAINER:
            state: dict[str, Any] = status.get("state") or {}
            return state
    return {}


def _ended(job: dict[str, Any]) -> dict[str, Any] | None:
    """The Job's Complete or Failed condition, once it has one."""
    for cond in job.get("status", {}).get("conditions") or []:
        if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
            return dict(cond)
    return None


def _index(pod: dict[str, Any]) -> tuple[int, str]:
    meta = pod.get("metadata", {})
    index = (meta.get("annotations") or {}).get(_INDEX_ANNOTATION, "")
    return (int(index) if index.isdigit() else 0, str(meta.get("name", "")))


def _ts_key(stamp: str) -> str:
    """An RFC 3339 timestamp that sorts as text (its fraction padded to nanoseconds)."""
    base, _, frac = stamp.rstrip("Z").partition(".")
    return f"{base}.{frac:0<9}"


class _PodLog:
    """One pod's log lines, timestamped: logged until the marker, kept as the output after it."""

    def __init__(self, follow: _Follow, prefix: str) -> None:
        self.follow = follow
        self.prefix = prefix
        self.output: list[str] | None = None
        self.size = 0
        self.last = ""  # the timestamp of the last line taken

    def take(self, raw: bytes) -> None:
        stamp, _, text = raw.decode(errors="replace").rstrip("\r").partition(" ")
        if self.last and _ts_key(stamp) <= _ts_key(self.last):
            return  # seen before the log was followed again
        self.last = stamp
        marker = self.follow.marker
        if self.output is not None:
            self.size += len(text) + 1
            if self.size <= self.follow.max_bytes + 1:
                self.output.append(text)
        elif marker and text.endswith(marker):
            self.output = []
            if text := text[: -len(marker)]:
                self.follow.say(self.prefix, text)
        else:
            self.follow.say(self.prefix, text)

    def output_text(self) -> str | None:
        if self.output is None:
            return None
        if self.size > self.follow.max_bytes + 1:
            raise contract.ContractError(
                f"${contract.OUTPUT_ENV}: the output file is larger than the "
                f"{self.follow.max_bytes} bytes an output may have"
            )
        return "\n".join(self.output)


class _Follow:
    """One process's Job, followed to its end."""

    def __init__(
        self, ctx: ProcessContext, jobs: Jobs, name: str, call: contract.Execute, marker: str
    ) -> None:
        self.ctx = ctx
        self.jobs = jobs
        self.name = name
        self.call = call
        self.marker = marker
        self.tail = contract.LogTail()
        self.many = call.limits.nodes > 1
        self.logs: dict[str, asyncio.Task[str | None]] = {}
        self.unschedulable: set[str] = set()  # pods said to wait for room
        self.max_bytes = request_limit(ctx.client.nc.max_payload)

    async def run(self) -> list[Any]:
        try:
            ended = await self._until_ended()
            pods = await self.jobs.pods(self.name)
            self._follow_started(pods)
            if self.logs:
                await asyncio.wait(self.logs.values(), timeout=_LOG_DRAIN_S)
            return self._outcome(ended, sorted(pods, key=_index))
        finally:
            for task in self.logs.values():
                task.cancel()
            for task in self.logs.values():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _until_ended(self) -> dict[str, Any]:
        while True:
            job = await self.jobs.get(self.name)
            if job is None:
                raise PlatformError(f"the Job {self.name} was deleted while it ran")
            pods = await self.jobs.pods(self.name)
            for pod in pods:
                self._check_waiting(pod)
            self._follow_started(pods)
            ended = _ended(job)
            if ended is not None:
                return ended
            await asyncio.sleep(self.jobs.poll_s)

    def _check_waiting(self, pod: dict[str, Any]) -> None:
        """An image that cannot be pulled fails the process; a pod the scheduler cannot place
        is said once in the log (it may fit later: the time limit bounds the wait)."""
        waiting = _container(pod).get("waiting") or {}
        if waiting.get("reason") in kubejob.PULL_ERRORS:
            raise PlatformError(
                f"the image {self.call.image!r} cannot be pulled "
                f"({waiting['reason']}): {waiting.get('message', '')}".rstrip(": ")
            )
        name = pod.get("metadata", {}).get("name", "")
        for cond in pod.get("status", {}).get("conditions") or []:
            if (
                cond.get("type") == "PodScheduled"
                and cond.get("reason") == "Unschedulable"
                and name not in self.unschedulable
            ):
                self.unschedulable.add(name)
                self.ctx.log(
                    f"[executor] pod {name} cannot be scheduled yet: {cond.get('message', '')}"
                )

    def _follow_started(self, pods: list[dict[str, Any]]) -> None:
        for pod in pods:
            name = pod.get("metadata", {}).get("name", "")
            state = _container(pod)
            if name and name not in self.logs and ("running" in state or "terminated" in state):
                prefix = f"[pod {_index(pod)[0]}] " if self.many else ""
                self.logs[name] = asyncio.create_task(self._log(name, prefix))

    async def _log(self, pod: str, prefix: str) -> str | None:
        """The pod's log into the process log as it comes; what followed the marker, if any."""
        log = _PodLog(self, prefix)
        while True:
            try:
                stream = self.jobs.api.lines(self.jobs.log_path(pod, log.last))
                async with contextlib.aclosing(stream):  # its connection closed, even if cancelled
                    async for raw in stream:
                        log.take(raw)
            except ApiError as err:
                if err.status == 404:
                    break
                if err.status != 400:  # 400: its container has not started yet
                    raise
            if await self.jobs.pod_ended(pod):
                break
            await asyncio.sleep(self.jobs.poll_s)  # the stream was cut: follow it again
        return log.output_text()

    def say(self, prefix: str, text: str) -> None:
        self.ctx.log(LOG_MARK + prefix + text)
        self.tail.lines.append(prefix + text)

    def _outcome(self, ended: dict[str, Any], pods: list[dict[str, Any]]) -> list[Any]:
        if ended["type"] == "Failed":
            limit = self.call.limits.time_limit_s
            if ended.get("reason") == "DeadlineExceeded":
                raise PlatformError(f"the Job ran past its time limit of {limit} s and was stopped")
            for pod in pods:
                done = _container(pod).get("terminated") or {}
                if done.get("exitCode", 0) != 0:
                    raise PlatformError(
                        contract.failure(
                            int(done["exitCode"]),
                            self.tail,
                            oom=done.get("reason") == "OOMKilled",
                            what="the container",
                        )
                    )
            why = ": ".join(str(w) for w in (ended.get("reason"), ended.get("message")) if w)
            raise PlatformError(f"the Job {self.name} failed: {why or 'no reason given'}")
        for pod in pods:  # pod 0's output, else the first that has one
            task = self.logs.get(pod.get("metadata", {}).get("name", ""))
            if task is not None and task.done() and not task.cancelled():
                text = task.result()
                if text is not None:
                    return kubejob.output_of(text, self.max_bytes)
        return []


def build(
    settings: Settings | None = None,
    executor_type: str = "kubernetes",
    name: str | None = None,
    namespace: str | None = None,
    kubeconfig: str | None = None,
    state_dir: Path | None = None,
    poll_s: float = 1.0,
) -> ExecutorApp:
    """An executor running each process as a Job in ``namespace`` (default: the kubeconfig
    context's, or the pod's own, else ``default``)."""
    cluster = load_cluster(kubeconfig, namespace)
    app = ExecutorApp(executor_type, name, settings=settings)
    colony = app.settings.colony
    state = state_dir or default_state_dir("kubernetes", colony, app.name)
    jobs = Jobs(KubeAPI(cluster), cluster.namespace, kubejob.owner_label(colony, app.name), poll_s)
    app.identity = IdentityFile(state / "executor-id")
    app.resumable = jobs

    @app.handler(contract.FUNC_NAME)
    async def execute(ctx: ProcessContext) -> list[Any]:
        call = contract.parse(ctx.process)
        name = kubejob.job_name(call.process_id, call.attempt)
        job = await jobs.get(name)
        if job is not None and _process_of(job) != call.process_id:
            raise PlatformError(
                f"a Job named {name} already runs another process ({_process_of(job) or 'none'})"
            )
        try:
            if job is not None:
                ctx.log(f"[executor] taken back after a restart: following Job {name}")
                annotations = job["metadata"].get("annotations") or {}
                marker = str(annotations.get(kubejob.MARKER_ANNOTATION, ""))
            else:
                marker = f"colonies-output-{secrets.token_hex(16)}"
                owner = f"{colony}/{app.name}"
                await jobs.create(kubejob.manifest(call, jobs.owner, marker, owner))
            return await _Follow(ctx, jobs, name, call, marker).run()
        finally:
            try:
                await finish_anyway(jobs.delete(name))
            except PlatformError as err:
                logger.warning("the Job %s could not be deleted: %s", name, err)

    return app
